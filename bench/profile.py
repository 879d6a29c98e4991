"""Where one run's CPU goes: each Temporal-based peer system, profiled on its own.

    python -m bench.profile                          # stead, stead-local, plain, plain-local
    python -m bench.profile stead-local --runs 50 --json /tmp/profile.json
    py-spy record -o stead.svg -- python -m bench.profile stead --no-profile   # sampling

For each system, one after another on one embedded stack (the systems of
``bench.peers.temporal_run``), after ``--warmup`` runs:

1. **measured**: ``--runs`` sequential 5-tool runs with no profiler. Per run: the median
   latency, the CPU of each kind of thread of this process (read from
   ``/proc/self/task``: ``asyncio`` is the event loop's thread — activities, the client,
   payload conversion, the ledger's driver; ``workflow`` the threads workflow activations
   run in; ``core`` the Temporal core's Rust threads), and the ledger's round trips
   (statements sent, a transaction counting its BEGIN and COMMIT).
2. **profiled**: as many runs again under ``cProfile`` (timed by the thread's own CPU clock)
   on the event loop's thread and on the workflow threads. Each function's own time is
   charged to one area by its file and name (``AREAS``); an area's share of its thread's
   profiled time, times that thread's measured CPU, is its ms per run. The profiler slows
   Python down unevenly, so the areas are estimates; the thread totals are measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.peers.temporal_run import (
    FLOOR,
    PLAIN,
    PLAIN_LOCAL,
    STEAD_FULL,
    STEAD_LOCAL,
    STEAD_MIN,
    otlp_receiver,
    temporal_system,
)
from bench.peers.workload import FIVE
from bench.runner import _distinct_ports
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack

SYSTEMS = (STEAD_FULL, STEAD_LOCAL, STEAD_MIN, PLAIN, PLAIN_LOCAL, FLOOR)
DEFAULT_SYSTEMS = (STEAD_FULL, STEAD_LOCAL, PLAIN, PLAIN_LOCAL)

AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stead: workflow code", ("/workflows/", "/stead/authoring/", "/stead/contracts/")),
    ("stead: guardrails", ("/guardrails/",)),
    ("stead: activities", ("/activities/", "/stead/integrations/", "/bench/")),
    ("stead: ledger", ("/stead/storage/",)),
    ("stead: redaction", ("/stead/security/",)),
    ("telemetry (stead + OpenTelemetry)", ("/stead/observability/", "/opentelemetry/",
                                           "/temporalio/contrib/opentelemetry/")),
    ("ledger driver (asyncpg)", ("/asyncpg/", "asyncpg.")),
    ("payload conversion (temporalio + pydantic)", ("/temporalio/converter/",
                                                    "/temporalio/contrib/pydantic",
                                                    "/pydantic/", "pydantic_core", "/json/")),
    ("Temporal SDK: workflow sandbox", ("/temporalio/worker/workflow_sandbox/",)),
    ("Temporal SDK: bridge to core", ("/temporalio/bridge/",)),
    ("Temporal SDK: other", ("/temporalio/",)),
    ("asyncio + Python runtime", ("/asyncio/", "/selectors.py", "/contextlib.py", "/typing.py",
                                  "/enum.py", "/threading.py", "select.epoll", "builtins.")),
)
"""Areas by a function's file and name (``path:name``; a built-in function's path is ``~``),
first match wins; the rest is ``other``."""

THREADS = ("asyncio", "workflow", "core", "other")


def area_of(filename: str) -> str:
    for name, needles in AREAS:
        if any(n in filename for n in needles):
            return name
    return "other"


@dataclass
class SystemProfile:
    system: str
    runs: int
    latency_ms: float
    """Median, unprofiled."""
    cpu_ms: dict[str, float]
    """Thread kind -> CPU ms per run, unprofiled."""
    ledger_round_trips: float
    """Per run."""
    areas_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """Thread kind -> area -> estimated CPU ms per run."""

    @property
    def cpu_total_ms(self) -> float:
        return sum(self.cpu_ms.values())


# ---------------------------------------------------------------------------- measuring


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process so far, by thread id and name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[f"{tid}:{name}"] = (int(f[11]) + int(f[12])) / tick
    return out


def _kind(key: str, workflow_threads: set[str]) -> str:
    tid, _, name = key.partition(":")
    if tid == str(os.getpid()):
        return "asyncio"
    if tid in workflow_threads:
        return "workflow"
    if name.startswith("tokio") or name.startswith("temporal"):
        return "core"
    return "other"


class _Probe:
    """What one pass sees: round trips to the ledger, and the threads activations ran in.
    With ``profile``, cProfile on the event loop's thread and in every activation."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.workflow_threads: set[str] = set()
        self.loop_profile: cProfile.Profile | None = None
        self.workflow_profile: cProfile.Profile | None = None

    @contextlib.contextmanager
    def installed(self, *, profile: bool) -> Iterator[None]:
        import threading

        import asyncpg.connection
        import asyncpg.transaction
        from temporalio.worker import _workflow_instance
        from temporalio.worker.workflow_sandbox import _runner

        # CPU time of the profiled thread, not wall time: waiting is not work.
        self.loop_profile = cProfile.Profile(time.thread_time) if profile else None
        self.workflow_profile = cProfile.Profile(time.thread_time) if profile else None
        saved: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, wrap: Any) -> None:
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, wrap(original))

        def counted(weight: int) -> Any:
            def wrap(original: Any) -> Any:
                async def call(*args: Any, **kwargs: Any) -> Any:
                    self.round_trips += weight
                    return await original(*args, **kwargs)
                return call
            return wrap

        for method in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            patch(asyncpg.connection.Connection, method, counted(1))
        patch(asyncpg.transaction.Transaction, "start", counted(2))  # BEGIN ... COMMIT

        inside = threading.local()

        def activation(original: Any) -> Any:
            def activate(instance: Any, act: Any) -> Any:
                # Sandboxed, the runner's activation wraps the instance's: profile the outer.
                if getattr(inside, "yes", False):
                    return original(instance, act)
                self.workflow_threads.add(str(threading.get_native_id()))
                inside.yes = True
                if self.workflow_profile is not None:
                    self.workflow_profile.enable()
                try:
                    return original(instance, act)
                finally:
                    if self.workflow_profile is not None:
                        self.workflow_profile.disable()
                    inside.yes = False
            return activate

        # The sandbox's runner (plain temporalio, STEAD_WORKFLOW_SANDBOX) and the workflow
        # instance itself (stead by default: no sandbox).
        patch(_runner._Instance, "activate", activation)
        patch(_workflow_instance._WorkflowInstanceImpl, "activate", activation)
        if self.loop_profile is not None:
            self.loop_profile.enable()
        try:
            yield
        finally:
            if self.loop_profile is not None:
                self.loop_profile.disable()
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)


