"""``python -m bench.quota``: how long a run of tenant B takes to start while tenant A holds
a long queue of runs waiting for admission.

    python -m bench.quota                     # A: 2 in flight + 200 queued; 30 runs of B
    python -m bench.quota --queued 20 --runs 5 --recheck 2      # a smoke run
    python -m bench.quota --json out.json

One embedded stack (free ports, temporary directory) and one worker whose
``STEAD_TENANT_QUOTAS`` caps tenant ``bench-a`` at ``--a-in-flight`` runs in flight (queue over
quota) and tenant ``bench-b`` at ``--b-in-flight``; both go through admission. The model is
``stead.testing.gated_model.GatedModel``: A's admitted runs stay at their first model call for
the whole benchmark, so A stays at its cap and its ``--queued`` runs stay queued, each asking
again every ``--recheck`` seconds (``STEAD_ADMISSION_RECHECK_SECONDS``, default 30: with 200
queued, 7 admission transactions a second on A's lock in the background; 5 s: 40). ``--churn`` lets
one of A's admitted runs finish every that many seconds, so the queue also moves (each ending
run releases its slot and signals the next queued run).

Then ``--wakes`` times one of A's admitted runs ends while the others wait: the time until
the next queued run of A calls its model is the wake-up latency (the ending run finishes,
gives its slot back and signals ``admit``; the woken run asks, is admitted, calls its model).

Measured, per run of B, started one after the other: client ``start_workflow`` -> B's first
model call entered (the run was admitted and began its first step), first with no backlog
(``baseline``, the same number of runs before A queues anything), then with A's backlog. The
client, the worker and Temporal share a process or a machine, so the clocks compare.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from bench.agent import AGENT, bench_agent
from bench.runner import _distinct_ports
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import RunRequest
from stead.contracts.quota import TenantQuota
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.admission import Admissions
from stead.testing.gated_model import GatedModel
from stead.worker import WorkerHost

A, B = "bench-a", "bench-b"


@dataclass(frozen=True)
class Latency:
    n: int
    median_ms: float
    p95_ms: float
    max_ms: float


def _latency(values: Sequence[float]) -> Latency:
    ordered = sorted(values)
    if not ordered:
        return Latency(0, float("nan"), float("nan"), float("nan"))
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 \
        else ordered[0]
    return Latency(len(ordered), statistics.median(ordered), p95, ordered[-1])


@dataclass
class QuotaResult:
    queued: int
    a_in_flight: int
    b_in_flight: int
    recheck_s: float
    churn_s: float | None
    runs: int
    baseline: Latency | None = None
    backlogged: Latency | None = None
    wake: Latency | None = None
    """An admitted run of A answered -> the next queued run of A calls its model (the
    ending run finishes, releases its slot, signals; the woken run is admitted): ``--wakes``
    one after the other after B's runs, plus those of ``--churn`` during them."""
    backlog_at_start: int = 0
    backlog_at_end: int = 0
    a_started_during: int = 0
    queue_fill_s: float = 0.0
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


async def _b_runs(client: Client, settings: Settings, model: GatedModel, runs: int,
                  tag: str) -> list[float]:
    out: list[float] = []
    for i in range(runs):
        key = f"b {tag} {i}"
        model.open(key)  # B's runs answer at once: only their start is measured
        began = time.perf_counter()
        h = await start_run(client, RunRequest(agent=AGENT, input=key, tenant=B),
                            temporal=settings.temporal)
        await model.called(key, within=120)
        out.append((time.perf_counter() - began) * 1000)
        result = await h.result()
        if result.status != "completed":
            raise RuntimeError(f"run {h.id} of B ended {result.status}: {result.answer}")
    return out


