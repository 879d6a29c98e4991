"""Local execution: read tools (by default) and, where the policy allows it for fast
in-process models, model calls run as local activities inside the workflow task instead of
through the task queue. What changes is only where the call runs: the gate, retries, fallbacks,
the idempotency key and the ledger row are the same, and writes never run locally."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from _local_worker import LOCAL_WORKER_SCRIPT
from _procs import WorkerProcess, worker_env
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import ModelTurn, RetrySpec, RunRequest, RunResult, Timeouts
from stead.contracts.policy import Policy, parse_policy
from stead.evals.replay import production_replayer
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost


class Key(BaseModel):
    key: str


class Value(BaseModel):
    value: str


def _agent(policy: Policy, attempts: list[int]) -> Agent:
    @tool(side_effect="read", retry=RetrySpec(initial_interval=0.05, max_attempts=3),
          timeouts=Timeouts(start_to_close=5))
    async def lookup(args: Key, ctx: ToolContext) -> Value:
        """Read a value; fails its first attempt."""
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("flaky backend")
        return Value(value=f"v-{args.key}")

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=45))  # over the 30 s limit
    async def slow_read(args: Key, ctx: ToolContext) -> Value:
        """A read allowed to take longer than the local limit."""
        return Value(value="slow")

    @tool(side_effect="write", idempotent=True)
    async def store(args: Key, ctx: ToolContext) -> Value:
        """Write a value."""
        return Value(value="stored")

    script = [ModelTurn(tool_calls=[call("lookup", call_id="c1", key="k")]),
              ModelTurn(tool_calls=[call("slow_read", call_id="c2", key="k")]),
              ModelTurn(tool_calls=[call("store", call_id="c3", key="k")]),
              ModelTurn(content="v-k stored")]
    return Agent(name="localbot", instructions="Look up, then store.",
                 tools=[lookup, slow_read, store], offline_model=ScriptedModel(script),
                 policy=policy)


def _policy(**execution: bool) -> Policy:
    lines = "".join(f"\n  {k}: {str(v).lower()}" for k, v in execution.items()) or " {}"
    return parse_policy(f"id: local\nversion: 1\nexecution:{lines}\n")


async def _run(settings: Settings, agent: Agent) -> tuple[str, RunResult, list[str], int]:
    """Workflow id, result, activity types scheduled through the task queue, and markers
    (local activities are recorded as markers)."""
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="localbot", input="go"),
                            temporal=settings.temporal)
        result = await asyncio.wait_for(h.result(), 60)
        history = await h.fetch_history()
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    markers = sum(1 for e in history.events
                  if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED)
    return h.id, result, scheduled, markers


async def test_short_idempotent_reads_run_locally_when_the_policy_allows(
        settings: Settings, ledger: Ledger) -> None:
    attempts: list[int] = []
    wid, local, scheduled, markers = await _run(settings, _agent(_policy(local_reads=True),
                                                            attempts))
    assert local.status == "completed" and local.answer == "v-k stored"
    # lookup ran locally (retried there after its first failure); slow_read exceeds the
    # local limit and the write never runs locally.
    assert "tool.lookup" not in scheduled
    assert scheduled.count("tool.slow_read") == 1 and scheduled.count("tool.store") == 1
    assert scheduled.count("model.complete") == 4
    assert attempts == [1, 2]
    assert [(c.tool, c.status, c.attempts) for c in local.tool_calls] == [
        ("lookup", "ok", 2), ("slow_read", "ok", 1), ("store", "ok", 1)]
    # The ledger has the locally run call like any other, with its two attempts.
    async with ledger.pool.acquire() as conn:
        rows = await conn.fetch("select tool, status from stead_tool_calls "
                                "where workflow_id = $1 order by step", wid)
    assert [(r["tool"], r["status"]) for r in rows] == [
        ("lookup", "completed"), ("slow_read", "completed"), ("store", "completed")]

    attempts.clear()
    _, remote, scheduled, remote_markers = await _run(
        settings, _agent(_policy(local_reads=False), attempts))
    assert remote.answer == local.answer and "tool.lookup" in scheduled
    assert markers > remote_markers


async def test_reads_run_locally_by_default(settings: Settings) -> None:
    """A policy without an ``execution`` section, and an agent without a policy, run their
    short idempotent reads locally."""
    for policy in (_policy(), None):
        agent = dataclasses.replace(_agent(_policy(), []), policy=policy)
        _, result, scheduled, markers = await _run(settings, agent)
        assert result.status == "completed" and result.answer == "v-k stored"
        assert scheduled == ["model.complete", "model.complete", "tool.slow_read",
                             "model.complete", "tool.store", "model.complete"], policy
        assert markers >= 3  # run.start, lookup, run.finish


async def test_a_local_read_that_fails_for_good_is_served_by_its_fallback(
        settings: Settings, ledger: Ledger) -> None:
    """A local call that exhausts its retries fails the call, not the run: the fallback
    answers, as it does for an activity (temporalio raises a failed local activity's error
    bare; the workflow handles it as an activity's)."""
    tries: list[int] = []

    @tool(side_effect="read", retry=RetrySpec(initial_interval=0.05, max_attempts=2),
          timeouts=Timeouts(start_to_close=5), fallbacks=["mirror"])
    async def primary(args: Key, ctx: ToolContext) -> Value:
        """Read from the primary store (it is down)."""
        tries.append(ctx.attempt)
        raise ConnectionError("primary store down")

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=5))
    async def mirror(args: Key, ctx: ToolContext) -> Value:
        """Read from the mirror."""
        return Value(value=f"mirror-{args.key}")

    @tool(side_effect="read", retry=RetrySpec(max_attempts=1), timeouts=Timeouts(start_to_close=5))
    async def broken(args: Key, ctx: ToolContext) -> Value:
        """Fails for good, with no fallback."""
        raise ValueError("bad key")

    script = [ModelTurn(tool_calls=[call("primary", call_id="c1", key="k")]),
              ModelTurn(tool_calls=[call("broken", call_id="c2", key="k")]),
              ModelTurn(content="mirror-k, and broken failed")]
    agent = Agent(name="localbot", instructions="Read.", tools=[primary, mirror, broken],
                  offline_model=ScriptedModel(script), policy=_policy())
    wid, result, scheduled, _ = await _run(settings, agent)
    assert result.status == "completed" and result.answer == "mirror-k, and broken failed"
    assert tries == [1, 2]
    assert [(c.tool, c.status, c.served_by) for c in result.tool_calls] == [
        ("primary", "ok", "mirror"), ("broken", "error", None)]
    assert result.fallbacks == 1
    assert not [s for s in scheduled if s.startswith("tool.")]  # all three ran locally
    trail = await ledger.trail(wid)
    assert {(c.tool, c.status) for c in trail.tool_calls} == {
        ("primary", "failed"), ("mirror", "completed"), ("broken", "failed")}


