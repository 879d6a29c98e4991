"""Stuck-run detection: running workflows that stopped making progress, and why.

    report = await find_stuck(client, older_than=timedelta(minutes=5), ledger=ledger)
    report.stuck      # runs without progress beyond the threshold (or past their deadline)
    report.waiting    # runs waiting for a human within their approval deadline (not stuck)

Temporal never gives up on a run by itself: a run on a task queue no worker polls, a workflow
task that fails on every attempt (a bug, a non-deterministic deploy) or an activity that keeps
retrying all look "Running" in the Web UI forever. The detector lists the running workflows a
visibility query selects, reads each one's history, pending tasks, the pollers of its task
queue and (when given) its ledger rows, and says which runs made no progress and why.

Progress is the newest of: the last history event, the last heartbeat of a pending activity,
and the last successful ledger write (decision, model call, finished tool attempt). Failed
retry attempts are not progress. A run waiting for an approval is *waiting*, not stuck, until
its deadline (plus :data:`DEADLINE_GRACE`); past it the deadline timer should have escalated
the approval, so a run still waiting then is stuck.

Gathering (:func:`observe`) talks to the servers; judging (:func:`classify`) is a pure function
of an :class:`Observation`, so every rule is testable without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    EventType,
    PendingActivityState,
    PendingWorkflowTaskState,
    TaskQueueType,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from stead.contracts.models import RunState
from stead.errors import StackError, SteadError
from stead.storage.ledger import Ledger

DEADLINE_GRACE = timedelta(seconds=30)
"""How long past an approval deadline a run may still be waiting: the deadline timer fires,
then a workflow task escalates or auto-denies, which takes a moment under load."""

POLLER_FRESH = timedelta(seconds=90)
"""A poller seen within this long is a live worker. Workers long-poll for up to a minute, and
the server keeps listing a dead worker's pollers for minutes, so older ones do not count."""

DEFAULT_QUERY = "ExecutionStatus = 'Running'"

_AGENT = SearchAttributeKey.for_keyword("SteadAgent")
_TENANT = SearchAttributeKey.for_keyword("SteadTenant")
_AWAITING = SearchAttributeKey.for_bool("SteadAwaitingApproval")

Verdict = Literal["stuck", "waiting", "progressing"]
"""``stuck``: no progress beyond the threshold or past its deadline; ``waiting``: waiting for a
human within the approval deadline; ``progressing``: made progress recently."""

Reason = Literal[
    "workflow_task_failing",
    "no_worker",
    "waiting_for_approval",
    "approval_overdue",
    "activity_retrying",
    "local_activity_running",
    "activity_running",
    "activity_not_started",
    "workflow_task_pending",
    "idle",
]
"""What the run is doing (or failing to do) now, most telling first: see :func:`classify`."""


class StuckQueryError(SteadError, ValueError):
    """The visibility query was rejected by the server (bad input)."""


class PendingActivity(BaseModel):
    """One activity the run has scheduled and not yet seen finish."""

    activity_type: str
    state: Literal["scheduled", "started", "cancel_requested", "paused", "other"]
    attempt: int
    maximum_attempts: int
    """0: unlimited."""
    last_failure: str | None = None
    """Message of the previous attempt's failure (retrying) or None."""
    last_started_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    next_attempt_at: datetime | None = None


class Observation(BaseModel):
    """What the servers say about one running workflow, at ``observed_at``."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    started_at: datetime
    observed_at: datetime
    agent: str | None = None
    tenant: str | None = None
    last_event_at: datetime
    """Time of the newest event that is not workflow-task bookkeeping (see
    :data:`_WORKFLOW_TASK_EVENTS`): what last *happened* to the run."""
    last_event_type: str
    workflow_task_heartbeats: int = 0
    """Workflow tasks completed after that event without a new command: the worker keeps a
    local activity alive (the ledger writes ``run.start``/``run.finish``/``run.decisions``
    are local activities) while it runs or retries, and nothing else happens."""
    last_ledger_at: datetime | None = None
    """Newest successful ledger write of the run; None without a ledger or rows."""
    workflow_task: Literal["none", "scheduled", "started"] = "none"
    workflow_task_attempt: int = 0
    workflow_task_since: datetime | None = None
    """When the pending workflow task was started (or scheduled, if not started yet)."""
    workflow_task_failure: str | None = None
    """Message of the last failed workflow task, when the pending one is a retry."""
    activities: list[PendingActivity] = Field(default_factory=list)
    pollers: int = 0
    """Workers that polled the run's task queue within :data:`POLLER_FRESH`."""
    last_poll_at: datetime | None = None
    """Newest poll on the task queue, live or not (None: never polled, as far as the server
    remembers)."""
    awaiting_approval: bool = False
    approval_id: str | None = None
    approval_deadline: datetime | None = None
    approval_awaiting: str | None = None
    """The role asked now (a level of the policy's approval chain)."""


