"""Semantic memory inside runs: recall before thinking, remember after, tenant isolation,
erasure, and the `stead memory` CLI — on the real embedded PostgreSQL with pgvector and the
real offline MiniLM model."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from stead.agents.ops import OpsWorld, ops_agent
from stead.agents.ops.runbooks import index_runbooks, load_runbooks
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import RunRequest, RunResult, RunState
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.storage.memory import Embedder, open_memory
from stead.storage.memory.embedders import MiniLMEmbedder
from stead.worker import WorkerHost

pytestmark = pytest.mark.embeddings  # every test here runs the real MiniLM model


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """One real model per session: loading it takes seconds."""
    return MiniLMEmbedder()


@pytest.fixture
def mem_settings(settings: Settings) -> Settings:
    return settings.replace(memory_backend="pgvector")


@pytest.fixture
async def mem_worker(mem_settings: Settings, world: OpsWorld,
                     minilm: Embedder) -> AsyncIterator[WorkerHost]:
    async with WorkerHost(mem_settings, AgentCatalog([ops_agent(world)]),
                          embedder=minilm) as host:
        yield host


async def _run(client: Client, settings: Settings, text: str, tenant: str) -> tuple[str, RunResult]:
    h = await start_run(client, RunRequest(agent="ops", input=text, tenant=tenant, user="u-7"),
                        temporal=settings.temporal)
    return h.id, await asyncio.wait_for(h.result(), 120)


async def test_recalled_runbook_changes_the_answer_and_is_logged(
        mem_worker: WorkerHost, mem_settings: Settings, ledger: Ledger) -> None:
    """With runbooks indexed for the tenant the answer cites one; without, it cannot."""
    assert mem_worker.memory is not None and mem_worker.client is not None
    with_kb, without_kb = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    await index_runbooks(mem_worker.memory.store, mem_worker.memory.embedder, tenant=with_kb)
    text = "payments-db is very slow, open a ticket"

    wid, r = await _run(mem_worker.client, mem_settings, text, with_kb)
    _, bare = await _run(mem_worker.client, mem_settings, text, without_kb)

    assert r.status == bare.status == "completed"
    assert "Runbook “payments-db slow queries" in (r.answer or "")
    assert "Runbook" not in (bare.answer or "")  # tenant isolation: nothing to recall
    trail = await ledger.trail(wid)
    recall = [m for m in trail.memory_ops if m.op == "recall"]
    assert recall and "runbook:payments-db-slow-queries" in recall[0].item_ids
    assert recall[0].embedder == "minilm:all-MiniLM-L6-v2"
    write = [m for m in trail.memory_ops if m.op == "write"]
    assert len(write) == 1 and write[0].namespaces == ["runs"]


async def test_run_summary_is_remembered_with_provenance_and_erasable_by_subject(
        mem_worker: WorkerHost, mem_settings: Settings) -> None:
    assert mem_worker.memory is not None and mem_worker.client is not None
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    wid, r = await _run(mem_worker.client, mem_settings, "is auth-service healthy?", tenant)
    assert r.status == "completed"

    hits = await mem_worker.memory.search(tenant, "auth-service health", namespace="runs")
    assert len(hits) == 1
    item = hits[0].item
    assert item.subject == "u-7" and item.metadata["workflow_id"] == wid
    assert "run_id" in item.metadata and "step" in item.metadata
    assert item.expires_at is not None  # the ops agent keeps summaries for 30 days
    assert "auth-service is healthy" in item.text

    assert await mem_worker.memory.store.delete_subject(tenant, "u-7") == 1
    assert await mem_worker.memory.search(tenant, "auth-service health", namespace="runs") == []


async def test_recalled_text_is_marked_untrusted_for_the_model_and_the_gate(
        mem_worker: WorkerHost, mem_settings: Settings) -> None:
    """The run's state shows the recall; recalled items reach the model fenced as untrusted."""
    assert mem_worker.memory is not None and mem_worker.client is not None
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await index_runbooks(mem_worker.memory.store, mem_worker.memory.embedder, tenant=tenant)
    h = await start_run(mem_worker.client,
                        RunRequest(agent="ops", input="restart search-worker", tenant=tenant),
                        temporal=mem_settings.temporal)
    state: RunState | None = None
    for _ in range(200):
        state = await h.query("state", result_type=RunState)
        if state.pending_approvals:
            break
        await asyncio.sleep(0.05)
    assert state is not None and state.pending_approvals
    recalls = [s for s in state.history if s.kind == "memory" and s.name == "recall"]
    assert recalls and "runbook:search-worker-oom" in recalls[0].detail
    await h.signal("reject", {"approval_id": state.pending_approvals[0].approval_id,
                              "by": "test"})
    r = await asyncio.wait_for(h.result(), 60)
    assert r.status == "denied"


