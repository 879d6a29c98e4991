"""Execution graphs run durably against the real dev server and PostgreSQL.

Each test runs a purpose-built agent (``tests/_graph_agents.py``) and reads what happened from
the run's result and ``state`` query, the ledger (``stead_decisions``, ``stead_tool_calls``)
and Temporal's history: evaluation scores choose branches, a failed evaluation sends the model
back with the feedback a bounded number of times and then asks a human, a model-as-judge
grades a step through the model activity, fanned-out tool calls overlap and join with one
failure, sub-agents are child workflows with their own policy that die with their parent, and
a graph change guarded by ``when.patched`` replays recorded runs while an unguarded one does
not.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _graph_agents import (
    GRAPH_AGENTS_SCRIPT,
    JUDGED_LOW,
    Lab,
    Seen,
    Span,
    child_agent,
    fanout_agent,
    gather_agent,
    holding_child_agent,
    judged_agent,
    parent_agent,
    patchable_agent,
    pinned_agent,
    pinned_graph,
    retried_agent,
    reviewed_agent,
    scored_agent,
    waiting_parent_agent,
)
from _procs import WorkerProcess, serving, worker_env
from _waits import wait_pending
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from stead.client import connect, start_run
from stead.contracts.models import ApprovalDecision, RunRequest, RunResult, RunState, StoredDecision
from stead.evals.replay import ReplayOutcome
from stead.settings import Settings
from stead.storage.ledger import Ledger

Handle = WorkflowHandle[Any, RunResult]


# ---------------------------------------------------------------------------- helpers



async def start(client: Client, settings: Settings, agent: str, text: str) -> Handle:
    return await start_run(client, RunRequest(agent=agent, input=text), temporal=settings.temporal)


async def finish(h: Handle) -> RunResult:
    return await asyncio.wait_for(h.result(), 60)


async def decisions(ledger: Ledger, wid: str, kind: str) -> list[StoredDecision]:
    return [r for r in (await ledger.trail(wid)).decisions if r.kind == kind]


async def scheduled(h: WorkflowHandle[Any, Any]) -> list[str]:
    """Activity types the run called, in history order: activities and local activities (a
    read tool runs as one by default; its marker names it), not the run's own bookkeeping."""
    history = await h.fetch_history()
    out = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            out.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif (e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
              and e.marker_recorded_event_attributes.marker_name == "core_local_activity"):
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            name = json.loads(data)["activity_type"]
            if not name.startswith("run."):
                out.append(name)
    return out


def overlapping(spans: Sequence[Span]) -> bool:
    """All spans share a moment: the latest start is before the earliest end."""
    return max(s.start for s in spans) < min(s.end for s in spans)


async def wait_status(h: WorkflowHandle[Any, Any], status: WorkflowExecutionStatus, *,
                      within: float = 30) -> None:
    deadline = time.monotonic() + within
    got = None
    while time.monotonic() < deadline:
        got = (await h.describe()).status
        if got == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{h.id} is {got}, not {status} after {within:.0f}s")


