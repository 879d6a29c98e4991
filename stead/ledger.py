"""The ledger: runs, model calls, tool calls and decisions in PostgreSQL (asyncpg).

    ledger = await Ledger.connect(dsn, redactor=Redactor.from_settings(settings))
    claim = await ledger.claim_tool(...)
    trail = await ledger.trail(workflow_id, tenant="acme")   # never another tenant's rows

Every text and JSON value is redacted on the way in (``stead.secrets.Redactor``: known secret
values, credential and personal-data patterns), so no table holds a secret. A decision row
whose content redaction changed is re-chained by the ledger (see :meth:`append_decisions`).
Writes are keyed so that a retried activity writes once. Operations that fail because the
database is unreachable are retried inside the call for ``retry_seconds`` (the database
coming back is an infrastructure matter and must not use up a tool's own retry budget).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, Literal, TypeVar

import asyncpg

from stead.audit import GENESIS, canonical, chain_hash
from stead.errors import LedgerError, SettingsError
from stead.models import DecisionRow
from stead.secrets import DEFAULT_REDACTOR, Redactor

T = TypeVar("T")
J = TypeVar("J")

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


async def retrying(pool: asyncpg.Pool, op: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   seconds: float, on_wait: Callable[[], None] | None,
                   fail: Callable[[str], Exception]) -> T:
    """Run ``op`` on a pooled connection, retrying while PostgreSQL is unreachable (with
    backoff, heartbeating through ``on_wait``) for up to ``seconds``; then raise
    ``fail("<seconds>s: <error>")``. Shared by the ledger and the blob store."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            async with pool.acquire() as conn:
                return await op(conn)
        except _TRANSIENT as err:
            if time.monotonic() + delay > deadline:
                raise fail(f"{seconds:.0f}s: {type(err).__name__}: {err}") from err
            if on_wait is not None:
                on_wait()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)



async def migrate(dsn: str) -> list[str]:
    """Apply the versioned SQL files in ``stead/migrations`` once each; return those applied."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    pending = "every migration"
    try:
        # One migrator at a time across processes.
        await conn.execute("select pg_advisory_lock(7265616401)")
        # Created only when missing, so that a least-privilege worker role (which may not
        # create tables) passes through an up-to-date database.
        if await conn.fetchval("select to_regclass('stead_schema_migrations')") is None:
            await conn.execute(
                "create table stead_schema_migrations ("
                " version integer primary key, name text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
        done = {r["version"]: r["checksum"] for r in
                await conn.fetch("select version, checksum from stead_schema_migrations")}
        files = sorted(
            (f for f in resources.files("stead.migrations").iterdir()
             if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        for f in files:
            version = int(f.name.split("_", 1)[0])
            sql = f.read_text()
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise LedgerError(
                        f"migration {f.name} changed after it was applied "
                        f"(checksum {done[version][:12]} -> {checksum[:12]}); "
                        f"add a new migration file instead"
                    )
                continue
            pending = f.name
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "insert into stead_schema_migrations(version, name, checksum)"
                    " values($1, $2, $3)", version, f.name, checksum)
            applied.append(f.name)
    except asyncpg.InsufficientPrivilegeError as err:
        role = await conn.fetchval("select current_user")
        # A migration's own hint (0006: the owner lacks CREATEROLE) knows the fix better.
        fix = err.hint or (
            "Apply them as the ledger's owner: set STEAD_MIGRATE_DATABASE_URL to the owner's "
            "DSN (DATABASE_URL stays the worker's), or run `stead db migrate` with it")
        raise SettingsError(f"role {role!r} may not apply migrations ({pending} is pending: "
                            f"{err.message}). {fix}") from None
    finally:
        await conn.execute("select pg_advisory_unlock(7265616401)")
        await conn.close()
    return applied


ABANDONED = ("abandoned: the run ended without an outcome for this call (its last attempt "
             "timed out or its worker was lost)")
"""Error of a tool call that was still unresolved when its run finished."""


@dataclass(frozen=True)
class Claim:
    """Result of claiming an idempotency key before a tool's side effect."""

    kind: Literal["new", "completed", "unknown", "retry", "failed"]
    """``new``: first attempt; ``retry``: an earlier attempt failed cleanly;
    ``completed``: the key already has a result; ``unknown``: an earlier attempt started and
    never reported (its worker died) — the side effect may or may not have happened;
    ``failed``: a final failure is on record (its report to Temporal was lost) — answer with
    it again, never run the tool again."""
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None
    """For ``failed``: the recorded error message."""
    error_type: str | None = None
    """For ``failed``: the recorded error type (e.g. ``ToolOutcomeUnknown``)."""


