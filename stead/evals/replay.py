"""Determinism replay: recorded histories against the current workflow code.

    histories = load_histories([Path("evals/histories")])      # or fetch_histories(client, ...)
    report = await replay(histories)
    report.ok, report.outcomes[0].status                        # "ok" / "nondeterministic" / ...

A run in flight resumes on whatever code the workers run *now*; Temporal replays its history
through that code and stops the run (a workflow task failing with ``[TMPRL1100]
Nondeterminism error``) when the code no longer issues the commands the history recorded.
Replaying recorded histories before a deploy finds such changes first. The replayer is set up
like the production worker (:func:`stead.worker.build_worker`): the same workflows, the
pydantic data converter of :mod:`stead.client`, the same workflow runner (sandboxed with the
same passthrough modules, or not: ``STEAD_WORKFLOW_SANDBOX``); a test pins that they agree.

Every history gets an outcome: ``ok``; ``nondeterministic``, with the event Temporal's error
names (or, when its message names none, the first event whose replay fails, found by replaying
growing prefixes of the history); or ``failed`` (any other workflow task failure, e.g. a
sandbox violation, or a workflow type no workflow here is registered for).

Errors (all :class:`stead.errors.SteadError`)::

    HistoryFileError    a history file cannot be read or is not a workflow history
    HistoryQueryError   the server rejected the visibility query
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, WorkflowReplayResult
from temporalio.workflow import NondeterminismError

from stead.errors import StackError, SteadError
from stead.files import expand_paths

if TYPE_CHECKING:
    from stead.settings import CodecSettings

DEFAULT_QUERY = "WorkflowType='AgentWorkflow'"

ReplayStatus = Literal["ok", "nondeterministic", "failed"]


class HistoryFileError(SteadError):
    """A history file cannot be read or is not a workflow history; the message names it."""


class HistoryQueryError(SteadError):
    """The Temporal server rejected the visibility query."""


# ---------------------------------------------------------------------------- results


class ReplayOutcome(BaseModel):
    """What replaying one recorded history against the current code gave."""

    source: str
    """The file the history came from, or ``server`` for one fetched by query."""
    workflow_id: str
    run_id: str
    workflow_type: str
    events: int
    status: ReplayStatus
    event_id: int | None = None
    """The history event where replay diverged (nondeterministic only)."""
    event_type: str | None = None
    """Its type in Temporal's spelling, e.g. ``ActivityTaskScheduled``."""
    located: Literal["temporal", "prefix"] | None = None
    """Who named the event: Temporal's error message, or our prefix search when the message
    names none (e.g. an activity type mismatch)."""
    detail: str | None = None
    """Temporal's error message (nondeterministic, failed)."""


class ReplayReport(BaseModel):
    outcomes: list[ReplayOutcome] = Field(default_factory=list)
    seconds: float = 0.0
    """Wall time of the whole replay (including locating divergent events)."""

    @property
    def ok(self) -> bool:
        return all(o.status == "ok" for o in self.outcomes)

    def count(self, status: ReplayStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def histories_per_second(self) -> float:
        return len(self.outcomes) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RecordedHistory:
    """A history and where it came from (a file path, or ``server``)."""

    history: WorkflowHistory
    source: str

    @property
    def workflow_type(self) -> str:
        return self.history.events[0].workflow_execution_started_event_attributes \
            .workflow_type.name


# ---------------------------------------------------------------------------- the replayer


@functools.cache
def _quiet_runtime() -> Runtime:
    # The SDK core logs every failed workflow task as a warning; replay reports them itself.
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))))


def production_workflows() -> list[type]:
    """The workflows :func:`stead.worker.build_worker` registers."""
    from stead.workflows.registry import WORKFLOWS

    return list(WORKFLOWS)


def production_replayer(*, workflows: Sequence[type] | None = None,
                        codec: CodecSettings | None = None,
                        sandbox: bool | None = None) -> Replayer:
    """A replayer configured like the production worker.

    ``workflows`` replaces the production workflows (tests pass a changed variant registered
    under the same name to show what a breaking change looks like). ``codec`` (default: the
    environment's) chooses the data converter, payload decryption keys included; failure
    messages stay unencoded so a failed replay's report says why. ``sandbox`` (default: the
    environment's ``STEAD_WORKFLOW_SANDBOX``) runs the workflows in Temporal's sandbox."""
    from stead.agents import reference_graphs
    from stead.authoring.graph import REGISTRY
    from stead.security.codec import data_converter
    from stead.settings import load_settings
    from stead.worker import worker_interceptors, workflow_runner

    # Runs replay with the graph they pinned: the reference agents' graphs (agents declared
    # in this process, e.g. by a custom worker module, registered themselves already).
    for graph in reference_graphs():
        REGISTRY.add(graph)
    env = functools.cache(load_settings)  # read once, and only for a default left to it
    return Replayer(
        workflows=list(workflows) if workflows is not None else production_workflows(),
        data_converter=data_converter(codec if codec is not None else env().codec,
                                      encode_failures=False),
        workflow_runner=workflow_runner(sandbox if sandbox is not None
                                        else env().worker.workflow_sandbox),
        interceptors=worker_interceptors(), runtime=_quiet_runtime())


