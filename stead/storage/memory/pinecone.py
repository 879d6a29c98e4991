"""Semantic memory in Pinecone, through the ``pinecone`` SDK's asyncio data-plane client.

    store = PineconeStore.connect(api_key=key, host="https://mem-abc123.svc.pinecone.io")
    await store.ensure(embedder.dimension)   # DimensionMismatch if the index differs
    hits = await store.query("acme", vector, top_k=5, filter={"kind": "runbook"})

The index is reached by its host, so only the data plane is used (no control-plane lookup).
It must be a dense index with the ``cosine`` or ``dotproduct`` metric: vectors are
normalised before they are sent, so both give cosine similarity.

Layout, chosen for isolation: the **Pinecone namespace is the tenant**, so a query can only
ever see one tenant's vectors, whatever its filter says. Everything else stead knows about an
item rides in metadata fields prefixed with ``_``, next to the item's own metadata (whose keys
must start with a letter, so they cannot collide)::

    _id _ns _agent _subject _text _embedder   strings ("" for no agent / subject)
    _created _expires                         epoch seconds (_expires far in the future
                                              for "never", so one range filter suffices)
    _ints                                     metadata keys whose values are integers

Vector ids are ``"<namespace>/<id>"`` (or ``"<namespace>#<sha256 of id>"`` when the id is
not ASCII or too long), so one id may exist in several stead namespaces, as on pgvector.
Per-namespace retention lives in the reserved Pinecone namespace ``__stead_config__``; tenant
names starting with ``__`` are refused on both backends.

Pinecone is eventually consistent: a write is visible to queries after a short delay (the
local fake server used in tests is immediate).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stead.storage.memory._types import (
    DimensionMismatch,
    Filter,
    Hit,
    MemoryError,
    MemoryItem,
    MemoryUnavailable,
)
from stead.storage.memory.pgvector import (
    MAX_TOP_K,
    Condition,
    as_utc,
    check_item,
    check_namespace,
    check_tenant,
    check_vector,
    dedupe,
    delete_scope,
    parse_filter,
)

if TYPE_CHECKING:
    from pinecone import AsyncIndex

__all__ = ["CONFIG_NAMESPACE", "NEVER", "PineconeStore", "to_pinecone_filter"]

CONFIG_NAMESPACE = "__stead_config__"
"""Pinecone namespace holding stead's own records (retention), never a tenant's."""

NEVER = 253402300799.0
"""``_expires`` of an item that never expires: 9999-12-31T23:59:59Z in epoch seconds."""

_MAX_METADATA_BYTES = 40_960  # Pinecone's limit per vector
_DELETE_BATCH = 1_000  # ids per delete request, Pinecone's limit
_UPSERT_BATCH = 100
_ID_LIMIT = 512

JsonFilter = dict[str, Any]
"""A filter in Pinecone's own grammar ($and, $or, $exists included)."""


def _vector_id(namespace: str, item_id: str) -> str:
    plain = f"{namespace}/{item_id}"
    if item_id.isascii() and "\x00" not in item_id and len(plain) <= _ID_LIMIT:
        return plain
    return f"{namespace}#{hashlib.sha256(item_id.encode()).hexdigest()}"


def _normalised(values: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in values))
    return [v / norm for v in values]


def _epoch(dt: datetime) -> float:
    return as_utc(dt).timestamp()


def _condition(c: Condition) -> JsonFilter:
    value: Any = list(c.value) if isinstance(c.value, tuple) else c.value
    if c.op in ("$ne", "$nin"):
        # Spelled out so that items lacking the key match, as on pgvector, whatever the
        # server's own convention for missing fields.
        return {"$or": [{c.key: {c.op: value}}, {c.key: {"$exists": False}}]}
    return {c.key: {c.op: value}}


def to_pinecone_filter(filter: Filter | None) -> list[JsonFilter]:
    """A validated stead filter as Pinecone filter clauses, to be combined with ``$and``."""
    return [_condition(c) for c in parse_filter(filter)]


def _and(clauses: list[JsonFilter]) -> JsonFilter:
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _metadata(item: MemoryItem, expires_at: datetime | None) -> dict[str, Any]:
    meta: dict[str, Any] = dict(item.metadata)
    ints = sorted(k for k, v in item.metadata.items()
                  if isinstance(v, int) and not isinstance(v, bool))
    meta.update({
        "_id": item.id, "_ns": item.namespace, "_agent": item.agent or "",
        "_subject": item.subject or "", "_text": item.text, "_embedder": item.embedder,
        "_created": _epoch(item.created_at),
        "_expires": _epoch(expires_at) if expires_at is not None else NEVER,
    })
    if ints:
        meta["_ints"] = ints
    size = len(json.dumps(meta, separators=(",", ":")).encode())
    if size > _MAX_METADATA_BYTES:
        raise MemoryError(
            f"item {item.id!r}: text and metadata take {size} bytes; Pinecone stores at most "
            f"{_MAX_METADATA_BYTES} bytes of metadata per vector — split the text")
    return meta


