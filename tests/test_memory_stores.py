"""Both vector stores pass one behaviour suite: pgvector on the session's real PostgreSQL,
Pinecone through the real ``pinecone`` SDK against a local fake index server.

Every test uses a fresh tenant, so tests never see each other's items on the shared database.
The isolation tests play a hostile tenant B that knows tenant A's vectors, ids, subject and
agent names and tries filters, SQL-ish keys and ``$or`` tricks to reach them.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import migrate
from stead.storage.memory._types import DimensionMismatch, Filter, Hit, MemoryError, MemoryItem
from stead.storage.memory.pgvector import PgVectorStore
from stead.storage.memory.pinecone import PineconeStore
from stead.testing.pinecone_server import FakePineconeServer, PineconeFault

DIM = 384
API_KEY = "test-pinecone-key"
T0 = datetime(2031, 5, 4, 12, 0, 0, tzinfo=UTC)
"""created_at of test items (whole seconds: Pinecone keeps epoch floats)."""

Store = PgVectorStore | PineconeStore


@dataclass
class Backend:
    name: str
    store: Store
    server: FakePineconeServer | None = None


@pytest.fixture(params=["pgvector", "pinecone"])
async def backend(request: pytest.FixtureRequest,
                  stack: EmbeddedStack) -> AsyncIterator[Backend]:
    if request.param == "pgvector":
        pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=4)
        assert pool is not None
        store = PgVectorStore(pool, ef_search=100)
        await store.ensure(DIM)
        try:
            yield Backend("pgvector", store)
        finally:
            await pool.close()
    else:
        async with FakePineconeServer(dimension=DIM, api_key=API_KEY) as server:
            pstore = PineconeStore.connect(api_key=API_KEY, host=server.host)
            await pstore.ensure(DIM)
            try:
                yield Backend("pinecone", pstore, server)
            finally:
                await pstore.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def vec(*weights: float) -> list[float]:
    """A DIM-wide vector with the given leading components (the rest zero)."""
    return [*weights, *([0.0] * (DIM - len(weights)))]


def item(tenant_: str, id_: str, *, namespace: str = "default", agent: str | None = None,
         subject: str | None = None, text: str | None = None,
         metadata: dict[str, str | int | float | bool] | None = None,
         created_at: datetime = T0, expires_at: datetime | None = None) -> MemoryItem:
    return MemoryItem(id=id_, tenant=tenant_, namespace=namespace, agent=agent, subject=subject,
                      text=text or f"text of {id_}", metadata=metadata or {},
                      created_at=created_at, expires_at=expires_at, embedder="test-embedder")


async def ids_of(store: Store, tenant_: str, vector: list[float] | None = None,
                 **kwargs: Any) -> list[str]:
    hits = await store.query(tenant_, vector or vec(1.0), top_k=kwargs.pop("top_k", 50),
                             now=kwargs.pop("now", T0), **kwargs)
    return [h.item.id for h in hits]


# ---------------------------------------------------------------------------- basics


async def test_upsert_then_query_ranks_by_cosine_similarity(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([
        (item(t, "far"), vec(1.0, 2.0)),
        (item(t, "near", metadata={"step": 3, "ratio": 0.5, "ok": True, "kind": "fact"}),
         vec(1.0, 0.1)),
        (item(t, "opposite"), vec(-1.0)),
        (item(t, "mid"), vec(1.0, 0.5)),
    ])
    hits = await backend.store.query(t, vec(2.0), top_k=3, now=T0)
    assert [h.item.id for h in hits] == ["near", "mid", "far"]
    expected = [1 / math.sqrt(1.01), 1 / math.sqrt(1.25), 1 / math.sqrt(5)]
    assert [h.score for h in hits] == pytest.approx(expected, abs=1e-5)
    near = hits[0].item
    assert near.tenant == t and near.namespace == "default" and near.text == "text of near"
    assert near.metadata == {"step": 3, "ratio": 0.5, "ok": True, "kind": "fact"}
    assert type(near.metadata["step"]) is int and near.metadata["ok"] is True
    assert near.created_at == T0 and near.expires_at is None
    assert near.embedder == "test-embedder"
    everything = await backend.store.query(t, vec(1.0), top_k=10, now=T0)
    assert [h.item.id for h in everything][-1] == "opposite"
    assert everything[-1].score == pytest.approx(-1.0, abs=1e-5)


async def test_upsert_replaces_an_item_with_the_same_id(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([(item(t, "a", text="old"), vec(1.0))])
    await backend.store.upsert([(item(t, "a", text="new", metadata={"v": 2}), vec(0.0, 1.0)),
                                (item(t, "a", text="newest", metadata={"v": 3}), vec(1.0))])
    hits = await backend.store.query(t, vec(1.0), top_k=5, now=T0)
    assert [(h.item.text, h.item.metadata) for h in hits] == [("newest", {"v": 3})]
    assert await backend.store.stats(t) == {f"{t}/default": {"items": 1}}


async def test_ids_that_are_not_ascii_or_very_long_round_trip(backend: Backend) -> None:
    t = tenant()
    odd = ["ünïcödé:id/with#seps", "x" * 512, "plain"]
    await backend.store.upsert([(item(t, i), vec(1.0, n)) for n, i in enumerate(odd)])
    assert sorted(await ids_of(backend.store, t)) == sorted(odd)
    assert await backend.store.delete(t, ids=[odd[0], odd[1]]) == 2
    assert await ids_of(backend.store, t) == ["plain"]


# ---------------------------------------------------------------------------- filters

FILTER_ITEMS: dict[str, dict[str, str | int | float | bool]] = {
    "a": {"kind": "runbook", "step": 1, "score": 0.5, "ok": True, "service": "api"},
    "b": {"kind": "runbook", "step": 2, "score": 1.5, "ok": False, "service": "db"},
    "c": {"kind": "fact", "step": 3, "score": 2.5, "service": "cache"},
    "d": {"kind": "fact", "step": "3"},  # a string "3", never a number
    "e": {},
}


@pytest.mark.parametrize(("flt", "expected"), [
    ({"kind": "runbook"}, "ab"),
    ({"kind": {"$eq": "fact"}}, "cd"),
    ({"kind": {"$ne": "runbook"}}, "cde"),  # $ne also matches items without the key
    ({"step": 3}, "c"),  # type-exact: "3" is not 3
    ({"step": 3.0}, "c"),  # 3 is 3.0
    ({"step": "3"}, "d"),
    ({"step": {"$gt": 1}}, "bc"),
    ({"step": {"$gte": 2}}, "bc"),
    ({"step": {"$lt": 3}}, "ab"),
    ({"step": {"$lte": 1}}, "a"),
    ({"score": {"$gt": 0.5, "$lt": 2.5}}, "b"),
    ({"service": {"$in": ["api", "cache", "nowhere"]}}, "ac"),
    ({"service": {"$nin": ["api", "cache"]}}, "bde"),  # $nin also matches missing keys
    ({"step": {"$in": [1, 3]}}, "ac"),
    ({"ok": True}, "a"),
    ({"ok": {"$ne": True}}, "bcde"),
    ({"kind": "runbook", "step": {"$gte": 2}}, "b"),  # all keys must hold
    ({"kind": "nothing"}, ""),
])
async def test_metadata_filters_each_operator(backend: Backend, flt: Filter,
                                              expected: str) -> None:
    t = tenant()
    await backend.store.upsert([(item(t, i, metadata=m), vec(1.0, n))
                                for n, (i, m) in enumerate(FILTER_ITEMS.items())])
    assert sorted(await ids_of(backend.store, t, filter=flt)) == list(expected)


@pytest.mark.parametrize("flt", [
    {"$or": [{"kind": "runbook"}, {"kind": "fact"}]},
    {"$and": [{"kind": "runbook"}]},
    {"kind": {"$regex": ".*"}},
    {"kind": {"$exists": True}},
    {"kind": {}},
    {"x') OR 1=1 --": 1},
    {"kind'; drop table stead_memory; --": "x"},
    {"metadata->>'kind'": "x"},
    {"_ns": "default"},
    {"_agent": ""},
    {"": "x"},
    {"kind": {"$in": []}},
    {"kind": {"$in": "runbook"}},
    {"kind": {"$in": [True]}},
    {"kind": {"$in": [{"$ne": 1}]}},
    {"step": {"$gt": "1"}},
    {"step": {"$gt": True}},
    {"step": float("nan")},
    {"kind": ["runbook"]},
    {"kind": None},
    {"kind": {"nested": "object"}},
])
async def test_bad_filters_are_rejected_with_a_clear_error(backend: Backend,
                                                           flt: Any) -> None:
    t = tenant()
    await backend.store.upsert([(item(t, "a", metadata={"kind": "runbook"}), vec(1.0))])
    with pytest.raises(MemoryError, match="bad memory filter"):
        await backend.store.query(t, vec(1.0), filter=flt, now=T0)
    with pytest.raises(MemoryError, match="bad memory filter"):
        await backend.store.delete(t, filter=flt)
    assert await ids_of(backend.store, t) == ["a"]


async def test_filtered_queries_still_return_top_k_when_matches_are_rare(
        backend: Backend) -> None:
    """HNSW finds neighbours first and filters after; the store must not come back short."""
    t = tenant()
    rng = random.Random(7)
    items = [(item(t, f"n{i}", metadata={"kind": "rare" if i % 50 == 0 else "common"}),
              vec(1.0, *(rng.gauss(0, 1) for _ in range(8)))) for i in range(300)]
    await backend.store.upsert(items)
    hits = await backend.store.query(t, vec(1.0), top_k=5, filter={"kind": "rare"}, now=T0)
    assert len(hits) == 5 and all(h.item.metadata["kind"] == "rare" for h in hits)


# ---------------------------------------------------------------------------- deletes


async def test_delete_by_id_by_filter_and_by_namespace(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([
        (item(t, "a", metadata={"kind": "temp"}), vec(1.0)),
        (item(t, "b", metadata={"kind": "temp"}), vec(1.0, 1.0)),
        (item(t, "c", metadata={"kind": "keep"}), vec(1.0, 2.0)),
        (item(t, "d"), vec(1.0, 3.0)),
        (item(t, "x", namespace="other"), vec(1.0)),
    ])
    assert await backend.store.delete(t, ids=["a", "no-such-id"]) == 1
    assert await backend.store.delete(t, ids=[]) == 0
    assert await backend.store.delete(t, filter={"kind": "temp"}) == 1
    assert await backend.store.delete(t, ids=["c", "d"], filter={"kind": "keep"}) == 1  # both
    assert sorted(await ids_of(backend.store, t)) == ["d", "x"]
    assert await backend.store.delete(t, namespace="other") == 1
    assert await ids_of(backend.store, t) == ["d"]
    with pytest.raises(MemoryError, match="refusing to delete all"):
        await backend.store.delete(t)


async def test_delete_subject_erases_the_subject_in_every_namespace(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([
        (item(t, "a", subject="user-1"), vec(1.0)),
        (item(t, "b", subject="user-1", namespace="facts", agent="ops"), vec(1.0, 1.0)),
        (item(t, "c", subject="user-2"), vec(1.0, 2.0)),
        (item(t, "d"), vec(1.0, 3.0)),
    ])
    assert await backend.store.delete_subject(t, "user-1") == 2
    assert sorted(await ids_of(backend.store, t)) == ["c", "d"]
    assert await backend.store.delete_subject(t, "user-1") == 0
    with pytest.raises(MemoryError):
        await backend.store.delete_subject(t, "")


# ---------------------------------------------------------------------------- lifecycle


async def test_expired_items_are_never_recalled_and_purge_removes_them(
        backend: Backend) -> None:
    t = tenant()
    # A time window of its own, decades before other tests' items expire, so that purge's
    # count (which covers every tenant) is exactly this test's items.
    base = datetime(1985, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
    await backend.store.upsert([
        (item(t, "gone", created_at=base, expires_at=base + timedelta(hours=1)), vec(1.0)),
        (item(t, "later", created_at=base, expires_at=base + timedelta(days=2)), vec(1.0, 1.0)),
        (item(t, "forever", created_at=base), vec(1.0, 2.0)),
    ])
    assert await ids_of(backend.store, t, now=base) == ["gone", "later", "forever"]
    # expires_at <= now counts as expired.
    assert await ids_of(backend.store, t, now=base + timedelta(hours=1)) == ["later", "forever"]
    assert await backend.store.purge_expired(base + timedelta(days=1)) == 1
    assert await backend.store.stats(t) == {f"{t}/default": {"items": 2}}
    assert await ids_of(backend.store, t, now=base) == ["later", "forever"]


async def test_namespace_retention_sets_expiry_on_write(backend: Backend) -> None:
    t = tenant()
    base = datetime(1975, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
    await backend.store.set_retention(t, "short", 60)
    await backend.store.upsert([
        (item(t, "s", namespace="short", created_at=base), vec(1.0)),
        (item(t, "explicit", namespace="short", created_at=base,
              expires_at=base + timedelta(days=9)), vec(1.0, 1.0)),
        (item(t, "l", namespace="long", created_at=base), vec(1.0, 2.0)),
    ])
    assert await backend.store.retention(t) == {"short": 60}
    hits = {h.item.id: h.item for h in
            await backend.store.query(t, vec(1.0), top_k=10, now=base)}
    assert hits["s"].expires_at == base + timedelta(seconds=60)
    assert hits["explicit"].expires_at == base + timedelta(days=9)
    assert hits["l"].expires_at is None
    assert sorted(await ids_of(backend.store, t, now=base + timedelta(seconds=61))) == [
        "explicit", "l"]
    assert await backend.store.purge_expired(base + timedelta(seconds=61)) == 1
    # Retention applies to writes made while it is set; clearing it stops new expiries.
    await backend.store.set_retention(t, "short", None)
    assert await backend.store.retention(t) == {}
    await backend.store.upsert([(item(t, "s2", namespace="short", created_at=base), vec(1.0))])
    [s2] = [h.item for h in await backend.store.query(t, vec(1.0), top_k=10, now=base)
            if h.item.id == "s2"]
    assert s2.expires_at is None
    with pytest.raises(MemoryError):
        await backend.store.set_retention(t, "short", 0)
    with pytest.raises(MemoryError, match="namespace"):
        await backend.store.set_retention(t, "a/b", 60)


async def test_agent_scoping_returns_own_and_shared_items(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([
        (item(t, "ops-only", agent="ops"), vec(1.0)),
        (item(t, "refund-only", agent="refund"), vec(1.0, 0.5)),
        (item(t, "shared"), vec(1.0, 1.0)),
    ])
    assert await ids_of(backend.store, t, agent="ops") == ["ops-only", "shared"]
    assert await ids_of(backend.store, t, agent="refund") == ["refund-only", "shared"]
    assert await ids_of(backend.store, t, agent="nobody") == ["shared"]
    assert await ids_of(backend.store, t) == ["ops-only", "refund-only", "shared"]


async def test_namespaces_scope_queries_and_ids(backend: Backend) -> None:
    t = tenant()
    await backend.store.upsert([
        (item(t, "same-id", namespace="runbooks", text="runbook"), vec(1.0)),
        (item(t, "same-id", namespace="facts", text="fact"), vec(1.0, 0.5)),
        (item(t, "other", namespace="facts"), vec(1.0, 1.0)),
    ])
    runbooks = await backend.store.query(t, vec(1.0), namespace="runbooks", now=T0)
    assert [(h.item.id, h.item.text) for h in runbooks] == [("same-id", "runbook")]
    assert await ids_of(backend.store, t, namespace="facts") == ["same-id", "other"]
    assert await ids_of(backend.store, t, namespace="nothing") == []
    assert len(await ids_of(backend.store, t)) == 3
    assert await backend.store.delete(t, ids=["same-id"], namespace="facts") == 1
    assert [(h.item.namespace, h.item.text) for h in
            await backend.store.query(t, vec(1.0), now=T0)] == [("runbooks", "runbook"),
                                                                  ("facts", "text of other")]


async def test_stats_counts_items_per_tenant_namespace(backend: Backend) -> None:
    t, other = tenant(), tenant()
    await backend.store.upsert([
        (item(t, "a", namespace="runbooks"), vec(1.0)),
        (item(t, "b", namespace="runbooks"), vec(1.0, 1.0)),
        (item(t, "c", namespace="facts"), vec(1.0, 2.0)),
        (item(other, "z"), vec(1.0)),
    ])
    assert await backend.store.stats(t) == {f"{t}/facts": {"items": 1},
                                           f"{t}/runbooks": {"items": 2}}
    everything = await backend.store.stats()
    assert everything[f"{t}/runbooks"] == {"items": 2}
    assert everything[f"{other}/default"] == {"items": 1}
    assert await backend.store.stats(tenant()) == {}


async def test_dimension_mismatch_is_a_clear_error(backend: Backend) -> None:
    with pytest.raises(DimensionMismatch) as info:
        await backend.store.ensure(768)
    message = str(info.value)
    assert "384" in message and "768" in message
    # pgvector re-embeds in place; a Pinecone index keeps the dimension it was created with.
    fix = {"pgvector": "stead memory reembed", "pinecone": "Create an index of dimension 768"}
    assert fix[backend.name] in message
    await backend.store.ensure(DIM)
    t = tenant()
    with pytest.raises(DimensionMismatch, match="3 dimensions"):
        await backend.store.upsert([(item(t, "a"), [1.0, 0.0, 0.0])])
    with pytest.raises(DimensionMismatch):
        await backend.store.query(t, [1.0, 0.0], now=T0)


async def test_bad_vectors_and_arguments_are_rejected(backend: Backend) -> None:
    t = tenant()
    with pytest.raises(MemoryError, match="all zeros"):
        await backend.store.upsert([(item(t, "z"), vec(0.0))])
    with pytest.raises(MemoryError, match="finite"):
        await backend.store.query(t, vec(float("nan")), now=T0)
    with pytest.raises(MemoryError, match="metadata key"):
        await backend.store.upsert([(item(t, "m", metadata={"_ns": "x"}), vec(1.0))])
    with pytest.raises(MemoryError, match="top_k"):
        await backend.store.query(t, vec(1.0), top_k=0, now=T0)
    with pytest.raises(MemoryError, match="reserved"):
        await backend.store.query("__stead_config__", vec(1.0), now=T0)
    with pytest.raises(MemoryError, match="tenant"):
        await backend.store.query("", vec(1.0), now=T0)


# ---------------------------------------------------------------------------- isolation


@pytest.fixture
async def two_tenants(backend: Backend) -> tuple[Backend, str, str, list[float]]:
    """Tenant A holds secrets; tenant B holds one harmless item. Returns (backend, A, B, v)."""
    a, b = tenant(), tenant()
    secret = vec(0.3, -0.7, 0.2, 0.9)
    await backend.store.upsert([
        (item(a, "secret-1", agent="ops", subject="alice", text="A's root password is hunter2",
              metadata={"tenant": a, "kind": "secret", "owner": "A"}), secret),
        (item(a, "secret-2", namespace="facts", subject="alice",
              metadata={"tenant": a, "kind": "secret"}), vec(0.3, -0.7, 0.2, 1.0)),
        (item(b, "b-1", text="B's own note", metadata={"kind": "note"}), vec(1.0)),
    ])
    return backend, a, b, secret


ADVERSARIAL_FILTERS: list[Any] = [
    None,
    {"tenant": "A"},
    {"owner": "A"},
    {"kind": "secret"},
    {"kind": {"$ne": "note"}},
    {"kind": {"$nin": ["note"]}},
    {"kind": "x' OR '1'='1"},
    {"kind": "secret') OR tenant <> ('"},
]


@pytest.mark.parametrize("flt", ADVERSARIAL_FILTERS)
async def test_tenant_b_never_recalls_tenant_a_items(
        two_tenants: tuple[Backend, str, str, list[float]], flt: Any) -> None:
    backend, a, b, secret = two_tenants
    for f in (flt, {"tenant": a} if flt is None else flt):
        for kwargs in ({}, {"agent": "ops"}, {"namespace": "facts"}, {"namespace": "default"}):
            hits = await backend.store.query(b, secret, top_k=100, filter=f, now=T0, **kwargs)
            assert all(h.item.tenant == b and h.item.id == "b-1" for h in hits), hits
    # A still sees its own items with the same vector.
    assert await ids_of(backend.store, a, secret) == ["secret-1", "secret-2"]


@pytest.mark.parametrize("flt", [
    {"$or": [{"tenant": {"$ne": "nobody"}}, {"kind": "secret"}]},
    {"x') OR 1=1 --": 1},
    {"_ns": {"$exists": True}},
    {"kind": {"$or": [{"$ne": "x"}]}},
    {"kind": {"$in": [{"$ne": "x"}]}},
])
async def test_injection_shaped_filters_are_rejected_before_reaching_the_store(
        two_tenants: tuple[Backend, str, str, list[float]], flt: Any) -> None:
    backend, a, b, secret = two_tenants
    with pytest.raises(MemoryError, match="bad memory filter"):
        await backend.store.query(b, secret, top_k=100, filter=flt, now=T0)
    with pytest.raises(MemoryError, match="bad memory filter"):
        await backend.store.delete(b, filter=flt)
    assert await ids_of(backend.store, a, secret) == ["secret-1", "secret-2"]


async def test_tenant_b_cannot_delete_or_count_tenant_a_items(
        two_tenants: tuple[Backend, str, str, list[float]]) -> None:
    backend, a, b, secret = two_tenants
    store = backend.store
    assert await store.delete(b, ids=["secret-1", "secret-2"]) == 0
    assert await store.delete(b, ids=["secret-2"], namespace="facts") == 0
    assert await store.delete(b, filter={"tenant": a}) == 0
    assert await store.delete(b, filter={"kind": "secret"}) == 0
    assert await store.delete(b, namespace="facts") == 0
    assert await store.delete_subject(b, "alice") == 0
    assert await store.stats(b) == {f"{b}/default": {"items": 1}}
    # Tenant names are data, never code: SQL-ish or look-alike tenants see nothing.
    for name in (f"{a}' OR '1'='1", f"{a} ", a.upper(), f"{a}/facts", "%", "*"):
        assert await store.query(name, secret, top_k=100, now=T0) == []
        assert await store.delete(name, ids=["secret-1"]) == 0
    assert await ids_of(store, a, secret) == ["secret-1", "secret-2"]
    assert await store.stats(a) == {f"{a}/default": {"items": 1}, f"{a}/facts": {"items": 1}}


# ---------------------------------------------------------------------------- pgvector only


@pytest.fixture
async def scratch_dsn(stack: EmbeddedStack) -> AsyncIterator[str]:
    """A migrated database of its own on the session's server, for tests that change the
    schema or need the planner's statistics to themselves."""
    name = f"stead_mem_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'create database "{name}"')
        dsn = stack.database_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(dsn)
        yield dsn
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def test_pgvector_reset_dimension_for_reembedding(scratch_dsn: str) -> None:
    store = await PgVectorStore.connect(scratch_dsn)
    try:
        t = tenant()
        await store.ensure(DIM)
        await store.upsert([(item(t, "a", text="keep me"), vec(1.0)),
                            (item(t, "b"), vec(1.0, 1.0))])
        assert await store.stale_items("test-embedder") == []
        await store.reset_dimension(8)
        assert await store.column_dimension() == 8
        with pytest.raises(DimensionMismatch, match="8-dimensional"):
            await store.ensure(DIM)
        await store.ensure(8)
        # Items stay, without vectors, until re-embedded; none is recalled meanwhile.
        assert await store.query(t, [1.0] * 8, now=T0) == []
        stale = await store.stale_items("new-embedder")
        assert [(i.id, i.text) for i in stale] == [("a", "keep me"), ("b", "text of b")]
        await store.upsert([(i.model_copy(update={"embedder": "new-embedder"}),
                             [1.0, float(n)] + [0.0] * 6) for n, i in enumerate(stale)])
        assert await store.stale_items("new-embedder") == []
        assert await ids_of(store, t, [1.0] + [0.0] * 7) == ["a", "b"]
        async with store.pool.acquire() as conn:
            indexdef = await conn.fetchval(
                "select indexdef from pg_indexes where indexname = 'stead_memory_embedding'")
        assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef
        with pytest.raises(MemoryError, match="dimension must be"):
            await store.reset_dimension(5000)
    finally:
        await store.close()


