"""``python -m bench.approvals``: signal-to-resume latency of an approval.

    python -m bench.approvals                        # 30 runs per path after 5 warm-up, ~1 min
    python -m bench.approvals --runs 50 --json out.json
    python -m bench --workload approvals             # the same, from the main entry point

How long after an approver says yes does the approved tool start? An agent whose one tool
needs approval (a read lookup, tier low = 0.05, under a policy whose ``approve_at`` is 0.01)
runs on the embedded stack the harness starts (free ports, no UI). For each run:

1. start the run; poll the ``state`` query until it shows the pending approval and the run
   is parked in the approval wait (``node`` is ``approval:<id>``), then read the history
   until its last event is a completed workflow task (nothing in flight), then wait
   ``--settle`` seconds more (by default 0.2 s) so the worker is idle, as it is when a human
   answers minutes later;
2. stamp the client clock and approve: the ``approve`` signal (``ApprovalDecision``), or the
   ``decide`` update (``DecideInput``, ``execute_update``, which returns once the workflow
   has recorded the decision);
3. when the run has finished, read its history: ``WorkflowExecutionSignaled`` (signal path),
   the workflow task that handled the decision, and the approved tool's
   ``ActivityTaskScheduled`` / ``ActivityTaskStarted``. The tool itself also stamps the time
   it was entered (the worker's view of "the next activity starts").

Client, Temporal server and worker run on one machine and share its clock, so the stamps
compare directly. The two paths alternate run by run, after warm-up runs of both.

What happens between the decision and the tool starting, in ``AgentWorkflow``: the server
records the signal (or admits the update) and schedules a workflow task on the worker's
sticky queue; the worker wakes the run, which appends ``approval_decided`` to its audit
chain (in memory: no I/O in the workflow task), clears the ``SteadAwaitingApproval``
search attribute and schedules the tool activity; the server dispatches the activity task
to the worker (``ActivityTaskStarted``); the activity writes the carried decisions and
claims the idempotency key in the ledger, then enters the tool (the worker-clock stamp).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle

from bench.stats import Summary, summarise
from stead.authoring.agent import Agent
from stead.authoring.tools import ToolContext, activity_name, tool
from stead.contracts.models import (
    ApprovalDecision,
    DecideInput,
    DecideOutcome,
    Message,
    ModelTurn,
    PendingApproval,
    RunRequest,
    RunResult,
    RunState,
    ToolSchema,
)
from stead.contracts.policy import Policy, parse_policy
from stead.integrations.llm import FunctionModel, assistant_turns, call

E = EventType
AGENT = "bench-approve"
TOOL = "guarded_lookup"
REQUEST = "Look up the key bench-1 once a human has approved it."
SIGNAL, UPDATE = "signal", "update"
PATHS = (SIGNAL, UPDATE)

POLICY_YAML = """
id: bench-approvals
version: 1
description: Every tool call asks a human (approve_at below the lowest tier weight).
thresholds: {approve_at: 0.01, deny_at: 1.0001}
approvals:
  chain: [oncall]
  timeout_seconds: 600
"""


def approvals_policy() -> Policy:
    return parse_policy(POLICY_YAML, source="bench/approvals.py:POLICY_YAML")


# ---------------------------------------------------------------------------- the agent

_entered: dict[str, int] = {}
"""workflow id -> ``time.time_ns()`` when the approved tool was first entered."""


class Key(BaseModel):
    key: str = Field(min_length=1, max_length=100)


class Value(BaseModel):
    key: str
    value: str


@tool(name=TOOL, description="Look a key up (every call needs an approval in this bench).")
async def guarded_lookup(args: Key, ctx: ToolContext) -> Value:
    _entered.setdefault(ctx.workflow_id, time.time_ns())
    return Value(key=args.key, value=f"value-of-{args.key}")


def _plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
    if assistant_turns(messages) == 0:
        return ModelTurn(tool_calls=[call(TOOL, call_id="call_1", key="bench-1")])
    last = next(m for m in reversed(messages) if m.role == "tool")
    body: dict[str, Any] = json.loads(last.content or "{}")
    return ModelTurn(content=f"Value: {body.get('result', {}).get('value', '?')}")


def approval_agent() -> Agent:
    return Agent(name=AGENT, instructions="Look the key up with the tool, then answer.",
                 tools=[guarded_lookup], offline_model=FunctionModel(_plan, name="scripted:ask"),
                 description="Benchmark agent: one lookup that needs approval.",
                 policy=approvals_policy())


# ---------------------------------------------------------------------------- one sample

SEGMENTS = {
    SIGNAL: (
        ("send -> activity started (history)", "total"),
        ("send -> tool entered (worker clock, after the ledger writes)", "tool_entered"),
        ("send -> signal RPC returned", "rpc"),
        ("  client -> server: send -> WorkflowExecutionSignaled", "client_to_server"),
        ("  server -> activity start: Signaled -> ActivityTaskStarted", "server_to_activity"),
        ("    Signaled -> workflow task started", "server_to_worker"),
        ("    workflow task on the worker (wake the run, schedule the tool)", "wft_worker"),
        ("    workflow task completed -> ActivityTaskStarted", "activity_dispatch"),
    ),
    UPDATE: (
        ("send -> activity started (history)", "total"),
        ("send -> tool entered (worker clock, after the ledger writes)", "tool_entered"),
        ("send -> execute_update returned", "rpc"),
        ("  send -> workflow task started", "server_to_worker"),
        ("  workflow task on the worker (wake the run, schedule the tool)", "wft_worker"),
        ("  workflow task completed -> ActivityTaskStarted", "activity_dispatch"),
    ),
}


@dataclass
class Sample:
    path: str
    workflow_id: str
    ms: dict[str, float]
    events_between: int
    """History events from the decision to the tool's ActivityTaskStarted."""


