"""Network faults between the workers and PostgreSQL (``pgnet``) or Temporal (``temporalnet``).

The workers of the phase reach their server through a :class:`~stead.testing.fault_proxy.
FaultProxy` on loopback (``DATABASE_URL`` / ``TEMPORAL_ADDRESS`` in their settings point at
it); the harness itself — starting runs, waiting for results, reading the ledger — goes
direct, so what it sees is the truth, not the faulty network. A fixed script runs
(:data:`SCRIPT`): latency spikes with jitter, every connection reset, a half-dead stall whose
connections never answer again, refused connects, half the connections closed, a thin pipe —
with workers SIGKILLed between the faults, and a batch of shop orders started into (or just
before) each fault so that every fault meets runs in flight. Then the network is healed (the
hung connections stay hung: only the clients' own timeouts end them) and every run must
still end within the suite's bound, with the usual invariants. ``--runs`` (at most
``--infra-runs``, 30) orders per phase, ``--kills`` (at most 3) SIGKILLs; ~50 s of faults.

Extension points (one line each, for checks that belong to other features):

- :data:`EXTRA_CHECKS` — per phase, coroutines run once the phase's runs have ended; each
  returns :class:`~chaos.invariants.Finding` s, which fail the suite like any invariant
  (``Verdict.phase_checks``). Budget/quota accounting under network faults goes here, e.g.
  ``EXTRA_CHECKS["pgnet"].append(tenant_windows_add_up)``.
- :data:`REQUEST_HOOKS` — per phase, functions that adjust each run's ``RunRequest`` before
  it starts (a tenant, a budget), so those checks have something to check.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from temporalio.client import WorkflowHandle

from chaos.agent import SHOP, order_request
from chaos.invariants import Finding, RunRecord
from chaos.world import SKUS
from stead.contracts.models import RunRequest, RunResult
from stead.settings import Settings
from stead.testing.fault_proxy import FaultProxy

if TYPE_CHECKING:
    from chaos.harness import Harness
    from chaos.pool import WorkerPool

NetPhaseName = Literal["pgnet", "temporalnet"]

ORDER_BASE = {"pgnet": 9000, "temporalnet": 9500}
"""Each phase's order numbers, apart from every other phase's (the kills phase's 1000+, the
model phase's 5000+, the rollout's 7000+): the fake model server's log, which the governance
checks read, knows a run's requests by its order number."""


@dataclass
class NetPhase:
    """What a phase's extra checks get to look at."""

    harness: Harness
    name: NetPhaseName
    proxy: FaultProxy
    settings: Settings
    """The workers' settings (their DATABASE_URL / TEMPORAL_ADDRESS is the proxy)."""
    records: list[RunRecord] = field(default_factory=list)
    """This phase's runs, all ended (or lost) by the time checks run."""


NetCheck = Callable[[NetPhase], Awaitable[list[Finding]]]
EXTRA_CHECKS: dict[NetPhaseName, list[NetCheck]] = {"pgnet": [], "temporalnet": []}
"""Checks run after each phase's runs ended; their findings fail the suite."""

RequestHook = Callable[[int, RunRequest], RunRequest]
REQUEST_HOOKS: dict[NetPhaseName, list[RequestHook]] = {"pgnet": [], "temporalnet": []}
"""(run number, request) -> the request to start, applied in order."""


@dataclass(frozen=True)
class Step:
    """One fault of the script: apply it, keep it for ``seconds``, heal, pause ``gap``."""

    kind: str
    apply: Callable[[FaultProxy], object]
    seconds: float = 0.0
    gap: float = 2.0
    kill_after: bool = False
    """SIGKILL a random worker of the pool once this fault is over."""


def _latency(up: float, down: float, jitter: float) -> Callable[[FaultProxy], None]:
    return lambda p: p.set_latency(up=up, down=down, jitter=jitter)


def _thin(p: FaultProxy) -> None:
    p.set_latency(up=0.05, down=0.05)
    p.set_bandwidth(up=32_000, down=32_000)


RUN_BOUND = 240.0
"""As ``chaos.harness.RUN_BOUND``: no measurement waits longer than a run may take."""

