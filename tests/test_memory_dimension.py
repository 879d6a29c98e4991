"""The memory index and the embedder's dimension, on the real stack: a fresh pgvector index
takes the chosen embedder's dimension at the first start (once, also when two start at once),
an index holding items keeps its own and names the fix, a Pinecone index is checked, and a
chat model on a local server without embeddings works beside the local embedder.

Every pgvector test gets a migrated database of its own on the session's PostgreSQL: changing
the column's dimension on the shared one would break every other memory test.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import ModelTurn, RunRequest, RunResult
from stead.errors import SettingsError
from stead.integrations.llm import ScriptedModel
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.dbroles import EMBEDDED_WORKER_ROLE, dsn_with_user
from stead.storage.ledger import Ledger, migrate
from stead.storage.memory import DimensionMismatch, Memory, MemoryItem, open_memory
from stead.storage.memory.embedders import HashingEmbedder
from stead.storage.memory.pgvector import CHOSEN
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.testing.pinecone_server import FakePineconeServer
from stead.worker import WorkerHost

EMBEDDER_KEY = "sk-embeddings-only"
OPENAI_1536 = "openai:text-embedding-3-small:1536"


@dataclass
class Scratch:
    owner_dsn: str
    worker_dsn: str

    async def column(self) -> tuple[int, str | None]:
        """The embedding column's dimension and comment."""
        conn = await asyncpg.connect(self.owner_dsn)
        try:
            row = await conn.fetchrow(
                "select a.atttypmod, col_description(a.attrelid, a.attnum) as comment"
                " from pg_attribute a where a.attrelid = 'stead_memory'::regclass"
                " and a.attname = 'embedding'")
            index = await conn.fetchval(
                "select indexdef from pg_indexes where indexname = 'stead_memory_embedding'")
        finally:
            await conn.close()
        assert row is not None and "hnsw" in index and "vector_cosine_ops" in index
        return int(row["atttypmod"]), row["comment"]


@pytest.fixture
async def scratch(stack: EmbeddedStack) -> AsyncIterator[Scratch]:
    """A freshly migrated database: its memory index is the migrations' vector(384), empty."""
    name = f"stead_dim_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'create database "{name}"')
        owner = stack.database_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(owner)
        yield Scratch(owner, dsn_with_user(owner, EMBEDDED_WORKER_ROLE))
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


@pytest.fixture
async def embeddings() -> AsyncIterator[FakeOpenAIServer]:
    """An OpenAI-compatible embeddings server of its own (1,536 dimensions, its own key)."""
    async with FakeOpenAIServer(api_key=EMBEDDER_KEY, embedding_dimensions=1536) as srv:
        yield srv


def on(scratch: Scratch, settings: Settings, **changes: object) -> Settings:
    """``settings`` with memory on, on the scratch database, as the embedded stack sets it:
    workers least-privilege, migrations (and the first start's claim) as the owner."""
    return settings.replace(database_url=scratch.worker_dsn, migrate_database_url=scratch.owner_dsn,
                            memory_backend="pgvector", **changes)


def openai_embedder(server: FakeOpenAIServer, **changes: object) -> dict[str, object]:
    return {"embedder": "openai", "embedder_base_url": server.base_url,
            "embedder_api_key": SecretStr(EMBEDDER_KEY), **changes}


async def _run(host: WorkerHost, settings: Settings, text: str, tenant: str,
               ) -> tuple[str, RunResult]:
    assert host.client is not None
    h = await start_run(host.client, RunRequest(agent="ops", input=text, tenant=tenant),
                        temporal=settings.temporal)
    return h.id, await asyncio.wait_for(h.result(), 120)


async def test_a_fresh_index_takes_the_openai_embedders_dimension_at_the_first_worker_start(
        scratch: Scratch, settings: Settings, embeddings: FakeOpenAIServer,
        world: OpsWorld) -> None:
    """The issue's first step: OpenAI embeddings on a fresh `stead up` no longer refuse to
    start for the migrations' 384 dimensions; runs recall and remember with 1,536."""
    s = on(scratch, settings, **openai_embedder(embeddings))
    assert await scratch.column() == (384, None)

    async with WorkerHost(s, AgentCatalog([ops_agent(world)])) as host:
        assert host.memory is not None and host.memory.embedder.name == OPENAI_1536
        wid, r = await _run(host, s, "is auth-service healthy?", "acme")

    dimension, comment = await scratch.column()
    assert dimension == 1536
    assert comment is not None and comment.startswith(
        f"{CHOSEN}chosen for {OPENAI_1536} (1536) at the first start, ")
    assert r.status == "completed"
    ledger = await Ledger.connect(scratch.owner_dsn)
    try:
        trail = await ledger.trail(wid)
    finally:
        await ledger.close()
    assert [(m.op, m.embedder) for m in trail.memory_ops] == [
        ("recall", OPENAI_1536), ("write", OPENAI_1536)]
    assert embeddings.embedding_requests, "recall and write embedded on the embeddings server"