def _ns(e: HistoryEvent) -> int:
    return e.event_time.ToNanoseconds()


def analyse(path: str, workflow_id: str, events: Sequence[HistoryEvent], sent_ns: int,
            returned_ns: int, entered_ns: int | None) -> Sample:
    """Split send -> tool start into its segments, from one run's history."""
    tool_type = activity_name(TOOL)
    scheduled = next(e for e in events if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                     and e.activity_task_scheduled_event_attributes.activity_type.name
                     == tool_type)
    started = next(e for e in events if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED
                   and e.activity_task_started_event_attributes.scheduled_event_id
                   == scheduled.event_id)
    # The workflow task that scheduled the tool: the last one completed before it.
    wft_done = [e for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
                and e.event_id < scheduled.event_id][-1]
    wft_started = next(e for e in events
                       if e.event_id == wft_done.workflow_task_completed_event_attributes
                       .started_event_id)
    ms = {
        "total": (_ns(started) - sent_ns) / 1e6,
        "rpc": (returned_ns - sent_ns) / 1e6,
        "server_to_worker": (_ns(wft_started) - sent_ns) / 1e6,
        "wft_worker": (_ns(wft_done) - _ns(wft_started)) / 1e6,
        "activity_dispatch": (_ns(started) - _ns(wft_done)) / 1e6,
    }
    if entered_ns is not None:
        ms["tool_entered"] = (entered_ns - sent_ns) / 1e6
    first = wft_started.event_id
    if path == SIGNAL:
        signaled = next(e for e in events
                        if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                        and e.workflow_execution_signaled_event_attributes.signal_name
                        == "approve")
        ms["client_to_server"] = (_ns(signaled) - sent_ns) / 1e6
        ms["server_to_activity"] = (_ns(started) - _ns(signaled)) / 1e6
        ms["server_to_worker"] = (_ns(wft_started) - _ns(signaled)) / 1e6
        first = signaled.event_id
    if ms["total"] < 0 or ms["server_to_worker"] < -1:
        raise RuntimeError(f"{workflow_id}: history times precede the send time: {ms}")
    return Sample(path=path, workflow_id=workflow_id, ms=ms,
                  events_between=started.event_id - first)


Handle = WorkflowHandle[Any, RunResult]


_WFT = {E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, E.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, E.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT}


async def _idle(handle: Handle) -> bool:
    """The last workflow task has completed and started the approval deadline's timer (the
    run is parked in ``wait_condition``), and nothing else is in flight."""
    last_wft = None
    timer_after = False
    async for e in handle.fetch_history_events():
        if e.event_type in _WFT:
            last_wft, timer_after = e.event_type, False
        elif e.event_type == E.EVENT_TYPE_TIMER_STARTED:
            timer_after = True
    return last_wft == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and timer_after


async def _parked(handle: Handle, within: float = 60.0) -> PendingApproval:
    """Poll until the run waits for the approval with no workflow task in flight."""
    deadline = time.monotonic() + within
    state: RunState | None = None
    while time.monotonic() < deadline:
        state = await handle.query("state", result_type=RunState,
                                   rpc_timeout=timedelta(seconds=5))
        if state.pending_approvals and state.node.startswith("approval:") \
                and await _idle(handle):
            return state.pending_approvals[0]
        elif state.status != "running":
            raise RuntimeError(f"{handle.id} ended without asking for approval: {state}")
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{handle.id}: no parked approval after {within:.0f}s; last: {state}")


