"""The stack, the two workers and the two workloads, interleaved A/B.

    result = await run_bench(BenchConfig(runs=30, concurrency=50, rounds=5, warmup=5))
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bench import breakdown, cpu
from bench.agent import AGENT, REQUEST, TOOLS, bench_agent
from bench.plain import PlainAgentWorkflow
from bench.plain_activities import plain_activities
from bench.plain_models import PlainRequest, PlainResult
from bench.stats import Summary, summarise
from stead.authoring.agent import Agent, AgentCatalog
from stead.client import connect, start_run
from stead.contracts.models import RunRequest, RunResult
from stead.settings import Settings, WorkerSettings
from stead.stack.embedded import EmbeddedStack, free_port
from stead.worker import PASSTHROUGH, WorkerHost

STEAD, PLAIN = "stead", "plain"

RUN_TIMEOUT = 120.0
"""Seconds a run may take before the benchmark gives up on it. A workflow task that fails
(for example a bug in workflow code) is retried by Temporal forever; without this bound the
benchmark would wait forever too."""
SYSTEMS = (STEAD, PLAIN)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    runs: int = 30
    """Sequential runs per system (after warm-up)."""
    concurrency: int = 50
    """Runs started at once in one throughput burst."""
    rounds: int = 5
    """Throughput bursts per system."""
    warmup: int = 5
    """Sequential warm-up runs per system (plus one unrecorded burst each)."""
    breakdown_runs: int = 10
    """How many of the last sequential runs per system to read histories of."""


@dataclass
class SystemResult:
    latencies_ms: list[float] = field(default_factory=list)
    latency: Summary | None = None
    burst_runs_per_s: list[float] = field(default_factory=list)
    burst_wall_ms: list[float] = field(default_factory=list)
    throughput_median: float = 0.0
    breakdown: breakdown.Breakdown | None = None
    client_overhead_ms: float = 0.0
    """Median client-observed latency minus server-side duration, over the breakdown runs."""
    cpu_ms_per_run_sequential: dict[str, float] = field(default_factory=dict)
    """CPU ms per run by component (python, temporal, postgres), sequential runs."""
    cpu_ms_per_run_burst: dict[str, float] = field(default_factory=dict)
    """CPU ms per run by component, throughput bursts."""


@dataclass
class BenchResult:
    config: BenchConfig
    systems: dict[str, SystemResult]
    latency_ratio: float
    """stead / plain, median sequential latency (lower is better; target <= 1.5)."""
    throughput_ratio: float
    """stead / plain, median runs/s (higher is better)."""
    seconds: float


class Harness:
    """Starts one run of either system and checks its result."""

    def __init__(self, client: Client, stead_settings: Settings, plain_queue: str) -> None:
        self.client = client
        self.stead_settings = stead_settings
        self.plain_queue = plain_queue

    async def start(self, system: str) -> WorkflowHandle[Any, Any]:
        if system == STEAD:
            return await start_run(self.client, RunRequest(agent=AGENT, input=REQUEST),
                                   temporal=self.stead_settings.temporal)
        return await self.client.start_workflow(
            PlainAgentWorkflow.run, PlainRequest(input=REQUEST),
            id=f"plain-{uuid.uuid4().hex[:12]}", task_queue=self.plain_queue)

    async def finish(self, system: str, handle: WorkflowHandle[Any, Any]) -> None:
        try:
            result = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"{system} run {handle.id} did not finish within "
                               f"{RUN_TIMEOUT:.0f}s: {await _stuck_reason(handle)}") from None
        if system == STEAD:
            assert isinstance(result, RunResult), result
            ok = (result.status == "completed" and result.model_turns == TOOLS + 1
                  and len(result.tool_calls) == TOOLS)
        else:
            assert isinstance(result, PlainResult), result
            ok = result.model_turns == TOOLS + 1 and result.tool_calls == TOOLS
        if not ok:
            raise RuntimeError(f"{system} run {handle.id} did not do the bench work: {result!r}")

    async def one(self, system: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        handle = await self.start(system)
        await self.finish(system, handle)
        return (time.perf_counter() - t0) * 1000, handle.id

    async def burst(self, system: str, n: int) -> float:
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(self.start(system) for _ in range(n)))
        await asyncio.gather(*(self.finish(system, h) for h in handles))
        return (time.perf_counter() - t0) * 1000


async def _stuck_reason(handle: WorkflowHandle[Any, Any]) -> str:
    """The last workflow-task failure in the run's history, if any."""
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    reason = "no workflow task failure in its history (worker overloaded or gone?)"
    async for event in handle.fetch_history_events():
        if event.event_type == failed:
            f = event.workflow_task_failed_event_attributes.failure
            last_line = f.stack_trace.strip().splitlines()[-1:] or [""]
            reason = f"workflow task failed: {f.message or last_line[0]}"
    return reason


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def plain_worker_options(worker: WorkerSettings) -> dict[str, Any]:
    """Worker options a plain-temporalio baseline shares with stead's worker (slots, cache,
    sandbox passthrough), so the comparison differs only in what stead adds."""
    return {
        "max_concurrent_activities": worker.max_concurrent_activities,
        "max_concurrent_local_activities": worker.max_concurrent_activities,
        "max_concurrent_workflow_tasks": worker.max_concurrent_workflow_tasks,
        "max_cached_workflows": worker.max_cached_workflows,
        "graceful_shutdown_timeout": timedelta(seconds=30),
        "workflow_runner": SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)),
    }


