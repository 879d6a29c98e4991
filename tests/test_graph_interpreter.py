"""Graph semantics without a Temporal server: edges and branching, bounded evaluation retries,
the step budget, finish statuses, fallbacks, escalation of a lost call and approvals on the
tool-call path, run by ``stead.workflows._graph.GraphRun`` over a fake seam.

What these look like on a real stack (histories, replay, workers) is in
tests/test_graph_runs.py; here every activity is a handler and every timer fires at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from _fake_seam import FakeSeam, activity_failure, context
from pydantic import BaseModel

from stead import errors
from stead.authoring.agent import Agent
from stead.authoring.graph import Graph, custom, react, when
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import (
    ApprovalDecision,
    ModelRequest,
    ModelTurn,
    RunRequest,
    RunResult,
    ToolCall,
    ToolInvocation,
    ToolOutcome,
)
from stead.contracts.policy import Policy, Thresholds
from stead.integrations.llm import ScriptedModel
from stead.workflows._approvals import ApprovalBook
from stead.workflows._context import ALLOW_ALL, Frame
from stead.workflows._decisions import DecisionLog
from stead.workflows._graph import GraphRun


class Key(BaseModel):
    key: str


class Fact(BaseModel):
    value: str


def lab_tools() -> list[Tool[Key, Fact]]:
    async def never(args: Key, ctx: ToolContext) -> Fact:  # the fake seam answers instead
        raise AssertionError("tools run as activities")

    lookup = tool(side_effect="read", risk="low", name="lookup")(never)
    broken = tool(side_effect="read", risk="low", name="broken", fallbacks=["lookup"])(never)
    pay = tool(side_effect="write", risk="high", idempotent=False, name="pay")(never)
    return [lookup, broken, pay]


TOOLS = lab_tools()


def agent(graph: Graph | None = None, *, max_steps: int = 8,
          policy: Policy | None = None) -> Agent:
    return Agent(name="lab", instructions="answer from facts", tools=TOOLS,
                 offline_model=ScriptedModel([ModelTurn(content="offline")]),
                 max_steps=max_steps, policy=policy, graph=graph or react())


def calls(*names: str) -> ModelTurn:
    return ModelTurn(tool_calls=[ToolCall(id=f"c{i}", name=n, arguments='{"key": "sky"}')
                                 for i, n in enumerate(names)])


def answer(text: str = "the sky is blue") -> ModelTurn:
    return ModelTurn(content=text)


def model(*turns: ModelTurn) -> Any:
    script: Iterator[ModelTurn] = iter(turns)

    def complete(req: ModelRequest) -> ModelTurn:
        return next(script)
    return complete


def fact(inv: ToolInvocation) -> ToolOutcome:
    return ToolOutcome(tool=inv.tool, result={"value": "blue", "args": inv.arguments}, attempt=1)


async def run(a: Agent, seam: FakeSeam, text: str = "what colour is the sky"
              ) -> tuple[RunResult, Frame]:
    """``AgentWorkflow.run``'s part between pinning the plan and closing the run."""
    ctx = context(seam)
    plan = a.plan(model="fake")
    ctx.policy = plan.policy or ALLOW_ALL
    decisions = DecisionLog(ctx)
    frame = Frame.start(ctx, RunRequest(agent="lab", input=text, tenant="t"), plan)
    book = ApprovalBook(ctx, decisions)
    seam.book = book  # type: ignore[attr-defined]  # for scripted waits
    return await GraphRun(ctx, frame, decisions, book).run(), frame


def tool_payloads(frame: Frame) -> list[dict[str, Any]]:
    return [json.loads(m.content or "{}") for m in frame.gs.messages if m.role == "tool"]


async def test_the_react_loop_thinks_acts_and_answers() -> None:
    seam = FakeSeam(handlers={"model.complete": model(calls("lookup"), answer()),
                              "tool.lookup": fact})
    r, frame = await run(agent(), seam)
    assert (r.status, r.answer, r.steps, r.model_turns) == ("completed", "the sky is blue",
                                                            3, 2)
    assert seam.scheduled == ["model.complete", "tool.lookup", "model.complete"]
    assert r.path == ["route", "recall", "think", "act", "think", "check", "done"]
    assert tool_payloads(frame) == [{"ok": True, "tool": "lookup", "untrusted": True,
                                     "result": {"value": "blue", "args": {"key": "sky"}}}]


async def test_the_step_budget_ends_a_run_that_keeps_calling_tools() -> None:
    seam = FakeSeam(handlers={"model.complete": model(calls("lookup", "lookup")),
                              "tool.lookup": fact})
    r, frame = await run(agent(max_steps=2), seam)
    assert (r.status, r.error) == ("failed", "step budget of 2 exhausted before an answer")
    assert seam.scheduled == ["model.complete", "tool.lookup"]
    assert tool_payloads(frame)[1] == {"error": {"type": "BudgetExhausted",
                                                 "message": "step budget exhausted"}}


async def test_a_failed_tool_is_served_by_its_fallback() -> None:
    seam = FakeSeam(handlers={
        "model.complete": model(calls("broken"), answer()),
        "tool.broken": lambda inv: activity_failure("warehouse offline", attempt=3),
        "tool.lookup": fact})
    r, frame = await run(agent(), seam)
    assert r.status == "completed"
    assert (r.fallbacks, r.retries) == (1, 2)
    assert [(c.tool, c.served_by, c.status) for c in r.tool_calls] == [
        ("broken", "lookup", "ok")]
    assert tool_payloads(frame)[0]["tool"] == "lookup"


