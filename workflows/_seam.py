"""The seam between a run's parts and Temporal: everything they ask of the workflow runtime.

The graph interpreter, the approval book, the tool-call path and the decision log talk to
Temporal only through :class:`Seam` (schedule an activity, start a child run, wait with a
timeout, read the clock, ask a patch, upsert search attributes, set the Web UI details, say
when it waits on a person).
:class:`TemporalSeam` is the one implementation that calls ``temporalio.workflow``; tests plug
a fake into the same seam and run the parts without a server.

    seam = TemporalSeam()
    turn = await seam.activity(ActivityCall(ModelActivities.complete, req, ...))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from temporalio import activity, workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from stead import errors
    from stead.client import WORKFLOW_TYPE
    from stead.contracts.models import RunRequest, RunResult
    from stead.parking import PARKED

T = TypeVar("T")

LOCAL_EXECUTION_PATCH = "stead-local-execution"
"""Runs from this patch on (1) handle a failed local activity as they handle a failed activity,
and (2) run an unpinned policy's read tools locally (``_context.unpinned_policy``).

(1): temporalio raises a local activity's own error (its ``ApplicationError``, or a timeout)
where an activity's comes as the cause of an ``ActivityError``; every ``except ActivityError``
of the run missed it, so a local call that failed for good failed its whole run.

The patch is asked before the run's first local activity is scheduled, so its marker comes
first in the history. Asked only once a local activity had failed, the marker followed that
activity's; a query that had to replay such a run (a run closed and left the cache) failed as
non-deterministic."""

LOCAL_TIMEOUT = timedelta(seconds=60)
"""Start-to-close bound of the run's bookkeeping local activities (ledger writes)."""
LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=2,
                          maximum_interval=timedelta(seconds=5), maximum_attempts=0,
                          non_retryable_error_types=[errors.UNKNOWN_AGENT])


@dataclass(frozen=True)
class ActivityCall(Generic[T]):
    """One activity to schedule: the definition (or, for per-tool activities, the name from
    ``stead.authoring.tools.activity_name``), its one input and its options."""

    activity: Callable[..., Awaitable[T]] | str
    arg: object
    start_to_close: timedelta
    result_type: type[T] | None = None
    schedule_to_close: timedelta | None = None
    heartbeat: timedelta | None = None
    """Remote activities only."""
    retry: RetryPolicy | None = None
    summary: str | None = None
    local: bool = False
    """Run as a local activity (in the worker, recorded as a marker)."""

    @property
    def name(self) -> str:
        """The activity type Temporal schedules."""
        if isinstance(self.activity, str):
            return self.activity
        defn = activity._Definition.must_from_callable(self.activity)
        assert defn.name is not None
        return defn.name


def bookkeeping(act: Callable[..., Awaitable[T]], arg: object, *,
                result_type: type[T] | None = None,
                summary: str | None = None) -> ActivityCall[T]:
    """A run bookkeeping local activity (``RunActivities``): short, retried until it lands."""
    return ActivityCall(act, arg, start_to_close=LOCAL_TIMEOUT, result_type=result_type,
                        schedule_to_close=timedelta(minutes=10), retry=LOCAL_RETRY,
                        summary=summary, local=True)


class Seam(Protocol):
    """What the parts of a run ask of the workflow runtime."""

    def now(self) -> datetime: ...

    def patched(self, patch_id: str) -> bool: ...

    def upsert(self, updates: Sequence[SearchAttributeUpdate[Any]]) -> None: ...

    def set_details(self, text: str) -> None: ...

    def cancelled(self) -> bool:
        """True once this run has been asked to cancel."""
        ...

    async def activity(self, call: ActivityCall[T]) -> T: ...

    async def wait(self, done: Callable[[], bool], *, timeout: float | None = None) -> bool:
        """Until ``done()`` holds (True) or ``timeout`` seconds pass (False)."""
        ...

    async def child_run(self, request: RunRequest, *, id: str, summary: str) -> RunResult:
        """A child ``AgentWorkflow`` on this task queue, cancelled when this run closes."""
        ...

    def parked(self, waiting: bool) -> None:
        """This run starts (True) or stops (False) waiting on a person: while it waits, the
        worker may let it go of its cache (``stead.parking``). Changes nothing in history."""
        ...


