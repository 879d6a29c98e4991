"""The peer benchmark's workloads, run one system after another on one stack.

    result = await run_peers(PeersConfig(), progress=print)

Every workload rotates the order of the systems from one repetition to the next, so a
burst of machine noise does not always land on the same system.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import approvals, breakdown, cpu
from bench.peers.databases import DBOS_DB, LANGGRAPH_DB, ensure_database
from bench.peers.dbos_run import dbos_system
from bench.peers.langgraph_run import Durability, langgraph_system
from bench.peers.temporal_run import (
    FLOOR,
    OPENAI_AGENTS,
    PLAIN,
    PLAIN_LOCAL,
    PYDANTIC_AI,
    STEAD_FULL,
    STEAD_LOCAL,
    STEAD_MIN,
    TEMPORAL_SYSTEMS,
    TemporalSide,
    temporal_side,
)
from bench.peers.workload import FIVE, HITL, LONG, Workload, workloads
from bench.stats import Summary, summarise

LANGGRAPH, LANGGRAPH_ASYNC, DBOS = "langgraph", "langgraph-async", "dbos"
SYSTEMS = (*TEMPORAL_SYSTEMS, LANGGRAPH, LANGGRAPH_ASYNC, DBOS)
LABELS = {
    STEAD_FULL: "stead full, as it runs by default (ledger + policy + telemetry, reads local)",
    STEAD_LOCAL: "stead full, local execution (the model call local too)",
    STEAD_MIN: "stead minimal (ledger, allow-all, no telemetry)",
    PLAIN: "plain temporalio",
    PLAIN_LOCAL: "plain temporalio, tools as local activities (what-if)",
    FLOOR: "plain temporalio, everything local, eager start (the engine's floor)",
    PYDANTIC_AI: "pydantic-ai on Temporal (TemporalDurability, tools as activities)",
    OPENAI_AGENTS: "OpenAI Agents SDK on Temporal (plugin, activity_as_tool)",
    LANGGRAPH: "LangGraph + PostgresSaver (sync)",
    LANGGRAPH_ASYNC: "LangGraph + PostgresSaver (async, default)",
    DBOS: "DBOS on PostgreSQL",
}
MEMORY_SYSTEMS = (STEAD_FULL, STEAD_MIN, PLAIN, PYDANTIC_AI, OPENAI_AGENTS, LANGGRAPH, DBOS)
"""LangGraph's durability mode and plain's local tools (the floor's too) change nothing about
a parked run: measured once."""

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class PeersConfig:
    runs: int = 30
    """Sequential 5-tool runs per system (after warm-up)."""
    warmup: int = 5
    """Sequential warm-up runs per system (plus one burst of 10 each)."""
    concurrency: tuple[int, ...] = (10, 50, 200)
    """Runs started at once in a throughput burst, one level after another."""
    rounds: int = 3
    """Bursts per system and concurrency level."""
    long_runs: int = 5
    """50-tool runs per system (after one warm-up run)."""
    hitl_runs: int = 20
    """Approval runs per system (after two warm-up runs)."""
    settle: float = 0.2
    """Seconds a parked run is left alone before it is approved (the worker goes idle)."""
    memory_runs: int = 1000
    """Runs held parked per system for the memory measurement (0: skip it)."""
    breakdown_runs: int = 10
    """How many of the last sequential runs of the Temporal systems to read histories of."""
    systems: tuple[str, ...] = SYSTEMS


@dataclass
class Spread:
    """A sample's median and spread (ms, or runs/s for throughput)."""

    n: int
    median: float
    p10: float
    p90: float
    min: float
    max: float
    mean: float


def spread(values: Sequence[float]) -> Spread:
    s: Summary = summarise(values)
    ordered = sorted(values)
    p10 = statistics.quantiles(ordered, n=10, method="inclusive")[0] if len(ordered) > 1 \
        else s.min
    return Spread(n=s.n, median=s.median, p10=p10, p90=s.p90, min=s.min, max=s.max,
                  mean=s.mean)


@dataclass
class MemoryResult:
    runs: int
    rss_before_mib: float
    rss_after_mib: float
    mib_per_1000_runs: float
    park_seconds: float
    note: str = ""


@dataclass
class SystemResult:
    latency_ms: list[float] = field(default_factory=list)
    latency: Spread | None = None
    throughput: dict[int, list[float]] = field(default_factory=dict)
    """Concurrency -> runs/s of each burst."""
    throughput_median: dict[int, float] = field(default_factory=dict)
    cpu_ms_per_run: dict[int, dict[str, float]] = field(default_factory=dict)
    """Concurrency -> CPU ms per run by component, over that level's bursts."""
    long_ms: list[float] = field(default_factory=list)
    long: Spread | None = None
    hitl_ms: list[float] = field(default_factory=list)
    """Approval sent -> the approved tool's function entered (one clock)."""
    hitl: Spread | None = None
    hitl_rpc: Spread | None = None
    """Approval sent -> the send call returned."""
    memory: MemoryResult | None = None
    breakdown: breakdown.Breakdown | None = None
    notes: list[str] = field(default_factory=list)
    """What the system itself reports about the runs (the floor: how many started eagerly)."""


@dataclass
class PeersResult:
    config: PeersConfig
    systems: dict[str, SystemResult]
    seconds: float
    ratios: dict[str, float] = field(default_factory=dict)


def _rotated(i: int, names: Sequence[str]) -> list[str]:
    k = i % len(names)
    return [*names[k:], *names[:k]]


class Runner:
    def __init__(self, cfg: PeersConfig, systems: dict[str, Any], progress: Progress) -> None:
        self.cfg = cfg
        self.systems = systems
        self.names = [n for n in cfg.systems if n in systems]
        self.progress = progress
        self.w: dict[str, Workload] = workloads()
        self.out = {n: SystemResult() for n in self.names}
        self.ids: dict[str, list[str]] = {n: [] for n in self.names}

    async def one(self, name: str, workload: str) -> tuple[float, str]:
        run_id = f"peers-{name}-{workload}-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        outcome = await self.systems[name].run(workload, run_id)
        ms = (time.perf_counter() - t0) * 1000
        self.w[workload].check(name, run_id, outcome)
        return ms, run_id

    async def burst(self, name: str, n: int) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(self.one(name, FIVE) for _ in range(n)))
        return n / (time.perf_counter() - t0)

    async def each(self, rounds: int, fn: Callable[[str], Awaitable[None]]) -> None:
        for i in range(rounds):
            for name in _rotated(i, self.names):
                await fn(name)

    async def latency(self) -> None:
        cfg = self.cfg
        self.progress(f"5-tool latency: {cfg.warmup} warm-up run(s) and a burst of 10 each, "
                      f"then {cfg.runs} run(s) each")

        async def warm(name: str) -> None:
            await self.one(name, FIVE)
        await self.each(cfg.warmup, warm)

        async def warm_burst(name: str) -> None:
            await self.burst(name, 10)
        await self.each(1 if cfg.warmup else 0, warm_burst)

        async def seq(name: str) -> None:
            ms, run_id = await self.one(name, FIVE)
            self.out[name].latency_ms.append(ms)
            self.ids[name].append(run_id)
        await self.each(cfg.runs, seq)
        for name in self.names:
            self.out[name].latency = spread(self.out[name].latency_ms)

    async def throughput(self) -> None:
        for c in self.cfg.concurrency:
            self.progress(f"throughput: {self.cfg.rounds} burst(s) of {c} concurrent runs each")
            used = {n: dict.fromkeys(cpu.COMPONENTS, 0.0) for n in self.names}

            async def burst(name: str, c: int = c,
                            used: dict[str, dict[str, float]] = used) -> None:
                before = cpu.snapshot()
                rate = await self.burst(name, c)
                for k, v in cpu.delta(before, cpu.snapshot()).items():
                    used[name][k] += v
                self.out[name].throughput.setdefault(c, []).append(rate)
            await self.each(self.cfg.rounds, burst)
            for name in self.names:
                r = self.out[name]
                r.throughput_median[c] = statistics.median(r.throughput[c])
                per_run = {k: v * 1000 / (c * self.cfg.rounds) for k, v in used[name].items()}
                per_run["total"] = sum(per_run.values())
                r.cpu_ms_per_run[c] = per_run

    async def long(self) -> None:
        if not self.cfg.long_runs:
            return
        self.progress(f"{self.w[LONG].tool_calls}-tool runs: one warm-up, then "
                      f"{self.cfg.long_runs} each")

        async def warm(name: str) -> None:
            await self.one(name, LONG)
        await self.each(1, warm)

        async def run(name: str) -> None:
            ms, _ = await self.one(name, LONG)
            self.out[name].long_ms.append(ms)
        await self.each(self.cfg.long_runs, run)
        for name in self.names:
            self.out[name].long = spread(self.out[name].long_ms)

    async def hitl(self) -> None:
        if not self.cfg.hitl_runs:
            return
        self.progress(f"approval -> tool start: two warm-up runs, then {self.cfg.hitl_runs} "
                      f"each (parked {self.cfg.settle}s before the approval)")
        rpc: dict[str, list[float]] = {n: [] for n in self.names}

        async def sample(name: str, record: bool) -> None:
            s = self.systems[name]
            run_id = f"peers-{name}-hitl-{uuid.uuid4().hex[:12]}"
            parked = await s.park(run_id)
            await asyncio.sleep(self.cfg.settle)
            sent = time.time_ns()
            await s.release(parked)
            returned = time.time_ns()
            self.w[HITL].check(name, run_id, await s.finish(parked))
            entered = approvals._entered.pop(run_id, None)
            if entered is None:
                raise RuntimeError(f"{name} run {run_id}: the approved tool never ran")
            if record:
                self.out[name].hitl_ms.append((entered - sent) / 1e6)
                rpc[name].append((returned - sent) / 1e6)

        async def warm(name: str) -> None:
            await sample(name, False)

        async def measured(name: str) -> None:
            await sample(name, True)
        await self.each(2, warm)
        await self.each(self.cfg.hitl_runs, measured)
        for name in self.names:
            self.out[name].hitl = spread(self.out[name].hitl_ms)
            self.out[name].hitl_rpc = spread(rpc[name])

    async def breakdowns(self, side: TemporalSide) -> None:
        self.progress("per-step breakdown from the Temporal systems' event histories")
        for name in TEMPORAL_SYSTEMS:
            if name not in self.names or not self.cfg.breakdown_runs:
                continue
            client = self.systems[name].client
            runs = await breakdown.fetch(client, self.ids[name][-self.cfg.breakdown_runs:])
            self.out[name].breakdown = breakdown.summarise(runs)

    def notes(self) -> None:
        for name in self.names:
            report = getattr(self.systems[name], "notes", None)
            if report is not None:
                self.out[name].notes = report()


