"""``python -m chaos.soak``: steady concurrency of reference-agent runs for a bounded time.

    python -m chaos.soak                                  # 50 in flight for 3 minutes
    python -m chaos.soak --concurrency 20 --minutes 1 --json soak.json

A throwaway embedded stack (Temporal dev server + PostgreSQL, loopback only, in a temporary
directory) and one ``python worker.py`` process serving the reference agents. ``concurrency``
lanes each keep one run in flight: start it, wait for its result, start the next; an approver
approves, every half second, what runs waiting for a person ask (restarts, refunds above
50 EUR), as on-call working from ``stead pending`` would. Every ``--slice`` seconds a row is
printed: runs finished, throughput, latency percentiles (start to result, as a client sees it), the
outcomes and the worker's memory and CPU. At the end the lanes stop starting runs, the runs in
flight drain, and the stuck-run detector (``stead.observability.stuck``) checks the task queue: the
soak passes when no run is stuck, every run started reached a terminal status and the ledger has a
finished row for each.

Exit code 0 when it passes, 1 when it does not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.service import RPCError

from chaos.stack import throwaway_settings
from stead.client import connect, start_run
from stead.contracts.models import DecideInput, DecideOutcome, RunRequest, RunState
from stead.observability.stuck import StuckReport, find_stuck
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
TASK_QUEUE = "soak"

console = Console(width=None if sys.stdout.isatty() else 170)


# ---------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Request:
    """One kind of request in the mix."""

    name: str
    agent: str
    text: str
    weight: int


MIX: tuple[Request, ...] = (
    Request("ops status", "ops", "is {service} healthy?", 30),
    Request("ops diagnose", "ops", "why is {service} failing? look at the logs", 20),
    Request("ops ticket", "ops", "open a ticket for the errors on {service}", 10),
    Request("ops restart", "ops", "restart search-worker please", 5),
    Request("refund small", "refund", "please refund 5 EUR on order {order}, it arrived late",
            25),
    Request("refund large", "refund", "please refund 60 EUR on order {order}, it was broken",
            10),
)
"""Requests the reference agents serve offline, weighted. Restarts and refunds above 50 EUR
wait for a person (the soak's approver gives it); everything else runs on its own. Flaky
tools (recent_logs fails once per call) and fallbacks (checkout-api's metrics are down) are
part of the mix, as in the demo; refunds run orders dry, and then the agent says so."""

SERVICES = ("auth-service", "checkout-api", "payments-db", "search-worker", "legacy-batch")
ORDERS = tuple(f"ORD-10{n:02d}" for n in range(1, 9))


@dataclass
class Done:
    """One finished run, as the lane saw it."""

    kind: str
    started: float
    ended: float
    status: str
    """A RunResult status, ``failed:<type>`` for a failed workflow, or ``error:<type>`` when
    the client could not follow the run (counted as lost)."""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Sample:
    """The worker process, the Temporal server and the machine at one moment (CPU: percent
    of one core, averaged since the previous sample)."""

    at: float
    rss_mb: float
    cpu_percent: float
    temporal_cpu_percent: float | None = None
    machine_cpu_percent: float | None = None
    """All cores together, 100 = every core busy: shows when something else loads the
    machine (the soak's own client included)."""


@dataclass
class SoakConfig:
    concurrency: int = 50
    minutes: float = 3.0
    slice_seconds: float = 30.0
    seed: int = 7
    drain_seconds: float = 120.0
    """How long runs still in flight at the end may take to finish."""
    stuck_after_seconds: float = 60.0
    """The detector's threshold at the end (after the drain every run should be done)."""
    keep: bool = False


@dataclass
class SliceRow:
    t_start: float
    t_end: float
    finished: int
    throughput: float
    p50: float | None
    p95: float | None
    p99: float | None
    outcomes: dict[str, int]
    in_flight: int
    worker_rss_mb: float | None
    worker_cpu_percent: float | None
    temporal_cpu_percent: float | None = None
    machine_cpu_percent: float | None = None


@dataclass
class SoakResult:
    config: SoakConfig
    slices: list[SliceRow]
    runs: list[Done]
    samples: list[Sample]
    started: int
    seconds: float
    stuck: StuckReport | None
    open_in_visibility: int
    unfinished_in_ledger: int
    approvals: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Runs the client lost track of (an RPC error), or gave up on after the drain."""
        return sum(1 for d in self.runs if d.status.startswith(("error:", "unfinished:")))

    @property
    def ok(self) -> bool:
        return (self.stuck is not None and not self.stuck.stuck and not self.stuck.runs
                and self.lost == 0 and self.started == len(self.runs)
                and self.open_in_visibility == 0 and self.unfinished_in_ledger == 0)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _temporal_process() -> psutil.Process | None:
    """The embedded Temporal dev server (a child of this process), to watch its CPU."""
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "start-dev" in p.cmdline():
                return p
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None for no values."""
    v = sorted(values)
    if not v:
        return None
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


class Soak:
    """The lanes, the sampler and the bookkeeping of one soak."""

    def __init__(self, cfg: SoakConfig, client: Client, settings: Settings,
                 worker: psutil.Process) -> None:
        self.cfg = cfg
        self.client = client
        self.settings = settings
        self.worker = worker
        self.rng = random.Random(cfg.seed)
        self.runs: list[Done] = []
        self.samples: list[Sample] = []
        self.started = 0
        self.in_flight = 0
        self.approvals = 0
        self._approved: set[str] = set()
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + cfg.minutes * 60

    def pick(self) -> tuple[Request, str]:
        req = self.rng.choices(MIX, weights=[r.weight for r in MIX])[0]
        return req, req.text.format(service=self.rng.choice(SERVICES),
                                    order=self.rng.choice(ORDERS))

    async def lane(self, n: int) -> None:
        while time.monotonic() < self.stop_at:
            req, text = self.pick()
            await self.one(req, text)

    async def one(self, req: Request, text: str) -> None:
        started = time.monotonic()
        self.started += 1
        self.in_flight += 1
        status = "error:unknown"
        try:
            handle = await start_run(self.client, RunRequest(agent=req.agent, input=text),
                                     temporal=self.settings.temporal,
                                     workflow_id=f"soak-{req.agent}-{uuid.uuid4().hex[:12]}")
            result = await handle.result()
            status = result.status
        except WorkflowFailureError as e:
            status = f"failed:{type(e.cause).__name__}"
        except (RPCError, TimeoutError, OSError) as e:
            status = f"error:{type(e).__name__}"
        except asyncio.CancelledError:
            status = "unfinished:drain timeout"
            raise
        finally:
            self.in_flight -= 1
            self.runs.append(Done(req.name, started, time.monotonic(), status))

    async def approver(self) -> None:
        """On-call's part, as a person working from ``stead pending`` would: every half
        second, approve what the runs waiting for approval ask."""
        query = (f"TaskQueue = '{TASK_QUEUE}' AND ExecutionStatus = 'Running' "
                 f"AND SteadAwaitingApproval = true")
        while True:
            try:
                waiting = [wf.id async for wf in self.client.list_workflows(query)]
                await asyncio.gather(*(self.approve(wid) for wid in waiting
                                       if wid not in self._approved))
            except RPCError:
                pass  # visibility is busy; look again
            await asyncio.sleep(0.5)

    async def approve(self, workflow_id: str) -> None:
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            state = await handle.query("state", result_type=RunState,
                                       rpc_timeout=timedelta(seconds=10))
            for p in state.pending_approvals:
                await handle.execute_update(
                    "decide", DecideInput(approval_id=p.approval_id, by="soak-oncall",
                                          note="approved by the soak", approved=True),
                    result_type=DecideOutcome)
                self.approvals += 1
                self._approved.add(workflow_id)
        except (RPCError, WorkflowUpdateFailedError):
            pass  # decided meanwhile, or finished: the next round sees

    async def sample(self) -> None:
        self.worker.cpu_percent(None)
        psutil.cpu_percent(None)
        temporal = _temporal_process()
        if temporal is not None:
            temporal.cpu_percent(None)
        while True:
            await asyncio.sleep(1.0)
            try:
                rss, cpu = self.worker.memory_info().rss / 2**20, self.worker.cpu_percent(None)
            except psutil.Error:
                return
            t_cpu: float | None = None
            if temporal is not None:
                with contextlib.suppress(psutil.Error):
                    t_cpu = temporal.cpu_percent(None)
            self.samples.append(Sample(time.monotonic(), rss, cpu, t_cpu,
                                       psutil.cpu_percent(None)))

    def slice_row(self, a: float, b: float) -> SliceRow:
        done = [d for d in self.runs if a <= d.ended - self.t0 < b]
        lat = [d.latency for d in done]
        samples = [s for s in self.samples if a <= s.at - self.t0 < b]
        return SliceRow(
            t_start=a, t_end=b, finished=len(done),
            throughput=len(done) / (b - a) if b > a else 0.0,
            p50=percentile(lat, 0.50), p95=percentile(lat, 0.95), p99=percentile(lat, 0.99),
            outcomes=dict(Counter(d.status for d in done)), in_flight=self.in_flight,
            worker_rss_mb=max((s.rss_mb for s in samples), default=None),
            worker_cpu_percent=_mean([s.cpu_percent for s in samples]),
            temporal_cpu_percent=_mean([s.temporal_cpu_percent for s in samples
                                        if s.temporal_cpu_percent is not None]),
            machine_cpu_percent=_mean([s.machine_cpu_percent for s in samples
                                       if s.machine_cpu_percent is not None]))

    async def run(self) -> list[SliceRow]:
        """Lanes until the budget is spent, a row per slice, then the drain."""
        sampler = asyncio.create_task(self.sample())
        approver = asyncio.create_task(self.approver())
        lanes = [asyncio.create_task(self.lane(n)) for n in range(self.cfg.concurrency)]
        rows: list[SliceRow] = []
        edge = 0.0
        print_header()
        while any(not t.done() for t in lanes):
            nxt = edge + self.cfg.slice_seconds
            await asyncio.wait(lanes, timeout=max(0.0, self.t0 + nxt - time.monotonic()))
            now = time.monotonic() - self.t0
            if now >= nxt or all(t.done() for t in lanes):
                end = min(nxt, now) if all(t.done() for t in lanes) else nxt
                row = self.slice_row(edge, end + (1e-9 if end == now else 0.0))
                rows.append(row)
                print_row(row)
                edge = nxt
            if time.monotonic() > self.stop_at + self.cfg.drain_seconds:
                for t in lanes:
                    t.cancel()
                break
        await asyncio.gather(*lanes, return_exceptions=True)
        for task in (sampler, approver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return rows


# ---------------------------------------------------------------------------- output


_COLUMNS = ("t (s)", "runs", "runs/s", "p50", "p95", "p99", "in flight", "worker RSS",
            "worker CPU", "Temporal CPU", "machine CPU", "outcomes")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}%"


def _sec(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}s"


def print_header() -> None:
    console.print(" ".join(f"{c:>12}" for c in _COLUMNS[:-1]) + "  outcomes", highlight=False,
                  soft_wrap=True)


def _cells(r: SliceRow) -> list[str]:
    return [f"{r.t_start:.0f}–{r.t_end:.0f}", str(r.finished), f"{r.throughput:.1f}",
            _sec(r.p50), _sec(r.p95), _sec(r.p99), str(r.in_flight),
            "–" if r.worker_rss_mb is None else f"{r.worker_rss_mb:.0f} MB",
            _pct(r.worker_cpu_percent), _pct(r.temporal_cpu_percent),
            _pct(r.machine_cpu_percent),
            ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items(), key=lambda kv: -kv[1]))]


def print_row(r: SliceRow) -> None:
    cells = _cells(r)
    console.print(" ".join(f"{c:>12}" for c in cells[:-1]) + "  " + cells[-1],
                  highlight=False, soft_wrap=True)


def print_report(result: SoakResult, machine: dict[str, object]) -> None:
    cfg = result.config
    table = Table(title=f"soak: {cfg.concurrency} runs in flight for {cfg.minutes:g} min "
                        f"(latency = start to result, seconds)",
                  caption="worker and Temporal CPU: % of one core; machine CPU: % of all "
                          f"{psutil.cpu_count() or '?'} cores")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col == "outcomes" else "right")
    for r in result.slices:
        table.add_row(*_cells(r))
    lat = [d.latency for d in result.runs]
    table.add_row("total", str(len(result.runs)),
                  f"{len(result.runs) / result.seconds:.1f}" if result.seconds else "–",
                  _sec(percentile(lat, 0.5)), _sec(percentile(lat, 0.95)),
                  _sec(percentile(lat, 0.99)), "", "", "", "", "",
                  ", ".join(f"{k} {v}" for k, v in Counter(d.status for d in result.runs)
                            .most_common()), style="bold")
    console.print(table)

    kinds = Table(title="latency by request kind (seconds)")
    for col in ("kind", "runs", "p50", "p95", "p99", "outcomes"):
        kinds.add_column(col, justify="left" if col in ("kind", "outcomes") else "right")
    for name in sorted({d.kind for d in result.runs}):
        ds = [d for d in result.runs if d.kind == name]
        ls = [d.latency for d in ds]
        kinds.add_row(name, str(len(ds)), _sec(percentile(ls, .5)), _sec(percentile(ls, .95)),
                      _sec(percentile(ls, .99)),
                      ", ".join(f"{k} {v}" for k, v in Counter(d.status for d in ds)
                                .most_common()))
    console.print(kinds)

    rss = [s.rss_mb for s in result.samples]
    if rss:
        console.print(f"worker RSS: {rss[0]:.0f} MB at start, {max(rss):.0f} MB peak, "
                      f"{rss[-1]:.0f} MB at the end", highlight=False)
    stuck = result.stuck
    if stuck is not None:
        n = stuck.summary()
        console.print(f"stuck-run detector (no progress for {stuck.older_than_seconds:g}s): "
                      f"{n['running']} running, [bold]{n['stuck']} stuck[/], {n['waiting']} "
                      f"waiting, {n['progressing']} progressing", highlight=False)
        for h in stuck.runs:
            console.print(f"  {h.verdict}: {h.workflow_id} {h.reason}: {h.detail}",
                          highlight=False)
    console.print(f"runs started {result.started}, finished {len(result.runs)}, lost "
                  f"{result.lost}; approvals given {result.approvals}; still open in Temporal "
                  f"{result.open_in_visibility}; ledger rows without an end "
                  f"{result.unfinished_in_ledger}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"machine: {machine.get('nproc')} × {machine.get('cpu_model')}, "
                  f"{machine.get('ram_gib')} GiB RAM, {machine.get('os')}, Python "
                  f"{machine.get('python')}; load average at start "
                  f"{machine.get('load_average_at_start')}", highlight=False)
    verdict = "[bold green]PASS[/]" if result.ok else "[bold red]FAIL[/]"
    console.print(f"soak {verdict} in {result.seconds:.0f}s", highlight=False)