async def quota_workload(*, queued: int = 200, runs: int = 30, a_in_flight: int = 2,
                         b_in_flight: int = 10, recheck: float = 30.0,
                         churn: float | None = None, wakes: int = 10,
                         progress: Callable[[str], None] = print) -> QuotaResult:
    began = time.perf_counter()
    res = QuotaResult(queued=queued, a_in_flight=a_in_flight, b_in_flight=b_in_flight,
                      recheck_s=recheck, churn_s=churn, runs=runs)
    with tempfile.TemporaryDirectory(prefix="stead-bench-quota-") as tmp:
        tport, uport, pport = _distinct_ports(3)
        base = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                        postgres_port=pport, temporal_address=None, database_url=None,
                        openai_api_key=None, task_queue="bench-quota")
        progress(f"starting embedded stack in {tmp} (Temporal :{tport}, PostgreSQL :{pport})")
        async with EmbeddedStack(base, ui=False) as stack:
            settings = stack.resolved_settings().replace(
                memory_backend="off", admission_recheck_seconds=recheck,
                tenant_quotas={A: TenantQuota(runs_in_flight=a_in_flight),
                               B: TenantQuota(runs_in_flight=b_in_flight)})
            model = GatedModel()
            async with WorkerHost(settings, AgentCatalog([bench_agent()]),
                                  model=model) as host:
                client = host.client
                assert client is not None and host.ledger is not None
                admissions = Admissions(host.ledger.pool)
                progress(f"baseline: {runs} runs of B, no backlog")
                await _b_runs(client, settings, model, 2, "warm")
                res.samples_ms["baseline"] = await _b_runs(client, settings, model, runs,
                                                           "base")
                progress(f"A: {a_in_flight} runs held in flight, {queued} queued")
                fill = time.perf_counter()
                for i in range(a_in_flight):
                    await start_run(client, RunRequest(agent=AGENT, input=f"a {i}",
                                                       tenant=A), temporal=settings.temporal)
                for i in range(a_in_flight):
                    await model.called(f"a {i}", within=120)
                sem = asyncio.Semaphore(20)

                async def start_a(i: int) -> None:
                    async with sem:
                        await start_run(client, RunRequest(agent=AGENT, input=f"a {i}",
                                                           tenant=A),
                                        temporal=settings.temporal)

                await asyncio.gather(*(start_a(i) for i in range(a_in_flight,
                                                                a_in_flight + queued)))
                # Polling the database: there is no event to await.
                while (await admissions.usage([A]))[0].queued < queued:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                res.queue_fill_s = time.perf_counter() - fill
                res.backlog_at_start = (await admissions.usage([A]))[0].queued
                progress(f"A's queue is full ({res.backlog_at_start} queued, "
                         f"{res.queue_fill_s:.1f} s); {runs} runs of B")
                calls_before = len(model.calls)
                stop = asyncio.Event()

                def a_calls() -> list[str]:
                    return [c for c in model.calls if c.startswith("a ")]

                opened_a = 0

                async def end_one_a() -> None:
                    """Let the oldest admitted run of A answer and end; time until the next
                    queued one, woken by the ending run, calls its model."""
                    nonlocal opened_a
                    waiting = a_calls()
                    if opened_a >= len(waiting):
                        return
                    model.open(waiting[opened_a])
                    opened_a += 1
                    opened = time.perf_counter()
                    deadline = opened + 2 * recheck + 10
                    # Polled at 2 ms: the model's own event is set for the run, not
                    # for "any next run", and the poll's resolution is the point.
                    while len(a_calls()) == len(waiting) and \
                            time.perf_counter() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.002)
                    if len(a_calls()) > len(waiting):
                        res.samples_ms.setdefault("wake", []).append(
                            (time.perf_counter() - opened) * 1000)

                async def churner() -> None:
                    assert churn is not None
                    while not stop.is_set():
                        await asyncio.sleep(churn)
                        await end_one_a()

                task = asyncio.create_task(churner()) if churn else None
                res.samples_ms["backlogged"] = await _b_runs(client, settings, model, runs,
                                                             "backlog")
                stop.set()
                if task is not None:
                    task.cancel()
                res.a_started_during = sum(1 for c in model.calls[calls_before:]
                                           if c.startswith("a "))
                progress(f"A: {wakes} runs end one after the other, each waking the next")
                for _ in range(wakes):
                    await asyncio.sleep(0.5)  # the worker idle but for A's re-checks
                    await end_one_a()
                res.backlog_at_end = (await admissions.usage([A]))[0].queued
                model.open_all()  # the worker stops with A's gates open; the stack goes
    res.baseline = _latency(res.samples_ms["baseline"])
    res.backlogged = _latency(res.samples_ms["backlogged"])
    res.wake = _latency(res.samples_ms.get("wake", []))
    res.seconds = time.perf_counter() - began
    return res


