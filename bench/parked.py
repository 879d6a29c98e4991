"""``python -m bench.parked``: what a run parked for a human costs the worker, and what
resuming it costs once it is no longer in the worker's cache.

    python -m bench.parked                   # ~9 min on 2 cores (--runs 5 --long-memory-runs 30: 5)
    python -m bench.parked --quick           # a smoke run
    python -m bench.parked --trace           # also: where a parked run's Python memory goes
    python -m bench --workload parked        # the same, from the main entry point

Two workloads, both on stead's full path (ledger, the approval policy, telemetry exported
over OTLP/HTTP to a receiver in another process, as ``bench.peers``' stead full):

- ``approval``: ``bench.approvals``' agent: one model call, then the run asks a human
  before its one tool (the smallest parked run);
- ``long``: ``--long-tools`` lookups (one per model turn), then a ``high``-risk read that
  the policy sends to a human: a run parked with a long history and transcript.

**Memory per parked run** (a fresh process per line, like ``bench.peers.rss``): the process
hosts one worker (and the client starting the runs); after warm-up it parks ``N`` runs,
each until its history shows it waiting for the approval, and reports the change of its
resident set per run (``VmRSS``, after ``gc.collect()``, with the spans waiting for export
flushed), and of the C heap in use (glibc's ``mallinfo2``: Temporal core's per-run state in
Rust, protobuf buffers, Python objects over 512 bytes). ``cached``: the worker's
``max_cached_workflows`` is above ``N``, every parked run stays in its sticky cache;
``evicted``: ``max_cached_workflows=0``, the worker keeps nothing between workflow tasks;
``let go when parked``: the cache as ``cached``, with stead's eviction of parked runs
(``STEAD_EVICT_PARKED_AFTER_SECONDS``, ``--evict-after``), measured once every parked run has
left the cache (the other lines keep that eviction off). Then it approves them all and checks
every run. ``--trace`` also diffs ``tracemalloc`` snapshots around the parking and groups what
the parked runs hold by owner.

**Resume after the approval**, per workload and cache state, ``--runs`` samples each (the
states alternate): the run is parked (history idle), left alone ``--settle`` seconds, then
the client stamps the clock, sends the ``approve`` signal and waits for the result. Three
workers, one per state, each on its own task queue:

- ``cached``: ``max_cached_workflows=1000``: the run is still in the cache (checked);
- ``evicted``: ``max_cached_workflows=1``: a second parked run pushes the first out of the
  cache (checked), as the LRU cache does when more runs wait than it holds; the approval's
  workflow task fetches the whole history and replays it in a new sandbox, and the run stays
  cached for the rest of its life;
- ``no cache``: ``max_cached_workflows=0``: every workflow task replays the whole history,
  the approval's and each one after it;
- ``let go when parked``: ``max_cached_workflows=1000`` and stead's eviction of parked runs
  after ``--evict-after`` seconds (the default setting is 30 s; the delay changes when a run
  leaves, not what it frees or what its resume costs): the run has left the cache (checked).

Reported: approval sent -> result returned, the first workflow task after the signal (its
``WorkflowTaskStarted`` -> ``Completed`` in the history: the replay when evicted), and all
workflow tasks after the signal together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from bench import approvals
from bench.agent import TOOLS, bench_tools
from bench.approvals import Key, Value, approval_agent
from bench.runner import _distinct_ports
from bench.stats import Summary, summarise
from stead import parking
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import (
    ApprovalDecision,
    Message,
    ModelTurn,
    RunRequest,
    RunResult,
    RunState,
    ToolSchema,
)
from stead.contracts.policy import Policy, parse_policy
from stead.integrations.llm import FunctionModel, assistant_turns, call
from stead.parking import RECLAIM_EVERY
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.worker import WorkerHost

E = EventType
APPROVAL, LONG = "approval", "long"
WORKLOADS: Final = (APPROVAL, LONG)
CACHED, EVICTED, NO_CACHE, LET_GO = "cached", "evicted", "no cache", "let go when parked"
STATES: Final = (CACHED, EVICTED, NO_CACHE, LET_GO)
CACHE_SIZE = {CACHED: 1000, EVICTED: 1, NO_CACHE: 0, LET_GO: 1000}
"""``max_cached_workflows`` of the resume benchmark's worker for each state."""
BATCH = 25
"""Runs parked at once in the memory measurement."""

Progress = Callable[[str], None]

# ---------------------------------------------------------------------------- the agents