def to_json(result: SoakResult, machine: dict[str, object]) -> dict[str, Any]:
    lat = [d.latency for d in result.runs]
    rss = [s.rss_mb for s in result.samples]
    return {
        "ok": result.ok,
        "config": asdict(result.config),
        "machine": machine,
        "seconds": round(result.seconds, 1),
        "started": result.started,
        "finished": len(result.runs),
        "lost": result.lost,
        "approvals": result.approvals,
        "outcomes": dict(Counter(d.status for d in result.runs)),
        "latency_s": {"p50": percentile(lat, .5), "p95": percentile(lat, .95),
                      "p99": percentile(lat, .99), "max": max(lat, default=None)},
        "throughput_per_s": len(result.runs) / result.seconds if result.seconds else None,
        "slices": [asdict(s) for s in result.slices],
        "worker_rss_mb": {"start": rss[0] if rss else None, "peak": max(rss, default=None),
                          "end": rss[-1] if rss else None,
                          "samples": [[round(s.at, 1), round(s.rss_mb, 1)]
                                      for s in result.samples]},
        "stuck": None if result.stuck is None else {
            **result.stuck.summary(), **result.stuck.model_dump(mode="json")},
        "open_in_visibility": result.open_in_visibility,
        "unfinished_in_ledger": result.unfinished_in_ledger,
        "notes": result.notes,
    }