async def test_model_calls_run_locally_when_the_policy_allows(settings: Settings) -> None:
    agent = _agent(_policy(local_model_calls=True, local_reads=True), [])
    wid, result, scheduled, markers = await _run(settings, agent)
    assert result.status == "completed" and result.model_turns == 4
    assert "model.complete" not in scheduled
    assert scheduled == ["tool.slow_read", "tool.store"]
    assert markers >= 5  # four model calls and the lookup, each recorded as a marker
    # A run of local activities replays like any other (the markers carry the results).
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        history = await host.client.get_workflow_handle(wid).fetch_history()
    await production_replayer(codec=settings.codec).replay_workflow(history)


@pytest.mark.slow
async def test_a_worker_killed_mid_local_read_loses_nothing_and_writes_once(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """SIGKILL while a read runs as a local activity: nothing of it reached history, so once
    the workflow task times out another worker runs the task again, the read included (reads
    are at-least-once by design), and the write that follows happens exactly once."""
    effects, hold = tmp_path / "effects.txt", tmp_path / "hold"
    hold.touch()
    env = worker_env(settings, tmp_path, LOCAL_EFFECTS_FILE=str(effects),
                     LOCAL_HOLD_FILE=str(hold))
    first = WorkerProcess(LOCAL_WORKER_SCRIPT, env, tmp_path / "worker-1.log").start()
    second: WorkerProcess | None = None
    try:
        client = await connect(settings)
        h = await start_run(client, RunRequest(agent="localkill", input="read and write x"),
                            temporal=settings.temporal)
        deadline = time.monotonic() + 30
        while not (effects.exists() and effects.read_text() == "read x\n"):
            assert time.monotonic() < deadline, f"the read never started:\n{first.output()}"
            await asyncio.sleep(0.05)
        first.kill()
        hold.unlink()
        second = WorkerProcess(LOCAL_WORKER_SCRIPT, env, tmp_path / "worker-2.log").start()

        r: RunResult = await asyncio.wait_for(h.result(), 60)
    finally:
        first.kill()
        if second is not None:
            second.kill()

    assert r.status == "completed" and r.answer == "read and recorded x", r
    assert effects.read_text().splitlines() == ["read x", "read x", "write x"]
    trail = await ledger.trail(h.id)
    assert [(c.tool, c.status) for c in trail.tool_calls] == [
        ("probe", "completed"), ("record", "completed")]
    assert await ledger.verify_chain(h.id) == []