class RunHealth(BaseModel):
    """The detector's verdict on one running workflow."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    agent: str | None
    tenant: str | None
    started_at: datetime
    last_progress_at: datetime
    idle_seconds: float
    """Seconds since the last progress."""
    verdict: Verdict
    reason: Reason
    detail: str
    """The reason in words, with the failure message, attempt or deadline that shows it."""
    deadline: datetime | None = None
    """Approval deadline of a waiting run."""


class StuckReport(BaseModel):
    """Every running workflow the query selected, judged."""

    checked_at: datetime
    query: str
    older_than_seconds: float
    runs: list[RunHealth] = Field(default_factory=list)
    ledger_checked: bool = False
    """Whether ledger activity counted as progress (a ledger was given and reachable)."""
    ledger_problem: str | None = None
    """Why a ledger that was given could not be read (the verdicts then rest on Temporal)."""

    @property
    def stuck(self) -> list[RunHealth]:
        return [r for r in self.runs if r.verdict == "stuck"]

    @property
    def waiting(self) -> list[RunHealth]:
        return [r for r in self.runs if r.verdict == "waiting"]

    @property
    def progressing(self) -> list[RunHealth]:
        return [r for r in self.runs if r.verdict == "progressing"]

    def summary(self) -> dict[str, object]:
        """Counts for people and scripts (the ``--json`` output adds ``runs``)."""
        return {"running": len(self.runs), "stuck": len(self.stuck),
                "waiting": len(self.waiting), "progressing": len(self.progressing)}


# ---------------------------------------------------------------------------- judging


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def last_progress(obs: Observation) -> datetime:
    """Newest sign of progress: history event, activity heartbeat or ledger write."""
    marks = [obs.last_event_at, *(a.last_heartbeat_at for a in obs.activities
                                  if a.last_heartbeat_at is not None)]
    if obs.last_ledger_at is not None:
        marks.append(obs.last_ledger_at)
    return max(marks)


def classify(obs: Observation, *, older_than: timedelta) -> RunHealth:
    """Judge one observation: the reason comes from what blocks the run, the verdict from how
    long it made no progress (or from its approval deadline)."""
    now = obs.observed_at
    progress = last_progress(obs)
    idle = max((now - progress).total_seconds(), 0.0)
    overdue = idle > older_than.total_seconds()
    reason, detail = _reason(obs, now)
    deadline = obs.approval_deadline if obs.awaiting_approval else None
    verdict: Verdict = "stuck" if overdue else "progressing"
    if reason == "waiting_for_approval":
        verdict = "waiting"
    elif reason == "approval_overdue":
        verdict = "stuck"
    return RunHealth(workflow_id=obs.workflow_id, run_id=obs.run_id,
                     workflow_type=obs.workflow_type, task_queue=obs.task_queue,
                     agent=obs.agent, tenant=obs.tenant, started_at=obs.started_at,
                     last_progress_at=progress, idle_seconds=round(idle, 3), verdict=verdict,
                     reason=reason, detail=detail, deadline=deadline)


def _reason(obs: Observation, now: datetime) -> tuple[Reason, str]:
    if obs.workflow_task_attempt >= 2:
        why = obs.workflow_task_failure or "no failure recorded"
        return ("workflow_task_failing",
                f"workflow task failed {obs.workflow_task_attempt - 1} time(s) and is retried "
                f"(attempt {obs.workflow_task_attempt}): {why}")
    if obs.pollers == 0:
        seen = (f"last poll {_clock(obs.last_poll_at)}" if obs.last_poll_at is not None
                else "never polled")
        return ("no_worker", f"no worker is polling task queue {obs.task_queue!r} ({seen})")
    if obs.awaiting_approval:
        who = f" from {obs.approval_awaiting}" if obs.approval_awaiting else ""
        what = f"approval {obs.approval_id}{who}" if obs.approval_id else f"an approval{who}"
        if obs.approval_deadline is None:
            return "waiting_for_approval", f"waiting for {what} (deadline unknown)"
        if now <= obs.approval_deadline + DEADLINE_GRACE:
            return ("waiting_for_approval",
                    f"waiting for {what} until {_clock(obs.approval_deadline)}")
        late = (now - obs.approval_deadline).total_seconds()
        return ("approval_overdue",
                f"still waiting for {what} {_ago(late)} after its deadline "
                f"{_clock(obs.approval_deadline)}: the deadline timer did not escalate it")
    retrying = [a for a in obs.activities if a.attempt >= 2 and a.last_failure]
    if retrying:
        a = max(retrying, key=lambda x: x.attempt)
        limit = f"/{a.maximum_attempts}" if a.maximum_attempts else " (no attempt limit)"
        nxt = f"; next attempt {_clock(a.next_attempt_at)}" if a.next_attempt_at else ""
        return ("activity_retrying",
                f"activity {a.activity_type} retrying, attempt {a.attempt}{limit}; last "
                f"failure: {a.last_failure}{nxt}")
    if obs.workflow_task_heartbeats >= 2 or (obs.workflow_task_heartbeats >= 1
                                             and obs.workflow_task == "started"):
        return ("local_activity_running",
                f"{obs.workflow_task_heartbeats} workflow tasks completed without a new command "
                f"since {obs.last_event_type} at {_clock(obs.last_event_at)}: a local activity "
                f"(a ledger write: run.start, run.decisions, run.finish) is running or retrying; "
                f"its failures are in the worker log")
    running = [a for a in obs.activities if a.state == "started"]
    if running:
        a = running[0]
        since = f" since {_clock(a.last_started_at)}" if a.last_started_at else ""
        beat = (f", last heartbeat {_clock(a.last_heartbeat_at)}" if a.last_heartbeat_at
                else ", no heartbeat")
        return "activity_running", f"activity {a.activity_type} running{since}{beat}"
    if obs.activities:
        a = obs.activities[0]
        return ("activity_not_started",
                f"activity {a.activity_type} scheduled but not picked up by any of "
                f"{obs.pollers} polling worker(s)")
    since = f" since {_clock(obs.workflow_task_since)}" if obs.workflow_task_since else ""
    if obs.workflow_task == "started":
        return ("workflow_task_pending",
                f"workflow task open{since}: the worker is running a local activity (a ledger "
                f"write: run.start, run.decisions, run.finish) or the workflow code is slow")
    if obs.workflow_task == "scheduled":
        return ("workflow_task_pending",
                f"workflow task scheduled{since}, not picked up by any of {obs.pollers} "
                f"polling worker(s)")
    return ("idle", f"waiting for a timer or signal; last event {obs.last_event_type} at "
                    f"{_clock(obs.last_event_at)}")


# ---------------------------------------------------------------------------- gathering


def _at(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


_ACTIVITY_STATE: dict[int, Literal["scheduled", "started", "cancel_requested", "paused"]] = {
    PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED: "scheduled",
    PendingActivityState.PENDING_ACTIVITY_STATE_STARTED: "started",
    PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED: "cancel_requested",
    PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED: "paused",
}


class _Pollers:
    """Live pollers per task queue, asked once per report."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._seen: dict[str, asyncio.Task[tuple[int, datetime | None]]] = {}

    def get(self, task_queue: str, now: datetime) -> asyncio.Task[tuple[int, datetime | None]]:
        if task_queue not in self._seen:
            self._seen[task_queue] = asyncio.create_task(self._ask(task_queue, now))
        return self._seen[task_queue]

    async def _ask(self, task_queue: str, now: datetime) -> tuple[int, datetime | None]:
        resp = await self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=self.client.namespace, task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        stamps = [t for t in (_at(p.last_access_time) for p in resp.pollers) if t is not None]
        live = [t for t in stamps if now - t <= POLLER_FRESH]
        return len(live), max(stamps, default=None)