# ---------------------------------------------------------------------------- the stack




def _worker_env(settings: Settings) -> dict[str, str]:
    """``python worker.py`` on the soak's stack; never a paid model, whatever the caller's
    environment holds."""
    assert settings.temporal.address is not None and settings.ledger.database_url is not None
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STEAD_", "OPENAI_", "PINECONE_", "OTEL_", "TEMPORAL_"))
           and k != "DATABASE_URL"}
    env.update({
        "TEMPORAL_ADDRESS": settings.temporal.address,
        "DATABASE_URL": settings.ledger.database_url,
        "STEAD_MIGRATE_DATABASE_URL": settings.ledger.migration_database_url or "",
        "STEAD_TASK_QUEUE": TASK_QUEUE,
        "STEAD_DATA_DIR": str(settings.stack.data_dir),
        "STEAD_MEMORY_BACKEND": "off",
        "STEAD_METRICS_EXPORTER": "none",
        "STEAD_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    return env


async def _wait_for_pollers(client: Client, proc: subprocess.Popen[bytes], log: Path,
                            within: float = 90) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise RuntimeError(f"the worker exited with {proc.returncode}: {text[-2000:]}")
        resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=TASK_QUEUE),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        if resp.pollers:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"the worker did not poll {TASK_QUEUE!r} within {within:.0f}s")