def _areas(prof: cProfile.Profile) -> dict[str, float]:
    """Own time (s) per area."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: Counter[str] = Counter()
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in stats.items():
        out[area_of(f"{filename}:{name}")] += own
    return dict(out)


async def _pass(system: Any, runs: int, *, profile: bool
                ) -> tuple[list[float], dict[str, float], _Probe]:
    probe = _Probe()
    with probe.installed(profile=profile):
        before = _thread_cpu()
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            await system.run(FIVE, f"profile-{uuid.uuid4().hex[:12]}")
            latencies.append((time.perf_counter() - started) * 1000)
        after = _thread_cpu()
    cpu: Counter[str] = Counter()
    for key, seconds in after.items():
        cpu[_kind(key, probe.workflow_threads)] += seconds - before.get(key, 0.0)
    return latencies, {k: cpu.get(k, 0.0) * 1000 / runs for k in THREADS}, probe


def _scaled(areas: dict[str, float], thread_ms: float) -> dict[str, float]:
    total = sum(areas.values())
    if total <= 0:
        return {}
    return {k: round(v / total * thread_ms, 2)
            for k, v in sorted(areas.items(), key=lambda kv: -kv[1])}


async def profile_system(system: Any, name: str, *, runs: int, warmup: int,
                         profile: bool = True) -> SystemProfile:
    for _ in range(warmup):
        await system.run(FIVE, f"warmup-{uuid.uuid4().hex[:12]}")
    latencies, cpu, probe = await _pass(system, runs, profile=False)
    out = SystemProfile(system=name, runs=runs, latency_ms=statistics.median(latencies),
                        cpu_ms={k: round(v, 2) for k, v in cpu.items()},
                        ledger_round_trips=probe.round_trips / runs)
    if profile:
        _, _, probed = await _pass(system, runs, profile=True)
        assert probed.loop_profile is not None and probed.workflow_profile is not None
        out.areas_ms = {"asyncio": _scaled(_areas(probed.loop_profile), cpu["asyncio"]),
                        "workflow": _scaled(_areas(probed.workflow_profile), cpu["workflow"])}
    return out


async def each_system(systems: tuple[str, ...], *, label: str
                      ) -> AsyncIterator[tuple[str, Any]]:
    """Each of ``systems`` (``bench.peers.temporal_run``) in turn, up and ready, on one
    throwaway embedded stack (stead's systems exporting telemetry to a local OTLP receiver);
    ``[label] <system>: done`` once the caller has measured it."""
    with tempfile.TemporaryDirectory(prefix=f"stead-{label}-") as tmp:
        tport, uport, pport, oport = _distinct_ports(4)
        settings = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                            postgres_port=pport, temporal_address=None, database_url=None,
                            openai_api_key=None)
        async with EmbeddedStack(settings, ui=False) as stack, otlp_receiver(oport) as otlp:
            resolved = stack.resolved_settings()
            for name in systems:
                telemetry = otlp if name in (STEAD_FULL, STEAD_LOCAL) else None
                async with temporal_system(resolved, name, otlp=telemetry) as system:
                    yield name, system
                    print(f"[{label}] {name}: done", flush=True)


async def run_profiles(systems: tuple[str, ...], *, runs: int, warmup: int,
                       profile: bool = True) -> list[SystemProfile]:
    return [await profile_system(system, name, runs=runs, warmup=warmup, profile=profile)
            async for name, system in each_system(systems, label="profile")]


# ---------------------------------------------------------------------------- report


def report(profiles: list[SystemProfile]) -> str:
    lines = ["| system | latency ms (median) | CPU ms/run | asyncio thread | workflow threads"
             " | core (Rust) | ledger round trips/run |", "|---|" + "---:|" * 6]
    for p in profiles:
        lines.append(f"| {p.system} | {p.latency_ms:.1f} | {p.cpu_total_ms:.1f} | "
                     f"{p.cpu_ms['asyncio']:.1f} | {p.cpu_ms['workflow']:.1f} | "
                     f"{p.cpu_ms['core']:.1f} | {p.ledger_round_trips:.1f} |")
    for p in profiles:
        for thread, areas in p.areas_ms.items():
            if not areas:
                continue
            lines += ["", f"{p.system}, {thread} thread(s): {p.cpu_ms[thread]:.1f} ms/run",
                      "| area | ms/run (estimate) |", "|---|---:|"]
            lines += [f"| {a} | {ms:.1f} |" for a, ms in areas.items() if ms >= 0.05]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="*", metavar="SYSTEM",
                    help=f"any of {', '.join(SYSTEMS)} (default: {', '.join(DEFAULT_SYSTEMS)})")
    ap.add_argument("--runs", type=int, default=30, help="runs per pass (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    ap.add_argument("--no-profile", action="store_true",
                    help="measure only (for an outside sampling profiler such as py-spy)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup not negative")
    systems = tuple(a.systems) or DEFAULT_SYSTEMS
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    profiles = asyncio.run(run_profiles(systems, runs=a.runs, warmup=a.warmup,
                                        profile=not a.no_profile))
    print(report(profiles))
    if a.json is not None:
        a.json.write_text(json.dumps([asdict(p) for p in profiles], indent=2))
        print(f"[profile] wrote {a.json}")


if __name__ == "__main__":
    main()
