"""One optimisation, measured as an A/B inside one invocation: stead minimal as it is against
stead minimal with the change, interleaved run by run on one stack (a shared 2-core machine
moves too much between invocations to see a few percent).

    python -m bench.peers.experiment no-eager   # start runs without request_eager_start
    python -m bench.peers.experiment pollers    # autoscaling workflow/activity pollers
    python -m bench.peers.experiment pool       # ledger pool of 40 instead of the default
    python -m bench.peers.experiment unsandboxed   # workflows without the sandbox (what-if)
    python -m bench.peers.experiment none       # A/A: how far apart two identical sides land
    python -m bench.peers.experiment local-reads   # policy execution.local_reads
    python -m bench.peers.experiment local      # local_reads + local_model_calls
    python -m bench.peers.experiment cache-100 --levels 200   # 100 cached runs, not 1000
    python -m bench.peers.experiment no-eager --runs 30 --levels 50 --rounds 3

Each variant is applied to the B worker only, without touching product defaults, so the
same process measures both; a change that helps is then made in ``stead/`` for real (as
eager start was: ``no-eager`` now measures what it gives by taking it away).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import shlex
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.worker import PollerBehaviorAutoscaling, UnsandboxedWorkflowRunner

import stead.worker
from bench import breakdown
from bench.peers.runner import PeersConfig, Runner, spread
from bench.peers.temporal_run import STEAD_MIN, SteadSystem, _result, system_settings
from bench.peers.workload import stead_agents
from bench.runner import _distinct_ports
from stead.authoring.agent import Agent, AgentCatalog
from stead.client import WORKFLOW_TYPE
from stead.contracts.models import RunRequest, RunResult
from stead.contracts.policy import Execution, Policy
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.worker import WorkerHost

VARIANTS = ("no-eager", "pollers", "pool", "unsandboxed", "none", "local-reads", "local",
            "cache-100", "cache-200")


def _local_agents(*, model_calls: bool) -> list[Agent]:
    """The minimal agents under allow-all plus the policy's ``execution`` section: the bench
    tools (read, 30 s start-to-close) run as local activities, and with ``model_calls`` the
    scripted model too. The approval agent keeps its own policy."""
    local = Policy(id="allow-all-local", version=1,
                   execution=Execution(local_reads=True, local_model_calls=model_calls,
                                       local_max_seconds=30))
    return [dataclasses.replace(a, policy=local) if a.policy is None else a
            for a in stead_agents(policy=False)]
A, B = "A: as is", "B: with the change"


class NotEagerSteadSystem(SteadSystem):
    """Starts runs like ``stead.client.start_run`` but without ``request_eager_start``: the
    run's first workflow task goes through the task queue's matching even though a worker on
    the same client polls it."""

    async def run(self, workload: str, run_id: str) -> Any:
        from bench.peers.workload import agent_name

        w = self.workloads[workload]
        request = RunRequest(agent=agent_name(workload, policy=self.policy), input=w.request)
        attrs = TypedSearchAttributes([
            SearchAttributePair(SearchAttributeKey.for_keyword("SteadAgent"), request.agent),
            SearchAttributePair(SearchAttributeKey.for_keyword("SteadTenant"), request.tenant),
        ])
        handle = await self.client.start_workflow(
            WORKFLOW_TYPE, request, id=run_id, task_queue=self.settings.temporal.task_queue,
            result_type=RunResult, search_attributes=attrs,
            static_summary=f"{request.agent}: {request.input[:120]}", request_eager_start=False)
        return self._outcome(handle.id, await _result(self.name, handle))


@contextlib.contextmanager
def _autoscaling_pollers() -> Iterator[None]:
    """While a worker is built: ``Worker`` with autoscaling pollers (what-if)."""
    namespace = vars(stead.worker)
    original = namespace["Worker"]
    namespace["Worker"] = functools.partial(
        original, workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
        activity_task_poller_behavior=PollerBehaviorAutoscaling())
    try:
        yield
    finally:
        namespace["Worker"] = original


@contextlib.contextmanager
def _unsandboxed() -> Iterator[None]:
    """While a worker is built: ``UnsandboxedWorkflowRunner`` instead of the sandbox (what-if;
    the sandbox is what catches non-deterministic imports and calls in workflow code)."""
    namespace = vars(stead.worker)
    original = namespace["SandboxedWorkflowRunner"]
    namespace["SandboxedWorkflowRunner"] = lambda **_: UnsandboxedWorkflowRunner()
    try:
        yield
    finally:
        namespace["SandboxedWorkflowRunner"] = original


@contextlib.asynccontextmanager
async def _system(base: Settings, name: str, variant: str | None) -> AsyncIterator[Any]:
    settings = system_settings(base, STEAD_MIN, otlp=None)
    if variant == "none":
        variant = None
    if variant == "pool":
        settings = settings.replace(db_pool_max=40, db_pool_min=4)
    if variant is not None and variant.startswith("cache-"):  # a smaller workflow cache
        settings = settings.replace(max_cached_workflows=int(variant.removeprefix("cache-")))
    agents = (_local_agents(model_calls=variant == "local")
              if variant in ("local", "local-reads") else stead_agents(policy=False))
    host = WorkerHost(settings, AgentCatalog(agents), task_queue=settings.temporal.task_queue)
    patch = {"pollers": _autoscaling_pollers, "unsandboxed": _unsandboxed}.get(variant or "")
    with patch() if patch is not None else contextlib.nullcontext():
        await host.start()
    try:
        assert host.client is not None
        cls = NotEagerSteadSystem if variant == "no-eager" else SteadSystem
        # Both sides start runs on the worker's own client (as `stead demo` does): eager
        # start needs it, and it keeps A and B alike.
        yield cls(name, host.client, settings, policy=False)
    finally:
        await host.stop()


async def experiment(variant: str, cfg: PeersConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stead-peers-exp-") as tmp:
        tport, uport, pport = _distinct_ports(3)
        settings = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                            postgres_port=pport, temporal_address=None, database_url=None,
                            openai_api_key=None)
        async with EmbeddedStack(settings, ui=False) as stack:
            base = stack.resolved_settings()
            async with _system(base, A, None) as a, _system(base, B, variant) as b:
                r = Runner(PeersConfig(**{**cfg.__dict__, "systems": (A, B)}),
                           {A: a, B: b}, lambda m: print(f"[experiment] {m}", flush=True))
                await r.latency()
                await r.throughput()
                out: dict[str, Any] = {}
                for name, s in ((A, a), (B, b)):
                    runs = await breakdown.fetch(s.client, r.ids[name][-10:])
                    bd = breakdown.summarise(runs)
                    out[name] = {"latency": spread(r.out[name].latency_ms),
                                 "throughput": r.out[name].throughput_median,
                                 "cpu": r.out[name].cpu_ms_per_run,
                                 "server_ms": bd.total_ms,
                                 "wft_queue_ms": bd.segments_ms.get(breakdown.SEGMENTS[0], 0.0)}
                return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.experiment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=VARIANTS)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--levels", default="50")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = PeersConfig(runs=args.runs, warmup=args.warmup, rounds=args.rounds,
                      concurrency=tuple(int(x) for x in args.levels.split(",")),
                      long_runs=0, hitl_runs=0, memory_runs=0)
    out = asyncio.run(experiment(args.variant, cfg))
    from bench.machine import load_average

    print(f"python -m bench.peers.experiment {shlex.join(sys.argv[1:])}  "
          f"(load average at end {load_average()}) run {uuid.uuid4().hex[:6]}")
    for name, d in out.items():
        lat = d["latency"]
        cpu = {c: round(v.get("total", 0.0), 1) for c, v in d["cpu"].items()}
        print(f"{name:22s} latency median {lat.median:6.1f} ms (p10 {lat.p10:.1f}, p90 "
              f"{lat.p90:.1f})  server {d['server_ms']:.1f} ms  wft queue "
              f"{d['wft_queue_ms']:.1f} ms  throughput {d['throughput']}  cpu/run {cpu}")
    a, b = out[A], out[B]
    print(f"B/A latency {b['latency'].median / a['latency'].median:.3f}; "
          + "; ".join(f"B/A throughput@{c} {b['throughput'][c] / a['throughput'][c]:.3f}"
                      for c in a["throughput"]))


if __name__ == "__main__":
    main()
