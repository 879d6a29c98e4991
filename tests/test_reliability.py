"""Reliability: runs survive lost workers, a restarted Temporal server and a PostgreSQL outage,
and side effects happen exactly once (or the run escalates instead of guessing).

The kill and restart tests use real processes: ``python worker.py`` (or ``tests/_procs.py``)
as children killed with SIGKILL, their own Temporal dev server or PostgreSQL stopped and
started again. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _procs import CRASHY_SCRIPT, ROOT, WorkerProcess, worker_env
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from stead.agents.ops import OpsWorld
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import (
    ApprovalDecision,
    ModelTurn,
    RetrySpec,
    RunRequest,
    RunResult,
    RunState,
    Timeouts,
    Trail,
)
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.stack.embedded import EmbeddedPostgres, EmbeddedTemporal, free_port
from stead.storage.ledger import Ledger, migrate
from stead.worker import WorkerHost

WORKER_SCRIPT = ROOT / "worker.py"


async def wait_until(check: Callable[[], bool], *, within: float, what: str,
                     procs: Sequence[WorkerProcess] = ()) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds with the workers' logs."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log}:\n{p.output()}" for p in procs)
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}\n{logs}")
        await asyncio.sleep(0.05)


@pytest.fixture
def procs() -> Iterator[list[WorkerProcess]]:
    """Worker processes started by a test; killed at teardown whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data dir for a PostgreSQL of the test's own, outside pytest's tmp tree: as root,
    PostgreSQL runs as user ``pgserver``, and every pytest session that starts meanwhile
    resets /tmp/pytest-of-root to mode 0700, which locks that user out of its files."""
    path = Path(tempfile.mkdtemp(prefix="stead-pg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def temporal_client(settings: Settings) -> Client:
    """A client only: these tests run their workers elsewhere."""
    return await connect(settings)


def _attempts(trail: Trail, tool: str) -> list[tuple[object, ...]]:
    return [(a.attempt, a.status) for a in trail.tool_attempts if a.tool == tool]


# --------------------------------------------------------------------------- 1. SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_text", "tool", "knob", "effect", "second_attempt", "answer"),
    [
        # Not idempotent, with a reconcile hook: the retry asks the world, never restarts twice.
        ("restart search-worker", "restart_service", "restart_seconds", "restart",
         "reconciled", "I restarted search-worker"),
        # Idempotent: the retry runs again with the same key and the world deduplicates it.
        ("open a ticket for auth-service", "create_ticket", "ticket_seconds", "ticket",
         "ok", "Opened ticket OPS-"),
    ],
    ids=["non_idempotent_reconciled", "idempotent_rerun_with_same_key"],
)
async def test_worker_sigkilled_after_side_effect_does_not_repeat_it(
        settings: Settings, temporal_client: Client, ledger: Ledger, world: OpsWorld,
        tmp_path: Path, procs: list[WorkerProcess], request_text: str, tool: str, knob: str,
        effect: str, second_attempt: str, answer: str) -> None:
    """A worker killed while a tool is mid-call, after its side effect, loses that attempt;
    a new worker finishes the run and the side effect happened exactly once."""
    world.set_knobs(**{knob: 3})
    env = worker_env(settings, tmp_path)  # the worker's world is the `world` fixture's file
    first = WorkerProcess(WORKER_SCRIPT, env, tmp_path / "worker-1.log").start()
    procs.append(first)
    h = await start_run(temporal_client, RunRequest(agent="ops", input=request_text),
                        temporal=settings.temporal)
    if tool == "restart_service":  # the ops policy asks on-call before any restart
        await approve_when_pending(h)
    await wait_until(lambda: world.effects(effect) == 1, within=30,
                     what=f"the first {effect}", procs=procs)
    first.kill()
    world.set_knobs(**{knob: 0})  # the retry need not hold
    procs.append(WorkerProcess(WORKER_SCRIPT, env, tmp_path / "worker-2.log").start())

    r: RunResult = await asyncio.wait_for(h.result(), 60)

    assert r.status == "completed", r
    assert answer in (r.answer or "")
    assert world.effects(effect) == 1
    trail = await ledger.trail(h.id)
    assert _attempts(trail, tool) == [(1, "running"), (2, second_attempt)]
    [row] = [c for c in trail.tool_calls if c.tool == tool]
    assert row.status == "completed"
    if tool == "create_ticket":
        assert row.result["created"] is False  # attempt 2 found attempt 1's ticket
    assert trail.runs[0].status == "completed"
    assert await ledger.verify_chain(h.id) == []


async def approve_when_pending(h: WorkflowHandle[Any, RunResult]) -> None:
    """Play the on-call approver: approve the run's first pending approval (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = await h.query("state", result_type=RunState)
        except RPCError:
            state = None  # no worker has picked the run up yet
        if state is not None and state.pending_approvals:
            await h.signal("approve", ApprovalDecision(
                approval_id=state.pending_approvals[0].approval_id, by="oncall-test"))
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no approval was requested within 30 s")