async def _message(client: Client, failure: Failure) -> str:
    """A failure's message, decoded when a payload codec encrypted it."""
    try:
        err = await client.data_converter.decode_failure(failure)
    except Exception:  # an undecodable failure still has its (maybe encoded) message
        return failure.message or "(no message)"
    return str(err) or failure.message or type(err).__name__


_WORKFLOW_TASK_EVENTS = frozenset({
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
})
"""Bookkeeping of workflow tasks: they repeat while a run is blocked (a local activity kept
alive, a failing or timed-out task), so they do not count as progress."""


@dataclass
class _Tail:
    at: datetime
    event_type: str
    heartbeats: int
    failure: Failure | None


async def _tail(client: Client, workflow_id: str, run_id: str, *, page: int = 200,
                max_events: int = 2000) -> _Tail:
    """The newest event that is not workflow-task bookkeeping, read backwards (at most
    ``max_events``), with the completed workflow tasks after it and the newest workflow-task
    failure."""
    heartbeats = 0
    failure: Failure | None = None
    token = b""
    seen = 0
    oldest = None
    while True:
        resp = await client.workflow_service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                maximum_page_size=page, next_page_token=token))
        for e in resp.history.events:
            seen += 1
            oldest = e
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED and failure is None:
                failure = e.workflow_task_failed_event_attributes.failure
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                heartbeats += 1
            if e.event_type not in _WORKFLOW_TASK_EVENTS:
                return _Tail(_at(e.event_time) or datetime.now(UTC),
                             EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"),
                             heartbeats, failure)
        token = resp.next_page_token
        if not token or seen >= max_events:
            break
    if oldest is None:  # pragma: no cover - a started workflow has at least its start event
        raise StackError(f"run {workflow_id} has no history")
    return _Tail(_at(oldest.event_time) or datetime.now(UTC),
                 EventType.Name(oldest.event_type).removeprefix("EVENT_TYPE_"), heartbeats,
                 failure)