async def one(h: Any, path: str, settle: float) -> Sample:
    from stead.client import start_run

    handle: Handle = await start_run(h.client, RunRequest(agent=AGENT, input=REQUEST),
                                     temporal=h.stead_settings.temporal)
    pending = await _parked(handle)
    await asyncio.sleep(settle)
    if path == SIGNAL:
        sent = time.time_ns()
        await handle.signal("approve", ApprovalDecision(approval_id=pending.approval_id,
                                                        by="bench"))
        returned = time.time_ns()
    else:
        sent = time.time_ns()
        outcome = await handle.execute_update(
            "decide", DecideInput(approval_id=pending.approval_id, by="bench", approved=True),
            result_type=DecideOutcome)
        returned = time.time_ns()
        assert outcome.outcome == "approved", outcome
    result = await asyncio.wait_for(handle.result(), 60)
    if result.status != "completed" or result.approvals != 1 or len(result.tool_calls) != 1:
        raise RuntimeError(f"{handle.id} did not run the approved tool: {result!r}")
    history = await handle.fetch_history()
    return analyse(path, handle.id, list(history.events), sent, returned,
                   _entered.pop(handle.id, None))


# ---------------------------------------------------------------------------- workload


@dataclass
class ApprovalsResult:
    runs: int
    warmup: int
    settle_s: float
    samples: dict[str, list[Sample]]
    summary: dict[str, dict[str, Summary]] = field(default_factory=dict)
    """path -> segment key -> summary (ms)."""
    seconds: float = 0.0


async def approvals_workload(runs: int = 30, warmup: int = 5, settle: float = 0.2, *,
                             progress: Callable[[str], None] = print) -> ApprovalsResult:
    from bench.runner import bench_stack

    began = time.perf_counter()
    samples: dict[str, list[Sample]] = {p: [] for p in PATHS}
    async with bench_stack(progress=progress, agents=[approval_agent()]) as h:
        progress(f"approvals: {warmup} warm-up run(s) per path")
        for i in range(warmup):
            for p in (PATHS if i % 2 == 0 else PATHS[::-1]):
                await one(h, p, settle)
        progress(f"approvals: {runs} run(s) per path, interleaved")
        for i in range(runs):
            for p in (PATHS if i % 2 == 0 else PATHS[::-1]):
                samples[p].append(await one(h, p, settle))
    res = ApprovalsResult(runs=runs, warmup=warmup, settle_s=settle, samples=samples,
                          seconds=time.perf_counter() - began)
    for p in PATHS:
        res.summary[p] = {key: summarise([s.ms[key] for s in samples[p] if key in s.ms])
                          for _, key in SEGMENTS[p]}
    return res


def print_approvals(res: ApprovalsResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 150))
    for p in PATHS:
        title = ("approve signal" if p == SIGNAL else "decide update (execute_update)")
        t = Table(title=f"Approval -> approved tool starts, ms: {title} ({res.runs} runs, "
                        f"after {res.warmup} warm-up; worker idle {res.settle_s:g} s before)")
        for col in ("interval", "median", "p90", "min", "max", "mean"):
            t.add_column(col, justify="left" if col == "interval" else "right", no_wrap=True)
        for label, key in SEGMENTS[p]:
            s = res.summary[p][key]
            if s.n:
                t.add_row(label, *(f"{v:.1f}" for v in (s.median, s.p90, s.min, s.max, s.mean)),
                          style="bold" if key == "total" else None)
        con.print(t)
    sig, upd = res.summary[SIGNAL]["total"], res.summary[UPDATE]["total"]
    con.print(f"[bold]signal-to-resume (approve signal sent -> tool ActivityTaskStarted): "
              f"median {sig.median:.1f} ms, p90 {sig.p90:.1f} ms[/]; via the decide update: "
              f"median {upd.median:.1f} ms, p90 {upd.p90:.1f} ms (update round trip median "
              f"{res.summary[UPDATE]['rpc'].median:.1f} ms)")
    print_machine(con, machine, command, res.seconds)


def write_json(path: Path, res: ApprovalsResult, machine: dict[str, object],
               command: str) -> None:
    doc = {"command": command, "machine": machine, **dataclasses.asdict(res)}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--settle", type=float, default=0.2,
                    help="seconds the parked run waits before the approval (default 0.2)")


def main(argv: list[str] | None = None) -> None:
    from bench.machine import load_average, machine_details

    ap = argparse.ArgumentParser(prog="python -m bench.approvals",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=30, help="measured runs per path (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up runs per path (default 5)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    add_arguments(ap)
    args = ap.parse_args(argv)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    command = "python -m bench.approvals " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    res = asyncio.run(approvals_workload(args.runs, args.warmup, args.settle,
                                         progress=lambda m: print(f"[bench] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_approvals(res, machine, command.strip())
    if args.json is not None:
        write_json(args.json, res, machine, command.strip())
        print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
    main()