async def test_pgvector_falls_back_to_exact_search_when_hnsw_comes_back_short(
        scratch_dsn: str) -> None:
    """HNSW (ef_search=10) sees ~10 candidates, ~1% of which pass the filter: the store must
    notice the short answer and return the exact top 10 instead.

    A range filter, because the planner cannot estimate it and so keeps the HNSW plan (an
    equality it would estimate as selective and answer exactly by itself).
    """
    store = await PgVectorStore.connect(scratch_dsn, ef_search=10)
    try:
        t = tenant()
        rng = random.Random(3)
        vectors = {f"n{i:04d}": vec(*(rng.gauss(0, 1) for _ in range(16))) for i in range(3000)}
        items = [(item(t, i, metadata={"rank": n}), v)
                 for n, (i, v) in enumerate(vectors.items())]
        for start in range(0, len(items), 500):
            await store.upsert(items[start:start + 500])
        probe = vec(*(rng.gauss(0, 1) for _ in range(16)))
        async with store.pool.acquire() as conn:
            await conn.execute("analyze stead_memory")
            plan = "\n".join(r[0] for r in await conn.fetch(
                "explain select id from stead_memory where tenant = $1 and (case when"
                " jsonb_typeof(metadata -> 'rank') = 'number' then (metadata -> 'rank')::text"
                "::float8 >= 2970 else false end)"
                " order by embedding <=> $2::text::vector limit 10", t, str(probe)))
        assert "Index Scan using stead_memory_embedding" in plan, plan

        hits = await store.query(t, probe, top_k=10, filter={"rank": {"$gte": 2970}}, now=T0)

        def cosine(v: list[float]) -> float:
            dot = sum(a * b for a, b in zip(v, probe, strict=True))
            return dot / math.sqrt(sum(a * a for a in v) * sum(b * b for b in probe))

        rare = sorted((i.id for i, _ in items[2970:]), key=lambda i: -cosine(vectors[i]))
        assert [h.item.id for h in hits] == rare[:10]
    finally:
        await store.close()