async def _approval(client: Client, workflow_id: str, run_id: str,
                    ) -> tuple[str | None, datetime | None, str | None]:
    """(approval id, deadline, role asked) from the run's ``state`` query, if a worker
    answers it."""
    try:
        state = await client.get_workflow_handle(workflow_id, run_id=run_id).query(
            "state", result_type=RunState, rpc_timeout=timedelta(seconds=5))
    except Exception:  # no worker answered, or not an AgentWorkflow: the ledger may know
        return None, None, None
    if not state.pending_approvals:
        return None, None, None
    p = min(state.pending_approvals,
            key=lambda x: x.deadline or datetime.max.replace(tzinfo=UTC))
    return p.approval_id, p.deadline, p.awaiting


_LEDGER_PROGRESS = """
select workflow_id, run_id, max(at) as at from (
  select workflow_id, run_id, created_at as at from stead_decisions
   where workflow_id = any($1)
  union all
  select workflow_id, run_id, created_at from stead_model_calls
   where workflow_id = any($1) and status = 'ok'
  union all
  select workflow_id, run_id,
         started_at + make_interval(secs => coalesce(duration_ms, 0) / 1000.0)
    from stead_tool_attempts
   where workflow_id = any($1) and status in ('ok', 'replayed', 'reconciled')
  union all
  select workflow_id, run_id, started_at from stead_runs where workflow_id = any($1)
) w group by workflow_id, run_id
"""

_LEDGER_DEADLINES = """
select distinct on (workflow_id, run_id) workflow_id, run_id, data->>'approval_id' as id,
       data->>'deadline' as deadline
  from stead_decisions
 where workflow_id = any($1) and kind = 'approval_requested'
 order by workflow_id, run_id, seq desc
"""


async def _ledger_facts(ledger: Ledger, workflow_ids: Sequence[str],
                        ) -> tuple[dict[tuple[str, str], datetime],
                                   dict[tuple[str, str], tuple[str, datetime]]]:
    """Per (workflow id, run id): last successful write, and last approval asked (id,
    first-level deadline)."""
    ids = list(workflow_ids)
    async with ledger.pool.acquire() as conn:
        progress = {(r["workflow_id"], r["run_id"]): r["at"]
                    for r in await conn.fetch(_LEDGER_PROGRESS, ids)}
        asked: dict[tuple[str, str], tuple[str, datetime]] = {}
        for r in await conn.fetch(_LEDGER_DEADLINES, ids):
            try:
                asked[(r["workflow_id"], r["run_id"])] = (
                    r["id"], datetime.fromisoformat(r["deadline"]))
            except (TypeError, ValueError):
                continue
    return progress, asked