def _memory_child(system: str, side: TemporalSide, runs: int) -> MemoryResult:
    """Run ``bench.peers.rss`` for one system in a fresh process; its JSON line."""
    s = side.settings
    assert s.temporal.address is not None and s.ledger.database_url is not None
    cmd = [sys.executable, "-m", "bench.peers.rss", "--system", system, "--runs", str(runs),
           "--temporal", s.temporal.address, "--worker-dsn", s.ledger.database_url,
           "--owner-dsn", side.stack.database_url, "--otlp", side.otlp]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {system} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    doc = json.loads(lines[-1])
    return MemoryResult(**doc)


async def run_peers(cfg: PeersConfig, *, progress: Progress = print) -> PeersResult:
    began = time.perf_counter()
    async with (temporal_side(systems=cfg.systems, progress=progress) as side,
                contextlib.AsyncExitStack() as peers):
        owner = side.stack.database_url
        systems: dict[str, Any] = dict(side.systems)
        if LANGGRAPH in cfg.systems or LANGGRAPH_ASYNC in cfg.systems:
            lg_dsn = await ensure_database(owner, LANGGRAPH_DB)
            modes: tuple[tuple[str, Durability], ...] = ((LANGGRAPH, "sync"),
                                                          (LANGGRAPH_ASYNC, "async"))
            for name, durability in modes:
                if name in cfg.systems:
                    systems[name] = await peers.enter_async_context(
                        langgraph_system(lg_dsn, durability=durability, name=name))
        if DBOS in cfg.systems:
            systems[DBOS] = await peers.enter_async_context(
                dbos_system(await ensure_database(owner, DBOS_DB)))
        r = Runner(cfg, systems, progress)
        await r.latency()
        await r.throughput()
        await r.long()
        await r.hitl()
        await r.breakdowns(side)
        r.notes()
        await peers.aclose()
        gc.collect()
        if cfg.memory_runs:
            for name in MEMORY_SYSTEMS:
                if name in r.names:
                    progress(f"memory: {cfg.memory_runs} parked runs of {name} in a fresh "
                             f"process")
                    r.out[name].memory = await asyncio.to_thread(
                        _memory_child, name, side, cfg.memory_runs)
    res = PeersResult(config=cfg, systems=r.out, seconds=time.perf_counter() - began)
    res.ratios = ratios(res)
    return res


def ratios(res: PeersResult) -> dict[str, float]:
    """stead full (and stead full with local execution) against each other system: latency
    (lower is better) and throughput at each concurrency (higher is better); keys like
    ``latency stead/langgraph``."""
    out: dict[str, float] = {}
    for mine in (STEAD_FULL, STEAD_LOCAL):
        s = res.systems.get(mine)
        if s is None or s.latency is None:
            continue
        for name, other in res.systems.items():
            if name == mine or other.latency is None:
                continue
            out[f"latency {mine}/{name}"] = s.latency.median / other.latency.median
            for c, v in s.throughput_median.items():
                if other.throughput_median.get(c):
                    out[f"throughput@{c} {mine}/{name}"] = v / other.throughput_median[c]
    m, p = res.systems.get(STEAD_MIN), res.systems.get(PLAIN)
    if m is not None and p is not None and m.latency is not None and p.latency is not None:
        out[f"latency {STEAD_MIN}/{PLAIN}"] = m.latency.median / p.latency.median
    return out
