"""Oversized payloads fail fast: a tool result or a model answer bigger than
``STEAD_MAX_PAYLOAD_BYTES`` fails its call at once with ``PayloadTooLarge`` (not retried, on
record in the ledger) instead of being retried against Temporal's 2 MiB payload limit — or,
summed into the next model request, failing the workflow task forever."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import ModelTurn, RetrySpec, RunRequest, RunResult
from stead.errors import PAYLOAD_TOO_LARGE, SettingsError
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings, load_settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost


class Size(BaseModel):
    n: int


class Blob(BaseModel):
    text: str


def _agent(ran: list[int], n: int, *, answer: str = "done") -> Agent:
    """An agent that exports ``n`` bytes once, then answers ``answer``."""

    @tool(side_effect="write", idempotent=True, retry=RetrySpec(initial_interval=0.1,
                                                               max_attempts=4))
    async def export(args: Size, ctx: ToolContext) -> Blob:
        """Export n bytes of text."""
        ran.append(ctx.attempt)
        return Blob(text="x" * args.n)

    script = [ModelTurn(tool_calls=[call("export", call_id="c1", n=n)]),
              ModelTurn(content=answer)]
    return Agent(name="exporter", instructions="Export, then answer.", tools=[export],
                 offline_model=ScriptedModel(script))


async def _run(settings: Settings, agent: Agent) -> tuple[str, RunResult]:
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="exporter", input="export"),
                            temporal=settings.temporal)
        return h.id, await asyncio.wait_for(h.result(), 60)


async def test_a_multi_megabyte_tool_result_fails_its_call_once_not_retried(
        settings: Settings, ledger: Ledger) -> None:
    ran: list[int] = []
    wid, r = await _run(settings, _agent(ran, 3_000_000))

    assert r.status == "completed"  # the model is told the call failed and answers
    [c] = r.tool_calls
    assert (c.status, c.attempts) == ("error", 1)
    assert "over the 1,500,000-byte payload limit (STEAD_MAX_PAYLOAD_BYTES)" in (c.error or "")
    assert ran == [1], "the tool ran again"
    trail = await ledger.trail(wid)
    assert [(a.attempt, a.status, a.error_type) for a in trail.tool_attempts] == [
        (1, "error", PAYLOAD_TOO_LARGE)]
    assert [x.status for x in trail.tool_calls] == ["failed"]
    assert await ledger.verify_chain(wid) == []


async def test_the_limit_is_the_setting(settings: Settings, ledger: Ledger) -> None:
    small = settings.replace(max_payload_bytes=4096)
    ran: list[int] = []
    _, fits = await _run(small, _agent(ran, 3000))
    _, too_big = await _run(small, _agent(ran, 5000))

    assert [c.status for c in fits.tool_calls] == ["ok"]
    [c] = too_big.tool_calls
    assert c.status == "error" and "over the 4,096-byte payload limit" in (c.error or "")


async def test_an_oversized_model_answer_fails_the_run_at_once(
        settings: Settings, ledger: Ledger) -> None:
    small = settings.replace(max_payload_bytes=4096)
    wid, r = await _run(small, _agent([], 10, answer="y" * 10_000))

    assert r.status == "failed"
    assert (r.error or "").startswith("model call failed: the model's answer is ")
    assert "payload limit" in (r.error or "")
    answers = [m for m in (await ledger.trail(wid)).model_calls if m.step == 3]
    assert [(m.attempt, m.status) for m in answers] == [(1, "error")]


def test_a_limit_below_one_kilobyte_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_MAX_PAYLOAD_BYTES", "100")
    with pytest.raises(SettingsError, match="STEAD_MAX_PAYLOAD_BYTES"):
        load_settings()


async def test_results_that_fit_alone_but_not_together_end_the_run_instead_of_hanging(
        settings: Settings, ledger: Ledger) -> None:
    """Two 1 MB results each fit the per-call limit; the next model request would carry both
    (over Temporal's 2 MiB), so the run fails saying so rather than failing every task.
    (Inline results: the blob threshold is raised above them; by reference, the run would
    complete — tests/test_blobs.py.)"""
    ran: list[int] = []

    @tool(side_effect="read", idempotent=True)
    async def export(args: Size, ctx: ToolContext) -> Blob:
        """Export n bytes of text."""
        ran.append(ctx.attempt)
        return Blob(text="x" * args.n)

    script = [ModelTurn(tool_calls=[call("export", call_id="c1", n=1_000_000)]),
              ModelTurn(tool_calls=[call("export", call_id="c2", n=1_000_000)]),
              ModelTurn(content="never reached")]
    agent = Agent(name="exporter", instructions="Export twice.", tools=[export],
                  offline_model=ScriptedModel(script))
    wid, r = await _run(settings.replace(blob_threshold_bytes=2_000_000), agent)

    assert r.status == "failed"
    assert r.error is not None and "over the 1,800,000 one model request may carry" in r.error
    assert [c.status for c in r.tool_calls] == ["ok", "ok"] and ran == [1, 1]
    assert r.model_turns == 2
    assert await ledger.verify_chain(wid) == []