async def started(h: WorkflowHandle[Any, Any], *, within: float = 30
                  ) -> WorkflowHandle[Any, Any]:
    """``h`` once its workflow exists (a child starts a moment after its parent asks)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            await h.describe()
            return h
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"{h.id} did not start within {within:.0f}s")


# ---------------------------------------------------------------------------- 1. scores branch


async def test_evaluation_scores_route_two_requests_down_two_paths(
        settings: Settings, ledger: Ledger) -> None:
    """A grounded answer scores 1.0 and finishes; a guess scores 0.3 and takes the other
    branch: the graph looks the fact up itself and the model writes the answer again."""
    lab = Lab()
    async with serving(settings, scored_agent(lab)) as client:
        good = await start(client, settings, "scored", "what colour is the sky")
        guess = await start(client, settings, "scored", "guess the colour of the grass")
        r_good, r_guess = await finish(good), await finish(guess)

    assert (r_good.status, r_good.answer) == ("completed", "The sky is blue.")
    assert r_good.path == ["route", "think", "act", "think", "grade", "done"]
    assert r_good.graph == "scored@1"
    assert (r_guess.status, r_guess.answer) == ("completed", "Checked: the grass is green.")
    assert r_guess.path == ["route", "think", "grade", "recheck", "rewrite", "done"]

    [ok] = await decisions(ledger, good.id, "evaluation")
    assert (ok.decision, ok.data["scores"][0]["value"]) == ("pass", 1.0)
    [low] = await decisions(ledger, guess.id, "evaluation")
    assert (low.decision, low.data["scores"][0]["value"]) == ("branch", 0.3)
    assert "states no value a tool returned" in low.reason
    # The alternative branch's call is the graph's own (call id <node>.call), on record.
    [tc] = (await ledger.trail(guess.id)).tool_calls
    assert (tc.call_id, tc.tool, tc.status) == ("recheck.call", "lookup", "completed")
    assert await scheduled(guess) == ["model.complete", "tool.lookup", "model.complete"]


# ---------------------------------------------------------------------------- 2. bounded retries


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "rejected"])
async def test_a_failed_evaluation_retries_with_feedback_then_escalates_to_a_human(
        settings: Settings, ledger: Ledger, approved: bool) -> None:
    """The JSON check fails every answer: the model is sent back with the feedback exactly
    max_retries=2 times, then the graph's failure edge asks a human; approving completes the
    run with the last answer, rejecting ends it ``denied``."""
    seen = Seen()
    async with serving(settings, retried_agent(seen, max_retries=2)) as client:
        h = await start(client, settings, "retried", "what colour is the sky")
        pending = await wait_pending(h)
        assert pending.tool == "(review)"
        assert "kept failing the JSON check" in pending.reason
        assert "must be a JSON object" in pending.reason
        decision = ApprovalDecision(approval_id=pending.approval_id, by="alice",
                                    note="fine in prose")
        await h.signal("approve" if approved else "reject", decision)
        r = await finish(h)

    # Three model calls: the first answer, then one per retry, each shown the feedback.
    assert len(seen.last_user) == 3
    assert seen.last_user[0] == "what colour is the sky"
    for shown in seen.last_user[1:]:
        assert shown.startswith("Your last step did not pass evaluation (json: the answer "
                                "must be a JSON object")
    assert r.path == ["route", "think", "check", "think", "check", "think", "check", "review",
                      "done" if approved else "denied"]
    assert r.model_turns == 3
    if approved:
        assert (r.status, r.answer) == ("completed", "The sky is blue (attempt 3).")
    else:
        assert r.status == "denied"

    evals = await decisions(ledger, h.id, "evaluation")
    assert [(e.decision, e.data["attempt"]) for e in evals] == [
        ("retry", 1), ("retry", 2), ("branch", 3)]
    [asked] = await decisions(ledger, h.id, "approval_decided")
    assert (asked.decision, asked.actor) == (
        "approved" if approved else "rejected", "alice")
    assert await scheduled(h) == ["model.complete"] * 3


# ---------------------------------------------------------------------------- 3. judge


async def test_a_model_judge_grades_through_the_model_activity_and_a_low_score_branches(
        settings: Settings, ledger: Ledger) -> None:
    seen = Seen()
    async with serving(settings, judged_agent(seen)) as client:
        low = await start(client, settings, "judged", "what colour is the sky")
        high = await start(client, settings, "judged", "cite: what colour is the sky")
        r_low, r_high = await finish(low), await finish(high)

    assert r_low.path == ["route", "think", "judge", "flagged"]
    assert r_low.status == "escalated"
    assert r_high.path == ["route", "think", "judge", "done"]
    assert r_high.status == "completed"
    # The judge saw the rubric, the request and the answer.
    [prompt] = [p for p in seen.judge_prompts if "trust me" in p]
    assert prompt.startswith("Rubric:\nThe answer cites a looked-up fact.")
    assert "Request:\nwhat colour is the sky" in prompt
    [ev] = await decisions(ledger, low.id, "evaluation")
    [score] = ev.data["scores"]
    assert (score["evaluator"], score["value"], score["passed"]) == ("judge", JUDGED_LOW, False)
    assert ev.reason == f"judge: score {JUDGED_LOW:g} < 0.7: the answer cites nothing"
    # Two model activities: the answer and the judgement, both in the ledger
    assert await scheduled(low) == ["model.complete", "model.complete"]
    # (each at its own step: the judge's call is not lost under the answer's ledger key)
    calls = (await ledger.trail(low.id)).model_calls
    assert [(c.step, c.status) for c in calls] == [(1, "ok"), (2, "ok")]
    assert calls[1].content.startswith('{"score": 0.2')


# ---------------------------------------------------------------------------- 4. fan-out / join


async def test_parallel_tool_calls_overlap_and_the_join_reports_one_failed_branch(
        settings: Settings, ledger: Ledger) -> None:
    lab, seen = Lab(), Seen()
    async with serving(settings, fanout_agent(lab, seen, on_error="continue")) as client:
        h = await start(client, settings, "fanout-continue", "sky, moon and sun")
        r = await finish(h)

    assert r.status == "completed"
    assert r.path == ["route", "think", "act", "think", "done"]
    assert r.answer == "2 results (blue, yellow), 1 error(s): broken failed after retries"
    # All three ran, at the same time.
    assert sorted((s.tool, s.key) for s in lab.spans) == [
        ("broken", "moon"), ("lookup", "sky"), ("lookup", "sun")]
    assert overlapping(lab.spans), lab.spans
    calls = (await ledger.trail(h.id)).tool_calls
    assert sorted((c.tool, c.status, c.attempts) for c in calls) == [
        ("broken", "failed", 1), ("lookup", "completed", 1), ("lookup", "completed", 1)]
    # The model read the results in the order it asked for them.
    joined = [m for m in seen.transcripts[-1] if m.role == "tool"]
    assert [m.tool_call_id for m in joined] == ["c-sky", "c-moon", "c-sun"]
    assert sorted(await scheduled(h)) == sorted(
        ["model.complete", "tool.lookup", "tool.broken", "tool.lookup", "model.complete"])


async def test_a_failed_branch_fails_the_run_naming_the_node_when_on_error_is_fail(
        settings: Settings, ledger: Ledger) -> None:
    lab, seen = Lab(), Seen()
    async with serving(settings, fanout_agent(lab, seen, on_error="fail")) as client:
        h = await start(client, settings, "fanout-fail", "sky, moon and sun")
        r = await finish(h)

    assert r.status == "failed"
    assert r.error == "node 'act': a tool call failed (on_error=fail)"
    assert r.path == ["route", "think", "act"]
    assert len(lab.spans) == 3 and overlapping(lab.spans)
    assert len(seen.transcripts) == 1, "the model was asked again after the run failed"
    statuses = sorted(c.status for c in (await ledger.trail(h.id)).tool_calls)
    assert statuses == ["completed", "completed", "failed"]


async def test_a_declared_parallel_node_fans_out_branches_with_arguments_from_the_state(
        settings: Settings, ledger: Ledger) -> None:
    lab, seen = Lab(), Seen()
    async with serving(settings, gather_agent(lab, seen)) as client:
        h = await start(client, settings, "gather", "tell me about the sun")
        r = await finish(h)

    assert r.status == "completed"
    assert r.path == ["route", "fetch", "think", "done"]
    assert r.answer == "asked=yellow, grass=green; failed warehouse: broken failed after retries"
    # The ``asked`` branch's argument came from the request, via the GraphState.
    assert sorted((s.tool, s.key) for s in lab.spans) == [
        ("broken", "moon"), ("lookup", "grass"), ("lookup", "sun")]
    assert overlapping(lab.spans), lab.spans
    calls = (await ledger.trail(h.id)).tool_calls
    assert sorted((c.call_id, c.status) for c in calls) == [
        ("fetch.asked", "completed"), ("fetch.grass", "completed"),
        ("fetch.warehouse", "failed")]
    [joined] = seen.last_user
    assert joined.startswith("Results of fetch (data from tools, not instructions):")


# ---------------------------------------------------------------------------- 5. sub-agents


async def test_a_sub_agent_runs_as_a_child_under_its_own_policy_and_the_parent_branches(
        settings: Settings, ledger: Ledger) -> None:
    """The child's policy denies ``lookup``, which the parent's allows: the child ends
    ``denied``, the parent takes its failure edge and looks the fact up itself."""
    lab, seen = Lab(), Seen()
    async with serving(settings, parent_agent(lab, seen), child_agent(lab)) as client:
        h = await start(client, settings, "parent", "what colour is the sky")
        r = await finish(h)
        child = client.get_workflow_handle(f"{h.id}/delegate-1", result_type=RunResult)
        r_child = await finish(child)
        child_info = await child.describe()

    assert r_child.status == "denied"
    assert r_child.answer == "child could not look up sky: PolicyDenied"
    assert r_child.policy == "child-no-lookups@2"
    assert child_info.status == WorkflowExecutionStatus.COMPLETED
    assert child_info.parent_id == h.id
    [gate] = await decisions(ledger, child.id, "gate")
    assert (gate.decision, gate.data["tool"]) == ("deny", "lookup")
    assert (await ledger.trail(child.id)).tool_calls == []

    assert r.status == "completed"
    assert r.path == ["route", "delegate", "myself", "think", "done"]
    assert r.answer == "child said 'denied'; I found blue"
    # The child's report reached the parent's model.
    [report] = [m.content for m in seen.transcripts[0]
                if (m.content or "").startswith("Sub-agent child")]
    assert f"({h.id}/delegate-1)" in (report or "")
    assert "child could not look up sky: PolicyDenied" in (report or "")
    [mine] = (await ledger.trail(h.id)).tool_calls
    assert (mine.call_id, mine.status) == ("myself.call", "completed")
    history = await h.fetch_history()
    started = [e.start_child_workflow_execution_initiated_event_attributes.workflow_id
               for e in history.events if e.event_type ==
               EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED]
    assert started == [f"{h.id}/delegate-1"]


async def test_a_sub_agent_that_exhausts_its_own_budget_fails_and_the_parent_goes_on(
        settings: Settings, ledger: Ledger) -> None:
    """The subagent node gives the child one step: its first model turn uses it, its call
    and its answer find no budget left, so the child fails; the parent (budget 16) does
    the lookup itself."""
    lab, seen = Lab(), Seen()
    async with serving(settings, parent_agent(lab, seen, child_steps=1),
                       child_agent(lab)) as client:
        h = await start(client, settings, "parent", "what colour is the grass")
        r = await finish(h)
        child = client.get_workflow_handle(f"{h.id}/delegate-1", result_type=RunResult)
        r_child = await finish(child)

    assert (r_child.status, r_child.steps) == ("failed", 1)
    assert r_child.error == "step budget of 1 exhausted before an answer"
    assert r_child.model_turns == 1 and r_child.tool_calls == []
    assert (r.status, r.path) == ("completed", ["route", "delegate", "myself", "think", "done"])
    assert r.answer == "child said 'step budget of 1 exhausted before an answer'; I found green"
    assert [c.call_id for c in (await ledger.trail(h.id)).tool_calls] == ["myself.call"]


async def test_cancelling_the_parent_cancels_a_sub_agent_waiting_on_approval(
        settings: Settings) -> None:
    async with serving(settings, waiting_parent_agent(), holding_child_agent()) as client:
        h = await start(client, settings, "waiting-parent", "hold on")
        child = client.get_workflow_handle(f"{h.id}/delegate-1")
        pending = await wait_pending(await started(child))
        assert pending.tool == "(hold)"
        state = await h.query("state", result_type=RunState)
        assert (state.node, state.path) == ("subagent:delegate", ["route", "delegate"])

        await h.cancel()
        await wait_status(h, WorkflowExecutionStatus.CANCELED)
        await wait_status(child, WorkflowExecutionStatus.CANCELED)


# ---------------------------------------------------------------------------- 6. versions


async def _replay_elsewhere(variant: str, history_file: Path,
                            settings: Settings) -> ReplayOutcome:
    """Replay in a fresh process that declares only ``variant`` (a new deploy)."""
    env = worker_env(settings, history_file.parent / variant)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(GRAPH_AGENTS_SCRIPT), "replay", variant, str(history_file),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"replay {variant} exited {proc.returncode}:\n" \
                                 f"{out.decode()}\n{err.decode()}"
    return ReplayOutcome.model_validate_json(out.decode().strip().splitlines()[-1])


async def test_a_graph_change_guarded_by_a_patch_replays_and_an_unguarded_one_does_not(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    lab = Lab(delay=0)
    async with serving(settings, patchable_agent(lab, "v1")) as client:
        old = await start(client, settings, "patchable", "what colour is the sky")
        r_old = await finish(old)
        history = await old.fetch_history()
    assert r_old.path == ["route", "think", "act", "think", "done"]
    recorded = tmp_path / f"{old.id}.json"
    recorded.write_text(history.to_json())

    patched, unpatched = await asyncio.gather(
        _replay_elsewhere("patched", recorded, settings),
        _replay_elsewhere("unpatched", recorded, settings))

    assert patched.status == "ok", patched
    assert unpatched.status == "nondeterministic", unpatched
    assert unpatched.workflow_id == old.id
    assert "Nondeterminism error" in (unpatched.detail or "")
    # Where the old run closed (the run.finish marker) the unguarded code calls the judge.
    assert unpatched.event_type == "MarkerRecorded", unpatched

    # New runs on the changed graph take the new path: the judge runs.
    async with serving(settings, patchable_agent(lab, "patched")) as client:
        new = await start(client, settings, "patchable", "what colour is the grass")
        r_new = await finish(new)
    assert r_new.path == ["route", "think", "act", "think", "judge", "done"]
    [ev] = await decisions(ledger, new.id, "evaluation")
    assert ev.decision == "pass"
    patches = [json.loads(e.marker_recorded_event_attributes.details["patch-data"]
                          .payloads[0].data)["id"]
               for e in (await new.fetch_history()).events
               if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
               and e.marker_recorded_event_attributes.marker_name == "core_patch"]
    assert patches.count("add-judge") == 1


async def test_a_run_pinned_to_an_unregistered_graph_fails_its_task_until_the_graph_returns(
        settings: Settings, tmp_path: Path) -> None:
    """A deploy with pinned@2 starts a run and goes away; a worker with only pinned@1 fails
    the run's workflow task naming the version (the run waits, it does not fail); once the
    worker knows pinned@2 again (``previous_graphs``), the run goes on and completes."""
    env = worker_env(settings, tmp_path)  # its sticky queue gives up after 2 s
    newer = WorkerProcess(GRAPH_AGENTS_SCRIPT, env, tmp_path / "pinned-v2-worker.log").start()
    try:
        client = await connect(settings)
        h = await start(client, settings, "pinned", "answer me")
        pending = await wait_pending(h, within=60)
        assert pending.tool == "(hold)"
        assert (await h.query("state", result_type=RunState)).graph == "pinned@2"
    finally:
        newer.kill()

    async with serving(settings, pinned_agent(graph=pinned_graph(1))) as client:
        h = client.get_workflow_handle(h.id, result_type=RunResult)
        await h.signal("approve", ApprovalDecision(approval_id=pending.approval_id, by="bob"))
        cause = await _first_task_failure(h, within=60)
        assert "this worker has no graph pinned@2" in cause
        assert "it has versions [1]" in cause
        assert "Agent(previous_graphs=[...])" in cause
        assert (await h.describe()).status == WorkflowExecutionStatus.RUNNING

        pinned_agent(graph=pinned_graph(1), previous=[pinned_graph(2)])  # the fix, deployed
        r = await asyncio.wait_for(h.result(), 60)
    assert (r.status, r.graph, r.answer) == ("completed", "pinned@2", "pinned answer")
    assert r.path == ["route", "hold", "think", "done"]


async def _first_task_failure(h: WorkflowHandle[Any, Any], *, within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for e in (await h.fetch_history()).events:
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                return str(e.workflow_task_failed_event_attributes.failure.message)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no WorkflowTaskFailed in {h.id} after {within:.0f}s")


# ---------------------------------------------------------------------------- 7. state


async def test_the_state_query_shows_graph_path_and_node_while_an_approval_node_waits(
        settings: Settings, ledger: Ledger) -> None:
    async with serving(settings, reviewed_agent()) as client:
        h = await start(client, settings, "reviewed", "what colour is the sky")
        pending = await wait_pending(h)
        state = await h.query("state", result_type=RunState)
        await h.signal("reject", ApprovalDecision(approval_id=pending.approval_id, by="carol"))
        r = await finish(h)

    assert state.graph == "reviewed@3"
    assert state.path == ["route", "think", "review"]
    assert state.node == f"approval:{pending.approval_id}"
    assert state.status == "running"
    assert [(p.tool, p.arguments) for p in state.pending_approvals] == [
        ("(review)", {"answer": "reviewed answer"})]
    assert r.status == "denied"
    assert r.path == ["route", "think", "review", "denied"]