LONG_AGENT = "bench-park-long"
GUARDED = "guarded_read"
LONG_REQUEST = "Look up many keys, then the guarded key park-1 once a human agrees."
LONG_POLICY_YAML = """
id: bench-parked
version: 1
description: Low-risk lookups run; the high-risk read asks a human.
thresholds: {approve_at: 0.4, deny_at: 1.0001}
approvals:
  chain: [oncall]
  timeout_seconds: 3600
"""


@tool(name=GUARDED, risk="high", description="Read a guarded key (asks a human first).")
async def guarded_read(args: Key, ctx: ToolContext) -> Value:
    return Value(key=args.key, value=f"guarded-{args.key}")


def _long_plan(tools: int) -> Callable[[Sequence[Message], Sequence[ToolSchema]], ModelTurn]:
    """Turn k < ``tools`` calls ``lookup_{k mod 5 + 1}``; turn ``tools`` calls the guarded
    read; then the answer lists every value."""
    def plan(messages: Sequence[Message], schemas: Sequence[ToolSchema]) -> ModelTurn:
        k = assistant_turns(messages)
        if k < tools:
            return ModelTurn(tool_calls=[call(f"lookup_{k % TOOLS + 1}", call_id=f"call_{k + 1}",
                                              key=f"key-{k + 1}")])
        if k == tools:
            return ModelTurn(tool_calls=[call(GUARDED, call_id=f"call_{k + 1}", key="park-1")])
        values = [str(json.loads(m.content or "{}").get("result", {}).get("value", "?"))
                  for m in messages if m.role == "tool"]
        return ModelTurn(content="Values: " + ", ".join(values))
    return plan


def long_agent(tools: int) -> Agent:
    policy: Policy = parse_policy(LONG_POLICY_YAML, source="bench/parked.py:LONG_POLICY_YAML")
    return Agent(name=LONG_AGENT, instructions="Look things up with the tools, then answer.",
                 tools=[*bench_tools(), guarded_read],
                 offline_model=FunctionModel(_long_plan(tools), name="scripted:park-long"),
                 max_steps=2 * tools + 10, policy=policy,
                 description=f"Benchmark agent: {tools} lookups, then a read that needs "
                             f"approval.")


def park_agents(long_tools: int) -> list[Agent]:
    return [approval_agent(), long_agent(long_tools)]


@dataclass(frozen=True)
class Work:
    """One workload: whom to ask what, and what its result must be."""

    name: str
    agent: str
    request: str
    tools: list[str]
    answer: str

    def check(self, run_id: str, result: RunResult) -> None:
        tools = [t.tool for t in result.tool_calls]
        if result.status != "completed" or result.approvals != 1 or tools != self.tools \
                or result.answer != self.answer:
            raise RuntimeError(
                f"{self.name} run {run_id} did not do the work: {result.status}, "
                f"{result.approvals} approval(s), answer {(result.answer or '')[:100]!r}, "
                f"tools {tools[:6]} ({len(tools)}); expected {self.answer[:100]!r} after "
                f"{len(self.tools)} tools")


def works(long_tools: int) -> dict[str, Work]:
    lookups = [f"lookup_{k % TOOLS + 1}" for k in range(long_tools)]
    values = [f"value-{k % TOOLS + 1}-key-{k + 1}" for k in range(long_tools)]
    return {
        APPROVAL: Work(APPROVAL, approvals.AGENT, approvals.REQUEST, [approvals.TOOL],
                       "Value: value-of-bench-1"),
        LONG: Work(LONG, LONG_AGENT, LONG_REQUEST, [*lookups, GUARDED],
                   "Values: " + ", ".join([*values, "guarded-park-1"])),
    }


# ---------------------------------------------------------------------------- parking

Handle = WorkflowHandle[Any, RunResult]


async def park(client: Client, settings: Settings, work: Work, *, precise: bool,
               within: float = 600.0) -> tuple[Handle, str]:
    """Start a run and return it once it waits for its approval, with the approval id: its
    history shows the approval timer started after the last completed workflow task (nothing
    in flight, as ``bench.approvals``), polled every 20 ms when ``precise`` (else 200 ms:
    hundreds of runs at once); then one ``state`` query names the approval. Queries are
    kept out of the wait because a worker without a cache replays the history for each."""
    handle: Handle = await start_run(client, RunRequest(agent=work.agent, input=work.request),
                                     temporal=settings.temporal,
                                     workflow_id=f"park-{work.name}-{uuid.uuid4().hex[:12]}")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(RPCError):  # a busy server or worker may answer late
            if await approvals._idle(handle):
                state = await handle.query("state", result_type=RunState,
                                           rpc_timeout=timedelta(seconds=60))
                if state.pending_approvals and state.node.startswith("approval:"):
                    return handle, state.pending_approvals[0].approval_id
                if state.status != "running":
                    raise RuntimeError(f"{handle.id} ended without asking for approval: "
                                       f"{state.status}")
        await asyncio.sleep(0.02 if precise else 0.2)
    raise RuntimeError(f"{handle.id}: not parked after {within:.0f} s")