def _item(tenant: str, meta: dict[str, Any]) -> MemoryItem:
    ints = set(meta.get("_ints") or ())
    user = {k: (int(v) if k in ints and isinstance(v, float) else v)
            for k, v in meta.items() if not k.startswith("_")}
    expires = float(meta["_expires"])
    return MemoryItem(
        id=meta["_id"], tenant=tenant, namespace=meta["_ns"], agent=meta.get("_agent") or None,
        subject=meta.get("_subject") or None, text=meta["_text"], metadata=user,
        created_at=datetime.fromtimestamp(float(meta["_created"]), UTC),
        expires_at=None if expires >= NEVER else datetime.fromtimestamp(expires, UTC),
        embedder=meta.get("_embedder", ""))


def _retention_id(tenant: str, namespace: str) -> str:
    return "retention:" + hashlib.sha256(f"{tenant}\x00{namespace}".encode()).hexdigest()


@asynccontextmanager
async def _errors(what: str) -> AsyncIterator[None]:
    """SDK failures as :class:`MemoryError` (after the SDK's own retries of 429/5xx)."""
    from pinecone.errors.exceptions import PineconeError

    try:
        yield
    except MemoryError:
        raise
    except PineconeError as err:
        text = str(err)
        if "dimension" in text.lower():
            raise DimensionMismatch(
                f"memory {what}: Pinecone says: {text}; use an embedder of the index's "
                f"dimension, or an index of the embedder's") from err
        status = getattr(err, "status", None)
        kind = MemoryUnavailable if status in (429, 500, 502, 503, 504) else MemoryError
        raise kind(f"memory {what} failed: Pinecone {type(err).__name__}: {text}") from err