async def _unfinished(ledger: Ledger) -> int:
    async with ledger.pool.acquire() as conn:
        n = await conn.fetchval("select count(*) from stead_runs where finished_at is null")
    return int(n or 0)


async def run_soak(cfg: SoakConfig, *, progress: Any = print) -> SoakResult:
    """Start a throwaway stack and a worker process, soak, check, tear down."""
    t0 = time.monotonic()
    base = throwaway_settings("stead-soak-", task_queue=TASK_QUEUE)
    data_dir = base.stack.data_dir
    progress(f"embedded stack in {data_dir} (Temporal :{base.stack.temporal_port}, "
             f"PostgreSQL :{base.stack.postgres_port})")
    stack = EmbeddedStack(base, ui=False)
    proc: subprocess.Popen[bytes] | None = None
    try:
        await stack.start()
        settings = stack.resolved_settings()
        client = await connect(settings)
        log = data_dir / "worker.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT,
                                    env=_worker_env(settings), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        await _wait_for_pollers(client, proc, log)
        progress(f"worker pid {proc.pid} polling {TASK_QUEUE!r}; {cfg.concurrency} lanes for "
                 f"{cfg.minutes:g} min, a row every {cfg.slice_seconds:g}s")
        soak = Soak(cfg, client, settings, psutil.Process(proc.pid))
        rows = await soak.run()
        notes: list[str] = []
        if proc.poll() is not None:
            notes.append(f"the worker exited during the soak (code {proc.returncode})")
        progress("load stopped; asking the stuck-run detector ...")
        ledger = await Ledger.connect(stack.database_url, min_size=0, max_size=2)
        try:
            stuck = await find_stuck(client, older_than=timedelta(
                seconds=cfg.stuck_after_seconds), task_queue=TASK_QUEUE, ledger=ledger)
            unfinished = await _unfinished(ledger)
        finally:
            await ledger.close()
        open_runs = 0
        async for _ in client.list_workflows(
                f"TaskQueue = '{TASK_QUEUE}' AND ExecutionStatus = 'Running'"):
            open_runs += 1
        return SoakResult(config=cfg, slices=rows, runs=soak.runs, samples=soak.samples,
                          started=soak.started, seconds=time.monotonic() - t0, stuck=stuck,
                          open_in_visibility=open_runs, unfinished_in_ledger=unfinished,
                          approvals=soak.approvals, notes=notes)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        await stack.stop()
        if not cfg.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- command line