async def test_an_index_holding_items_keeps_its_dimension_and_names_the_fix(
        scratch: Scratch, settings: Settings, embeddings: FakeOpenAIServer) -> None:
    s = on(scratch, settings)
    memory = await open_memory(s, embedder=HashingEmbedder(384))
    assert memory is not None
    try:
        [vector] = await memory.embedder.embed(["the VPN drops at 02:00"])
        await memory.store.upsert([(MemoryItem(
            id="vpn", tenant="acme", text="the VPN drops at 02:00", created_at=datetime.now(UTC),
            embedder=memory.embedder.name), vector)])
    finally:
        await memory.close()

    moved = on(scratch, settings, **openai_embedder(embeddings))
    with pytest.raises(DimensionMismatch) as info:
        await open_memory(moved)
    message = str(info.value)
    assert "stores 384-dimensional vectors (1 by hashing:384)" in message
    assert f"the embedder {OPENAI_1536} produces 1536-dimensional ones" in message
    assert "`stead memory reembed`" in message and "STEAD_EMBEDDER" in message
    assert (await scratch.column())[0] == 384, "nothing was altered"

    # The fix the message names, as a user runs it: as the owner, with the new embedder.
    env = {**os.environ, "DATABASE_URL": scratch.worker_dsn,
           "STEAD_MIGRATE_DATABASE_URL": scratch.owner_dsn,
           "TEMPORAL_ADDRESS": settings.temporal.address or "", "STEAD_MEMORY_BACKEND": "pgvector",
           "STEAD_EMBEDDER": "openai", "STEAD_EMBEDDER_BASE_URL": embeddings.base_url,
           "STEAD_EMBEDDER_API_KEY": EMBEDDER_KEY}
    p = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "stead"), "memory", "reembed", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 120)
    assert p.returncode == 0, err.decode()
    assert f"re-embedded 1 item(s) ({OPENAI_1536}, 1536 dimensions)" in out.decode()
    reopened = await open_memory(moved)
    assert reopened is not None
    try:
        [hit] = await reopened.search("acme", "the VPN drops at 02:00")
        assert (hit.item.id, hit.item.embedder) == ("vpn", OPENAI_1536)
    finally:
        await reopened.close()
    comment = (await scratch.column())[1]
    assert comment is not None and comment.startswith(
        f"{CHOSEN}chosen for {OPENAI_1536} (1536) by stead memory reembed, ")


async def test_a_configured_dimension_of_another_server_is_adopted(
        scratch: Scratch, settings: Settings) -> None:
    async with FakeOpenAIServer(api_key=EMBEDDER_KEY, embedding_dimensions=768) as srv:
        s = on(scratch, settings, **openai_embedder(srv, embedding_model="nomic-embed-text",
                                                    embedding_dimension=768))
        memory = await open_memory(s)
        assert memory is not None
        try:
            assert memory.embedder.name == "openai:nomic-embed-text:768"
            [vector] = await memory.embedder.embed(["disk full on db-2"])
            await memory.store.upsert([(MemoryItem(
                id="disk", tenant="acme", text="disk full on db-2",
                created_at=datetime.now(UTC), embedder=memory.embedder.name), vector)])
            [hit] = await memory.search("acme", "disk full on db-2")
        finally:
            await memory.close()
    assert hit.item.id == "disk" and hit.score == pytest.approx(1.0)
    assert (await scratch.column())[0] == 768


async def test_two_workers_starting_at_once_agree_and_a_third_embedder_is_refused(
        scratch: Scratch, settings: Settings, embeddings: FakeOpenAIServer) -> None:
    """Claims are serialised by the table lock: the same embedder twice both open; once an
    empty index is claimed, another embedder is refused (not a silent second change)."""
    s = on(scratch, settings, **openai_embedder(embeddings))
    both = await asyncio.gather(open_memory(s), open_memory(s), open_memory(s))
    for memory in both:
        assert memory is not None
        await memory.close()
    dimension, comment = await scratch.column()
    assert dimension == 1536 and comment is not None and OPENAI_1536 in comment

    with pytest.raises(DimensionMismatch) as info:
        await open_memory(s, embedder=HashingEmbedder(384))
    message = str(info.value)
    assert "the pgvector memory index is empty but stores 1536-dimensional vectors" in message
    assert f"its dimension was chosen for {OPENAI_1536} (1536) at the first start" in message
    assert "`stead memory reembed`" in message