async def test_embedder_dimension_mismatch_stops_the_worker_with_a_clear_error(
        mem_settings: Settings, minilm: Embedder) -> None:
    """On an index holding items (an empty, unclaimed one would take the new dimension:
    tests/test_memory_dimension.py, on databases of their own)."""
    from datetime import UTC, datetime

    from stead.storage.memory import DimensionMismatch, MemoryItem
    from stead.storage.memory.embedders import HashingEmbedder

    memory = await open_memory(mem_settings, embedder=minilm)
    assert memory is not None
    try:
        [vector] = await HashingEmbedder(384).embed(["kept"])
        await memory.store.upsert([(MemoryItem(id="kept", tenant=f"t-{uuid.uuid4().hex[:8]}",
                                               text="kept", created_at=datetime.now(UTC)),
                                    vector)])
    finally:
        await memory.close()
    with pytest.raises(DimensionMismatch, match=r"384.*768.*stead memory reembed"):
        await open_memory(mem_settings, embedder=HashingEmbedder(768))


def test_runbooks_ship_with_the_package() -> None:
    books = load_runbooks()
    assert {b.service for b in books} >= {"checkout-api", "payments-db", "search-worker"}
    assert all("Remedy:" in b.body for b in books)


async def test_memory_cli_add_search_stats_delete(mem_settings: Settings, tmp_path: Path) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DATABASE_URL": mem_settings.ledger.database_url or "",
           "TEMPORAL_ADDRESS": mem_settings.temporal.address or "",
           "STEAD_MEMORY_BACKEND": "pgvector"}
    stead = str(Path(sys.executable).parent / "stead")

    async def cli(*args: str) -> tuple[int, str, str]:
        p = await asyncio.create_subprocess_exec(stead, "memory", *args, env=env, cwd=tmp_path,
                                                 stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 120)
        assert p.returncode is not None
        return p.returncode, out.decode(), err.decode()

    code, out, err = await cli("add", "The VPN to the old data centre drops at 02:00 UTC",
                               "--tenant", tenant, "--namespace", "facts", "--subject", "u-1",
                               "--meta", "team=legacy", "--json")
    assert code == 0, err
    item_id = json.loads(out)["id"]
    code, out, err = await cli("search", "when does the vpn disconnect", "--tenant", tenant,
                               "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["id"] == item_id and hits[0]["metadata"] == {"team": "legacy"}
    code, out, _ = await cli("search", "vpn", "--tenant", f"{tenant}-other", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = await cli("stats", "--tenant", tenant, "--json")
    assert code == 0 and json.loads(out)["namespaces"][f"{tenant}/facts"]["items"] == 1
    code, _, err = await cli("search", "x", "--filter", "[1]")
    assert code == 2 and "JSON object" in err
    code, _, err = await cli("delete", "--tenant", tenant)
    assert code == 2 and "exactly one" in err
    code, out, _ = await cli("delete", "--tenant", tenant, "--subject", "u-1", "--json")
    assert code == 0 and json.loads(out) == {"deleted": 1}
    code, out, err = await cli("retention", "--tenant", tenant, "--namespace", "facts",
                               "--ttl", "3600", "--json")
    assert code == 0 and json.loads(out) == {"facts": 3600}, err
    code, _, err = await cli("retention", "--namespace", "facts")
    assert code == 2 and "exactly one" in err


async def test_reembed_rewrites_items_from_another_embedder(mem_settings: Settings,
                                                            minilm: Embedder) -> None:
    """Changing the embedder: items written by the old one are found and re-embedded."""
    from datetime import UTC, datetime

    from stead.storage.memory import MemoryItem
    from stead.storage.memory.embedders import HashingEmbedder
    from stead.storage.memory.pgvector import PgVectorStore

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    memory = await open_memory(mem_settings, embedder=minilm)
    assert memory is not None and isinstance(memory.store, PgVectorStore)
    try:
        old = HashingEmbedder(384)
        text = "the nightly backup of payments-db runs at 03:00"
        [vec] = await old.embed([text])
        await memory.store.upsert([(MemoryItem(
            id="old-1", tenant=tenant, namespace="facts", text=text,
            created_at=datetime.now(UTC), embedder=old.name), vec)])
        assert await memory.reembed(tenant=tenant) == 1
        assert await memory.reembed(tenant=tenant) == 0  # nothing stale any more
        [hit] = await memory.search(tenant, "when is the database backed up")
        assert hit.item.id == "old-1" and hit.item.embedder == minilm.name
    finally:
        await memory.close()