# ---------------------------------------------------------------------------- loading


def history_files(paths: Sequence[Path]) -> list[Path]:
    """The ``*.json`` files named or found (recursively, sorted) under directories."""
    return expand_paths(paths, ("*.json",), what="history", error=HistoryFileError)


def load_history_file(path: Path) -> RecordedHistory:
    """Read a history exported by ``temporal workflow show --output json``, the Web UI, or
    ``stead histories export``.

    The workflow id is the file's ``workflowId`` field when it has one (stead's exports do),
    else the file name without ``.json``: Temporal's own JSON does not carry it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryFileError(f"{path}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise HistoryFileError(f"{path}: not valid JSON ({e}); truncated or corrupt?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise HistoryFileError(f"{path}: not a workflow history: expected a JSON object with "
                               f"an \"events\" list (as `temporal workflow show --output json` "
                               f"writes)")
    workflow_id = doc.get("workflowId")
    if not isinstance(workflow_id, str) or not workflow_id:
        workflow_id = path.name.removesuffix(".json")
    try:
        history = WorkflowHistory.from_json(workflow_id, doc)
    except Exception as e:  # protobuf's ParseError and the SDK's ValueErrors alike
        raise HistoryFileError(f"{path}: not a valid workflow history: {e}") from None
    problem = _history_problem(history.events)
    if problem:
        raise HistoryFileError(f"{path}: not a valid workflow history: {problem}")
    return RecordedHistory(history, str(path))


def _history_problem(events: Sequence[HistoryEvent]) -> str | None:
    if not events:
        return "it has no events"
    first = events[0]
    if not first.HasField("workflow_execution_started_event_attributes"):
        return f"the first event is {event_type_name(first)}, not WorkflowExecutionStarted"
    ids = [e.event_id for e in events]
    if ids != list(range(1, len(ids) + 1)):
        gap = next(i for i, eid in enumerate(ids, start=1) if eid != i)
        return f"event ids are not 1..{len(ids)} in order (event #{gap} has id {ids[gap - 1]})"
    return None


def load_histories(paths: Sequence[Path]) -> list[RecordedHistory]:
    """Every history under ``paths``, all read before any is replayed: one bad file stops
    the command before it reports anything."""
    return [load_history_file(f) for f in history_files(paths)]


async def fetch_histories(client: Client, query: str = DEFAULT_QUERY, *,
                          limit: int | None = 100) -> AsyncIterator[RecordedHistory]:
    """Histories of the runs a visibility query selects (open and closed), newest first."""
    try:
        async for wf in client.list_workflows(query, limit=limit):
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            yield RecordedHistory(history, "server")
    except RPCError as e:
        raise query_error(e, query) from None


def query_error(e: RPCError, query: str) -> SteadError:
    """A rejected query is bad input (exit 2); any other RPC failure an unreachable server."""
    if e.status == RPCStatusCode.INVALID_ARGUMENT:
        return HistoryQueryError(f"the server rejected the query {query!r}: {e.message}")
    return StackError(f"listing or fetching runs for {query!r} failed: {e.message}")


# ---------------------------------------------------------------------------- replaying


_INNER_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
_NAMED_EVENT = re.compile(r"HistoryEvent\(id: (\d+), (\w+)")
_CODE = re.compile(r"^\[TMPRL\d+\]\s*")


def event_type_name(event: HistoryEvent) -> str:
    """``ActivityTaskScheduled`` for ``EVENT_TYPE_ACTIVITY_TASK_SCHEDULED``, as Temporal's
    error messages and Web UI spell it."""
    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(part.capitalize() for part in name.split("_"))


def failure_message(err: BaseException) -> str:
    """The message inside the SDK core's ``Failure { failure: Some(Failure { message: ...``
    wrapper, or the whole text when there is no such wrapper."""
    text = str(err)
    m = _INNER_MESSAGE.search(text)
    if m is None:
        return text
    try:
        return str(json.loads(f'"{m.group(1)}"'))
    except json.JSONDecodeError:
        return m.group(1)


def named_event(message: str) -> tuple[int, str] | None:
    """The event a core error message names, e.g. ``HistoryEvent(id: 19,
    ActivityTaskScheduled)`` -> (19, "ActivityTaskScheduled")."""
    m = _NAMED_EVENT.search(message)
    return (int(m.group(1)), m.group(2)) if m else None


def _outcome(rec: RecordedHistory, failure: Exception | None) -> ReplayOutcome:
    h = rec.history
    base = ReplayOutcome(source=rec.source, workflow_id=h.workflow_id, run_id=h.run_id,
                         workflow_type=rec.workflow_type, events=len(h.events), status="ok")
    if failure is None:
        return base
    message = failure_message(failure)
    if not isinstance(failure, NondeterminismError):
        return base.model_copy(update={"status": "failed", "detail": message})
    update: dict[str, object] = {"status": "nondeterministic",
                                 "detail": _CODE.sub("", message)}
    named = named_event(message)
    if named is not None:
        update.update(event_id=named[0], event_type=named[1], located="temporal")
    return base.model_copy(update=update)


async def _replay_all(replayer: Replayer,
                      histories: AsyncIterable[RecordedHistory] | Iterable[RecordedHistory],
                      on_outcome: Callable[[ReplayOutcome], None] | None
                      ) -> tuple[list[ReplayOutcome], dict[int, WorkflowHistory]]:
    """Outcomes in input order, and the histories whose divergent event is still unknown."""
    outcomes: list[ReplayOutcome] = []
    unlocated: dict[int, WorkflowHistory] = {}
    pending: deque[RecordedHistory] = deque()

    async def feed() -> AsyncIterator[WorkflowHistory]:
        async for rec in _aiter(histories):
            pending.append(rec)
            yield rec.history

    # One replayer worker for every history: its start-up is paid once, not per history.
    async with replayer.workflow_replay_iterator(feed()) as results:
        result: WorkflowReplayResult
        async for result in results:
            rec = pending.popleft()
            outcome = _outcome(rec, result.replay_failure)
            outcomes.append(outcome)
            if outcome.status == "nondeterministic" and outcome.event_id is None:
                unlocated[len(outcomes) - 1] = rec.history
            elif on_outcome:
                on_outcome(outcome)
    return outcomes, unlocated


async def _aiter(items: AsyncIterable[RecordedHistory] | Iterable[RecordedHistory]
                 ) -> AsyncIterator[RecordedHistory]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def locate_divergence(replayer: Replayer, history: WorkflowHistory) -> int | None:
    """The first event whose replay fails with a nondeterminism error: the shortest failing
    prefix of the history, by bisection (a prefix is how a run in flight looks, so it replays
    like one). None when the whole history does not fail that way."""

    async def fails(n: int) -> bool:
        prefix = WorkflowHistory(history.workflow_id, history.events[:n])
        result = await replayer.replay_workflow(prefix, raise_on_replay_failure=False)
        return isinstance(result.replay_failure, NondeterminismError)

    lo, hi = 1, len(history.events)
    if not await fails(hi):
        return None
    while lo < hi:  # invariant: the prefix of length hi fails
        mid = (lo + hi) // 2
        if await fails(mid):
            hi = mid
        else:
            lo = mid + 1
    return history.events[hi - 1].event_id


async def replay(histories: AsyncIterable[RecordedHistory] | Iterable[RecordedHistory], *,
                 replayer: Replayer | None = None,
                 on_outcome: Callable[[ReplayOutcome], None] | None = None) -> ReplayReport:
    """Replay every history against the current code (or ``replayer``'s workflows).

    ``on_outcome`` is called as each history's outcome is known (for progress output)."""
    started = time.perf_counter()
    rp = replayer or production_replayer()
    outcomes, unlocated = await _replay_all(rp, histories, on_outcome)
    for i, history in unlocated.items():
        event_id = await locate_divergence(rp, history)
        if event_id is not None:
            outcomes[i] = outcomes[i].model_copy(update={
                "event_id": event_id, "event_type": event_type_name(history.events[event_id - 1]),
                "located": "prefix"})
        if on_outcome:
            on_outcome(outcomes[i])
    return ReplayReport(outcomes=outcomes, seconds=time.perf_counter() - started)


__all__ = ["DEFAULT_QUERY", "HistoryFileError", "HistoryQueryError", "RecordedHistory",
           "ReplayOutcome", "ReplayReport", "ReplayStatus", "event_type_name",
           "failure_message", "fetch_histories", "history_files", "load_histories",
           "load_history_file", "locate_divergence", "named_event", "production_replayer",
           "production_workflows", "query_error", "replay"]