class PineconeStore:
    """:class:`~stead.storage.memory._types.VectorStore` on a Pinecone index (dense, serverless).

    ``dimension``: the index's, if known; otherwise :meth:`ensure` (or the first operation
    that needs it) reads it from ``describe_index_stats``.
    """

    def __init__(self, index: AsyncIndex, *, dimension: int | None = None) -> None:
        self.index = index
        self.dimension = dimension

    @classmethod
    def connect(cls, *, api_key: str, host: str, dimension: int | None = None,
                timeout: float = 30.0) -> PineconeStore:
        """A store on the index at ``host`` (the index's data-plane URL)."""
        from pinecone import AsyncIndex

        async_index = AsyncIndex(host=host, api_key=api_key, timeout=timeout,
                                 source_tag="stead")
        return cls(async_index, dimension=dimension)

    async def close(self) -> None:
        await self.index.close()

    # -------------------------------------------------------------------- dimension

    async def ensure(self, dimension: int, *, embedder: str = "") -> None:
        """Check the index's dimension and metric; DimensionMismatch on another dimension.

        A Pinecone index keeps the dimension it was created with, empty or not, so nothing is
        altered here: the error names the two ways out.
        """
        async with _errors("ensure"):
            stats = await self.index.describe_index_stats()
        if stats.vector_type not in (None, "dense"):
            raise MemoryError(f"Pinecone index is {stats.vector_type}; memory needs a dense index")
        if stats.metric not in (None, "cosine", "dotproduct"):
            raise MemoryError(f"Pinecone index uses the {stats.metric} metric; memory needs "
                              f"cosine (or dotproduct) to score by cosine similarity")
        if stats.dimension is not None and stats.dimension != dimension:
            raise DimensionMismatch(
                f"the Pinecone memory index stores {stats.dimension}-dimensional vectors but "
                f"the embedder{f' {embedder}' if embedder else ''} produces {dimension}-"
                f"dimensional ones, and a Pinecone index keeps the dimension it was created "
                f"with. Create an index of dimension {dimension} (cosine metric) and point "
                f"STEAD_PINECONE_HOST at it, or configure an embedder of dimension "
                f"{stats.dimension} (STEAD_EMBEDDER, STEAD_EMBEDDING_MODEL, "
                f"STEAD_EMBEDDING_DIMENSION)")
        self.dimension = dimension

    async def _dimension(self) -> int:
        if self.dimension is None:
            async with _errors("describe_index_stats"):
                stats = await self.index.describe_index_stats()
            if stats.dimension is None:
                raise MemoryError("Pinecone did not report the index's dimension; "
                                  "call ensure(dimension) first")
            self.dimension = stats.dimension
        return self.dimension

    async def _probe(self) -> list[float]:
        """A valid query vector for filter-only lookups (ranking is irrelevant there)."""
        return [1.0] + [0.0] * (await self._dimension() - 1)

    # -------------------------------------------------------------------- retention

    async def set_retention(self, tenant: str, namespace: str,
                            ttl_seconds: int | None) -> None:
        """Keep items written to ``namespace`` from now on for ``ttl_seconds`` (None: forever).

        Items already stored keep their expiry.
        """
        check_tenant(tenant)
        check_namespace(namespace)
        rid = _retention_id(tenant, namespace)
        async with _errors("set_retention"):
            if ttl_seconds is None:
                await self.index.delete(ids=[rid], namespace=CONFIG_NAMESPACE)
                return
            if ttl_seconds <= 0:
                raise MemoryError(f"ttl_seconds must be positive, got {ttl_seconds}")
            await self.index.upsert(
                vectors=[{"id": rid, "values": await self._probe(),
                          "metadata": {"_kind": "retention", "_tenant": tenant,
                                       "_ns": namespace, "_ttl": ttl_seconds}}],
                namespace=CONFIG_NAMESPACE)

    async def _retention(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        by_id = {_retention_id(t, ns): (t, ns) for t, ns in pairs}
        if not by_id:
            return {}
        async with _errors("retention"):
            found = await self.index.fetch(ids=list(by_id), namespace=CONFIG_NAMESPACE)
        return {by_id[vid]: int(v.metadata["_ttl"]) for vid, v in found.vectors.items()
                if vid in by_id and v.metadata and "_ttl" in v.metadata}

    async def retention(self, tenant: str) -> dict[str, int]:
        """The tenant's retention: {namespace: ttl_seconds}."""
        check_tenant(tenant)
        found: dict[str, int] = {}
        async with _errors("retention"):
            page = await self.index.query(
                top_k=MAX_TOP_K, vector=await self._probe(), namespace=CONFIG_NAMESPACE,
                filter={"_tenant": {"$eq": tenant}}, include_metadata=True)
        for m in page.matches:
            if m.metadata and m.metadata.get("_tenant") == tenant:
                found[m.metadata["_ns"]] = int(m.metadata["_ttl"])
        return found

    # -------------------------------------------------------------------- writes

    async def upsert(self, items: list[tuple[MemoryItem, list[float]]]) -> None:
        """Insert or replace items; retention of their namespace applies as on pgvector."""
        if not items:
            return
        dimension = await self._dimension()
        unique = dedupe(items)
        for item, _ in unique:
            check_item(item)
        ttl = await self._retention({(i.tenant, i.namespace) for i, _ in unique
                                     if i.expires_at is None})
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for item, vector in unique:
            values = _normalised(check_vector(vector, dimension))
            expires = item.expires_at
            if expires is None and (item.tenant, item.namespace) in ttl:
                expires = datetime.fromtimestamp(
                    _epoch(item.created_at) + ttl[(item.tenant, item.namespace)], UTC)
            by_tenant.setdefault(item.tenant, []).append({
                "id": _vector_id(item.namespace, item.id), "values": values,
                "metadata": _metadata(item, expires)})
        for tenant, vectors in by_tenant.items():
            async with _errors("upsert"):
                result = await self.index.upsert(vectors=vectors, namespace=tenant,
                                                 batch_size=_UPSERT_BATCH, show_progress=False)
            if result.has_errors:
                why = result.errors[0].error_message
                error = DimensionMismatch if "dimension" in why.lower() else MemoryError
                raise error(f"memory upsert: {result.failed_item_count} of {len(vectors)} "
                            f"items not written; Pinecone says: {why}")

    # -------------------------------------------------------------------- reads

    async def query(self, tenant: str, vector: list[float], *, top_k: int = 5,
                    namespace: str | None = None, agent: str | None = None,
                    filter: Filter | None = None, now: datetime | None = None) -> list[Hit]:
        check_tenant(tenant)
        if not 1 <= top_k <= MAX_TOP_K:
            raise MemoryError(f"top_k must be within 1..{MAX_TOP_K}, got {top_k}")
        user = to_pinecone_filter(filter)
        values = _normalised(check_vector(vector, await self._dimension()))
        clauses: list[JsonFilter] = [
            {"_expires": {"$gt": _epoch(now or datetime.now(UTC))}}]
        if namespace is not None:
            clauses.append({"_ns": {"$eq": namespace}})
        if agent:
            clauses.append({"_agent": {"$in": [agent, ""]}})
        async with _errors("query"):
            result = await self.index.query(
                top_k=top_k, vector=values, namespace=tenant, filter=_and(clauses + user),
                include_metadata=True)
        return [Hit(item=_item(tenant, m.metadata), score=float(m.score))
                for m in result.matches if m.metadata and "_id" in m.metadata]

    async def _tenants(self) -> list[str]:
        async with _errors("describe_index_stats"):
            stats = await self.index.describe_index_stats()
        return sorted(ns for ns in stats.namespaces if ns and not ns.startswith("__"))

    async def stats(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """{"tenant/namespace": {"items": n}}, counting items not purged yet.

        Lists the tenant's vector ids (100 per request), so it is an admin operation.
        """
        tenants = [check_tenant(tenant)] if tenant is not None else await self._tenants()
        counts: dict[str, dict[str, int]] = {}
        for t in tenants:
            per_ns: dict[str, int] = {}
            token: str | None = None
            while True:
                async with _errors("stats"):
                    page = await self.index.list_paginated(namespace=t, limit=100,
                                                           pagination_token=token)
                for entry in page.vectors:
                    # Namespaces never contain "/" or "#": the first one ends the namespace.
                    vid = entry.id or ""
                    cuts = [i for i in (vid.find("/"), vid.find("#")) if i > 0]
                    if cuts:
                        ns = vid[:min(cuts)]
                        per_ns[ns] = per_ns.get(ns, 0) + 1
                token = page.pagination.next if page.pagination else None
                if not token:
                    break
            for ns in sorted(per_ns):
                counts[f"{t}/{ns}"] = {"items": per_ns[ns]}
        return counts

    # -------------------------------------------------------------------- deletes

    async def _delete_matching(self, tenant: str, flt: JsonFilter, what: str) -> int:
        """Delete every vector of ``tenant`` that ``flt`` admits; how many there were.

        Ids are collected with filtered queries (ids only, up to 10 000 per round) and deleted
        by id, so the count is exact and a match set larger than one page is handled.
        """
        probe = await self._probe()
        deleted: set[str] = set()
        while True:
            async with _errors(what):
                page = await self.index.query(top_k=MAX_TOP_K, vector=probe, namespace=tenant,
                                              filter=flt)
            fresh = [m.id for m in page.matches if m.id not in deleted]
            if not fresh:
                break
            for start in range(0, len(fresh), _DELETE_BATCH):
                async with _errors(what):
                    await self.index.delete(ids=fresh[start:start + _DELETE_BATCH],
                                            namespace=tenant)
            deleted.update(fresh)
            if len(page.matches) < MAX_TOP_K:
                break
        return len(deleted)

    async def delete(self, tenant: str, *, ids: list[str] | None = None,
                     filter: Filter | None = None, namespace: str | None = None) -> int:
        """Delete the tenant's items matching all of ``ids``, ``filter`` and ``namespace``.

        At least one of them is required: a whole tenant is never deleted by omission.
        """
        check_tenant(tenant)
        user = to_pinecone_filter(filter)
        if not delete_scope(ids, bool(user), namespace):
            return 0
        clauses: list[JsonFilter] = [{"_ns": {"$eq": namespace}}] if namespace is not None \
            else [{"_ns": {"$exists": True}}]
        if ids is None:
            return await self._delete_matching(tenant, _and(clauses + user), "delete")
        total = 0
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), MAX_TOP_K):
            chunk = {"_id": {"$in": unique[start:start + MAX_TOP_K]}}
            total += await self._delete_matching(tenant, _and([*clauses, chunk, *user]),
                                                 "delete")
        return total

    async def delete_subject(self, tenant: str, subject: str) -> int:
        """Erase everything the tenant holds about ``subject`` (a user id), in every namespace."""
        check_tenant(tenant)
        if not subject:
            raise MemoryError("delete_subject needs a subject")
        return await self._delete_matching(tenant, {"_subject": {"$eq": subject}},
                                           "delete_subject")

    async def purge_expired(self, now: datetime) -> int:
        """Delete every tenant's items whose expiry is at or before ``now``."""
        flt = {"_expires": {"$lte": _epoch(now)}}
        total = 0
        for tenant in await self._tenants():
            total += await self._delete_matching(tenant, flt, "purge_expired")
        return total