SCRIPT: tuple[Step, ...] = (
    Step("latency spike 200 ms ± 100 ms each way, 6 s", _latency(0.2, 0.2, 0.1), 6.0),
    Step("every open connection reset (RST)", lambda p: p.drop(how="reset"), kill_after=True),
    Step("link stalled 5 s, half-dead: caught connections never answer again",
         lambda p: p.stall(5.0), 5.0, gap=4.0),
    Step("new connections refused for 3 s (port closed)", lambda p: p.refuse(3.0), 3.0,
         kill_after=True),
    Step("half the open connections closed (FIN)",
         lambda p: p.drop(how="close", fraction=0.5)),
    Step("thin pipe: 32 kB/s and 50 ms each way, 5 s", _thin, 5.0),
    Step("latency spike 1 s each way, 4 s", _latency(1.0, 1.0, 0.0), 4.0, kill_after=True),
)
"""The faults in order; ~50 s with the gaps. A batch of runs starts before each."""


async def phase_net(h: Harness, name: NetPhaseName) -> None:
    """Run shop orders while the workers' link to PostgreSQL (``pgnet``) or Temporal
    (``temporalnet``) misbehaves; report each fault with what the proxy counted."""
    base = h.base
    dsn = base.ledger.database_url
    assert dsn is not None
    if name == "pgnet":
        host, port = _host_port(dsn)
        group, server = "network (PostgreSQL)", "PostgreSQL"
    else:
        assert base.temporal.address is not None
        host, _, p = base.temporal.address.rpartition(":")
        port = int(p)
        group, server = "network (Temporal)", "Temporal"
    n = max(1, min(h.cfg.runs, h.cfg.infra_runs))
    kills = min(h.cfg.kills, sum(1 for s in SCRIPT if s.kill_after))
    async with FaultProxy(upstream=f"{host}:{port}", seed=h.cfg.seed) as proxy:
        # Migrations at worker start go direct (STEAD_MIGRATE_DATABASE_URL): a worker that
        # cannot migrate exits at start, which would count as a crash, not a network fault.
        # A ledger statement on a half-dead link ends after 3 s, like the suite's model calls
        # (the default is 60 s).
        update: dict[str, Any] = ({"database_url": proxy.url_for(dsn),
                                   "db_command_timeout_seconds": 3.0,
                                   "db_connect_timeout_seconds": 3.0}
                                  if name == "pgnet" else
                                  # Pings every 10 s, 3 s to answer: a worker behind a
                                  # half-dead link hears again within ~13 s (default 45 s).
                                  {"temporal_address": proxy.address,
                                   "temporal_keepalive_interval_seconds": 10.0,
                                   "temporal_keepalive_timeout_seconds": 3.0})
        settings = h.settings_for(name, **update)
        ctx = NetPhase(harness=h, name=name, proxy=proxy, settings=settings)
        async with h.pool(settings, name) as pool:
            play = _Play(h, name, proxy, pool, settings, group, n, kills)
            try:
                await play.run()
            finally:
                play.cancel()
            started = play.started
        exited = [d for d in pool.deaths if d.cause == "crashed"]
        if exited:
            # A worker started (to replace a killed one) while the link was stalled or
            # refusing gives up connecting and exits, as it should; its supervisor — the pool
            # here — starts another. Say which it was, from the logs.
            said = _start_failures(h.data_dir / "logs", name)
            # Exits the logs explain are the fault's doing, not crashes: counted here only.
            for d in exited[:sum(said.values())]:
                d.cause = "exited at start"
            stat = h.fault(group, "worker exited at start (connect failed during a fault)")
            stat.injected = len(exited)
            stat.note = "; ".join(f"{k}x {why}" for why, k in said.items()) or \
                "see the worker logs"
        ctx.records = [r for r, _ in started]
        s = proxy.stats
        total = h.fault(group, "the whole script (every run met some of it)")
        for r in ctx.records:
            h._outcome(total, r)
        total.injected = len(SCRIPT)
        total.note = (f"{n} runs; workers -> {server} through the proxy: "
                      f"{s.connections} connections, {s.dropped} dropped, "
                      f"{s.stalled} stalled ({s.hung} still hung at the end), "
                      f"{s.bytes_up + s.bytes_down:,} bytes")
        for check in EXTRA_CHECKS[name]:
            h.phase_findings.extend(await check(ctx))