def _positive(kind: type[int] | type[float], limit: float) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{' whole' if kind is int else ''} number") from None
        if not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most {limit:g}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SoakConfig()
    ap = argparse.ArgumentParser(prog="python -m chaos.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=_positive(int, 500), default=d.concurrency,
                    help=f"runs kept in flight (default {d.concurrency})")
    ap.add_argument("--minutes", type=_positive(float, 60), default=d.minutes,
                    help=f"how long to keep starting runs (default {d.minutes:g})")
    ap.add_argument("--slice", type=_positive(float, 600), default=d.slice_seconds,
                    dest="slice_seconds",
                    help=f"seconds per printed row (default {d.slice_seconds:g})")
    ap.add_argument("--seed", type=int, default=d.seed, help="random seed of the request mix")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the results as JSON to PATH")
    ap.add_argument("--keep", action="store_true",
                    help="keep the stack's directory (logs, databases) afterwards")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench.machine import load_average, machine_details

    args = parse_args(argv)
    if args.json is not None and args.json.is_dir():
        print(f"error: --json {args.json} is a directory", file=sys.stderr)
        return 2
    cfg = SoakConfig(concurrency=args.concurrency, minutes=args.minutes,
                     slice_seconds=args.slice_seconds, seed=args.seed, keep=args.keep)
    machine = {**machine_details(), "load_average_at_start": load_average()}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    result = asyncio.run(run_soak(cfg, progress=lambda m: console.print(m, highlight=False)))
    print_report(result, machine)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(result, machine), indent=2, default=str) + "\n")
        console.print(f"wrote {args.json}", highlight=False)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