async def test_pgvector_queries_use_the_hnsw_index_with_ef_search(stack: EmbeddedStack) -> None:
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn, conn.transaction():
            # The test table is small, where a sequential scan is cheaper; what matters is that
            # the index can serve the store's query shape (a cast parameter).
            await conn.execute("set local enable_seqscan = off")
            rows = await conn.fetch(
                "explain select id from stead_memory order by embedding <=> $1::text::vector"
                " limit 5", "[" + ",".join(["1"] * DIM) + "]")
            plan = "\n".join(r[0] for r in rows)
            assert "Index Scan using stead_memory_embedding" in plan, plan
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("select set_config('hnsw.ef_search', '40', true)")
                assert await conn.fetchval("show hnsw.ef_search") == "40"
    finally:
        await pool.close()


async def test_pgvector_store_works_on_the_ledgers_pool(stack: EmbeddedStack) -> None:
    """The ledger's connections have their own jsonb codec; the store must not care."""
    from stead.storage.ledger import Ledger

    ledger = await Ledger.connect(stack.database_url)
    try:
        store = PgVectorStore(ledger.pool)
        t = tenant()
        await store.upsert([(item(t, "a", metadata={"k": "v", "n": 1}), vec(1.0))])
        [hit] = await store.query(t, vec(1.0), filter={"k": "v", "n": {"$in": [1]}}, now=T0)
        assert hit.item.metadata == {"k": "v", "n": 1}
    finally:
        await ledger.close()


