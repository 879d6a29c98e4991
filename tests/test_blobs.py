"""Payloads by reference: the blob store, and tool results over the threshold that reach the
model in full while Temporal's history carries only their digest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from pydantic import BaseModel
from temporalio.client import WorkflowHistory

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import Message, ModelTurn, RunRequest, ToolSchema
from stead.integrations.llm import FunctionModel, call
from stead.settings import Settings
from stead.storage.blobs import (
    BLOB_KEY,
    EMPTY_CONTEXT,
    BlobError,
    BlobMissing,
    BlobStore,
    BlobTooLarge,
    canonical_json,
    digest_of,
)
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost


async def _rows(ledger: Ledger, digest: str) -> int:
    async with ledger.pool.acquire() as c:
        n: int = await c.fetchval("select count(*) from stead_blobs where digest=$1", digest)
        return n


async def test_put_get_round_trip_is_idempotent(ledger: Ledger) -> None:
    store = BlobStore(ledger.pool)
    body = f"round trip {id(store)}".encode()
    d1 = await store.put(body)
    d2 = await store.put(body)

    assert d1 == d2 == digest_of(body) and d1.startswith("sha256:") and len(d1) == 71
    assert await store.get(d1) == body
    assert await _rows(ledger, d1) == 1
    assert await store.get_json(await store.put_json({"b": [1, 2], "a": "é"})) == {
        "a": "é", "b": [1, 2]}


async def test_a_missing_digest_is_a_clear_error_naming_it(ledger: Ledger) -> None:
    store = BlobStore(ledger.pool)
    absent = digest_of(b"never stored anywhere \x00\x01")
    with pytest.raises(BlobMissing, match=absent) as info:
        await store.get(absent)
    assert info.value.digests == [absent]
    with pytest.raises(BlobError, match="not a blob digest"):
        await store.get("sha256:nope")


async def test_an_oversized_body_fails_fast_and_nothing_is_written(ledger: Ledger) -> None:
    store = BlobStore(ledger.pool, max_bytes=1000)
    small, big = b"fits", b"x" * 1001
    with pytest.raises(BlobTooLarge, match="1,001-byte payload is over the 1,000-byte"):
        await store.put_many([small + b" too", big])
    assert await _rows(ledger, digest_of(small + b" too")) == 0  # not half-way either


async def test_manifests_store_each_message_once(ledger: Ledger) -> None:
    store = BlobStore(ledger.pool)
    assert await store.load_manifest(EMPTY_CONTEXT) == []  # known without a row
    hello = Message(role="user", content=f"hello {id(store)}")
    reply = Message(role="assistant", content="hi")
    first = await store.extend_manifest(EMPTY_CONTEXT, [hello, reply])
    more = Message(role="user", content="and again")
    second = await store.extend_manifest(first, [more])

    assert await store.load_manifest(second) == [hello, reply, more]
    listed = await store.manifest(second)
    assert listed[:2] == await store.manifest(first)  # the same message digests, not copies
    assert await _rows(ledger, listed[0]) == 1
    with pytest.raises(BlobError, match="is not a context manifest"):
        await store.load_manifest(await store.put(b'{"not": "a list"}'))


async def test_references_in_tool_messages_expand_to_the_full_result(ledger: Ledger) -> None:
    store = BlobStore(ledger.pool)
    result = {"rows": ["r" * 50] * 10}
    digest = await store.put(canonical_json(result))
    ref = {BLOB_KEY: digest, "bytes": 9, "preview": "..."}
    tool_msg = Message(role="tool", tool_call_id="c1", name="t",
                       content=json.dumps({"ok": True, "result": ref}))
    user = Message(role="user", content='{"$blob": "not a reference"}')
    out = await store.expand_messages([user, tool_msg])

    assert out[0] is user
    assert json.loads(out[1].content or "") == {"ok": True, "result": result}


def _raw(history: WorkflowHistory) -> bytes:
    """Every event as serialized in history (payloads as the bytes Temporal stores)."""
    return b"".join(e.SerializeToString() for e in history.events)


class Big(BaseModel):
    n: int


class Report(BaseModel):
    body: str


def _reader(seen: list[str]) -> Agent:
    """An agent that fetches a big report and answers with its last line, which only a model
    that read the whole result can know."""

    @tool(side_effect="read", idempotent=True)
    async def fetch_report(args: Big, ctx: ToolContext) -> Report:
        """Fetch a report of n bytes."""
        return Report(body="x" * args.n + " END-OF-REPORT-7731")

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        tool_msgs = [m for m in messages if m.role == "tool"]
        if not tool_msgs:
            return ModelTurn(tool_calls=[call("fetch_report", call_id="c1", n=20_000)])
        seen.append(tool_msgs[-1].content or "")
        body = json.loads(tool_msgs[-1].content or "{}")["result"]["body"]
        return ModelTurn(content=f"the report ends with {body.split()[-1]}")

    return Agent(name="reader", instructions="Read the report.", tools=[fetch_report],
                 offline_model=FunctionModel(plan, name="reader"))


async def test_a_big_tool_output_reaches_the_model_but_history_holds_its_digest(
        settings: Settings, ledger: Ledger) -> None:
    seen: list[str] = []
    async with WorkerHost(settings, AgentCatalog([_reader(seen)])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="reader", input="read it"),
                            temporal=settings.temporal)
        r = await asyncio.wait_for(h.result(), 60)
        history = _raw(await h.fetch_history())

    assert r.status == "completed" and r.answer == "the report ends with END-OF-REPORT-7731"
    assert len(seen[0]) > 20_000  # the model read all of it
    full = canonical_json(json.loads(seen[0])["result"])
    digest = digest_of(full)
    assert digest.encode() in history
    assert b"x" * 1000 not in history
    # Only in the answer, which the model wrote (its turn, the run's result).
    assert history.count(b"END-OF-REPORT-7731") == history.count(b"ends with END-OF-REPORT")
    assert len(history) < 20_000
    # The ledger keeps the full result: it is the audit.
    [row] = (await ledger.trail(h.id)).tool_calls
    assert row.result["body"].endswith("END-OF-REPORT-7731")


async def test_a_small_output_stays_inline(settings: Settings) -> None:
    seen: list[str] = []
    low = settings.replace(blob_threshold_bytes=100_000)
    async with WorkerHost(low, AgentCatalog([_reader(seen)])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="reader", input="read it"),
                            temporal=low.temporal)
        r = await asyncio.wait_for(h.result(), 60)
        history = _raw(await h.fetch_history())
    assert r.status == "completed"
    assert b"x" * 1000 in history and BLOB_KEY.encode() not in history