class _Play:
    """The script, once, against ``n`` runs: before each fault a batch of runs starts (so
    every fault meets runs in flight), then the fault is applied, held, healed; recovery is
    measured from the moment it healed to the next ledger progress of a run in flight."""

    def __init__(self, h: Harness, name: NetPhaseName, proxy: FaultProxy, pool: WorkerPool,
                 settings: Settings, group: str, n: int, kills: int) -> None:
        self.h, self.name, self.proxy, self.pool = h, name, proxy, pool
        self.settings, self.group, self.n, self.kills = settings, group, n, kills
        self.started: list[tuple[RunRecord, WorkflowHandle[Any, RunResult]]] = []
        self.waits: list[asyncio.Task[None]] = []
        self.progress: list[tuple[float, list[float], asyncio.Task[float | None]]] = []

    def in_flight(self) -> list[str]:
        return [r.workflow_id for r, _ in self.started
                if r.result is None and r.lost_reason is None]

    async def start_runs(self, k: int) -> None:
        for _ in range(k):
            i = len(self.started)
            if i >= self.n:
                return
            req = RunRequest(agent=SHOP, input=order_request(
                ORDER_BASE[self.name] + i, qty=1 + i % 2, sku=SKUS[i % len(SKUS)],
                amount=round(22 + i % 11 * 1.5, 2)))
            for hook in REQUEST_HOOKS[self.name]:
                req = hook(i, req)
            rec, handle = await self.h.start(self.name, f"{self.name}: network faults", req,
                                             self.settings)
            self.started.append((rec, handle))
            self.waits.append(asyncio.create_task(self.h.finish(rec, handle)))

    async def run(self) -> None:
        h, proxy = self.h, self.proxy
        steps = len(SCRIPT)
        killed = 0
        for i, step in enumerate(SCRIPT):
            # The runs spread evenly: 10 runs over 7 faults start 1, 1, 2, 1, 2, 1, 2.
            per_step = self.n * (i + 1) // steps - self.n * i // steps
            stat = h.fault(self.group, step.kind)
            before = (proxy.stats.dropped, proxy.stats.stalled)
            if step.seconds:
                # A lasting fault: the batch starts into it (the harness reaches Temporal
                # direct), so its runs meet the fault from their first step on.
                step.apply(proxy)
                await self.start_runs(per_step)
                await asyncio.sleep(min(1.0, step.seconds))
                wids = self.in_flight()
                await asyncio.sleep(max(step.seconds - 1.0, 0.0))
                proxy.clear()  # healed (a stall's hung connections stay hung)
            else:
                # An instant one: the batch is under way (a shop order takes ~1-4 s).
                await self.start_runs(per_step)
                await asyncio.sleep(0.4)
                wids = self.in_flight()
                step.apply(proxy)
            stat.injected += 1
            healed = time.time()
            dropped = proxy.stats.dropped - before[0]
            caught = proxy.stats.stalled - before[1]
            stat.note = "; ".join(filter(None, [
                f"{len(wids)} runs in flight",
                f"{dropped} connections dropped" if dropped else "",
                f"{caught} connections caught" if caught else ""]))
            still = self.in_flight()
            if still:  # measured alongside: a slow recovery must not slow the script
                self.progress.append((healed, stat.recovery_s, asyncio.create_task(
                    h._first_progress(healed, self.settings.temporal.task_queue, still,
                                      within=RUN_BOUND))))
            await asyncio.sleep(step.gap)
            if step.kill_after and killed < self.kills:
                if self.pool.kill_random(h.rng, kind=f"{self.name} network faults") is not None:
                    killed += 1
                    h.fault("worker SIGKILL",
                            f"during {self.name} network faults").injected += 1
        await self.start_runs(self.n)  # any left (none unless the script is short)
        proxy.clear()
        await asyncio.gather(*self.waits)
        for healed, into, task in self.progress:
            if not task.done():  # its runs ended without another step: nothing to measure
                task.cancel()
                continue
            at = task.result()
            if at is not None:
                into.append(at - healed)

    def cancel(self) -> None:
        for t in [*self.waits, *(p[2] for p in self.progress)]:
            t.cancel()


def _start_failures(logs: Path, name: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for f in sorted(logs.glob(f"{name}-worker-*.log")):
        text = f.read_text(errors="replace")
        for why in ("cannot reach Temporal", "cannot connect to the ledger database"):
            if why in text:
                out[why] += 1
    return out


def _host_port(dsn: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432
