"""Where stead's extra time per run goes inside this process: timed wrappers, no sampling.

    python -m bench.instrument --runs 30

Wraps stead's ledger operations and activities, and a few temporalio worker internals
(sandbox instance creation, activation, per-payload serialization-context look-ups), then
runs sequential runs of each system and prints calls and milliseconds per run. Diagnostic
only: it patches private SDK methods (pinned temporalio version) and may need updating
when the SDK changes. The numbers quoted in bench/RESULTS.md come from it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from temporalio.worker import _workflow
from temporalio.worker.workflow_sandbox import _importer, _runner

import stead.guardrails.calls
import stead.guardrails.output
import stead.guardrails.risk
import stead.guardrails.routing
from bench.runner import SYSTEMS, bench_stack
from stead.activities.model import ModelActivities
from stead.activities.runs import RunActivities
from stead.activities.tools import ToolActivities
from stead.authoring.agent import Agent
from stead.storage.ledger import Ledger

_current: str | None = None
_stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])


def _count(label: str, started: float) -> None:
    if _current is not None:
        s = _stats[(_current, label)]
        s[0] += 1
        s[1] += time.perf_counter() - started


def _wrap(owner: Any, name: str, label: str) -> None:
    orig: Callable[..., Any] = getattr(owner, name)
    if asyncio.iscoroutinefunction(orig):
        @functools.wraps(orig)
        async def timed_async(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await orig(*a, **k)
            finally:
                _count(label, t0)
        setattr(owner, name, timed_async)
    else:
        @functools.wraps(orig)
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                _count(label, t0)
        setattr(owner, name, timed)


PROBES: list[tuple[Any, str, str]] = [
    (_workflow._WorkflowWorker, "_handle_activation",
     "workflow activation, end to end (incl. completion RPC)"),
    (_runner.SandboxedWorkflowRunner, "create_instance", "sandbox: new workflow instance"),
    (_importer.Importer, "_import", "sandbox: imports while creating it"),
    (_runner._Instance, "activate", "sandbox: workflow code (activate)"),
    (_runner._Instance, "get_serialization_context",
     "sandbox: serialization context, per payload visit"),
    (_runner._Instance, "get_external_store_context", "sandbox: external store context"),
    (ModelActivities, "complete", "stead: model activity (incl. ledger)"),
    (ToolActivities, "execute", "stead: tool activity (incl. ledger)"),
    (Agent, "plan", "stead: Agent.plan (in run.start)"),
    (RunActivities, "record_decision", "stead: run.decision local activity"),
    *((Ledger, op, f"stead: ledger.{op}") for op in
      ("start_run", "record_model_call", "claim_tool", "finish_tool", "finish_run",
       "record_decision")),
    # Guardrails run inside workflow code (passed through the sandbox), so patching the
    # module attribute before a run's sandbox imports it is enough.
    (stead.guardrails.routing, "route", "guardrails: route"),
    (stead.guardrails.calls, "check_call", "guardrails: check_call"),
    (stead.guardrails.risk, "score_call", "guardrails: score_call"),
    (stead.guardrails.risk, "decide", "guardrails: decide"),
    (stead.guardrails.output, "validate_output", "guardrails: validate_output"),
]


async def _measure(runs: int, warmup: int) -> None:
    global _current
    for owner, name, label in PROBES:
        _wrap(owner, name, label)
    async with bench_stack(progress=lambda _: None) as h:
        for system in SYSTEMS:
            for _ in range(warmup):
                await h.one(system)
        for system in SYSTEMS:
            _current = system
            for _ in range(runs):
                await h.one(system)
            _current = None
    print(f"{'system':6}  {'probe':56} {'calls/run':>9} {'ms/run':>8} {'us/call':>8}")
    for _, _, label in PROBES:
        for system in SYSTEMS:
            n, secs = _stats.get((system, label), [0, 0.0])
            if n:
                print(f"{system:6}  {label:56} {n / runs:9.1f} {secs * 1000 / runs:8.2f} "
                      f"{secs * 1e6 / n:8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.instrument", description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    asyncio.run(_measure(a.runs, a.warmup))


if __name__ == "__main__":
    main()
