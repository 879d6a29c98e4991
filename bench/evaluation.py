"""``python -m bench.evaluation``: what online evaluation costs, and what the runs pay for it.

    python -m bench.evaluation --quick          # 15 runs per phase, 150 runs to grade
    python -m bench.evaluation --runs 40 --graded 600 --json out.json

On a throwaway embedded stack, one production worker (``WorkerHost``) serving the reference
``ops`` agent (offline planner, memory off):

1. **alone**: ``--runs`` sequential ops runs, nothing else on the worker; their latency;
2. the ledger is given ``--graded`` finished ops runs to grade (copies of the runs of phase 1,
   tool calls and results included, under new ids);
3. **beside a sweep**: one ``EvaluationWorkflow`` grades them (the reference evaluators,
   ``used-tools`` and ``grounded-figures``) while ``--runs`` more sequential ops runs are
   timed. A run never waits for its evaluation; what it can feel is the worker and the
   database it shares with the sweep, which this phase shows.

Reported: run latency in both phases, and the sweep's graded runs per second and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.machine import load_average, machine_details
from bench.stats import Summary, summarise

REQUESTS = ["How is auth-service doing?", "How is search-worker doing?",
            "How is payments-db doing?"]


@dataclass
class EvaluationBench:
    runs: int
    graded: int
    concurrency: int
    batch: int
    alone_ms: Summary
    beside_sweep_ms: Summary
    sweep_seconds: float
    """Wall time of the sweep, start to result (all its continued runs)."""
    sweep_runs: int
    """Runs the sweep graded (the copies plus the runs of both phases that ended before it
    looked)."""
    graded_per_s: float
    runs_during_sweep: int
    """Phase-3 runs that started before the sweep ended."""
    task_success: float | None
    machine: dict[str, object]


async def _timed_runs(client: object, settings: object, n: int) -> list[tuple[float, float]]:
    """``n`` sequential ops runs: (start, latency ms) each."""
    from stead.client import start_run
    from stead.contracts.models import RunRequest

    out = []
    for i in range(n):
        t0 = time.perf_counter()
        h = await start_run(client, RunRequest(agent="ops", input=REQUESTS[i % len(REQUESTS)]),
                            temporal=settings.temporal)  # type: ignore[attr-defined]
        r = await asyncio.wait_for(h.result(), 60)
        if r.status != "completed":
            raise RuntimeError(f"an ops run ended {r.status}: {r.error}")
        out.append((t0, (time.perf_counter() - t0) * 1000))
    return out


async def _copy_runs(pool: object, copies: int) -> None:
    """``copies`` finished ops runs for the sweep: the phase-1 runs again, new ids."""
    async with pool.acquire() as c:  # type: ignore[attr-defined]
        await c.execute(
            "with src as (select * from stead_runs where agent = 'ops'"
            "  and finished_at is not null order by started_at),"
            " n as (select g, (select workflow_id from src offset (g % (select count(*)"
            "  from src)) limit 1) as wid from generate_series(1, $1) g)"
            " insert into stead_runs(workflow_id, run_id, agent, tenant, user_id, input,"
            "  metadata, model, status, answer, error, steps, result, started_at, finished_at)"
            " select s.workflow_id || '-copy-' || n.g, s.run_id, s.agent, s.tenant, s.user_id,"
            "  s.input, s.metadata, s.model, s.status, s.answer, s.error, s.steps, s.result,"
            "  now(), now() from n join src s on s.workflow_id = n.wid", copies)
        await c.execute(
            "insert into stead_tool_calls(idempotency_key, workflow_id, run_id, step, call_id,"
            "  tool, arguments, status, attempts, result, error, claimed_at, finished_at)"
            " select t.idempotency_key || '-copy-' || split_part(r.workflow_id, '-copy-', 2),"
            "  r.workflow_id, t.run_id, t.step, t.call_id, t.tool, t.arguments, t.status,"
            "  t.attempts, t.result, t.error, t.claimed_at, t.finished_at"
            " from stead_runs r join stead_tool_calls t"
            "  on t.workflow_id = split_part(r.workflow_id, '-copy-', 1) and t.run_id = r.run_id"
            " where r.workflow_id like '%-copy-%'")


async def bench(runs: int, graded: int, concurrency: int, batch: int) -> EvaluationBench:
    from stead.agents import reference_catalog
    from stead.evals.online import EVALUATION_WORKFLOW, EvaluationSweep, EvaluationSweepSummary
    from stead.settings import Settings
    from stead.stack.embedded import EmbeddedStack, free_port
    from stead.worker import WorkerHost

    machine = machine_details()
    with tempfile.TemporaryDirectory(prefix="stead-bench-eval-") as tmp:
        base = Settings(data_dir=Path(tmp), temporal_port=free_port(), ui_port=free_port(),
                        postgres_port=free_port(), memory_backend="off").replace(
            temporal_address=None, database_url=None, openai_api_key=None,
            otel_exporter_otlp_endpoint=None)
        stack = EmbeddedStack(base, ui=False)
        await stack.start()
        try:
            settings = stack.resolved_settings().replace(task_queue="bench-eval")
            async with WorkerHost(settings, reference_catalog(Path(tmp))) as host:
                assert host.client is not None and host.ledger is not None
                await _timed_runs(host.client, settings, 3)  # warm-up
                alone = await _timed_runs(host.client, settings, runs)
                await _copy_runs(host.ledger.pool, graded)
                t0 = time.perf_counter()
                handle = await host.client.start_workflow(
                    EVALUATION_WORKFLOW, EvaluationSweep(agent="ops", rounds=1000, batch=batch,
                                                    concurrency=concurrency),
                    id=f"bench-sweep-{uuid.uuid4().hex[:8]}",
                    task_queue=settings.temporal.task_queue,
                    result_type=EvaluationSweepSummary)
                sweep = asyncio.create_task(handle.result())
                beside = await _timed_runs(host.client, settings, runs)
                summary = await asyncio.wait_for(sweep, 600)
                sweep_s = time.perf_counter() - t0
        finally:
            await stack.stop()
    ended = t0 + sweep_s
    during = [ms for start, ms in beside if start < ended]
    judged = summary.succeeded + summary.unsuccessful
    return EvaluationBench(
        runs=runs, graded=graded, concurrency=concurrency, batch=batch,
        alone_ms=summarise([ms for _, ms in alone]),
        beside_sweep_ms=summarise(during or [ms for _, ms in beside]),
        sweep_seconds=sweep_s, sweep_runs=summary.runs,
        graded_per_s=summary.runs / sweep_s if sweep_s else 0.0,
        runs_during_sweep=len(during),
        task_success=summary.succeeded / judged if judged else None, machine=machine)


def report(b: EvaluationBench, command: str, console: Console) -> None:
    console.print(f"[bold]{command}[/]  (load average at start "
                  f"{b.machine['load_average_at_start']}, now {load_average()}; "
                  f"{b.machine['nproc']} CPUs, {b.machine['cpu_model']})", highlight=False)
    t = Table(title="ops run latency, ms (sequential runs on one worker)")
    for col in ("phase", "runs", "median", "p90", "min", "max"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for label, s in (("alone", b.alone_ms), ("while a sweep grades", b.beside_sweep_ms)):
        t.add_row(label, str(s.n), f"{s.median:.1f}", f"{s.p90:.1f}", f"{s.min:.1f}",
                  f"{s.max:.1f}")
    console.print(t)
    console.print(f"sweep: {b.sweep_runs} runs graded in {b.sweep_seconds:.2f} s = "
                  f"{b.graded_per_s:.0f} runs/s (reference evaluators, {b.batch} runs per "
                  f"activity, {b.concurrency} activities at once, "
                  f"{b.runs_during_sweep} of the timed runs overlapped it); task success "
                  + (f"{b.task_success:.0%}" if b.task_success is not None else "–"),
                  highlight=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40, help="timed runs per phase (default 40)")
    ap.add_argument("--graded", type=int, default=600,
                    help="finished runs given to the sweep (default 600)")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="the sweep's evaluation activities at once (default 2, the sweep's)")
    ap.add_argument("--batch", type=int, default=10,
                    help="runs per evaluation activity (default 10, the sweep's)")
    ap.add_argument("--quick", action="store_true", help="15 runs per phase, 150 to grade")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.graded = 15, 150
    if args.runs < 2 or args.graded < 1:
        ap.error("--runs must be at least 2 and --graded at least 1")
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    b = asyncio.run(bench(args.runs, args.graded, args.concurrency, args.batch))
    report(b, "python -m bench.evaluation " + shlex.join(argv if argv is not None
                                                         else sys.argv[1:]), Console())
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(b), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
