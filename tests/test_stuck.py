"""The stuck-run detector (``stead.observability.stuck``, ``stead stuck``).

Genuinely stuck runs are made on the real dev server — a run on a task queue no worker polls,
a run whose workflow task fails on every attempt (a broken deploy), a run whose tool keeps
failing — next to a healthy run waiting for an approval, and the detector must tell them
apart and say why. The judging rules are also pinned on hand-made observations, without a
server, for the cases a server cannot produce on demand (an overdue approval).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from _cli import cli_env, stead
from pydantic import BaseModel
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from stead.agents.ops import OpsWorld
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import ModelTurn, RetrySpec, RunRequest, RunResult, RunState
from stead.contracts.policy import Execution, Policy
from stead.integrations.llm import ScriptedModel, call
from stead.observability.stuck import (
    DEADLINE_GRACE,
    Observation,
    PendingActivity,
    StuckQueryError,
    classify,
    find_stuck,
)
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def obs(**changes: object) -> Observation:
    """A healthy-looking running AgentWorkflow observed at T0 + 10 min; tests change one
    thing at a time."""
    base = Observation(workflow_id="w1", run_id="r1", workflow_type="AgentWorkflow",
                       task_queue="stead", started_at=T0, observed_at=T0 + timedelta(minutes=10),
                       agent="ops", tenant="default", last_event_at=T0 + timedelta(minutes=1),
                       last_event_type="WORKFLOW_TASK_COMPLETED", pollers=1)
    return base.model_copy(update=changes)


# ---------------------------------------------------------------------------- judging rules


def test_a_run_idle_beyond_the_threshold_is_stuck_and_a_recent_one_is_not() -> None:
    idle = obs()  # 9 minutes since the last event

    assert classify(idle, older_than=timedelta(minutes=5)).verdict == "stuck"
    fresh = classify(idle, older_than=timedelta(minutes=10))
    assert (fresh.verdict, fresh.reason, fresh.idle_seconds) == ("progressing", "idle", 540)
    assert "last event WORKFLOW_TASK_COMPLETED" in fresh.detail


def test_heartbeats_and_ledger_writes_count_as_progress() -> None:
    beating = obs(activities=[PendingActivity(
        activity_type="tool.restart_service", state="started", attempt=1, maximum_attempts=3,
        last_started_at=T0 + timedelta(minutes=1),
        last_heartbeat_at=T0 + timedelta(minutes=9, seconds=50))])
    h = classify(beating, older_than=timedelta(minutes=5))
    assert (h.verdict, h.reason, h.idle_seconds) == ("progressing", "activity_running", 10)
    assert "last heartbeat 2026-01-01 12:09:50 UTC" in h.detail

    written = classify(obs(last_ledger_at=T0 + timedelta(minutes=8)),
                       older_than=timedelta(minutes=5))
    assert (written.verdict, written.last_progress_at) == ("progressing",
                                                           T0 + timedelta(minutes=8))


def test_a_failing_workflow_task_is_named_first_with_its_error() -> None:
    h = classify(obs(workflow_task="scheduled", workflow_task_attempt=7, pollers=0,
                     workflow_task_failure="RuntimeError: bad deploy"),
                 older_than=timedelta(minutes=5))

    assert (h.verdict, h.reason) == ("stuck", "workflow_task_failing")
    assert h.detail == ("workflow task failed 6 time(s) and is retried (attempt 7): "
                        "RuntimeError: bad deploy")


def test_no_polling_worker_outranks_an_approval_wait() -> None:
    h = classify(obs(pollers=0, last_poll_at=T0, awaiting_approval=True, approval_id="a3",
                     approval_deadline=T0 + timedelta(hours=1)),
                 older_than=timedelta(minutes=5))

    assert (h.verdict, h.reason) == ("stuck", "no_worker")
    assert h.detail == ("no worker is polling task queue 'stead' "
                        "(last poll 2026-01-01 12:00:00 UTC)")


def test_an_approval_within_its_deadline_is_waiting_however_long_it_has_been() -> None:
    waiting = obs(awaiting_approval=True, approval_id="a3", approval_awaiting="manager",
                  approval_deadline=T0 + timedelta(minutes=15))

    h = classify(waiting, older_than=timedelta(seconds=1))

    assert (h.verdict, h.reason, h.deadline) == ("waiting", "waiting_for_approval",
                                                 T0 + timedelta(minutes=15))
    assert h.detail == "waiting for approval a3 from manager until 2026-01-01 12:15:00 UTC"


def test_an_approval_past_its_deadline_and_grace_is_stuck() -> None:
    deadline = T0 + timedelta(minutes=9)
    within_grace = obs(awaiting_approval=True, approval_id="a3", approval_deadline=deadline,
                       observed_at=deadline + DEADLINE_GRACE)
    overdue = within_grace.model_copy(update={
        "observed_at": deadline + DEADLINE_GRACE + timedelta(seconds=1),
        "last_event_at": deadline + DEADLINE_GRACE})  # recent progress does not excuse it

    assert classify(within_grace, older_than=timedelta(hours=1)).verdict == "waiting"
    h = classify(overdue, older_than=timedelta(hours=1))
    assert (h.verdict, h.reason) == ("stuck", "approval_overdue")
    assert "31s after its deadline 2026-01-01 12:09:00 UTC" in h.detail


def test_a_retrying_activity_reports_its_last_failure() -> None:
    h = classify(obs(activities=[
        PendingActivity(activity_type="model.complete", state="started", attempt=1,
                        maximum_attempts=5),
        PendingActivity(activity_type="tool.lookup", state="scheduled", attempt=4,
                        maximum_attempts=10, last_failure="upstream 503",
                        next_attempt_at=T0 + timedelta(minutes=11))]),
        older_than=timedelta(minutes=5))

    assert (h.verdict, h.reason) == ("stuck", "activity_retrying")
    assert h.detail == ("activity tool.lookup retrying, attempt 4/10; last failure: upstream "
                        "503; next attempt 2026-01-01 12:11:00 UTC")


def test_workflow_tasks_completing_without_commands_point_at_a_local_activity() -> None:
    """A local activity (the ledger writes) that keeps failing leaves no pending activity: the
    worker only keeps completing workflow tasks to keep it alive. Those bookkeeping events do
    not count as progress."""
    kept_alive = obs(workflow_task="started", workflow_task_heartbeats=1,
                     last_event_type="WORKFLOW_EXECUTION_STARTED")
    h = classify(kept_alive, older_than=timedelta(minutes=5))

    assert (h.verdict, h.reason) == ("stuck", "local_activity_running")
    assert h.detail.startswith("1 workflow tasks completed without a new command since "
                               "WORKFLOW_EXECUTION_STARTED at 2026-01-01 12:01:00 UTC")
    # One quiet completion with nothing running after it is an ordinary signal handled.
    assert classify(obs(workflow_task_heartbeats=1),
                    older_than=timedelta(minutes=5)).reason == "idle"


# ---------------------------------------------------------------------------- real stuck runs


@workflow.defn(name="AgentWorkflow", sandboxed=False)
class BrokenDeploy:
    """What a careless deploy looks like to Temporal: every workflow task raises, so the
    server retries it forever and the run stays Running without another event."""

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        raise RuntimeError(f"bug in the new deploy: cannot plan {request.agent!r}")


class Key(BaseModel):
    key: str


class Value(BaseModel):
    value: str


def flaky_agent() -> Agent:
    """One tool that always fails and retries slowly: the run sits in its retry backoff."""

    @tool(side_effect="read", risk="low",
          retry=RetrySpec(initial_interval=60, max_interval=60, max_attempts=5))
    async def fetch(args: Key, ctx: ToolContext) -> Value:
        """Fetch a value from an upstream that is down."""
        raise ConnectionError(f"upstream for {args.key} refused the connection")

    model = ScriptedModel([ModelTurn(tool_calls=[call("fetch", key="k1")]),
                           ModelTurn(content="done")], name="scripted:flaky")
    # An activity, not a local one: the detector reads a call's attempts and backoff from
    # the run's pending activities, and a local activity is not among them.
    remote = Policy(id="remote-reads", version=1, execution=Execution(local_reads=False))
    return Agent(name="flaky", instructions="Fetch k1.", tools=[fetch], offline_model=model,
                 max_steps=4, policy=remote)


async def until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def pending_approval(h: WorkflowHandle[object, RunResult]) -> bool:
    state = await h.query("state", result_type=RunState, rpc_timeout=timedelta(seconds=5))
    return bool(state.pending_approvals)


async def visible(client: Client, task_queue: str) -> None:
    """Wait until the run on ``task_queue`` shows in visibility (eventually consistent)."""
    async def listed() -> bool:
        return bool([wf async for wf in client.list_workflows(
            f"ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'")])
    await until(listed, within=20, what=f"a running workflow on {task_queue} to be listed")


@asynccontextmanager
async def broken_worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    async with Worker(client, task_queue=task_queue, workflows=[BrokenDeploy]):
        yield


async def test_detector_tells_stuck_runs_from_a_run_waiting_for_approval(
        settings: Settings, client: Client, ledger: Ledger, world: OpsWorld) -> None:
    """One queue per situation, each judged with a zero threshold (anything not waiting for
    a human counts as stuck), so the verdicts come from the reasons alone."""
    suffix = uuid.uuid4().hex[:8]
    orphan_q, broken_q, flaky_q = (f"{k}-{suffix}" for k in ("orphan", "broken", "flaky"))
    request = RunRequest(agent="ops", input="restart search-worker please")

    # A healthy run: the `worker` fixture serves ops; a restart waits for on-call.
    waiting = await start_run(client, request, temporal=settings.temporal)
    # Nobody polls this queue.
    orphan = await start_run(client, request,
                             temporal=settings.replace(task_queue=orphan_q).temporal)
    async with broken_worker(client, broken_q), \
            WorkerHost(settings.replace(task_queue=flaky_q),
                       AgentCatalog([flaky_agent()])):
        broken = await start_run(client, request,
                                 temporal=settings.replace(task_queue=broken_q).temporal)
        flaky = await start_run(client, RunRequest(agent="flaky", input="fetch k1"),
                                temporal=settings.replace(task_queue=flaky_q).temporal)

        async def wft_attempts() -> bool:
            d = await broken.describe()
            return d.raw_description.pending_workflow_task.attempt >= 3

        async def retrying() -> bool:
            d = await flaky.describe()
            return any(a.attempt >= 2 for a in d.raw_description.pending_activities)

        await until(lambda: pending_approval(waiting), within=30, what="the approval")
        await until(wft_attempts, within=60, what="the broken workflow task to fail twice")
        await until(retrying, within=30, what="the flaky tool to fail once")
        for q in (settings.temporal.task_queue, orphan_q, broken_q, flaky_q):
            await visible(client, q)

        reports = {q: await find_stuck(client, older_than=timedelta(0), task_queue=q,
                                       ledger=ledger)
                   for q in (settings.temporal.task_queue, orphan_q, broken_q, flaky_q)}
        await flaky.terminate("test over")
    await broken.terminate("test over")
    await orphan.terminate("test over")

    [ok] = reports[settings.temporal.task_queue].runs
    assert (ok.workflow_id, ok.verdict, ok.reason) == (waiting.id, "waiting",
                                                       "waiting_for_approval")
    assert ok.detail.startswith("waiting for approval a")
    assert "from oncall until" in ok.detail
    assert ok.deadline is not None
    assert timedelta(minutes=14) < ok.deadline - datetime.now(UTC) <= timedelta(minutes=15)
    assert (ok.agent, ok.tenant) == ("ops", "default")

    [lost] = reports[orphan_q].runs
    assert (lost.workflow_id, lost.verdict, lost.reason) == (orphan.id, "stuck", "no_worker")
    assert lost.detail == f"no worker is polling task queue {orphan_q!r} (never polled)"

    [bad] = reports[broken_q].runs
    assert (bad.workflow_id, bad.verdict, bad.reason) == (broken.id, "stuck",
                                                          "workflow_task_failing")
    assert "bug in the new deploy: cannot plan 'ops'" in bad.detail

    [slow] = reports[flaky_q].runs
    assert (slow.workflow_id, slow.verdict, slow.reason) == (flaky.id, "stuck",
                                                             "activity_retrying")
    assert "activity tool.fetch retrying, attempt 2/5" in slow.detail
    assert "upstream for k1 refused the connection" in slow.detail
    # The ledger saw the run start and the model answer: its writes are the newest progress.
    assert slow.last_progress_at >= slow.started_at
    assert all(r.ledger_checked for r in reports.values())


async def test_a_threshold_keeps_recently_active_runs_off_the_list(
        settings: Settings, client: Client) -> None:
    orphan_q = f"orphan-{uuid.uuid4().hex[:8]}"
    h = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?"),
                        temporal=settings.replace(task_queue=orphan_q).temporal)
    try:
        await visible(client, orphan_q)
        report = await find_stuck(client, older_than=timedelta(hours=1), task_queue=orphan_q)
    finally:
        await h.terminate("test over")

    [r] = report.runs
    assert (r.verdict, r.reason) == ("progressing", "no_worker")
    assert (report.stuck, report.ledger_checked) == ([], False)
    assert report.summary() == {"running": 1, "stuck": 0, "waiting": 0, "progressing": 1}


async def test_an_unreadable_ledger_leaves_the_verdicts_to_temporal(
        settings: Settings, client: Client, stack: EmbeddedStack) -> None:
    orphan_q = f"orphan-{uuid.uuid4().hex[:8]}"
    h = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?"),
                        temporal=settings.replace(task_queue=orphan_q).temporal)
    closed = await Ledger.connect(stack.database_url)
    await closed.close()
    try:
        await visible(client, orphan_q)
        report = await find_stuck(client, older_than=timedelta(0), task_queue=orphan_q,
                                  ledger=closed)
    finally:
        await h.terminate("test over")

    [r] = report.runs
    assert (r.verdict, r.reason) == ("stuck", "no_worker")
    assert report.ledger_checked is False
    assert report.ledger_problem is not None and "closed" in report.ledger_problem


async def test_a_rejected_query_is_bad_input(client: Client) -> None:
    with pytest.raises(StuckQueryError, match="rejected the query"):
        await find_stuck(client, older_than=timedelta(minutes=5), query="NoSuchAttr = 'x'")


# ---------------------------------------------------------------------------- CLI


async def test_stuck_cli_exit_codes_table_and_json(
        settings: Settings, client: Client, tmp_path: object) -> None:
    orphan_q = f"orphan-{uuid.uuid4().hex[:8]}"
    env = cli_env(settings)
    h = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?"),
                        temporal=settings.replace(task_queue=orphan_q).temporal)
    try:
        await visible(client, orphan_q)
        listed = await stead("stuck", "--older-than", "0.01s", "--task-queue", orphan_q,
                             env=env)
        as_json = await stead("stuck", "--older-than", "0.01s", "--task-queue", orphan_q,
                              "--json", env=env)
        patient = await stead("stuck", "--older-than", "1h", "--task-queue", orphan_q,
                              env=env)
    finally:
        await h.terminate("test over")
    empty = await stead("stuck", "--task-queue", f"none-{uuid.uuid4().hex[:6]}", env=env)
    bad_duration = await stead("stuck", "--older-than", "five minutes", env=env)
    bad_query = await stead("stuck", "--query", "ExecutionStatus = ", env=env)

    assert listed.code == 1, listed
    assert h.id in listed.out and "no_worker" in listed.out
    assert "1 running: 1 stuck, 0 waiting for approval, 0 progressing" in listed.out

    assert as_json.code == 1, as_json
    data = as_json.json()
    assert (data["running"], data["stuck"], data["ledger_checked"]) == (1, 1, True)
    [row] = data["runs"]
    assert (row["workflow_id"], row["verdict"], row["reason"]) == (h.id, "stuck", "no_worker")

    assert patient.code == 0, patient
    assert "0 stuck" in patient.out

    assert empty.code == 0, empty
    assert "0 running: 0 stuck" in empty.out

    assert bad_duration.code == 2, bad_duration
    assert "--older-than: 'five minutes' is not a duration" in bad_duration.err
    assert bad_query.code == 2, bad_query
    assert "rejected the query" in bad_query.err
    for done in (listed, as_json, patient, empty, bad_duration, bad_query):
        assert "Traceback" not in done.err