@contextlib.asynccontextmanager
async def _plain_worker(settings: Settings, task_queue: str) -> AsyncIterator[Worker]:
    """A plain temporalio worker, configured like stead's except for what stead adds."""
    assert settings.temporal.address is not None
    client = await Client.connect(settings.temporal.address,
                                  namespace=settings.temporal.namespace,
                                  data_converter=pydantic_data_converter)
    worker = Worker(
        client, task_queue=task_queue, workflows=[PlainAgentWorkflow],
        activities=plain_activities(), **plain_worker_options(settings.worker))
    async with worker:
        yield worker


Progress = Callable[[str], None]


async def _interleaved(index: int, fn: Callable[[str], Awaitable[None]]) -> None:
    """Run ``fn`` for both systems, alternating which goes first."""
    order = SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]
    for system in order:
        await fn(system)


@contextlib.asynccontextmanager
async def bench_stack(*, progress: Progress = print,
                      agents: Sequence[Agent] | None = None) -> AsyncIterator[Harness]:
    """One embedded stack on free ports in a temporary directory, both workers polling.
    ``agents``: what the stead worker serves (default: the bench agent alone)."""
    with tempfile.TemporaryDirectory(prefix="stead-bench-") as tmp:
        tport, uport, pport = _distinct_ports(3)
        suffix = uuid.uuid4().hex[:8]
        settings = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                            postgres_port=pport, temporal_address=None, database_url=None,
                            openai_api_key=None, task_queue=f"bench-stead-{suffix}")
        progress(f"starting embedded stack in {tmp} (Temporal :{tport}, PostgreSQL :{pport})")
        async with EmbeddedStack(settings, ui=False) as stack:
            resolved = stack.resolved_settings()
            plain_queue = f"bench-plain-{suffix}"
            catalog = AgentCatalog(list(agents) if agents is not None else [bench_agent()])
            async with (WorkerHost(resolved, catalog,
                                   task_queue=resolved.temporal.task_queue),
                        _plain_worker(resolved, plain_queue)):
                client = await connect(resolved)
                yield Harness(client, resolved, plain_queue)


async def run_bench(cfg: BenchConfig, *, progress: Progress = print) -> BenchResult:
    began = time.perf_counter()
    async with bench_stack(progress=progress) as harness:
        results = await _workloads(harness, cfg, progress)
    s, p = results[STEAD], results[PLAIN]
    assert s.latency is not None and p.latency is not None
    return BenchResult(
        config=cfg, systems=results,
        latency_ratio=s.latency.median / p.latency.median,
        throughput_ratio=(s.throughput_median / p.throughput_median
                          if p.throughput_median else float("nan")),
        seconds=time.perf_counter() - began)


async def _workloads(h: Harness, cfg: BenchConfig,
                     progress: Progress) -> dict[str, SystemResult]:
    results = {name: SystemResult() for name in SYSTEMS}
    ids: dict[str, list[str]] = {name: [] for name in SYSTEMS}

    progress(f"warm-up: {cfg.warmup} sequential run(s) and one burst of {cfg.concurrency} each")
    for i in range(cfg.warmup):
        async def warm(system: str) -> None:
            await h.one(system)
        await _interleaved(i, warm)
    if cfg.warmup:
        async def warm_burst(system: str) -> None:
            await h.burst(system, cfg.concurrency)
        await _interleaved(0, warm_burst)

    progress(f"sequential latency: {cfg.runs} run(s) each, interleaved")
    latencies: dict[str, dict[str, float]] = {name: {} for name in SYSTEMS}
    seq_cpu = {name: dict.fromkeys(cpu.COMPONENTS, 0.0) for name in SYSTEMS}
    for i in range(cfg.runs):
        async def seq(system: str) -> None:
            before = cpu.snapshot()
            ms, wid = await h.one(system)
            _add(seq_cpu[system], cpu.delta(before, cpu.snapshot()))
            results[system].latencies_ms.append(ms)
            ids[system].append(wid)
            latencies[system][wid] = ms
        await _interleaved(i, seq)

    progress(f"throughput: {cfg.rounds} burst(s) of {cfg.concurrency} concurrent runs each")
    burst_cpu = {name: dict.fromkeys(cpu.COMPONENTS, 0.0) for name in SYSTEMS}
    for i in range(cfg.rounds):
        async def burst(system: str) -> None:
            before = cpu.snapshot()
            wall = await h.burst(system, cfg.concurrency)
            _add(burst_cpu[system], cpu.delta(before, cpu.snapshot()))
            results[system].burst_wall_ms.append(wall)
            results[system].burst_runs_per_s.append(cfg.concurrency / (wall / 1000))
        await _interleaved(i, burst)

    progress("per-step breakdown from event histories")
    for system in SYSTEMS:
        r = results[system]
        r.latency = summarise(r.latencies_ms)
        r.cpu_ms_per_run_sequential = _per_run(seq_cpu[system], cfg.runs)
        r.cpu_ms_per_run_burst = _per_run(burst_cpu[system], cfg.rounds * cfg.concurrency)
        r.throughput_median = summarise(r.burst_runs_per_s).median if r.burst_runs_per_s \
            else 0.0
        chosen = ids[system][-cfg.breakdown_runs:] if cfg.breakdown_runs else []
        runs = await breakdown.fetch(h.client, chosen)
        r.breakdown = breakdown.summarise(runs)
        if runs:
            overheads = sorted(latencies[system][b.workflow_id] - b.total_ms for b in runs)
            r.client_overhead_ms = overheads[len(overheads) // 2]
    return results


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + v


def _per_run(total: dict[str, float], runs: int) -> dict[str, float]:
    """Seconds in total -> milliseconds per run, plus their sum."""
    out = {k: v * 1000 / runs for k, v in total.items()} if runs else {}
    if out:
        out["total"] = sum(out.values())
    return out