async def observe(client: Client, workflow_id: str, run_id: str, *, pollers: _Pollers,
                  now: datetime, ledger_at: datetime | None = None,
                  ledger_approval: tuple[str, datetime] | None = None) -> Observation | None:
    """Everything the detector needs about one run; None if it finished meanwhile."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return None
    raw = desc.raw_description
    tq = desc.task_queue
    tail = await _tail(client, workflow_id, run_id)
    live, last_poll = await pollers.get(tq, now)

    wft: Literal["none", "scheduled", "started"] = "none"
    wft_since: datetime | None = None
    attempt = 0
    if raw.HasField("pending_workflow_task"):
        pwt = raw.pending_workflow_task
        attempt = pwt.attempt
        started = PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
        wft = "started" if pwt.state == started else "scheduled"
        wft_since = _at(pwt.started_time) if wft == "started" else _at(pwt.scheduled_time)
    activities = [PendingActivity(
        activity_type=a.activity_type.name, state=_ACTIVITY_STATE.get(a.state, "other"),
        attempt=a.attempt, maximum_attempts=a.maximum_attempts,
        last_failure=(await _message(client, a.last_failure)
                      if a.attempt >= 2 and a.HasField("last_failure") else None),
        last_started_at=_at(a.last_started_time), last_heartbeat_at=_at(a.last_heartbeat_time),
        next_attempt_at=_at(a.next_attempt_schedule_time)) for a in raw.pending_activities]

    attrs = desc.typed_search_attributes
    awaiting = bool(attrs.get(_AWAITING))
    approval_id: str | None = None
    deadline: datetime | None = None
    role: str | None = None
    if awaiting:
        if live:
            approval_id, deadline, role = await _approval(client, workflow_id, run_id)
        if deadline is None and ledger_approval is not None:
            approval_id, deadline = ledger_approval
    return Observation(
        workflow_id=workflow_id, run_id=run_id, workflow_type=desc.workflow_type,
        task_queue=tq, started_at=desc.start_time, observed_at=now,
        agent=attrs.get(_AGENT), tenant=attrs.get(_TENANT), last_event_at=tail.at,
        last_event_type=tail.event_type, workflow_task_heartbeats=tail.heartbeats,
        last_ledger_at=ledger_at,
        workflow_task=wft, workflow_task_attempt=attempt, workflow_task_since=wft_since,
        workflow_task_failure=(await _message(client, tail.failure)
                               if tail.failure is not None and attempt >= 2 else None),
        activities=activities, pollers=live, last_poll_at=last_poll,
        awaiting_approval=awaiting, approval_id=approval_id, approval_deadline=deadline,
        approval_awaiting=role)


async def find_stuck(client: Client, *, older_than: timedelta, query: str | None = None,
                     task_queue: str | None = None, ledger: Ledger | None = None,
                     limit: int = 1000, concurrency: int = 16) -> StuckReport:
    """Judge every running workflow that ``query`` (and ``task_queue``) selects.

    ``older_than``: how long without progress makes a run stuck. ``ledger``: count the run's
    ledger writes as progress and read approval deadlines the ``state`` query cannot give.
    Raises :class:`StuckQueryError` for a query the server rejects, ``StackError`` when the
    server cannot be asked."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    full = DEFAULT_QUERY
    if query:
        full += f" AND ({query})"
    if task_queue:
        full += f" AND TaskQueue = {_quote(task_queue)}"
    now = datetime.now(UTC)
    try:
        listed = [(wf.id, wf.run_id) async for wf in client.list_workflows(full, limit=limit)]
    except RPCError as e:
        if e.status == RPCStatusCode.INVALID_ARGUMENT:
            raise StuckQueryError(f"the server rejected the query {full!r}: {e.message}") \
                from None
        raise StackError(f"listing running workflows failed: {e.message}") from None

    progress: dict[tuple[str, str], datetime] = {}
    asked: dict[tuple[str, str], tuple[str, datetime]] = {}
    ledger_checked = False
    ledger_problem: str | None = None
    if ledger is not None:
        try:
            if listed:
                progress, asked = await _ledger_facts(ledger,
                                                      sorted({wid for wid, _ in listed}))
            ledger_checked = True
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            # Temporal alone still tells stuck runs apart; say the ledger was not read.
            ledger_problem = f"{type(err).__name__}: {err}"

    pollers = _Pollers(client)
    gate = asyncio.Semaphore(concurrency)

    async def one(wid: str, rid: str) -> RunHealth | None:
        async with gate:
            try:
                obs = await observe(client, wid, rid, pollers=pollers, now=now,
                                    ledger_at=progress.get((wid, rid)),
                                    ledger_approval=asked.get((wid, rid)))
            except RPCError as e:
                raise StackError(f"describing run {wid} failed: {e.message}") from None
        return classify(obs, older_than=older_than) if obs is not None else None

    judged = await asyncio.gather(*(one(wid, rid) for wid, rid in listed))
    runs = sorted((r for r in judged if r is not None),
                  key=lambda r: ({"stuck": 0, "waiting": 1, "progressing": 2}[r.verdict],
                                 -r.idle_seconds, r.workflow_id))
    return StuckReport(checked_at=now, query=full,
                       older_than_seconds=older_than.total_seconds(), runs=runs,
                       ledger_checked=ledger_checked, ledger_problem=ledger_problem)


def _quote(value: str) -> str:
    """A visibility-query string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


__all__ = [
    "DEADLINE_GRACE",
    "DEFAULT_QUERY",
    "POLLER_FRESH",
    "Observation",
    "PendingActivity",
    "Reason",
    "RunHealth",
    "StuckQueryError",
    "StuckReport",
    "Verdict",
    "classify",
    "find_stuck",
    "last_progress",
    "observe",
]