class TemporalSeam:
    """The seam over ``temporalio.workflow`` (the only place the parts reach Temporal), one
    per run."""

    def __init__(self) -> None:
        self._waiting = False
        self._busy = 0  # activities and child runs in flight

    def _mark_parked(self) -> None:
        # Parked while some branch waits on a person and no other has work in flight: a run
        # evicted with an activity in flight would replay as soon as that activity answers.
        parked(self._waiting and not self._busy)

    def _started(self) -> None:
        self._busy += 1
        if self._waiting and self._busy == 1:
            self._mark_parked()

    def _ended(self) -> None:
        self._busy -= 1
        if self._waiting and not self._busy:
            self._mark_parked()

    def now(self) -> datetime:
        return workflow.now()

    def patched(self, patch_id: str) -> bool:
        return workflow.patched(patch_id)

    def upsert(self, updates: Sequence[SearchAttributeUpdate[Any]]) -> None:
        workflow.upsert_search_attributes(updates)

    def set_details(self, text: str) -> None:
        workflow.set_current_details(text)

    def cancelled(self) -> bool:
        return workflow.cancellation_reason() is not None

    async def activity(self, call: ActivityCall[T]) -> T:
        self._started()
        try:
            return await self._activity(call)
        finally:
            self._ended()

    async def _activity(self, call: ActivityCall[T]) -> T:
        result: T
        act: Any = call.activity  # a definition or a per-tool name: temporalio takes both
        if call.local:
            as_activity_error = workflow.patched(LOCAL_EXECUTION_PATCH)  # see there: first
            try:
                result = await workflow.execute_local_activity(
                    act, call.arg, result_type=call.result_type,
                    start_to_close_timeout=call.start_to_close,
                    schedule_to_close_timeout=call.schedule_to_close,
                    retry_policy=call.retry, summary=call.summary)
            except (ApplicationError, ActivityTimeout) as err:
                if not as_activity_error:
                    raise  # recorded before the patch: the run failed here, and replays so
                raise ActivityError(f"local activity {call.name} failed", scheduled_event_id=0,
                                    started_event_id=0, identity="", activity_type=call.name,
                                    activity_id="", retry_state=None) from err
            return result
        result = await workflow.execute_activity(
            act, call.arg, result_type=call.result_type,
            start_to_close_timeout=call.start_to_close,
            schedule_to_close_timeout=call.schedule_to_close,
            heartbeat_timeout=call.heartbeat, retry_policy=call.retry, summary=call.summary)
        return result

    async def wait(self, done: Callable[[], bool], *, timeout: float | None = None) -> bool:
        try:
            await workflow.wait_condition(done, timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def child_run(self, request: RunRequest, *, id: str, summary: str) -> RunResult:
        self._started()
        try:
            result: RunResult = await workflow.execute_child_workflow(
                WORKFLOW_TYPE, request, id=id, result_type=RunResult,
                task_queue=workflow.info().task_queue,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL, static_summary=summary)
        finally:
            self._ended()
        return result

    def parked(self, waiting: bool) -> None:
        self._waiting = waiting
        self._mark_parked()


def parked(waiting: bool) -> None:
    """``Seam.parked`` for the running workflow (the conversation's idle wait calls it too).

    Outside the workflow's event loop it does nothing. A run evicted while it waits has its
    coroutine closed there, and the ``finally`` that unparks it then runs with no workflow to
    ask (``workflow.info()`` raised, an unraisable error at collection); the eviction took the
    run out of the registry already (``ParkedRuns.due``)."""
    if not workflow.in_workflow():
        return
    info = workflow.info()
    if waiting:
        PARKED.park(info.run_id, info.task_queue)
    else:
        PARKED.unpark(info.run_id)