# --------------------------------------------------------------------------- 2. escalation


@pytest.mark.slow
async def test_worker_lost_mid_irreversible_tool_without_reconcile_escalates(
        settings: Settings, temporal_client: Client, ledger: Ledger, tmp_path: Path,
        procs: list[WorkerProcess]) -> None:
    """A non-idempotent tool with no reconcile hook whose worker died mid-call is never run
    again: the run ends ``escalated`` for a human to check."""
    effects = tmp_path / "effects.txt"
    env = worker_env(settings, tmp_path, CRASHY_EFFECTS_FILE=str(effects),
                     CRASHY_HOLD_SECONDS="30")
    first = WorkerProcess(CRASHY_SCRIPT, env, tmp_path / "worker-1.log").start()
    procs.append(first)
    h = await start_run(temporal_client, RunRequest(agent="crashy", input="write the line"),
                        temporal=settings.temporal)
    await wait_until(lambda: effects.exists() and effects.read_text().count("\n") == 1,
                     within=30, what="the line to be written", procs=procs)
    first.kill()
    procs.append(WorkerProcess(CRASHY_SCRIPT, env, tmp_path / "worker-2.log").start())

    r: RunResult = await asyncio.wait_for(h.result(), 60)

    assert r.status == "escalated", r
    assert "not re-running" in (r.error or "")
    assert len(effects.read_text().splitlines()) == 1
    trail = await ledger.trail(h.id)
    assert _attempts(trail, "append_line") == [(1, "running"), (2, "error")]
    assert trail.tool_attempts[1].error_type == "ToolOutcomeUnknown"
    assert [c.status for c in trail.tool_calls] == ["failed"]
    assert "outcome_unknown" in [d.kind for d in trail.decisions]
    assert trail.runs[0].status == "escalated"
    assert await ledger.verify_chain(h.id) == []


# --------------------------------------------------------------------------- 3. Temporal restart


@pytest.mark.slow
async def test_run_completes_across_temporal_server_restart(
        settings: Settings, catalog: AgentCatalog, world: OpsWorld, ledger: Ledger,
        tmp_path: Path) -> None:
    """Temporal's dev server stopped while a tool runs (the tool finishes during the outage)
    and started again on the same SQLite file and port: the worker reconnects by itself and
    the run completes, with the ticket opened once."""
    temporal = EmbeddedTemporal(tmp_path / "temporal", port=free_port(), ui_port=None)
    await temporal.start()
    try:
        s = settings.replace(temporal_address=temporal.address)
        world.set_knobs(ticket_seconds=3)
        async with WorkerHost(s, catalog) as host:
            assert host.client is not None
            h = await start_run(host.client, RunRequest(
                agent="ops", input="open a ticket for auth-service"), temporal=s.temporal)
            await wait_until(lambda: world.effects("ticket") == 1, within=30,
                             what="the ticket")
            await temporal.stop()
            calls = {c.tool: c.status for c in (await ledger.trail(h.id)).tool_calls}
            assert calls["create_ticket"] == "running", "the server stopped after the tool"
            await asyncio.sleep(2.5)  # the tool ends and reports while nobody listens
            await temporal.start()
            r: RunResult = await asyncio.wait_for(h.result(), 90)
        assert r.status == "completed", r
        assert "Opened ticket OPS-" in (r.answer or "")
        assert world.effects("ticket") == 1
        trail = await ledger.trail(h.id)
        assert {c.tool: c.status for c in trail.tool_calls} == {
            "service_status": "completed", "create_ticket": "completed"}
    finally:
        await temporal.stop()


# --------------------------------------------------------------------------- 4. PostgreSQL outage