async def approve(handle: Handle, approval_id: str) -> None:
    await handle.signal("approve", ApprovalDecision(approval_id=approval_id, by="bench"))


async def _batches(items: Sequence[Any], fn: Callable[[Any], Awaitable[Any]], *,
                   size: int = BATCH) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(items), size):
        out += await asyncio.gather(*(fn(x) for x in items[i:i + size]))
    return out


def is_cached(host: WorkerHost, run_id: str) -> bool:
    """Whether the worker holds the run in its sticky cache."""
    return parking.cached(host.worker, run_id)


# ---------------------------------------------------------------------------- memory (child)

def rss_kib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def c_heap_kib() -> float | None:
    """Bytes malloc has handed out and not had back (glibc only; None elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    mi = fn()
    return float(mi.uordblks + mi.hblkhd) / 1024


@dataclass
class MemoryResult:
    workload: str
    cache: str
    runs: int
    kib_per_run: float
    """RSS change per parked run."""
    c_heap_kib_per_run: float | None
    py_objects_per_run: float
    """Change of the Python objects alive (``sys.getallocatedblocks()``) per parked run: RSS
    may stay up after objects are freed (the allocators keep their arenas), this does not."""
    park_seconds: float
    reclaim_ms: float | None = None
    """``let go when parked``: the longest reclaim (full collection, ``malloc_trim``) the
    eviction ran, the process stopped meanwhile."""
    trace: list[tuple[str, str, float]] = field(default_factory=list)
    """(category, detail, KiB per run) of the Python allocations the parked runs hold."""


def _child_settings(args: argparse.Namespace) -> Settings:
    from bench.peers.temporal_run import STEAD_FULL, system_settings

    base = Settings(data_dir=Path(args.data_dir), temporal_address=args.temporal,
                    database_url=args.worker_dsn, migrate_database_url=args.owner_dsn,
                    openai_api_key=None)
    return system_settings(base, STEAD_FULL, otlp=args.otlp,
                           cached_workflows=0 if args.cache == EVICTED else args.runs + 100,
                           evict_parked_after=args.evict_after if args.cache == LET_GO
                           else None)


async def memory_child(args: argparse.Namespace) -> MemoryResult:
    """Park ``args.runs`` runs of one workload on one worker in this process."""
    settings = _child_settings(args)
    w = works(args.long_tools)
    work = w[args.workload]
    async with WorkerHost(settings, AgentCatalog(park_agents(args.long_tools)),
                          task_queue=settings.temporal.task_queue) as host:
        client = await connect(settings)
        # Spans of finished activities wait in the batch processor until exported: flush
        # them before each reading, they are not held by the parked runs.
        flush = getattr(host.tracing.provider if host.tracing else None, "force_flush", None)

        async def full(one: Work) -> None:
            h, a = await park(client, settings, one, precise=False)
            await approve(h, a)
            one.check(h.id, await asyncio.wait_for(h.result(), 600))

        await asyncio.gather(*(full(w[APPROVAL]) for _ in range(5)))
        if work.name == LONG:
            await full(w[LONG])
        approvals._entered.clear()
        if args.trace:
            tracemalloc.start(25)
        if flush is not None:
            await asyncio.to_thread(flush)
        gc.collect()
        await asyncio.sleep(1.0)
        before_rss, before_heap, before_py = rss_kib(), c_heap_kib(), sys.getallocatedblocks()
        snap = tracemalloc.take_snapshot() if args.trace else None
        t0 = time.perf_counter()
        # One at a time without a cache: a run cannot be evicted while a local activity of
        # its (``run.start``, ``run.finish``) is running, and with many such runs at once a
        # worker without a cache times their workflow tasks out (10 s each) and retries.
        parked: list[tuple[Handle, str]] = await _batches(
            range(args.runs), lambda _: park(client, settings, work, precise=False),
            size=1 if args.cache == EVICTED else BATCH)
        took = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # the last runs' workflow tasks complete
        if args.cache == LET_GO:
            reclaim_ms: float | None = 1000 * await _until_let_go(
                host, [h for h, _ in parked], within=args.evict_after + 120)
        else:
            reclaim_ms = None
        if flush is not None:
            await asyncio.to_thread(flush)
        gc.collect()
        after_rss, after_heap, after_py = rss_kib(), c_heap_kib(), sys.getallocatedblocks()
        trace: list[tuple[str, str, float]] = []
        if snap is not None:
            trace = trace_categories(tracemalloc.take_snapshot(), snap, args.runs)
            tracemalloc.stop()

        async def done(p: tuple[Handle, str]) -> None:
            await approve(*p)
            work.check(p[0].id, await asyncio.wait_for(p[0].result(), 600))
        await _batches(parked, done, size=1 if args.cache == EVICTED else BATCH)
        approvals._entered.clear()
    heap = None if before_heap is None or after_heap is None \
        else round((after_heap - before_heap) / args.runs, 1)
    return MemoryResult(workload=args.workload, cache=args.cache, runs=args.runs,
                        kib_per_run=round((after_rss - before_rss) / args.runs, 1),
                        c_heap_kib_per_run=heap,
                        py_objects_per_run=round((after_py - before_py) / args.runs, 1),
                        park_seconds=round(took, 1), trace=trace,
                        reclaim_ms=None if reclaim_ms is None else round(reclaim_ms, 1))


async def _until_let_go(host: WorkerHost, handles: Sequence[Handle], *, within: float) -> float:
    """Until none of ``handles`` is in the worker's cache, each evicted as a parked run, and
    what they freed is reclaimed; returns the longest reclaim, seconds."""
    deadline = time.monotonic() + within
    held = [h for h in handles if is_cached(host, h.result_run_id or "")]
    while held and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        held = [h for h in held if is_cached(host, h.result_run_id or "")]
    if held:
        raise RuntimeError(f"{len(held)} of {len(handles)} parked runs still cached after "
                           f"{within:.0f} s (is the eviction of parked runs on?)")
    ev = host.parked_eviction
    if ev is None or ev.evicted < len(handles):
        raise RuntimeError(f"the parked runs left the cache, but not by stead's eviction "
                           f"({ev.evicted if ev else 'no'} evictions)")
    # Then the eviction hands what they freed back to the system (``stead.parking.reclaim``).
    deadline = time.monotonic() + RECLAIM_EVERY + 10
    while ev.reclaimed_at < ev.evicted_at and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    if ev.reclaimed_at < ev.evicted_at:
        raise RuntimeError("the eviction of parked runs did not reclaim after evicting")
    return max(ev.reclaims)


_OWNERS: Final = (
    ("/stead/observability/", "tracing (OpenTelemetry context, spans)"),
    ("/opentelemetry/", "tracing (OpenTelemetry context, spans)"),
    ("/stead/", "stead workflow state"),
    ("/temporalio/contrib/pydantic.py", "decoded payloads (workflow input, activity results)"),
    ("/temporalio/converter/", "decoded payloads (workflow input, activity results)"),
    ("/temporalio/worker/workflow_sandbox/", "sandbox (per-run module dict, restricted builtins)"),
    ("/temporalio/worker/_workflow_instance.py", "temporalio workflow instance"),
    ("/temporalio/worker/", "temporalio worker, outside the sandbox"),
    ("/temporalio/client", "client handles (the benchmark's)"),
)
"""Who holds an allocation: the innermost frame whose file matches, first match wins."""


def _where(filename: str, line: int) -> str:
    parts = filename.rsplit("/", 2)
    return f"{'/'.join(parts[-2:])}:{line}"


def _category(tb: tracemalloc.Traceback) -> tuple[str, str]:
    """Who holds an allocation a parked run keeps, and where (file:line) it was made."""
    frames = list(tb)[::-1]  # innermost first
    for f in frames:
        for needle, owner in _OWNERS:
            if needle in f.filename:
                if owner.startswith("decoded"):  # the job that decoded it says more
                    inst = [g for g in frames if "_workflow_instance.py" in g.filename]
                    f = inst[1] if len(inst) > 1 else f
                elif owner.startswith("stead"):  # stead's state is spread thin: by file
                    return owner, _where(f.filename, 0).removesuffix(":0")
                return owner, _where(f.filename, f.lineno)
    return "other (asyncio, stdlib)", _where(frames[0].filename, frames[0].lineno)


def trace_categories(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot,
                     runs: int) -> list[tuple[str, str, float]]:
    """Allocations kept per run, by category, with the three biggest details of each."""
    own = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    by: dict[tuple[str, str], float] = defaultdict(float)
    for st in after.filter_traces(own).compare_to(before.filter_traces(own), "traceback"):
        by[_category(st.traceback)] += st.size_diff
    totals: dict[str, float] = defaultdict(float)
    for (cat, _), v in by.items():
        totals[cat] += v
    out: list[tuple[str, str, float]] = []
    for cat, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        out.append((cat, "", round(v / 1024 / runs, 2)))
        details = sorted(((d, x) for (c, d), x in by.items() if c == cat and d),
                         key=lambda dx: -dx[1])
        out += [(cat, d, round(x / 1024 / runs, 2)) for d, x in details[:3]]
    return out


def _memory_in_child(stack: StackInfo, workload: str, cache: str, runs: int,
                     long_tools: int, trace: bool, evict_after: float) -> MemoryResult:
    cmd = [sys.executable, "-m", "bench.parked", "--memory-child", "--workload", workload,
           "--cache", cache, "--memory-runs", str(runs), "--long-tools", str(long_tools),
           "--evict-after", str(evict_after),
           "--temporal", stack.temporal, "--worker-dsn", stack.worker_dsn,
           "--owner-dsn", stack.owner_dsn, "--otlp", stack.otlp, "--data-dir", stack.data_dir]
    if trace:
        cmd.append("--trace")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory of {runs} parked {workload} runs ({cache}) failed "
                           f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    doc = json.loads(lines[-1])
    doc["trace"] = [tuple(x) for x in doc.get("trace", [])]
    return MemoryResult(**doc)


# ---------------------------------------------------------------------------- resume

@dataclass
class ResumeSample:
    ms: float
    """Approval sent -> result returned."""
    first_wft_ms: float
    """The first workflow task after the signal, started -> completed (history)."""
    wft_ms: float
    """Every workflow task after the signal, started -> completed, summed (history)."""
    events: int
    """History length when the approval came."""


def _ms(a: Any, b: Any) -> float:
    return float(b.event_time.ToNanoseconds() - a.event_time.ToNanoseconds()) / 1e6


async def _after_signal(handle: Handle) -> tuple[float, float, int]:
    events = [e async for e in handle.fetch_history_events()]
    signaled = next(e for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                    and e.workflow_execution_signaled_event_attributes.signal_name == "approve")
    started = {e.event_id: e for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED}
    tasks = [_ms(started[e.workflow_task_completed_event_attributes.started_event_id], e)
             for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
             and e.event_id > signaled.event_id]
    return tasks[0], sum(tasks), signaled.event_id - 1


class Resumer:
    """One worker per cache state, each on its own task queue of one stack."""

    def __init__(self, hosts: dict[str, WorkerHost], settings: dict[str, Settings],
                 client: Client, w: dict[str, Work], settle: float,
                 evict_after: float) -> None:
        self.hosts, self.settings, self.client, self.w = hosts, settings, client, w
        self.settle, self.evict_after = settle, evict_after

    async def sample(self, workload: str, state: str) -> ResumeSample:
        s, host, work = self.settings[state], self.hosts[state], self.w[workload]
        handle, approval_id = await park(self.client, s, work, precise=True)
        pusher: tuple[Handle, str] | None = None
        if state == EVICTED:  # a second parked run takes the cache's one slot
            pusher = await park(self.client, s, self.w[APPROVAL], precise=True)
        run_id = handle.result_run_id or ""
        # A worker without a cache evicts a run shortly after its workflow task completes,
        # stead's eviction once the run has been parked long enough: give it that (no query
        # meanwhile, which would load the run again).
        deadline = time.monotonic() + 10 + (self.evict_after if state == LET_GO else 0)
        while is_cached(host, run_id) != (state == CACHED) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if is_cached(host, run_id) != (state == CACHED):
            raise RuntimeError(f"{state}: run {handle.id} is {'' if state != CACHED else 'not '}"
                               f"in the worker's cache before its approval")
        await asyncio.sleep(self.settle)
        t0 = time.perf_counter()
        await approve(handle, approval_id)
        result = await asyncio.wait_for(handle.result(), 600)
        ms = (time.perf_counter() - t0) * 1000
        work.check(handle.id, result)
        first, total, events = await _after_signal(handle)
        if pusher is not None:
            await approve(*pusher)
            self.w[APPROVAL].check(pusher[0].id, await asyncio.wait_for(pusher[0].result(), 600))
        approvals._entered.clear()
        return ResumeSample(ms=ms, first_wft_ms=first, wft_ms=total, events=events)


@contextlib.asynccontextmanager
async def resumer(stack: StackInfo, base: Settings, long_tools: int,
                  settle: float, evict_after: float) -> AsyncIterator[Resumer]:
    from bench.peers.temporal_run import STEAD_FULL, system_settings

    settings = {st: system_settings(base, STEAD_FULL, otlp=stack.otlp,
                                    cached_workflows=CACHE_SIZE[st],
                                    evict_parked_after=evict_after if st == LET_GO else None)
                for st in STATES}
    agents = AgentCatalog(park_agents(long_tools))
    async with contextlib.AsyncExitStack() as es:
        hosts = {st: await es.enter_async_context(
            WorkerHost(settings[st], agents, task_queue=settings[st].temporal.task_queue))
            for st in STATES}
        client = await connect(base)
        yield Resumer(hosts, settings, client, works(long_tools), settle, evict_after)


# ---------------------------------------------------------------------------- the benchmark

@dataclass(frozen=True, kw_only=True)
class ParkedConfig:
    runs: int = 10
    """Resume samples per workload and cache state (after one warm-up each)."""
    memory_runs: int = 300
    """Approval runs parked for the memory measurement (0: skip it); the evicted line parks
    at most 100, one at a time."""
    long_memory_runs: int = 60
    """Long runs parked at once for the memory measurement (0: skip them)."""
    long_tools: int = 50
    """Tool calls before the long run asks for its approval."""
    settle: float = 0.2
    """Seconds a parked run is left alone before its approval."""
    trace: bool = False
    """Also trace where the Python memory of the cached parked runs goes."""
    evict_after: float = 2.0
    """``STEAD_EVICT_PARKED_AFTER_SECONDS`` of the ``let go when parked`` workers."""


@dataclass
class ParkedResult:
    config: ParkedConfig
    memory: list[MemoryResult]
    resume: dict[str, dict[str, list[ResumeSample]]]
    """workload -> cache state -> samples."""
    seconds: float


@dataclass(frozen=True)
class StackInfo:
    temporal: str
    worker_dsn: str
    owner_dsn: str
    otlp: str
    data_dir: str


async def run_parked(cfg: ParkedConfig, *, progress: Progress = print) -> ParkedResult:
    from bench.peers.temporal_run import otlp_receiver

    began = time.perf_counter()
    memory: list[MemoryResult] = []
    resume: dict[str, dict[str, list[ResumeSample]]] = {
        wl: {st: [] for st in STATES} for wl in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="stead-parked-") as tmp:
        tport, uport, pport, oport = _distinct_ports(4)
        settings = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                            postgres_port=pport, temporal_address=None, database_url=None,
                            openai_api_key=None)
        progress(f"starting embedded stack in {tmp} (Temporal :{tport}, PostgreSQL :{pport}, "
                 f"OTLP receiver :{oport})")
        async with EmbeddedStack(settings, ui=False) as es, otlp_receiver(oport) as otlp:
            base = es.resolved_settings()
            assert base.temporal.address is not None and base.ledger.database_url is not None
            info = StackInfo(temporal=base.temporal.address, worker_dsn=base.ledger.database_url,
                             owner_dsn=es.database_url, otlp=otlp, data_dir=tmp)
            # Evicted long runs are not parked here: on a worker without a cache each of a
            # long run's workflow tasks replays its history so far (quadratic in its length)
            # only to end up holding nothing, as the evicted approval runs show.
            jobs = [(APPROVAL, CACHED, cfg.memory_runs), (APPROVAL, EVICTED, cfg.memory_runs),
                    (APPROVAL, LET_GO, cfg.memory_runs), (LONG, CACHED, cfg.long_memory_runs),
                    (LONG, LET_GO, cfg.long_memory_runs)]
            for workload, cache, n in jobs:
                n = min(n, 100) if cache == EVICTED else n
                if n:
                    progress(f"memory: {n} parked {workload} runs, {cache}, in a fresh process")
                    memory.append(await asyncio.to_thread(
                        _memory_in_child, info, workload, cache, n, cfg.long_tools,
                        cfg.trace and cache == CACHED, cfg.evict_after))
                    m = memory[-1]
                    progress(f"  {m.kib_per_run:.1f} KiB RSS, {m.c_heap_kib_per_run} KiB C "
                             f"heap, {m.py_objects_per_run:.0f} Python objects per parked run"
                             + (f"; longest reclaim {m.reclaim_ms:.0f} ms"
                                if m.reclaim_ms is not None else ""))
            if cfg.runs:
                async with resumer(info, base, cfg.long_tools, cfg.settle,
                                   cfg.evict_after) as r:
                    for wl in WORKLOADS:
                        progress(f"resume: {wl} runs, one warm-up then {cfg.runs} per cache "
                                 f"state ({', '.join(STATES)}), interleaved")
                        for st in STATES:
                            await r.sample(wl, st)
                        for i in range(cfg.runs):
                            k = i % len(STATES)
                            for st in (*STATES[k:], *STATES[:k]):
                                resume[wl][st].append(await r.sample(wl, st))
    return ParkedResult(config=cfg, memory=memory, resume=resume,
                        seconds=time.perf_counter() - began)


def medians(res: ParkedResult) -> dict[str, dict[str, dict[str, Summary]]]:
    """workload -> state -> measure (``ms``, ``first_wft_ms``, ``wft_ms``) -> summary."""
    out: dict[str, dict[str, dict[str, Summary]]] = {}
    for wl, by_state in res.resume.items():
        states = {st: {k: summarise([getattr(s, k) for s in samples])
                       for k in ("ms", "first_wft_ms", "wft_ms")}
                  for st, samples in by_state.items() if samples}
        if states:
            out[wl] = states
    return out


def print_parked(res: ParkedResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 140))
    cfg = res.config
    if res.memory:
        t = Table(title="Worker memory per parked run, KiB (fresh process per line; stead full "
                        "path)")
        for col in ("workload", "cache", "parked runs", "RSS KiB / run",
                    "C heap KiB / run", "Python objects / run", "parking took"):
            t.add_column(col, justify="left" if col in ("workload", "cache") else "right")
        for m in res.memory:
            heap = "n/a" if m.c_heap_kib_per_run is None else f"{m.c_heap_kib_per_run:.1f}"
            t.add_row(m.workload + (f" ({cfg.long_tools} tools)" if m.workload == LONG else ""),
                      m.cache + (" (traced: tracemalloc inflates both)" if m.trace else ""),
                      str(m.runs), f"{m.kib_per_run:.1f}", heap,
                      f"{m.py_objects_per_run:.0f}", f"{m.park_seconds:.0f} s")
        con.print(t)
        for m in res.memory:
            if m.reclaim_ms is not None:
                con.print(f"{m.workload}, {m.cache}: the longest reclaim after evicting (full "
                          f"collection and malloc_trim, the process stopped) took "
                          f"{m.reclaim_ms:.0f} ms")
        if any(m.runs < (200 if m.workload == APPROVAL else 20) for m in res.memory):
            con.print("(few parked runs: a resident-set change that small is mostly the "
                      "allocator reusing what the warm-up freed; the C heap is steadier)")
        for m in res.memory:
            if m.trace:
                tt = Table(title=f"Where the Python memory of a parked {m.workload} run goes "
                                 f"(tracemalloc, {m.runs} runs, KiB per run; RSS minus this "
                                 f"is native: Temporal core, protobuf, allocator)")
                tt.add_column("held by")
                tt.add_column("KiB / run", justify="right")
                total = sum(v for _, d, v in m.trace if not d)
                for cat, detail, v in m.trace:
                    tt.add_row(f"  {detail}" if detail else cat, f"{v:.2f}",
                               style=None if detail else "bold")
                tt.add_row("total traced", f"{total:.1f}", style="bold")
                con.print(tt)
    med = medians(res)
    if med:
        t = Table(title=f"Resume after the approval, ms ({cfg.runs} runs per line after a "
                        f"warm-up; parked {cfg.settle:g} s before the approval)")
        for col in ("workload", "cache state", "history events", "approve -> result median",
                    "p90", "first workflow task median", "all workflow tasks median"):
            t.add_column(col, justify="left" if col in ("workload", "cache state") else "right")
        for wl, by_state in med.items():
            for st, ms in by_state.items():
                events = statistics.median(x.events for x in res.resume[wl][st])
                label = wl + (f" ({cfg.long_tools} tools)" if wl == LONG else "")
                t.add_row(label, st, f"{events:.0f}", f"{ms['ms'].median:.1f}",
                          f"{ms['ms'].p90:.1f}", f"{ms['first_wft_ms'].median:.1f}",
                          f"{ms['wft_ms'].median:.1f}",
                          style="bold" if st in (EVICTED, LET_GO) else None)
        con.print(t)
        for wl, by_state in med.items():
            for st in (EVICTED, LET_GO):
                if CACHED in by_state and st in by_state:
                    c, e = by_state[CACHED]["ms"].median, by_state[st]["ms"].median
                    con.print(f"[bold]{wl}: resume after eviction ({st}) costs {e - c:+.1f} "
                              f"ms (approve -> result median {c:.1f} ms cached, {e:.1f} ms "
                              f"{st})[/]")
    print_machine(con, machine, command, res.seconds)


def write_json(path: Path, res: ParkedResult, machine: dict[str, object], command: str) -> None:
    doc = {"command": command, "machine": machine, **dataclasses.asdict(res),
           "medians": {wl: {st: {k: dataclasses.asdict(v) for k, v in m.items()}
                            for st, m in by.items()} for wl, by in medians(res).items()}}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------- command line

def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Flags of this benchmark that ``python -m bench`` does not already have."""
    ap.add_argument("--long-tools", type=int, help="tool calls before the long run asks "
                                                   "for its approval (default 50)")
    ap.add_argument("--long-memory-runs", type=int,
                    help="long runs parked for the memory measurement (default 60; 0 skips)")
    ap.add_argument("--evict-after", type=float,
                    help="STEAD_EVICT_PARKED_AFTER_SECONDS of the 'let go when parked' lines "
                         "(default 2; the setting's default is 30)")
    ap.add_argument("--trace", action="store_true",
                    help="also trace where the cached parked runs' Python memory goes "
                         "(tracemalloc)")