# ---------------------------------------------------------------------------- pinecone only


@pytest.fixture
async def pinecone_backend() -> AsyncIterator[tuple[FakePineconeServer, PineconeStore]]:
    async with FakePineconeServer(dimension=DIM, api_key=API_KEY) as server:
        store = PineconeStore.connect(api_key=API_KEY, host=server.host)
        try:
            yield server, store
        finally:
            await store.close()


async def test_pinecone_uses_tenant_namespaces_and_sends_sdk_headers(
        pinecone_backend: tuple[FakePineconeServer, PineconeStore]) -> None:
    server, store = pinecone_backend
    t = tenant()
    await store.upsert([(item(t, "a", namespace="runbooks", agent="ops"), vec(1.0))])
    assert set(server.namespaces) == {t}
    [(vid, record)] = server.namespaces[t].items()
    assert vid == "runbooks/a"
    assert record.metadata["_ns"] == "runbooks" and record.metadata["_agent"] == "ops"
    assert math.isclose(math.fsum(v * v for v in record.values), 1.0)  # normalised
    await store.query(t, vec(1.0), filter={"kind": "x"}, agent="ops", now=T0)
    endpoint, body, headers = server.requests[-1]
    assert endpoint == "query" and body["namespace"] == t
    assert "$and" in body["filter"]
    assert headers["Api-Key"] == API_KEY and headers["X-Pinecone-Api-Version"]


