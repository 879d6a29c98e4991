"""Semantic memory in the platform's PostgreSQL: pgvector, HNSW, cosine distance.

    store = PgVectorStore(ledger.pool, ef_search=100)   # any asyncpg pool on that database
    await store.ensure(embedder.dimension, embedder=embedder.name, owner_dsn=owner)
    hits = await store.query("acme", vector, top_k=5, filter={"kind": "runbook"})

Rows live in ``stead_memory`` (migration ``0002_memory.sql``), whose ``vector(384)`` column
follows the embedder once: the first start on an empty table gives it the embedder's dimension
(:meth:`PgVectorStore.ensure`); later changes discard vectors and go through ``stead memory
reembed``. Every statement filters on the
tenant in SQL, with the tenant as a bound parameter; metadata filters become parameterised
jsonb expressions (keys are validated and bound too, never spliced into SQL text).

Vectors and jsonb travel as text with explicit casts (``$1::text::vector``) rather than
through type codecs: the store then works on any asyncpg pool, such as the ledger's, whose
connections were set up for other purposes and have no ``vector`` codec registered.

Approximate search and filters: HNSW returns the ``ef_search`` nearest rows of the whole table
and PostgreSQL filters them afterwards, so a small tenant (or a selective filter) can get fewer
than ``top_k`` rows although more match. When that happens the same query runs again as an
exact search (no index scan, bounded by the tenant's rows), so a short answer always means
"no more matches", on every tenant size.

The filter language, shared with :mod:`stead.storage.memory.pinecone`, is parsed here by
:func:`parse_filter`; both backends reject the same filters with the same messages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import asyncpg

from stead.storage.memory._types import (
    DimensionMismatch,
    Filter,
    Hit,
    MemoryError,
    MemoryItem,
    MemoryUnavailable,
    Scalar,
)

__all__ = [
    "CHOSEN",
    "DEFAULT_DIMENSION",
    "MAX_DIMENSION",
    "Condition",
    "PgVectorStore",
    "check_item",
    "check_namespace",
    "check_tenant",
    "check_vector",
    "delete_scope",
    "parse_filter",
]

DEFAULT_DIMENSION = 384
"""Dimension of the embedding column as migrated: all-MiniLM-L6-v2's."""

MAX_TOP_K = 10_000
"""Largest ``top_k`` either backend accepts (Pinecone's own ceiling)."""

_MAX_IN_VALUES = 10_000
MAX_DIMENSION = 2_000
"""Widest vectors the store indexes: pgvector builds no HNSW index on wider ``vector``
columns."""
_MAX_EF_SEARCH = 1_000  # hnsw.ef_search's upper bound

# ---------------------------------------------------------------------------- shared checks

METADATA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
"""What a metadata key (and so a filter key) may look like. A leading letter keeps user keys
apart from the ``_``-prefixed fields the Pinecone backend stores beside them, and from
operators (``$or``); the rest keeps keys printable in messages and logs."""