def config_from(args: argparse.Namespace) -> ParkedConfig:
    base = ParkedConfig(runs=3, memory_runs=100, long_memory_runs=20, long_tools=20) \
        if getattr(args, "quick", False) else ParkedConfig()
    values: dict[str, Any] = {}
    for flag in ("runs", "memory_runs", "long_memory_runs", "long_tools", "settle",
                 "evict_after"):
        v = getattr(args, flag, None)
        if v is None:
            continue
        if v < 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must not be negative")
        values[flag] = v
    if values.get("evict_after", 1) <= 0:
        raise SystemExit("error: --evict-after must be above 0")
    if values.get("long_tools", 1) < 1:
        raise SystemExit("error: --long-tools must be at least 1")
    return dataclasses.replace(base, trace=bool(getattr(args, "trace", False)), **values)


def run(args: argparse.Namespace, command: str) -> None:
    """Run the benchmark the parsed ``args`` describe and print (and write) its report."""
    from bench.machine import load_average, machine_details

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    cfg = config_from(args)
    machine = machine_details()
    res = asyncio.run(run_parked(cfg, progress=lambda m: print(f"[parked] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_parked(res, machine, command)
    if args.json is not None:
        write_json(args.json, res, machine, command)
        print(f"[parked] wrote {args.json}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.parked",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int,
                    help="resume samples per workload and cache state (default 10)")
    ap.add_argument("--memory-runs", type=int,
                    help="approval runs parked for the memory measurement (default 300; 0 "
                         "skips)")
    ap.add_argument("--settle", type=float,
                    help="seconds a parked run waits before its approval (default 0.2)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 3 samples, 100 + 20 parked runs, 20-tool long run "
                         "(flags still override)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    add_arguments(ap)
    # One memory measurement in this process (what the benchmark runs per line).
    child = ap.add_argument_group("internal: one memory measurement in this process")
    child.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    child.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    child.add_argument("--cache", choices=(CACHED, EVICTED, LET_GO), help=argparse.SUPPRESS)
    for name in ("--temporal", "--worker-dsn", "--owner-dsn", "--otlp", "--data-dir"):
        child.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        missing = [n for n in ("workload", "cache", "temporal", "worker_dsn", "owner_dsn",
                               "otlp", "data_dir") if getattr(args, n) is None]
        if missing:
            ap.error(f"--memory-child needs --{', --'.join(m.replace('_', '-') for m in missing)}")
        args.runs = args.memory_runs or 100
        args.long_tools = args.long_tools or ParkedConfig.long_tools
        args.evict_after = args.evict_after or ParkedConfig.evict_after
        res = asyncio.run(memory_child(args))
        print(json.dumps(dataclasses.asdict(res)), flush=True)
        return
    run(args, "python -m bench.parked " + shlex.join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