async def test_embedders_of_two_dimensions_racing_for_a_fresh_index_leave_one_winner(
        scratch: Scratch, settings: Settings, embeddings: FakeOpenAIServer) -> None:
    s = on(scratch, settings, **openai_embedder(embeddings))
    results = await asyncio.gather(open_memory(s), open_memory(s, embedder=HashingEmbedder(384)),
                                   return_exceptions=True)
    opened = [r for r in results if isinstance(r, Memory)]
    refused = [r for r in results if isinstance(r, DimensionMismatch)]
    assert len(opened) == 1 and len(refused) == 1, results
    assert (await scratch.column())[0] == opened[0].embedder.dimension
    await opened[0].close()


async def test_a_worker_role_that_may_not_alter_the_index_says_who_can(
        scratch: Scratch, settings: Settings, embeddings: FakeOpenAIServer) -> None:
    """Workers that hold only the least-privilege DSN (docker-compose.yml's) check, and the
    message says how the owner gives the empty index its dimension."""
    s = on(scratch, settings, **openai_embedder(embeddings)).replace(migrate_database_url=None)
    with pytest.raises(DimensionMismatch) as info:
        await open_memory(s)
    message = str(info.value)
    assert "is empty but stores 384-dimensional vectors" in message
    assert "does not own the table" in message and "`stead memory reembed`" in message
    assert await scratch.column() == (384, None)


async def test_worker_start_refuses_embedder_settings_that_do_not_add_up(
        scratch: Scratch, settings: Settings, world: OpsWorld) -> None:
    """Checked before anything starts: no client, no ledger pool, nothing altered."""
    host = WorkerHost(on(scratch, settings, embedder="openai"), AgentCatalog([ops_agent(world)]))
    with pytest.raises(SettingsError, match=r"openai embedder \(STEAD_EMBEDDER=openai\) has no "
                                            r"API key"):
        await host.start()
    assert host.client is None and host.ledger is None
    assert await scratch.column() == (384, None)


@pytest.mark.embeddings  # the real MiniLM model
async def test_a_local_chat_server_without_embeddings_works_with_the_local_embedder(
        scratch: Scratch, settings: Settings, world: OpsWorld) -> None:
    """llama.cpp and many vLLM or Ollama setups serve chat but no embeddings: the chat model
    is theirs (OPENAI_BASE_URL), memory embeds with the offline MiniLM, nothing asks them
    for an embedding."""
    model = ScriptedModel([ModelTurn(content="auth-service looks healthy")])
    async with FakeOpenAIServer.from_model(model, api_key="sk-local") as chat:
        chat.inject(*(Fault("client_error", status=404, message="embeddings are not enabled "
                            "on this server (start it with --embeddings)")
                      for _ in range(20)), endpoint="embeddings")
        s = on(scratch, settings, openai_api_key=SecretStr("sk-local"),
               openai_base_url=chat.base_url, embedder="local")
        async with WorkerHost(s, AgentCatalog([ops_agent(world)])) as host:
            assert host.memory is not None
            wid, r = await _run(host, s, "is auth-service healthy?", "acme")

        assert chat.requests, "the chat model is the local server's"
        assert chat.embedding_requests == []
    assert (r.status, r.model) == ("completed", "openai:gpt-4o-mini")
    ledger = await Ledger.connect(scratch.owner_dsn)
    try:
        trail = await ledger.trail(wid)
    finally:
        await ledger.close()
    assert {m.embedder for m in trail.memory_ops} == {"minilm:all-MiniLM-L6-v2"}
    assert (await scratch.column())[0] == 384


async def test_a_pinecone_index_of_another_dimension_stops_the_worker_with_both_ways_out(
        settings: Settings, embeddings: FakeOpenAIServer, world: OpsWorld) -> None:
    async with FakePineconeServer(dimension=384, api_key="pc-key") as pinecone:
        s = settings.replace(memory_backend="pinecone", pinecone_api_key=SecretStr("pc-key"),
                             pinecone_host=pinecone.host, **openai_embedder(embeddings))
        host = WorkerHost(s, AgentCatalog([ops_agent(world)]))
        with pytest.raises(DimensionMismatch) as info:
            await host.start()
        assert host.worker is None
    message = str(info.value)
    assert ("the Pinecone memory index stores 384-dimensional vectors but the embedder "
            f"{OPENAI_1536} produces 1536-dimensional ones") in message
    assert "a Pinecone index keeps the dimension it was created with" in message
    assert "Create an index of dimension 1536" in message and "STEAD_PINECONE_HOST" in message

    async with FakePineconeServer(dimension=1536, api_key="pc-key") as pinecone:
        memory = await open_memory(s.replace(pinecone_host=pinecone.host))
        assert memory is not None and memory.backend == "pinecone"
        try:
            assert await memory.search("acme", "anything") == []
        finally:
            await memory.close()