_canonical = canonical


class Ledger:
    """A connection pool plus the ledger's operations."""

    def __init__(self, pool: asyncpg.Pool, *, retry_seconds: float = 30.0,
                 redactor: Redactor = DEFAULT_REDACTOR) -> None:
        self.pool = pool
        self.retry_seconds = retry_seconds
        self.redactor = redactor
        self._store = _Storable(redactor)
        """Applied to every value written; the default knows patterns, not secret values."""

    def redacting(self, redactor: Redactor) -> Ledger:
        """This ledger (same pool) writing through ``redactor``: a worker's settings add their
        secret values and patterns to a ledger built before them."""
        return Ledger(self.pool, retry_seconds=self.retry_seconds, redactor=redactor)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10,
                      retry_seconds: float = 30.0,
                      redactor: Redactor = DEFAULT_REDACTOR) -> Ledger:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                             init=_init_connection)
        except _TRANSIENT as err:
            raise LedgerError(f"cannot connect to the ledger database: {err}") from err
        assert pool is not None
        return cls(pool, retry_seconds=retry_seconds, redactor=redactor)

    async def close(self) -> None:
        await self.pool.close()

    async def _retrying(self, op: Callable[[asyncpg.Connection], Awaitable[T]],
                        on_wait: Callable[[], None] | None = None) -> T:
        return await retrying(self.pool, op, seconds=self.retry_seconds, on_wait=on_wait,
                              fail=lambda why: LedgerError(f"ledger unavailable for {why}"))

    # ----------------------------------------------------------------------- runs

    async def start_run(self, *, workflow_id: str, run_id: str, agent: str, tenant: str,
                        user: str | None, input: str, metadata: dict[str, str], model: str,
                        on_wait: Callable[[], None] | None = None) -> None:
        red = self._store
        user, input, metadata = red.optional(user), red.text(input), red.value(metadata)

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_runs(workflow_id, run_id, agent, tenant, user_id, input,"
                " metadata, model) values($1,$2,$3,$4,$5,$6,$7,$8)"
                " on conflict (workflow_id, run_id) do nothing",
                workflow_id, run_id, agent, tenant, user, input, metadata, model)
        await self._retrying(op, on_wait)

    async def finish_run(self, *, workflow_id: str, run_id: str, status: str,
                         answer: str | None, error: str | None, steps: int,
                         result: dict[str, Any],
                         on_wait: Callable[[], None] | None = None) -> None:
        red = self._store
        answer, error, result = red.optional(answer), red.optional(error), red.value(result)

        async def op(c: asyncpg.Connection) -> None:
            async with c.transaction():
                await c.execute(
                    "update stead_runs set status=$3, answer=$4, error=$5, steps=$6, result=$7,"
                    " finished_at=coalesce(finished_at, now())"
                    " where workflow_id=$1 and run_id=$2",
                    workflow_id, run_id, status, answer, error, steps, result)
                # A call the run gave up on (its last attempt timed out, or its worker was
                # lost) would read 'running' forever: close it and say why. A late attempt
                # that still finishes records its own outcome over this.
                await c.execute(
                    "update stead_tool_calls set status='failed', finished_at=now(),"
                    " error=coalesce(error, $3)"
                    " where workflow_id=$1 and run_id=$2 and status in ('running','open')",
                    workflow_id, run_id, ABANDONED)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- model calls

    async def record_model_call(self, *, workflow_id: str, run_id: str, step: int, attempt: int,
                                model: str, status: str, finish_reason: str | None,
                                tool_calls: list[dict[str, Any]], content: str | None,
                                error: str | None, input_tokens: int, output_tokens: int,
                                duration_ms: float,
                                on_wait: Callable[[], None] | None = None) -> None:
        red = self._store
        tool_calls, content, error = red.value(tool_calls), red.optional(content), \
            red.optional(error)

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_model_calls(workflow_id, run_id, step, attempt, model, status,"
                " finish_reason, tool_calls, content, error, input_tokens, output_tokens,"
                " duration_ms) values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
                " on conflict do nothing",
                workflow_id, run_id, step, attempt, model, status, finish_reason, tool_calls,
                content, error, input_tokens, output_tokens, duration_ms)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- tool calls

    async def claim_tool(self, *, key: str, workflow_id: str, run_id: str, step: int,
                         call_id: str, tool: str, requested_tool: str,
                         arguments: dict[str, Any], attempt: int,
                         on_wait: Callable[[], None] | None = None) -> Claim:
        """Claim ``key`` and log this attempt, in one round trip."""
        arguments = self._store.value(arguments)

        async def op(c: asyncpg.Connection) -> Claim:
            row = await c.fetchrow(
                "with claim as ("
                " insert into stead_tool_calls(idempotency_key, workflow_id, run_id, step,"
                "  call_id, tool, arguments, status, attempts)"
                " values($1,$2,$3,$4,$5,$6,$7,'running',1)"
                " on conflict (idempotency_key) do update set"
                "  prev_status = stead_tool_calls.status,"
                "  status = case when stead_tool_calls.status in ('completed','failed')"
                "           then stead_tool_calls.status else 'running' end,"
                "  attempts = stead_tool_calls.attempts + 1"
                " returning status, prev_status, attempts, result, error,"
                "  (xmax = 0) as inserted),"
                " att as ("
                " insert into stead_tool_attempts(idempotency_key, attempt, workflow_id, run_id,"
                "  step, tool, requested_tool, status)"
                " values($1,$8,$2,$3,$4,$6,$9,'running') on conflict do nothing)"
                " select claim.*, (select a.error_type from stead_tool_attempts a"
                "  where a.idempotency_key=$1 and a.status='error'"
                "  order by a.attempt desc limit 1) as error_type from claim",
                key, workflow_id, run_id, step, call_id, tool, arguments, attempt,
                requested_tool)
            assert row is not None
            if row["inserted"]:
                return Claim("new", 1)
            prev = row["prev_status"]
            if prev == "completed":
                return Claim("completed", row["attempts"], row["result"])
            if prev == "running":
                return Claim("unknown", row["attempts"])
            if prev == "failed":
                return Claim("failed", row["attempts"], error=row["error"],
                             error_type=row["error_type"])
            return Claim("retry", row["attempts"])
        return await self._retrying(op, on_wait)

    async def finish_tool(self, *, key: str, attempt: int,
                          outcome: Literal["ok", "error", "replayed", "reconciled"],
                          result: dict[str, Any] | None = None, error_type: str | None = None,
                          error: str | None = None, final: bool = False,
                          duration_ms: float | None = None,
                          on_wait: Callable[[], None] | None = None) -> None:
        """Record an attempt's outcome; ``final`` marks a failure that will not be retried."""
        if outcome in ("ok", "replayed", "reconciled"):
            call_status = "completed"
        else:
            call_status = "failed" if final else "open"
        result, error = self._store.value(result), self._store.optional(error)

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "with call as ("
                " update stead_tool_calls set status=$3,"
                "  result=coalesce($4, result), error=$6,"
                "  finished_at=case when $3 in ('completed','failed') then now() end"
                " where idempotency_key=$1 and status <> 'completed')"
                " update stead_tool_attempts set status=$7, error_type=$5, error=$6,"
                "  duration_ms=$8 where idempotency_key=$1 and attempt=$2",
                key, attempt, call_status, result, error_type, error, outcome, duration_ms)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- decisions

    async def append_decisions(self, rows: list[DecisionRow],
                               on_wait: Callable[[], None] | None = None) -> None:
        """Store audit rows built by a workflow (idempotent: a retried write adds nothing).

        The workflow hashed each row as it decided, secrets and all. When redaction changes a
        row, the ledger stores the redacted row re-chained: ``prev_hash`` is the stored hash of
        the row before, ``hash`` covers the stored content, and ``data["_ledger"]`` keeps the
        workflow's hash (``source_hash``), so the chain verifies from stored rows alone and
        still ends at the head the run recorded. Rows after a re-chained one are re-linked
        the same way. Deterministic, so concurrent writers of one batch store the same rows."""
        if not rows:
            return
        red = self._store
        clean = [(r, r.model_copy(update={"reason": red.text(r.reason),
                                          "actor": red.text(r.actor),
                                          "data": red.value(r.data)})) for r in rows]

        async def op(c: asyncpg.Connection) -> None:
            async with c.transaction():
                args = []
                for group in _by_run(clean):
                    for r in await _chained(c, group):
                        args.append((r.workflow_id, r.seq, r.run_id, r.step, r.kind, r.decision,
                                     r.reason, r.actor, r.policy, r.data,
                                     f"{r.workflow_id}:{r.run_id}:{r.seq}", r.at, r.prev_hash,
                                     r.hash))
                await c.executemany(
                    "insert into stead_decisions(workflow_id, seq, run_id, step, kind, decision,"
                    " reason, actor, policy, data, dedupe_key, created_at, prev_hash, hash)"
                    " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
                    " on conflict do nothing", args)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- memory

    async def record_memory_op(self, *, workflow_id: str, run_id: str, step: int, op: str,
                               tenant: str, namespaces: list[str], query: str | None,
                               item_ids: list[str], scores: list[float], embedder: str,
                               backend: str, duration_ms: float,
                               on_wait: Callable[[], None] | None = None) -> None:
        query = self._store.optional(query)

        async def op_(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_memory_ops(workflow_id, run_id, step, op, tenant, namespaces,"
                " query, item_ids, scores, embedder, backend, duration_ms)"
                " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) on conflict do nothing",
                workflow_id, run_id, step, op, tenant, namespaces, query, item_ids, scores,
                embedder, backend, duration_ms)
        await self._retrying(op_, on_wait)

    # ----------------------------------------------------------------------- reads

    # Reads take an optional tenant: given, only runs of that tenant (and their rows) exist.
    # Child tables carry no tenant; they are scoped through their run in stead_runs.

    async def run_ids(self, workflow_id: str, *, tenant: str | None = None) -> list[str]:
        async def op(c: asyncpg.Connection) -> list[str]:
            rows = await c.fetch(
                "select run_id from stead_runs where workflow_id=$1"
                " and ($2::text is null or tenant=$2) order by started_at",
                workflow_id, tenant)
            return [r["run_id"] for r in rows]
        return await self._retrying(op)

    async def trail(self, workflow_id: str, *,
                    tenant: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Everything the ledger holds about a workflow, oldest first (of ``tenant`` only)."""
        q = {
            "runs": "select * from stead_runs where workflow_id=$1"
                    " and ($2::text is null or tenant=$2) order by started_at",
            "model_calls": f"select * from stead_model_calls where workflow_id=$1 {_SCOPED}"
                           " order by step, attempt",
            "tool_calls": f"select * from stead_tool_calls where workflow_id=$1 {_SCOPED}"
                          " order by step, claimed_at",
            "tool_attempts": f"select * from stead_tool_attempts where workflow_id=$1 {_SCOPED}"
                             " order by step, started_at, attempt",
            "decisions": f"select * from stead_decisions where workflow_id=$1 {_SCOPED}"
                         " order by seq",
            "memory_ops": f"select * from stead_memory_ops where workflow_id=$1 {_SCOPED}"
                          " order by created_at",
        }
        async def op(c: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
            return {name: [dict(r) for r in await c.fetch(sql, workflow_id, tenant)]
                    for name, sql in q.items()}
        return await self._retrying(op)

    async def verify_chain(self, workflow_id: str, *, tenant: str | None = None) -> list[str]:
        """Recompute each run's decision hash chain; return the problems (empty: intact).

        Checks links and contents, and that each finished run's chain ends at the head its
        result recorded (so deleting the newest rows shows too). A row the ledger re-chained
        after redaction ends the chain at the head through its ``source_hash``."""
        async def op(c: asyncpg.Connection) -> list[Any]:
            return list(await c.fetch(
                f"select * from stead_decisions where workflow_id=$1 {_SCOPED}"
                " order by run_id, seq", workflow_id, tenant))
        rows = await self._retrying(op)
        heads = {r["run_id"]: (r["result"] or {}).get("audit_head")
                 for r in await self._retrying(lambda c: c.fetch(
                     "select run_id, result from stead_runs where workflow_id=$1"
                     " and ($2::text is null or tenant=$2)", workflow_id, tenant))}
        problems: list[str] = []
        by_run: dict[str, list[Any]] = {run_id: [] for run_id, h in heads.items() if h}
        for r in rows:
            by_run.setdefault(r["run_id"], []).append(r)
        for run_id, chain in by_run.items():
            prev = GENESIS
            for i, r in enumerate(chain, start=1):
                where = f"run {run_id[:8]} seq {r['seq']}"
                if r["seq"] != i:
                    problems.append(f"{where}: expected seq {i} (a decision is missing)")
                if r["prev_hash"] != prev:
                    problems.append(f"{where}: prev_hash does not match the previous hash")
                if chain_hash(r["prev_hash"], dict(r)) != r["hash"]:
                    problems.append(f"{where}: hash mismatch (row altered)")
                prev = r["hash"]
            head = heads.get(run_id)
            if head and prev != head and _source_hash(chain[-1] if chain else None) != head:
                problems.append(f"run {run_id[:8]}: chain ends at {prev[:12]}, but the run "
                                f"recorded head {head[:12]} (newest decisions missing)")
        return problems


class _Storable:
    """What a ledger write stores: redacted (``Redactor``), then storable by PostgreSQL.

    NUL characters, which ``text`` and ``jsonb`` cannot hold, become U+FFFD. JSON numbers take
    the form ``jsonb`` gives them back in (``1e+16`` -> ``10000000000000000``, ``-0.0`` ->
    ``0.0``), and NaN and infinities, which JSON cannot hold, become strings; so a hash over
    what is stored verifies when read back, and no value makes a write fail on every retry."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def text(self, s: str) -> str:
        return self._redactor.text(s).replace("\x00", "\ufffd")

    def optional(self, s: str | None) -> str | None:
        return None if s is None else self.text(s)

    def value(self, v: J) -> J:
        stored: J = _jsonb(self._redactor.value(v))
        return stored


def _jsonb(v: Any) -> Any:
    if isinstance(v, str):
        return v.replace("\x00", "\ufffd")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return 0.0
        text = repr(v)  # PostgreSQL's numeric prints 1e+16 without an exponent, as an integer
        return int(Decimal(text)) if "e+" in text else v
    if isinstance(v, dict):
        return {_jsonb(k): _jsonb(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonb(x) for x in v]
    return v


_SCOPED = ("and ($2::text is null or run_id in (select run_id from stead_runs"
           " where workflow_id=$1 and tenant=$2))")
"""Restricts a child table's rows of workflow $1 to runs of tenant $2 (null: every tenant)."""


def _by_run(pairs: list[tuple[DecisionRow, DecisionRow]],
            ) -> list[list[tuple[DecisionRow, DecisionRow]]]:
    """(original, redacted) pairs grouped by run, each group in seq order."""
    groups: dict[tuple[str, str], list[tuple[DecisionRow, DecisionRow]]] = {}
    for pair in pairs:
        groups.setdefault((pair[0].workflow_id, pair[0].run_id), []).append(pair)
    return [sorted(g, key=lambda p: p[0].seq) for g in groups.values()]


async def _chained(c: asyncpg.Connection,
                   group: list[tuple[DecisionRow, DecisionRow]]) -> list[DecisionRow]:
    """The rows of one run to insert, linked to what is stored (see ``append_decisions``)."""
    first, last = group[0][0], group[-1][0]
    stored = {r["seq"]: r["hash"] for r in await c.fetch(
        "select seq, hash from stead_decisions where workflow_id=$1 and run_id=$2"
        " and seq between $3 and $4", first.workflow_id, first.run_id, first.seq - 1, last.seq)}
    prev = GENESIS if first.seq == 1 else stored.get(first.seq - 1)
    out: list[DecisionRow] = []
    for original, clean in group:
        if original.seq in stored:  # written by an earlier attempt: keep it, link to it
            prev = stored[original.seq]
            continue
        # A missing predecessor (a gap verify_chain reports) keeps the workflow's own link.
        link = original.prev_hash if prev is None else prev
        # Compared as stored JSON, not as Python values: 1e16 == 10000000000000000 in Python,
        # but jsonb gives back the integer, so the hash must cover that.
        same = canonical(clean.model_dump()) == canonical(original.model_dump())
        if same and link == original.prev_hash:
            row = original
        else:
            data = {**clean.data, "_ledger": {"source_hash": original.hash,
                                              "redacted": not same}}
            row = clean.model_copy(update={"data": data, "prev_hash": link})
            row = row.model_copy(update={"hash": chain_hash(link, row.model_dump())})
        out.append(row)
        prev = row.hash
    return out


def _source_hash(row: Any) -> str | None:
    """The workflow's hash of a row the ledger re-chained (None for rows stored as built)."""
    data = row["data"] if row is not None else None
    meta = data.get("_ledger") if isinstance(data, dict) else None
    value = meta.get("source_hash") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_canonical, decoder=json.loads,
                                  schema="pg_catalog")