async def test_pinecone_sdk_retries_rate_limits_and_server_errors(
        pinecone_backend: tuple[FakePineconeServer, PineconeStore]) -> None:
    server, store = pinecone_backend
    t = tenant()
    server.inject(PineconeFault("rate_limit", retry_after=0), endpoint="upsert")
    server.inject(PineconeFault("server_error", status=503, retry_after=0), endpoint="query")
    await store.upsert([(item(t, "a"), vec(1.0))])
    assert await ids_of(store, t) == ["a"]
    assert server.pending_faults() == 0
    # More failures than the SDK's retries: a MemoryError, not a raw SDK exception.
    server.inject(*[PineconeFault("server_error", retry_after=0)] * 5, endpoint="query")
    with pytest.raises(MemoryError, match="Pinecone"):
        await store.query(t, vec(1.0), now=T0)


async def test_pinecone_errors_become_memory_errors(
        pinecone_backend: tuple[FakePineconeServer, PineconeStore]) -> None:
    server, _ = pinecone_backend
    wrong = PineconeStore.connect(api_key="not-the-key", host=server.host)
    try:
        with pytest.raises(MemoryError, match=r"Unauthorized|Invalid API Key"):
            await wrong.ensure(DIM)
    finally:
        await wrong.close()
    server.inject(PineconeFault("client_error", message="bad request"), endpoint="query")
    _, store = pinecone_backend
    with pytest.raises(MemoryError, match="bad request"):
        await store.query(tenant(), vec(1.0), now=T0)


