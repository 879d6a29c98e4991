"""Where one run's time goes, read from its event history.

Every gap between two consecutive events is charged to one segment (the wait the later event
ends), so a run's segments add up exactly to its server-side duration:

- ``workflow task: queue`` — scheduled -> started (server hands the task to the worker);
- ``workflow task: worker`` — started -> completed (replay + workflow code, and any local
  activities, which run inside the task: stead's run.start and run.finish);
- ``<kind> activity: queue`` / ``execution`` — scheduled -> started -> completed;
- ``server: ...`` — what the server itself adds between a completion and the next task.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

E = EventType

SEGMENTS = (
    "workflow task: queue (scheduled->started)",
    "workflow task: worker, first (stead: + run.start local activity)",
    "workflow task: worker, middle",
    "workflow task: worker, last (stead: + run.finish local activity)",
    "model activity: queue (scheduled->started)",
    "model activity: execution (started->completed)",
    "tool activity: queue (scheduled->started)",
    "tool activity: execution (started->completed)",
    "server: completion -> next workflow task",
    "server: other",
)


@dataclass
class RunBreakdown:
    workflow_id: str
    total_ms: float
    """WorkflowExecutionStarted -> WorkflowExecutionCompleted, server clock."""
    segments_ms: dict[str, float]
    counts: dict[str, int]
    events: int
    history_bytes: int


@dataclass
class Breakdown:
    """Medians over several runs of one system."""

    runs: int
    total_ms: float
    events: float
    history_bytes: float
    segments_ms: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


def _ms(e: HistoryEvent) -> float:
    return e.event_time.ToNanoseconds() / 1e6


def _kind(activity_type: str) -> str:
    return "model" if "model" in activity_type else "tool"


def analyse(workflow_id: str, events: Sequence[HistoryEvent]) -> RunBreakdown:
    scheduled: dict[int, str] = {}  # activity scheduled event id -> kind
    for e in events:
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[e.event_id] = _kind(name)
    wft_started = [e.event_id for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED]
    first_wft, last_wft = (wft_started[0], wft_started[-1]) if wft_started else (0, 0)

    seg: dict[str, float] = defaultdict(float)
    cnt: dict[str, int] = defaultdict(int)
    for prev, e in itertools.pairwise(events):
        gap = _ms(e) - _ms(prev)
        t = e.event_type
        if t == E.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            key = SEGMENTS[0]
        elif t == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            started = e.workflow_task_completed_event_attributes.started_event_id
            key = SEGMENTS[1] if started == first_wft else \
                SEGMENTS[3] if started == last_wft else SEGMENTS[2]
        elif t == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            kind = scheduled[e.activity_task_started_event_attributes.scheduled_event_id]
            key = SEGMENTS[4] if kind == "model" else SEGMENTS[6]
        elif t == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            kind = scheduled[e.activity_task_completed_event_attributes.scheduled_event_id]
            key = SEGMENTS[5] if kind == "model" else SEGMENTS[7]
        elif t == E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            key = SEGMENTS[8]
        else:
            key = SEGMENTS[9]
        seg[key] += gap
        cnt[key] += 1
    total = _ms(events[-1]) - _ms(events[0]) if events else 0.0
    return RunBreakdown(workflow_id=workflow_id, total_ms=total, segments_ms=dict(seg),
                        counts=dict(cnt), events=len(events),
                        history_bytes=sum(e.ByteSize() for e in events))


async def fetch(client: Client, workflow_ids: Iterable[str]) -> list[RunBreakdown]:
    out = []
    for wid in workflow_ids:
        history = await client.get_workflow_handle(wid).fetch_history()
        out.append(analyse(wid, list(history.events)))
    return out


def summarise(runs: Sequence[RunBreakdown]) -> Breakdown:
    if not runs:
        return Breakdown(runs=0, total_ms=0.0, events=0.0, history_bytes=0.0)

    def med(values: Iterable[float]) -> float:
        return float(statistics.median(list(values)))

    return Breakdown(
        runs=len(runs),
        total_ms=med(r.total_ms for r in runs),
        events=med(r.events for r in runs),
        history_bytes=med(r.history_bytes for r in runs),
        segments_ms={s: med(r.segments_ms.get(s, 0.0) for r in runs) for s in SEGMENTS},
        counts={s: med(r.counts.get(s, 0) for r in runs) for s in SEGMENTS},
    )