Op = Literal["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]
_OPS: frozenset[str] = frozenset(("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"))
_RANGE_OPS: frozenset[str] = frozenset(("$gt", "$gte", "$lt", "$lte"))


@dataclass(frozen=True)
class Condition:
    """One validated term of a filter: ``metadata[key] <op> value``; all terms must hold.

    Semantics, identical on both backends: comparisons are type-exact (``"5"`` is not ``5``;
    ``5`` is ``5.0``); range operators compare numbers only and never match a non-number;
    ``$ne`` and ``$nin`` also match items that lack the key.
    """

    key: str
    op: Op
    value: Scalar | tuple[str | int | float, ...]


def _bad_filter(why: str) -> MemoryError:
    return MemoryError(
        f"bad memory filter: {why}. A filter maps metadata keys to a value or to "
        f"{{operator: value}} with operators $eq $ne $gt $gte $lt $lte $in $nin; "
        f"all keys must hold, e.g. {{\"kind\": \"runbook\", \"step\": {{\"$gte\": 2}}}}"
    )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_scalar(v: object, where: str) -> Scalar:
    if isinstance(v, bool | str | int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _bad_filter(f"{where}: {v!r} is not a finite number")
        return v
    raise _bad_filter(f"{where}: expected a string, number or boolean, got {type(v).__name__}")


def parse_filter(filter: Filter | None) -> list[Condition]:
    """Validate a filter and flatten it into conditions; :class:`MemoryError` if malformed.

    Rejected: keys that are not metadata names (``$or``, ``tenant') OR 1=1 --``, ``_ns``),
    unknown operators, values of the wrong type for their operator, empty operator objects
    and empty ``$in`` lists.
    """
    if filter is None:
        return []
    if not isinstance(filter, dict):
        raise _bad_filter(f"expected an object, got {type(filter).__name__}")
    out: list[Condition] = []
    for key, spec in filter.items():
        if not isinstance(key, str) or not METADATA_KEY.match(key):
            raise _bad_filter(
                f"key {key!r} is not a metadata name (a letter, then up to 63 letters, digits, "
                f"'_', '.' or '-'; $and/$or are not supported)")
        if not isinstance(spec, dict):
            out.append(Condition(key, "$eq", _check_scalar(spec, f"value of {key!r}")))
            continue
        if not spec:
            raise _bad_filter(f"{key!r} has an empty operator object")
        for op, arg in spec.items():
            where = f"{key!r} {op}"
            if op not in _OPS:
                raise _bad_filter(f"unknown operator {op!r} on {key!r}")
            if op in ("$eq", "$ne"):
                out.append(Condition(key, cast(Op, op), _check_scalar(arg, where)))
            elif op in _RANGE_OPS:
                if not _is_number(arg):
                    raise _bad_filter(f"{where} needs a number, got {arg!r}")
                out.append(Condition(key, cast(Op, op), _check_scalar(arg, where)))
            else:
                if not isinstance(arg, list) or not arg:
                    raise _bad_filter(f"{where} needs a non-empty list of strings or numbers")
                if len(arg) > _MAX_IN_VALUES:
                    raise _bad_filter(f"{where} has {len(arg)} values; at most {_MAX_IN_VALUES}")
                values: list[str | int | float] = []
                for v in arg:
                    if isinstance(v, bool) or not isinstance(v, str | int | float):
                        raise _bad_filter(f"{where} takes strings and numbers, got {v!r}")
                    _check_scalar(v, where)
                    values.append(v)
                out.append(Condition(key, cast(Op, op), tuple(values)))
    return out


def delete_scope(ids: list[str] | None, has_filter: bool, namespace: str | None) -> bool:
    """Whether a delete has anything to do; refuses one that would empty a whole tenant."""
    if ids is None and not has_filter and namespace is None:
        raise MemoryError("delete needs ids, a filter or a namespace; "
                          "refusing to delete all of a tenant's memory")
    return ids is None or bool(ids)


def check_tenant(tenant: str) -> str:
    """A tenant name both backends accept: non-empty, not starting with ``__`` (reserved)."""
    if not isinstance(tenant, str) or not tenant:
        raise MemoryError("a tenant is required for every memory operation")
    if tenant.startswith("__"):
        raise MemoryError(f"tenant {tenant!r}: names starting with '__' are reserved")
    return tenant


NAMESPACE = re.compile(r"^[a-zA-Z0-9_.-]+$")
"""What a namespace may look like (as :class:`MemoryItem` enforces)."""


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not NAMESPACE.match(namespace):
        raise MemoryError(f"namespace {namespace!r}: use letters, digits, '_', '.' or '-'")
    return namespace


def check_vector(vector: Sequence[float], dimension: int | None) -> list[float]:
    """Finite, non-zero, and of the index's dimension when known."""
    if dimension is not None and len(vector) != dimension:
        raise DimensionMismatch(
            f"vector has {len(vector)} dimensions but the memory index stores {dimension}; "
            f"embed with the embedder the index was built with, or re-embed "
            f"(`stead memory reembed`)")
    values = [float(v) for v in vector]
    if not values or not all(math.isfinite(v) for v in values):
        raise MemoryError("vector must be non-empty and contain only finite numbers")
    if not any(values):
        raise MemoryError("vector is all zeros; cosine similarity is undefined for it")
    return values


def check_item(item: MemoryItem) -> None:
    """Checks both backends apply to an item before writing it."""
    check_tenant(item.tenant)
    for key, value in item.metadata.items():
        if not METADATA_KEY.match(key):
            raise MemoryError(
                f"item {item.id!r}: metadata key {key!r} is not a metadata name (a letter, then "
                f"up to 63 letters, digits, '_', '.' or '-')")
        if isinstance(value, float) and not math.isfinite(value):
            raise MemoryError(f"item {item.id!r}: metadata {key!r} is not a finite number")


def as_utc(dt: datetime) -> datetime:
    """Naive datetimes are taken as UTC, on both backends."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def dedupe(items: Iterable[tuple[MemoryItem, list[float]]]
           ) -> list[tuple[MemoryItem, list[float]]]:
    """Last write wins for repeated (tenant, namespace, id) within one upsert."""
    latest: dict[tuple[str, str, str], tuple[MemoryItem, list[float]]] = {}
    for item, vector in items:
        latest[(item.tenant, item.namespace, item.id)] = (item, vector)
    return list(latest.values())


# ---------------------------------------------------------------------------- SQL


class _Params:
    """Collects bound parameters and hands out their ``$n`` placeholders."""

    def __init__(self, *initial: object) -> None:
        self.values: list[object] = list(initial)

    def add(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _condition_sql(c: Condition, p: _Params) -> str:
    field = f"(metadata -> {p.add(c.key)}::text)"
    match c.op:
        case "$eq":
            return f"{field} = {p.add(json.dumps(c.value))}::text::jsonb"
        case "$ne":
            return f"{field} is distinct from {p.add(json.dumps(c.value))}::text::jsonb"
        case "$gt" | "$gte" | "$lt" | "$lte":
            sql_op = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[c.op]
            # CASE, not AND: PostgreSQL may evaluate AND's operands in any order, and the
            # cast must never see a string.
            return (f"(case when jsonb_typeof({field}) = 'number' then "
                    f"({field})::text::float8 {sql_op} {p.add(float(cast(float, c.value)))}"
                    f"::float8 else false end)")
        case "$in":
            return (f"coalesce({p.add(json.dumps(list(cast(tuple[Scalar, ...], c.value))))}"
                    f"::text::jsonb @> jsonb_build_array({field}), false)")
        case "$nin":
            return (f"not coalesce({p.add(json.dumps(list(cast(tuple[Scalar, ...], c.value))))}"
                    f"::text::jsonb @> jsonb_build_array({field}), false)")


def _where(p: _Params, conditions: list[Condition]) -> str:
    return "".join(f" and {_condition_sql(c, p)}" for c in conditions)


def _vector_text(values: list[float]) -> str:
    return "[" + ",".join(repr(v) for v in values) + "]"


_COLUMNS = ("tenant, namespace, id, agent, subject, text, metadata::text as metadata, embedder,"
            " created_at, expires_at")


def _item(row: asyncpg.Record) -> MemoryItem:
    return MemoryItem(
        id=row["id"], tenant=row["tenant"], namespace=row["namespace"], agent=row["agent"],
        subject=row["subject"], text=row["text"], metadata=json.loads(row["metadata"]),
        created_at=row["created_at"], expires_at=row["expires_at"], embedder=row["embedder"])


_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
)


@asynccontextmanager
async def _errors(what: str) -> AsyncIterator[None]:
    """Database failures as :class:`MemoryError`; dimension errors as DimensionMismatch."""
    try:
        yield
    except MemoryError:
        raise
    except asyncpg.UndefinedTableError as err:
        raise MemoryError(
            f"memory {what}: table stead_memory is missing; apply the migrations "
            f"(stead.ledger.migrate, run by `stead up` and the embedded stack)") from err
    except asyncpg.DataError as err:
        if "dimensions" in str(err):
            raise DimensionMismatch(
                f"memory {what}: {err}; the embedder's dimension differs from the index's, "
                f"re-embed with `stead memory reembed`") from err
        raise MemoryError(f"memory {what} failed: {err}") from err
    except _TRANSIENT as err:
        raise MemoryUnavailable(f"memory {what}: database unreachable: {type(err).__name__}: "
                                f"{err}") from err
    except asyncpg.PostgresError as err:
        raise MemoryError(f"memory {what} failed: {type(err).__name__}: {err}") from err


CHOSEN = "stead: dimension "
"""How the embedding column's comment starts once something chose its dimension: ``stead:
dimension chosen for openai:text-embedding-3-small:1536 at the first start,
2031-05-04T12:00:00Z`` (or ``by stead memory reembed``). No comment: the migrations' 384,
which nothing chose."""


def _check_dimension(dimension: int) -> None:
    if not isinstance(dimension, int) or isinstance(dimension, bool) or \
            not 1 <= dimension <= MAX_DIMENSION:
        raise MemoryError(
            f"dimension must be an integer within 1..{MAX_DIMENSION} (pgvector's HNSW "
            f"limit), got {dimension!r}; shorten the embeddings (STEAD_EMBEDDING_DIMENSION, "
            f"which text-embedding-3 models honour) or keep memory in Pinecone")


async def _column(conn: asyncpg.Connection) -> tuple[int | None, str | None]:
    """The embedding column's declared dimension, and its comment if stead wrote it."""
    row = await conn.fetchrow(
        "select a.atttypmod, col_description(a.attrelid, a.attnum) as comment"
        " from pg_attribute a where a.attrelid = to_regclass('stead_memory')"
        " and a.attname = 'embedding' and not a.attisdropped")
    if row is None:
        raise MemoryError(
            "memory table stead_memory is missing; apply the migrations "
            "(stead.ledger.migrate, run by `stead up` and the embedded stack)")
    typmod = int(row["atttypmod"])
    comment: str | None = row["comment"]
    return (typmod if typmod > 0 else None,
            comment if comment is not None and comment.startswith(CHOSEN) else None)


async def _retype(conn: asyncpg.Connection, dimension: int) -> None:
    """Column and HNSW index to ``vector(dimension)``, every vector cleared; the caller holds
    the table's lock in a transaction. DDL takes no bind parameters: ``dimension`` is a
    checked int."""
    await conn.execute("drop index if exists stead_memory_embedding")
    await conn.execute(f"alter table stead_memory alter column embedding type vector({dimension})"
                       f" using null::vector({dimension})")
    await conn.execute("create index stead_memory_embedding on stead_memory using hnsw"
                       " (embedding vector_cosine_ops) with (m = 16, ef_construction = 64)")


async def _mark(conn: asyncpg.Connection, dimension: int, embedder: str, by: str) -> str:
    """Record on the column what chose its dimension; returns the comment."""
    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    text = f"{CHOSEN}chosen for {embedder or 'an unnamed embedder'} ({dimension}) {by}, {at}"
    # COMMENT takes no bind parameters either: the server quotes the text (%L).
    await conn.execute(await conn.fetchval(
        "select format('comment on column stead_memory.embedding is %L', $1::text)", text))
    return text


class PgVectorStore:
    """:class:`~stead.storage.memory._types.VectorStore` on PostgreSQL with pgvector.

    ``ef_search`` is HNSW's candidate list size per query (pgvector's ``hnsw.ef_search``):
    higher is more accurate and slower; ``bench/memory.py`` measures the trade-off.
    """

    def __init__(self, pool: asyncpg.Pool, *, ef_search: int = 100) -> None:
        if not 1 <= ef_search <= _MAX_EF_SEARCH:
            raise ValueError(f"ef_search must be within 1..{_MAX_EF_SEARCH}, got {ef_search}")
        self.pool = pool
        self.ef_search = ef_search
        self.dimension: int | None = None
        """The column's dimension, known after :meth:`ensure`; vectors are checked against it."""
        self._owns_pool = False

    @classmethod
    async def connect(cls, dsn: str, *, ef_search: int = 100, min_size: int = 1,
                      max_size: int = 10) -> PgVectorStore:
        """A store with its own pool (closed by :meth:`close`)."""
        async with _errors("connect"):
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        assert pool is not None
        store = cls(pool, ef_search=ef_search)
        store._owns_pool = True
        return store

    async def close(self) -> None:
        """Close the pool if :meth:`connect` made it; a pool passed in stays open."""
        if self._owns_pool:
            await self.pool.close()

    # -------------------------------------------------------------------- dimension

    async def column_dimension(self) -> int | None:
        """The embedding column's declared dimension (None: the column has none)."""
        async with _errors("ensure"), self.pool.acquire() as conn:
            dimension, _ = await _column(conn)
        return dimension

    async def ensure(self, dimension: int, *, embedder: str = "",
                     owner_dsn: str | None = None) -> None:
        """Check the column holds ``dimension``-wide vectors, or make it so on a first start;
        DimensionMismatch, naming both dimensions and the fix, if not.

        Without ``owner_dsn`` this only checks. With it (the DSN of the tables' owner, the one
        role that may alter them), the first start claims the index for ``embedder``: if the
        table is empty and no one has chosen its dimension yet (the migrations' 384), the
        column becomes ``vector(dimension)``; either way its comment then records what chose
        the dimension (:data:`CHOSEN`). The claim holds an exclusive lock on the table, so of
        workers starting at once the first claims and the others find it done: with the same
        dimension they go on, with another they get DimensionMismatch.

        After that, and whenever the table holds items, the dimension changes only through
        :meth:`reset_dimension` (``stead memory reembed``), never implicitly, because that
        discards every vector.
        """
        _check_dimension(dimension)
        async with _errors("ensure"), self.pool.acquire() as conn:
            current, chosen = await _column(conn)
        if owner_dsn is not None and chosen is None:
            current, chosen = await self._claim(dimension, embedder, owner_dsn)
        if current != dimension:
            raise await self._mismatch(current, dimension, embedder, chosen,
                                       claimed=owner_dsn is not None)
        self.dimension = dimension

    async def _claim(self, dimension: int, embedder: str,
                     owner_dsn: str) -> tuple[int | None, str | None]:
        """The column's (dimension, chosen) after claiming it, as the owner, under the lock."""
        async with _errors("ensure"):
            conn = await asyncpg.connect(owner_dsn)
        try:
            async with _errors("ensure"):
                owns = await conn.fetchval(
                    "select pg_has_role(current_user, relowner, 'usage') from pg_class"
                    " where oid = to_regclass('stead_memory')")
                if not owns:
                    return await _column(conn)  # a least-privilege role: it can only check
                async with conn.transaction():
                    # Blocks every reader and writer until commit; only first starts get here.
                    await conn.execute("lock table stead_memory in access exclusive mode")
                    current, chosen = await _column(conn)
                    if chosen is not None:
                        return current, chosen  # another start claimed it while we waited
                    if current != dimension:
                        if await conn.fetchval("select exists (select from stead_memory)"):
                            return current, None  # items depend on it: not ours to change
                        await _retype(conn, dimension)
                    chosen = await _mark(conn, dimension, embedder, "at the first start")
                    return dimension, chosen
        finally:
            await conn.close()

    async def _mismatch(self, current: int | None, dimension: int, embedder: str,
                        chosen: str | None, *, claimed: bool) -> DimensionMismatch:
        """The error for an index of ``current`` dimensions met by a ``dimension`` embedder:
        what the index holds, and the fix."""
        async with _errors("ensure"), self.pool.acquire() as conn:
            rows = await conn.fetch(
                "select embedder, count(*) as n from stead_memory group by embedder"
                " order by n desc, embedder limit 4")
        held = sum(int(r["n"]) for r in rows)
        theirs = f"{current or 'undeclared'}-dimensional vectors"
        ours = f"the embedder{f' {embedder}' if embedder else ''} produces " \
               f"{dimension}-dimensional ones"
        if held:
            by = ", ".join(f"{r['n']} by {r['embedder'] or 'an unnamed embedder'}"
                           for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
            return DimensionMismatch(
                f"the pgvector memory index stores {theirs} ({by}) but {ours}. Re-embed the "
                f"memory with `stead memory reembed` (resets the column to vector({dimension}) "
                f"and embeds every item again), or configure the embedder they were made with "
                f"(STEAD_EMBEDDER, STEAD_EMBEDDING_MODEL, STEAD_EMBEDDING_DIMENSION)")
        why = (f"its dimension was {chosen.removeprefix(CHOSEN)}" if chosen else
               "an empty index takes the embedder's dimension only at a first start that may "
               "alter it (as the tables' owner, STEAD_MIGRATE_DATABASE_URL)" if not claimed else
               "the role of STEAD_MIGRATE_DATABASE_URL (else DATABASE_URL) does not own the "
               "table, so it may not alter it")
        return DimensionMismatch(
            f"the pgvector memory index is empty but stores {theirs}, and {ours}: {why}. Give "
            f"it {dimension} with `stead memory reembed` (as the tables' owner, with this "
            f"embedder's settings), or configure an embedder of dimension {current}")

    async def reset_dimension(self, dimension: int, *, embedder: str = "") -> None:
        """Make the column ``vector(dimension)`` for re-embedding with another embedder.

        Drops the HNSW index, clears every stored vector (items, texts and metadata stay;
        :meth:`stale_items` lists them for re-embedding), changes the column type, rebuilds
        the index and records ``embedder`` as what chose the dimension — in one transaction,
        so readers see either state.
        """
        _check_dimension(dimension)
        current = await self.column_dimension()
        if current != dimension:
            async with _errors("reset_dimension"), self.pool.acquire() as conn, \
                    conn.transaction():
                await conn.execute("lock table stead_memory in access exclusive mode")
                await _retype(conn, dimension)
                await _mark(conn, dimension, embedder, "by stead memory reembed")
        self.dimension = dimension

    async def stale_items(self, embedder: str, *, tenant: str | None = None,
                          limit: int = 500) -> list[MemoryItem]:
        """Items without a vector or embedded by another embedder: what re-embedding redoes.

        Upserting them with fresh vectors takes them off this list, so calling it in a loop
        until it is empty re-embeds everything.
        """
        p = _Params(embedder)
        tenant_sql = f" and tenant = {p.add(check_tenant(tenant))}" if tenant else ""
        sql = (f"select {_COLUMNS} from stead_memory where (embedding is null or embedder <> $1)"
               f"{tenant_sql} order by tenant, namespace, id limit {p.add(limit)}")
        async with _errors("stale_items"), self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *p.values)
        return [_item(r) for r in rows]

    # -------------------------------------------------------------------- writes

    async def upsert(self, items: list[tuple[MemoryItem, list[float]]]) -> None:
        """Insert or replace items by (tenant, namespace, id).

        An item without ``expires_at`` in a namespace with retention expires
        ``ttl_seconds`` after its ``created_at``.
        """
        if not items:
            return
        cols: list[list[object]] = [[] for _ in range(11)]
        for item, vector in dedupe(items):
            check_item(item)
            values = check_vector(vector, self.dimension)
            row = (item.tenant, item.namespace, item.id, item.agent or None,
                   item.subject or None, item.text, json.dumps(item.metadata),
                   _vector_text(values), item.embedder, as_utc(item.created_at),
                   as_utc(item.expires_at) if item.expires_at else None)
            for col, value in zip(cols, row, strict=True):
                col.append(value)
        async with _errors("upsert"), self.pool.acquire() as conn:
            await conn.execute(
                "insert into stead_memory as m (tenant, namespace, id, agent, subject, text,"
                " metadata, embedding, embedder, created_at, expires_at)"
                " select u.tenant, u.namespace, u.id, u.agent, u.subject, u.text,"
                "  u.metadata::jsonb, u.embedding::vector, u.embedder, u.created_at,"
                "  coalesce(u.expires_at, u.created_at + make_interval(secs => r.ttl_seconds))"
                " from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                "  $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],"
                "  $11::timestamptz[]) as u(tenant, namespace, id, agent, subject, text,"
                "  metadata, embedding, embedder, created_at, expires_at)"
                " left join stead_memory_namespaces r"
                "  on r.tenant = u.tenant and r.namespace = u.namespace"
                " on conflict (tenant, namespace, id) do update set agent = excluded.agent,"
                "  subject = excluded.subject, text = excluded.text,"
                "  metadata = excluded.metadata, embedding = excluded.embedding,"
                "  embedder = excluded.embedder, created_at = excluded.created_at,"
                "  expires_at = excluded.expires_at",
                *cols)

    async def set_retention(self, tenant: str, namespace: str,
                            ttl_seconds: int | None) -> None:
        """Keep items written to ``namespace`` from now on for ``ttl_seconds`` (None: forever).

        Items already stored keep their ``expires_at``.
        """
        check_tenant(tenant)
        check_namespace(namespace)
        async with _errors("set_retention"), self.pool.acquire() as conn:
            if ttl_seconds is None:
                await conn.execute(
                    "delete from stead_memory_namespaces where tenant = $1 and namespace = $2",
                    tenant, namespace)
                return
            if ttl_seconds <= 0:
                raise MemoryError(f"ttl_seconds must be positive, got {ttl_seconds}")
            await conn.execute(
                "insert into stead_memory_namespaces (tenant, namespace, ttl_seconds)"
                " values ($1, $2, $3) on conflict (tenant, namespace) do update set"
                " ttl_seconds = excluded.ttl_seconds, updated_at = now()",
                tenant, namespace, ttl_seconds)

    async def retention(self, tenant: str) -> dict[str, int]:
        """The tenant's retention: {namespace: ttl_seconds}."""
        check_tenant(tenant)
        async with _errors("retention"), self.pool.acquire() as conn:
            rows = await conn.fetch(
                "select namespace, ttl_seconds from stead_memory_namespaces where tenant = $1",
                tenant)
        return {r["namespace"]: r["ttl_seconds"] for r in rows}

    # -------------------------------------------------------------------- reads

    async def query(self, tenant: str, vector: list[float], *, top_k: int = 5,
                    namespace: str | None = None, agent: str | None = None,
                    filter: Filter | None = None, now: datetime | None = None) -> list[Hit]:
        check_tenant(tenant)
        if not 1 <= top_k <= MAX_TOP_K:
            raise MemoryError(f"top_k must be within 1..{MAX_TOP_K}, got {top_k}")
        conditions = parse_filter(filter)
        values = check_vector(vector, self.dimension)
        p = _Params(tenant, _vector_text(values), as_utc(now or datetime.now(UTC)))
        sql = ("select " + _COLUMNS + ", 1 - (embedding <=> $2::text::vector) as score"
               " from stead_memory where tenant = $1 and embedding is not null"
               " and (expires_at is null or expires_at > $3)")
        if namespace is not None:
            sql += f" and namespace = {p.add(namespace)}"
        if agent:
            sql += f" and (agent = {p.add(agent)} or agent is null)"
        sql += _where(p, conditions)
        sql += f" order by embedding <=> $2::text::vector limit {p.add(top_k)}"
        ef_search = min(_MAX_EF_SEARCH, max(self.ef_search, top_k))
        async with _errors("query"), self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select set_config('hnsw.ef_search', $1, true)", str(ef_search))
            rows = await conn.fetch(sql, *p.values)
            if len(rows) < top_k:
                # Short: HNSW's candidates may have been filtered away. Exact search instead.
                await conn.execute("set local enable_indexscan = off")
                rows = await conn.fetch(sql, *p.values)
        return [Hit(item=_item(r), score=float(r["score"])) for r in rows]

    async def stats(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """{"tenant/namespace": {"items": n}}, counting items not purged yet."""
        p = _Params()
        sql = "select tenant, namespace, count(*) as n from stead_memory"
        if tenant is not None:
            sql += f" where tenant = {p.add(check_tenant(tenant))}"
        sql += " group by tenant, namespace order by tenant, namespace"
        async with _errors("stats"), self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *p.values)
        return {f"{r['tenant']}/{r['namespace']}": {"items": int(r["n"])} for r in rows}

    # -------------------------------------------------------------------- deletes

    async def delete(self, tenant: str, *, ids: list[str] | None = None,
                     filter: Filter | None = None, namespace: str | None = None) -> int:
        """Delete the tenant's items matching all of ``ids``, ``filter`` and ``namespace``.

        At least one of them is required: a whole tenant is never deleted by omission.
        """
        check_tenant(tenant)
        conditions = parse_filter(filter)
        if not delete_scope(ids, bool(conditions), namespace):
            return 0
        p = _Params(tenant)
        sql = "delete from stead_memory where tenant = $1"
        if namespace is not None:
            sql += f" and namespace = {p.add(namespace)}"
        if ids is not None:
            sql += f" and id = any({p.add(list(ids))}::text[])"
        sql += _where(p, conditions)
        return await self._execute_count("delete", sql, p.values)

    async def delete_subject(self, tenant: str, subject: str) -> int:
        """Erase everything the tenant holds about ``subject`` (a user id), in every namespace."""
        check_tenant(tenant)
        if not subject:
            raise MemoryError("delete_subject needs a subject")
        return await self._execute_count(
            "delete_subject", "delete from stead_memory where tenant = $1 and subject = $2",
            [tenant, subject])

    async def purge_expired(self, now: datetime) -> int:
        """Delete every tenant's items whose ``expires_at`` is at or before ``now``."""
        return await self._execute_count(
            "purge_expired", "delete from stead_memory where expires_at <= $1", [as_utc(now)])

    async def _execute_count(self, what: str, sql: str, params: list[object]) -> int:
        async with _errors(what), self.pool.acquire() as conn:
            status = await conn.execute(sql, *params)
        # asyncpg returns the command tag, e.g. "DELETE 3".
        return int(status.rsplit(" ", 1)[-1])