async def test_pinecone_deletes_more_matches_than_one_query_page(
        pinecone_backend: tuple[FakePineconeServer, PineconeStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import stead.storage.memory.pinecone as module

    server, store = pinecone_backend
    monkeypatch.setattr(module, "MAX_TOP_K", 7)
    t = tenant()
    await store.upsert([(item(t, f"i{n}", subject="s"), vec(1.0, n)) for n in range(30)])
    assert await store.delete_subject(t, "s") == 30
    assert server.namespaces[t] == {}


async def test_pinecone_rejects_an_index_with_the_wrong_metric() -> None:
    async with FakePineconeServer(dimension=DIM, metric="euclidean") as server:
        store = PineconeStore.connect(api_key="k", host=server.host)
        try:
            with pytest.raises(MemoryError, match="euclidean"):
                await store.ensure(DIM)
        finally:
            await store.close()


async def test_pinecone_dotproduct_index_scores_by_cosine() -> None:
    async with FakePineconeServer(dimension=DIM, metric="dotproduct") as server:
        store = PineconeStore.connect(api_key="k", host=server.host)
        try:
            await store.ensure(DIM)
            t = tenant()
            await store.upsert([(item(t, "a"), vec(10.0, 10.0))])
            [hit] = await store.query(t, vec(3.0), now=T0)
            assert hit.score == pytest.approx(1 / math.sqrt(2))
        finally:
            await store.close()


# ---------------------------------------------------------------------------- live Pinecone

LIVE_KEY = os.environ.get("STEAD_LIVE_PINECONE_API_KEY")
LIVE_HOST = os.environ.get("STEAD_PINECONE_HOST")


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 90.0) -> None:
    """Real Pinecone is eventually consistent: poll until a write or delete shows."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("Pinecone did not converge in time")
        await asyncio.sleep(2.0)


@pytest.mark.live
@pytest.mark.skipif(not (LIVE_KEY and LIVE_HOST),
                    reason="set STEAD_LIVE_PINECONE_API_KEY and STEAD_PINECONE_HOST "
                           "(a dense 384-dim cosine index) to run against real Pinecone")
async def test_live_pinecone_behaves_like_the_fake() -> None:
    assert LIVE_KEY and LIVE_HOST
    store = PineconeStore.connect(api_key=LIVE_KEY, host=LIVE_HOST)
    a, b = f"stead-live-{uuid.uuid4().hex[:10]}", f"stead-live-{uuid.uuid4().hex[:10]}"
    try:
        await store.ensure(DIM)
        with pytest.raises(DimensionMismatch):
            await store.ensure(DIM + 1)
        await store.upsert([
            (item(a, "near", subject="alice", metadata={"kind": "runbook", "step": 1}),
             vec(1.0, 0.1)),
            (item(a, "far", agent="ops", metadata={"kind": "fact", "step": 2}), vec(1.0, 2.0)),
            (item(a, "gone", expires_at=T0 - timedelta(seconds=1)), vec(1.0)),
            (item(b, "b-1"), vec(1.0)),
        ])

        async def visible() -> bool:
            return len(await ids_of(store, a)) == 2 and len(await ids_of(store, b)) == 1

        await _eventually(visible)
        hits: list[Hit] = await store.query(a, vec(1.0), top_k=5, now=T0)
        assert [h.item.id for h in hits] == ["near", "far"]
        assert hits[0].item.metadata == {"kind": "runbook", "step": 1}
        assert await ids_of(store, a, filter={"step": {"$gte": 2}}) == ["far"]
        assert await ids_of(store, a, filter={"kind": {"$ne": "fact"}}) == ["near"]
        assert await ids_of(store, a, agent="refund") == ["near"]
        assert await ids_of(store, b, vec(1.0, 0.1), filter={"kind": "runbook"}) == []
        assert await store.delete(b, ids=["near", "far"]) == 0
        assert await store.delete_subject(a, "alice") == 1
        await _eventually(lambda: _ids_equal(store, a, ["far"]))
    finally:
        for t in (a, b):
            try:
                await store.index.delete(delete_all=True, namespace=t)
            except Exception:  # cleanup of a namespace that may not exist
                pass
        await store.close()


async def _ids_equal(store: Store, t: str, expected: list[str]) -> bool:
    return await ids_of(store, t) == expected