@pytest.mark.slow
async def test_run_completes_with_full_ledger_across_postgres_outage(
        settings: Settings, catalog: AgentCatalog, world: OpsWorld, pg_dir: Path) -> None:
    """The ledger's PostgreSQL stopped for ~2 s while a tool runs: ledger writes wait for it
    (without spending the tool's retries) and the ledger ends complete and intact."""
    pg = EmbeddedPostgres(pg_dir, port=free_port())
    await pg.start()
    try:
        await migrate(pg.url)
        s = settings.replace(database_url=pg.url)
        world.set_knobs(ticket_seconds=1.5)
        async with WorkerHost(s, catalog) as host:
            assert host.client is not None
            h = await start_run(host.client, RunRequest(
                agent="ops", input="open a ticket for auth-service"), temporal=s.temporal)
            await wait_until(lambda: world.effects("ticket") == 1, within=30,
                             what="the ticket")
            await pg.stop()
            await asyncio.sleep(2)
            await pg.start()
            r: RunResult = await asyncio.wait_for(h.result(), 60)
        assert r.status == "completed", r
        assert world.effects("ticket") == 1

        ledger = await Ledger.connect(pg.url)
        try:
            trail = await ledger.trail(h.id)
            assert [run.status for run in trail.runs] == ["completed"]
            assert trail.tool_calls, "no tool calls recorded"
            assert {c.status for c in trail.tool_calls} == {"completed"}
            assert {c.tool for c in trail.tool_calls} == {"service_status",
                                                                 "create_ticket"}
            # The outage did not use up the tool's retries: one attempt, and it succeeded.
            assert _attempts(trail, "create_ticket") == [(1, "ok")]
            ok_calls = [m for m in trail.model_calls if m.status == "ok"]
            assert len(ok_calls) == r.model_turns
            assert await ledger.verify_chain(h.id) == []
        finally:
            await ledger.close()
    finally:
        await pg.stop()


# --------------------------------------------------------------------------- 5. always failing


async def test_failing_tool_retries_per_policy_then_fallback_then_model_reports(
        client: Client, settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    """legacy-batch has neither metrics nor a reachable probe: service_status is retried up to
    its max_attempts, its fallback probe_health too, then the model gets a structured failure
    and answers that it could not determine the status."""
    policy = {t.name: t.retry.max_attempts for t in catalog["ops"].tools}
    h = await start_run(client, RunRequest(agent="ops", input="what is the status of "
                                                                "legacy-batch?"),
                        temporal=settings.temporal)
    r: RunResult = await asyncio.wait_for(h.result(), 60)

    assert r.status == "completed", r
    assert "could not determine the status of legacy-batch" in (r.answer or "")
    [record] = r.tool_calls
    assert record.status == "error"
    assert record.attempts == policy["service_status"] + policy["probe_health"]
    assert r.retries == policy["service_status"] - 1 + policy["probe_health"] - 1
    trail = await ledger.trail(h.id)
    for name in ("service_status", "probe_health"):
        assert _attempts(trail, name) == [(n, "error") for n in range(1, policy[name] + 1)]
    assert {c.tool: c.status for c in trail.tool_calls} == {
        "service_status": "failed", "probe_health": "failed"}
    assert "tool_failed" in [d.kind for d in trail.decisions]
    assert await ledger.verify_chain(h.id) == []


class Order(BaseModel):
    item: str


class Shipped(BaseModel):
    parcel: str


async def test_a_non_idempotent_call_whose_last_attempt_timed_out_escalates(
        settings: Settings, ledger: Ledger) -> None:
    """The attempt may have taken effect before it was lost: the run escalates instead of
    telling the model the call failed (which would invite a second, duplicate call)."""
    started: list[int] = []

    @tool(side_effect="write", idempotent=False, retry=RetrySpec(max_attempts=1),
          timeouts=Timeouts(start_to_close=1.0))
    async def ship(args: Order, ctx: ToolContext) -> Shipped:
        """Ship an item (slow today)."""
        started.append(ctx.attempt)
        await asyncio.sleep(5)
        return Shipped(parcel="p1")

    script = [ModelTurn(tool_calls=[call("ship", call_id="c1", item="mug")]),
              ModelTurn(tool_calls=[call("ship", call_id="c2", item="mug")]),
              ModelTurn(content="shipped")]
    agent = Agent(name="shipper", instructions="Ship it.", tools=[ship],
                  offline_model=ScriptedModel(script))
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="shipper", input="ship a mug"),
                            temporal=settings.temporal)
        r = await asyncio.wait_for(h.result(), 60)

    assert r.status == "escalated", r
    assert started == [1], "the call was made again"
    assert r.tool_calls[0].status == "error" and "timed out" in (r.tool_calls[0].error or "")
    decisions = (await ledger.trail(h.id)).decisions
    assert ("outcome_unknown", "escalate") in [(d.kind, d.decision) for d in decisions]