def print_quota(res: QuotaResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 120))
    t = Table(title=f"Tenant B: start -> first model call, ms ({res.runs} runs each; A capped "
                    f"at {res.a_in_flight} in flight, re-check {res.recheck_s:g} s"
                    f"{f', one A run ends every {res.churn_s:g} s' if res.churn_s else ''})")
    for col in ("A's backlog", "median", "p95", "max"):
        t.add_column(col, justify="left" if col == "A's backlog" else "right")
    for label, lat in (("none (baseline)", res.baseline),
                       (f"{res.backlog_at_start} queued", res.backlogged)):
        assert lat is not None
        t.add_row(label, f"{lat.median_ms:.1f}", f"{lat.p95_ms:.1f}", f"{lat.max_ms:.1f}")
    if res.wake is not None and res.wake.n:
        t.add_row("A: run ends -> next queued starts", f"{res.wake.median_ms:.1f}",
                  f"{res.wake.p95_ms:.1f}", f"{res.wake.max_ms:.1f}",
                  style="italic")
    con.print(t)
    assert res.backlogged is not None and res.baseline is not None
    con.print(f"[bold]with {res.backlog_at_start} runs of A queued, a run of B starts in "
              f"median {res.backlogged.median_ms:.1f} ms, p95 {res.backlogged.p95_ms:.1f} ms "
              f"(no backlog: {res.baseline.median_ms:.1f} / {res.baseline.p95_ms:.1f} ms)[/]; "
              f"A's queue filled in {res.queue_fill_s:.1f} s, {res.a_started_during} of A "
              f"started meanwhile, {res.backlog_at_end} still queued at the end")
    print_machine(con, machine, command, res.seconds)


def main(argv: list[str] | None = None) -> None:
    from bench.machine import load_average, machine_details

    ap = argparse.ArgumentParser(prog="python -m bench.quota",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--queued", type=int, default=200, help="runs of A queued (default 200)")
    ap.add_argument("--runs", type=int, default=30, help="measured runs of B (default 30)")
    ap.add_argument("--a-in-flight", type=int, default=2, help="A's cap (default 2)")
    ap.add_argument("--b-in-flight", type=int, default=10, help="B's cap (default 10)")
    ap.add_argument("--recheck", type=float, default=30.0,
                    help="STEAD_ADMISSION_RECHECK_SECONDS (default 30, the setting's)")
    ap.add_argument("--churn", type=float, default=None,
                    help="one of A's admitted runs ends every this many seconds")
    ap.add_argument("--wakes", type=int, default=10,
                    help="then runs of A ended one by one, timing the next one's start "
                         "(default 10)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT", "STEAD_TENANT_QUOTAS"):
        os.environ.pop(var, None)
    command = "python -m bench.quota " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    res = asyncio.run(quota_workload(
        queued=args.queued, runs=args.runs, a_in_flight=args.a_in_flight,
        b_in_flight=args.b_in_flight, recheck=args.recheck, churn=args.churn,
        wakes=args.wakes,
        progress=lambda m: print(f"[bench] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_quota(res, machine, command.strip())
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command.strip(), "machine": machine,
                                         **dataclasses.asdict(res)}, indent=2,
                                        default=str) + "\n")
        print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
    main()