async def test_a_call_whose_outcome_is_lost_ends_the_run_escalated() -> None:
    """No status side channel: the typed ``Lost`` outcome ends the run, the model is not
    asked again."""
    seam = FakeSeam(handlers={
        "model.complete": model(calls("pay")),
        "tool.pay": lambda inv: activity_failure("worker died mid-call",
                                                 type=errors.TOOL_OUTCOME_UNKNOWN)})
    policy = Policy(id="lax", version=1, thresholds=Thresholds(approve_at=1.0, deny_at=1.0001))
    r, _ = await run(agent(policy=policy), seam)
    assert (r.status, r.error) == ("escalated", "worker died mid-call")
    assert seam.scheduled == ["model.complete", "tool.pay"]


async def test_an_approval_with_edited_arguments_runs_the_edit() -> None:
    policy = Policy(id="ask", version=1, thresholds=Thresholds(approve_at=0.0))

    def approve_edited() -> None:
        seam.book.apply(ApprovalDecision(  # type: ignore[attr-defined]
            approval_id="a2", by="alice", arguments={"key": "grass"}), approved=True,
            via="signal")

    seam = FakeSeam(handlers={"model.complete": model(calls("lookup"), answer()),
                              "tool.lookup": fact}, during_waits=[approve_edited])
    r, _ = await run(agent(policy=policy), seam)
    assert (r.status, r.approvals) == ("completed", 1)
    ran = [c.arg for c in seam.calls if c.name == "tool.lookup"]
    assert [inv.arguments for inv in ran] == [{"key": "grass"}]


async def test_an_approval_nobody_decides_denies_the_call_and_escalates_the_run() -> None:
    policy = Policy(id="ask", version=1, thresholds=Thresholds(approve_at=0.0))
    seam = FakeSeam(handlers={"model.complete": model(calls("lookup"), answer())})
    r, frame = await run(agent(policy=policy), seam)
    assert (r.status, r.denials, r.escalations) == ("escalated", 1, 2)
    assert "tool.lookup" not in seam.scheduled
    assert tool_payloads(frame)[0]["error"]["type"] == "PolicyDenied"


async def test_a_failing_evaluation_retries_a_bounded_number_of_times_then_branches() -> None:
    seam = FakeSeam(handlers={"model.complete": model(answer("a"), answer("b"), answer("c"))})
    never = custom("cites", lambda s: (False, "cite a fact"))
    r, frame = await run(agent(react(evaluators=[never], max_retries=2)), seam)
    # Three answers (two retries), then the review approval times out: denied.
    assert seam.scheduled.count("model.complete") == 3
    assert r.path == ["route", "recall", "think", "check", "evaluate", "think", "check",
                      "evaluate", "think", "check", "evaluate", "review", "denied"]
    assert r.status == "denied"
    assert frame.gs.evaluations["evaluate"].attempt == 3
    assert frame.gs.approvals == {"review": "expired"}


def fanout(on_error: str) -> Graph:
    g = (Graph("fan", version=1).route("route")
         .parallel("both", {"good": ("lookup", {"key": "sky"}),
                            "bad": ("broken", {"key": "sea"})},
                   on_error=on_error)  # type: ignore[arg-type]
         .branch("after").finish("done").finish("partial", status="failed"))
    g.edge("route", "both").edge("both", "after")
    g.edge("after", "partial", when=when.branch_failed).edge("after", "done")
    return g


async def test_parallel_branches_fail_on_their_own_and_edges_branch_on_it() -> None:
    def handlers() -> dict[str, Any]:
        return {"tool.lookup": lambda inv: fact(inv) if inv.arguments["key"] == "sky"
                else activity_failure("no such fact", attempt=1),
                "tool.broken": lambda inv: activity_failure("offline", attempt=1)}

    seam = FakeSeam(handlers=handlers())
    r, frame = await run(agent(fanout("continue")), seam)
    assert (r.status, r.path) == ("failed", ["route", "both", "after", "partial"])
    outcomes = frame.gs.outcomes["both"]
    assert (outcomes["good"].ok, outcomes["bad"].ok) == (True, False)
    assert outcomes["bad"].error == "broken failed after retries and fallbacks"

    seam = FakeSeam(handlers=handlers())
    r, _ = await run(agent(fanout("fail")), seam)
    assert (r.status, r.error) == ("failed", "node 'both': bad failed (on_error=fail)")
    assert r.path == ["route", "both"]


def patched_graph() -> Graph:
    g = Graph("patch", version=1).route("route").finish("new").finish("old", status="refused")
    g.edge("route", "new", when=when.patched("new-path")).edge("route", "old")
    return g


async def test_a_patched_edge_is_taken_by_new_runs_only() -> None:
    seam = FakeSeam(patches=["new-path"])
    r, _ = await run(agent(patched_graph()), seam)
    assert (r.status, r.path) == ("completed", ["route", "new"])
    seam = FakeSeam()
    r, _ = await run(agent(patched_graph()), seam)
    assert (r.status, r.path) == ("refused", ["route", "old"])
    assert seam.asked_patches == ["new-path"]


async def test_a_denied_call_turns_a_completed_run_into_denied() -> None:
    policy = Policy(id="no-pay", version=1, deny_tools=["pay"])
    seam = FakeSeam(handlers={"model.complete": model(calls("pay"), answer("could not pay"))})
    r, _ = await run(agent(policy=policy), seam)
    assert (r.status, r.denials) == ("denied", 1)
    assert seam.scheduled == ["model.complete", "model.complete"]
