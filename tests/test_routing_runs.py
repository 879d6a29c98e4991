"""Routing and risk inputs end to end: hand-over to another agent, model confidence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import ModelTurn, RunRequest, RunResult, RunState
from stead.contracts.policy import parse_policy
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.worker import WorkerHost


class Note(BaseModel):
    text: str


class Saved(BaseModel):
    ok: bool


@tool(side_effect="write", risk="medium")
async def save_note(args: Note, ctx: ToolContext) -> Saved:
    """Save a note."""
    return Saved(ok=True)


TRIAGE = parse_policy("""
id: triage
version: 1
routing:
  - name: to-payments
    when: {keywords: [refund, chargeback]}
    action: agent
    agent: payments
""")
PAYMENTS = parse_policy("""
id: payments
version: 2
routing:
  - name: back-to-triage
    when: {keywords: [bounce]}
    action: agent
    agent: triage
""")
CAUTIOUS = parse_policy("""
id: cautious
version: 1
thresholds: {approve_at: 0.4}
risk:
  low_confidence: 0.2
approvals: {timeout_seconds: 600}
""")


def _agent(name: str, answer: str, policy: object) -> Agent:
    return Agent(name=name, instructions=f"You are {name}.", tools=[save_note],
                 offline_model=ScriptedModel([ModelTurn(content=answer)], name=f"scripted:{name}"),
                 policy=policy)  # type: ignore[arg-type]


@pytest.fixture
async def host(settings: Settings) -> AsyncIterator[WorkerHost]:
    catalog = AgentCatalog([_agent("triage", "triage answered", TRIAGE),
                            _agent("payments", "payments answered", PAYMENTS)])
    async with WorkerHost(settings, catalog) as h:
        yield h


async def _result(host: WorkerHost, settings: Settings, agent: str, text: str) -> RunResult:
    assert host.client is not None
    h = await start_run(host.client, RunRequest(agent=agent, input=text),
                        temporal=settings.temporal)
    return await asyncio.wait_for(h.result(), 60)


async def test_routing_hands_the_request_to_another_agent_under_its_policy(
        host: WorkerHost, settings: Settings) -> None:
    r = await _result(host, settings, "triage", "I want a refund for order 12")
    assert (r.status, r.answer) == ("completed", "payments answered")
    assert r.model == "scripted:payments" and r.policy == "payments@2"
    assert r.route == "agent:to-payments > allow"


async def test_a_second_hand_over_is_refused_instead_of_looping(
        host: WorkerHost, settings: Settings) -> None:
    r = await _result(host, settings, "triage", "refund, then bounce it back")
    assert r.status == "refused" and "at most once" in (r.answer or "")
    assert r.model_turns == 0


async def test_requests_no_rule_matches_stay_with_the_agent(
        host: WorkerHost, settings: Settings) -> None:
    r = await _result(host, settings, "triage", "hello")
    assert (r.answer, r.route) == ("triage answered", "allow")


def test_hand_over_to_an_agent_the_worker_lacks_is_a_spec_error() -> None:
    from stead.errors import SpecError

    with pytest.raises(SpecError, match="hands over to 'payments'"):
        AgentCatalog([_agent("triage", "x", TRIAGE)])


@pytest.mark.parametrize(("confidence", "asks"), [(0.2, True), (0.95, False)])
async def test_low_model_confidence_raises_risk_until_a_human_is_asked(
        settings: Settings, confidence: float, asks: bool) -> None:
    model = ScriptedModel([
        ModelTurn(tool_calls=[call("save_note", call_id="c1", text="x")], confidence=confidence),
        ModelTurn(content="saved")])
    agent = Agent(name="notes", instructions="Take notes.", tools=[save_note],
                  offline_model=model, policy=CAUTIOUS)
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="notes", input="note x"),
                            temporal=settings.temporal)
        state = None
        for _ in range(100):
            state = await h.query("state", result_type=RunState)
            if state.pending_approvals or state.status != "running":
                break
            await asyncio.sleep(0.05)
        assert state is not None
        if asks:
            [p] = state.pending_approvals
            assert any(f.startswith("confidence:0.2") for f in p.factors), p.factors
            await h.signal("approve", {"approval_id": p.approval_id, "by": "t"})
        r = await asyncio.wait_for(h.result(), 60)
        assert r.status == "completed" and r.approvals == (1 if asks else 0)
