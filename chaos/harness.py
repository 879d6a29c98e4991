"""The chaos suite: its own embedded stack, worker pools, the faults, and the evidence.

    result = await run_chaos(ChaosConfig(runs=240, kills=220), progress=print)
    result.verdict.ok

Phases, each on its own task queue and worker pool (all on loopback, in a throwaway
directory):

``kills``     shop orders while workers are SIGKILLed: at failpoints inside model calls and
              before/after each tool's side effect (the "after" one sits between the effect
              and its ledger write), while a run waits for an approval (the worker holding it
              is killed, then the approver answers), and at random moments.
``temporal``  the Temporal dev server killed (SIGKILL) and started again (same SQLite file)
              mid-load: its WAL journal must keep every commit across a process kill.
``postgres``  the ledger's PostgreSQL stopped and started again mid-load.
``model``     the model is the real ``openai`` SDK against ``FakeOpenAIServer``: 429 with
              Retry-After, 500, timeouts, truncated/malformed bodies, hallucinated tool names,
              schema-violating arguments, an endless tool-call loop.
``tools``     a timeout, lost heartbeats, a business error, a hang, a multi-MB result.
``rollout``   a rolling upgrade mid-load: build B's workers join build A's on one Worker
              Deployment, B is promoted, workers of both builds are SIGKILLed; pinned runs
              finish on A, later runs run on B, A drains (``chaos/rollout.py``).
``pgnet``     the workers reach PostgreSQL through a fault-injecting proxy: latency spikes,
              connections reset, a half-dead stall, refused connects (``chaos.netfaults``).
``temporalnet`` the same between the workers and Temporal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError

from chaos.agent import (
    DRILL_TOOL,
    DRILLS,
    DRILLS_KINDS,
    MAX_STEPS,
    SHOP,
    ShopPlanner,
    chaos_catalog,
    order_request,
)
from chaos.governance import Governance
from chaos.invariants import (
    Finding,
    RunRecord,
    Verdict,
    check,
    collect,
    first_progress_after,
    tool_facts,
)
from chaos.netfaults import phase_net
from chaos.pool import Death, WorkerPool
from chaos.rollout import phase_rollout
from chaos.stack import throwaway_settings
from chaos.world import SKUS, ChaosWorld
from stead.client import connect, start_run
from stead.contracts.models import ApprovalDecision, RunRequest, RunResult, RunState
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.testing.openai_server import FakeOpenAIServer, Fault, model_responder

Phase = Literal["kills", "temporal", "postgres", "model", "tools", "rollout", "pgnet",
                "temporalnet"]
PHASES: tuple[Phase, ...] = ("kills", "temporal", "postgres", "model", "tools", "rollout",
                             "pgnet", "temporalnet")

RUN_BOUND = 240.0
"""Seconds a run may take before it counts as lost (every wait in the suite is bounded)."""

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    runs: int = 240
    """Shop orders in the kills phase."""
    kills: int = 220
    """Worker SIGKILLs to aim for in the kills phase (failpoints, approvals, random)."""
    workers: int = 3
    """Worker processes per pool."""
    concurrency: int = 24
    """Runs in flight at once in the kills phase."""
    minutes: float = 10.0
    """Time budget: phases that would start after it are skipped (and reported)."""
    seed: int = 7
    infra_runs: int = 30
    """Runs in flight across each Temporal / PostgreSQL restart."""
    fault_runs: int = 3
    """Runs per model-fault and tool-fault kind."""
    outage_seconds: float = 2.0
    """How long Temporal / PostgreSQL stay down."""
    phases: tuple[Phase, ...] = PHASES
    keep: bool = False
    """Keep the data directory (logs, SQLite world, Temporal DB) instead of deleting it."""


@dataclass
class FaultStat:
    """One kind of fault: how often it was injected and how the runs came out of it."""

    group: str
    kind: str
    injected: int = 0
    recovery_s: list[float] = field(default_factory=list)
    """Per occurrence: fault -> the affected run's (or the system's) next progress."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Final statuses of the runs that met this fault."""
    max_steps: int = 0
    max_seconds: float = 0.0
    note: str = ""


@dataclass
class ChaosResult:
    config: ChaosConfig
    records: list[RunRecord]
    faults: list[FaultStat]
    verdict: Verdict
    deaths: list[Death]
    seconds: float
    skipped: list[str] = field(default_factory=list)
    data_dir: str = ""

    @property
    def kills(self) -> int:
        return sum(1 for d in self.deaths if d.cause in ("harness", "failpoint"))

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.skipped


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ShopPlan:
    """What happens to one shop order in the kills phase."""

    n: int
    failpoints: tuple[str, ...] = ()
    approval: Literal["", "approve", "reject", "expire"] = ""

    @property
    def scenario(self) -> str:
        if self.approval:
            return f"approval:{self.approval}"
        if self.failpoints:
            return "failpoint:" + "+".join(self.failpoints)
        return "plain"


_TOOLS_WITH_EFFECTS = ("reserve_stock", "charge_card", "ship_parcel")


def plan_kills(cfg: ChaosConfig, rng: random.Random) -> tuple[list[ShopPlan], int]:
    """Spread the kill budget over the runs: ~10% wait for an approval (their worker is
    killed there), ~25% of the kills are random, the rest are failpoints — model calls,
    before a tool's effect, after it — one per run while runs last, then a second.
    Returns the plans and the number of random kills to make."""
    n_approval = round(cfg.runs * 0.1) if cfg.runs >= 10 else min(1, cfg.runs // 4)
    n_approval = min(n_approval, cfg.kills)
    n_random = round(cfg.kills * 0.25)
    n_failpoints = max(cfg.kills - n_approval - n_random, 0)
    decisions: tuple[Literal["approve", "reject", "expire"], ...] = (
        "approve", "approve", "reject", "expire")
    plans: list[list[str]] = [[] for _ in range(cfg.runs - n_approval)]
    if not plans:
        n_random += n_failpoints
        n_failpoints = 0
    for i in range(n_failpoints):
        points = plans[i % len(plans)]
        for _ in range(50):
            where = rng.choice(("model", "before", "after"))
            point = (f"model:{rng.randint(1, 5)}" if where == "model"
                     else f"{rng.choice(_TOOLS_WITH_EFFECTS)}:{where}")
            if point not in points:
                points.append(point)
                break
    out = [ShopPlan(n=0, failpoints=tuple(p)) for p in plans]
    out += [ShopPlan(n=0, approval=decisions[i % len(decisions)]) for i in range(n_approval)]
    rng.shuffle(out)
    return [ShopPlan(n=1000 + i, failpoints=p.failpoints, approval=p.approval)
            for i, p in enumerate(out)], n_random


def failpoint_kind(point: str) -> str:
    if point.startswith("model:"):
        return "during a model call"
    if point.endswith(":before"):
        return "in a tool, before its side effect"
    return "after a side effect, before its ledger write"


# ---------------------------------------------------------------------------- harness


class Harness:
    """Runs the phases against one embedded stack and keeps every run's record."""

    def __init__(self, cfg: ChaosConfig, stack: EmbeddedStack, base: Settings, world: ChaosWorld,
                 ledger: Ledger, client: Client, data_dir: Path, progress: Progress) -> None:
        self.cfg = cfg
        self.stack = stack
        self.base = base
        self.world = world
        self.ledger = ledger
        self.client = client
        self.data_dir = data_dir
        self.progress = progress
        self.rng = random.Random(cfg.seed)
        self.records: list[RunRecord] = []
        self.faults: dict[tuple[str, str], FaultStat] = {}
        self.deaths: list[Death] = []
        self.not_started = 0
        self.phase_findings: list[Finding] = []
        """Findings of phase-specific checks (e.g. ``chaos.netfaults.EXTRA_CHECKS``)."""
        """Kills-phase runs never started because the time budget was spent."""
        self._approval_kills: list[tuple[str, float]] = []
        """(workflow id, when its worker was killed) per approval wait that lost its worker."""
        self.started = time.monotonic()
        self.deadline = self.started + cfg.minutes * 60
        self.governance: Governance | None = None
        """Tenant quotas and run budgets in the phases they govern (``chaos.governance``)."""

    # -------------------------------------------------------------- helpers

    def fault(self, group: str, kind: str) -> FaultStat:
        return self.faults.setdefault((group, kind), FaultStat(group=group, kind=kind))

    def settings_for(self, phase: str, **update: Any) -> Settings:
        if self.governance is not None:
            update = {**self.governance.settings_update(phase), **update}
        return self.base.replace(
            task_queue=f"chaos-{phase}-{uuid.uuid4().hex[:8]}",
            # A killed worker's cached runs move to a live worker after 1 s instead of 10 s.
            sticky_schedule_to_start_seconds=1.0,
            model_timeout_seconds=3.0,
            db_pool_max=4,
            **update)

    @contextlib.asynccontextmanager
    async def pool(self, settings: Settings, name: str, *,
                   size: int | None = None) -> AsyncIterator[WorkerPool]:
        """A worker pool that replaces dead workers every 50 ms while the block runs."""
        pool = WorkerPool(settings=settings, world=self.world, log_dir=self.data_dir / "logs",
                          size=size or self.cfg.workers, name=name)
        pool.start()

        async def supervise() -> None:
            while True:
                pool.replace_dead()
                await asyncio.sleep(0.05)

        task = asyncio.create_task(supervise())
        try:
            await self._until(lambda: len(pool.ready_pids()) >= pool.size, within=60,
                              what=f"{name} workers to poll")
            yield pool
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(pool.stop)
            self.deaths.extend(pool.deaths)

    async def _until(self, check: Callable[[], bool], *, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {within:.0f}s waiting for {what}; "
                                   f"see the logs under {self.data_dir / 'logs'}")
            await asyncio.sleep(0.05)

    async def start(self, phase: str, scenario: str, request: RunRequest, settings: Settings,
                    *, before: Callable[[str], None] | None = None,
                    ) -> tuple[RunRecord, WorkflowHandle[Any, RunResult]]:
        wid = f"chaos-{phase}-{uuid.uuid4().hex[:12]}"
        if before is not None:
            before(wid)
        rec = RunRecord(workflow_id=wid, phase=phase, scenario=scenario,
                        started_at=time.time())
        self.records.append(rec)
        handle = await start_run(self.client, request, temporal=settings.temporal, workflow_id=wid)
        return rec, handle

    async def finish(self, rec: RunRecord, handle: WorkflowHandle[Any, RunResult]) -> None:
        """Wait for the run's result, riding out server restarts; bounded by RUN_BOUND."""
        deadline = rec.started_at + RUN_BOUND
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                rec.lost_reason = f"no result within {RUN_BOUND:.0f}s"
                return
            try:
                result = await asyncio.wait_for(handle.result(), remaining)
            except TimeoutError:
                continue
            except WorkflowFailureError as err:
                rec.ended_at = time.time()
                rec.lost_reason = f"workflow failed: {err.cause or err}"
                return
            except RPCError:
                await asyncio.sleep(0.5)  # the server is away (a restart): ask again
                continue
            rec.ended_at = time.time()
            rec.result = result
            return

    def ended(self, phase: str) -> int:
        return sum(1 for r in self.records if r.phase == phase and
                   (r.result is not None or r.lost_reason is not None))

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    # -------------------------------------------------------------- kills

    async def phase_kills(self) -> None:
        cfg = self.cfg
        plans, n_random = plan_kills(cfg, self.rng)
        settings = self.settings_for("kills")
        self.world.set_knobs(hold_seconds=0.05)
        sem = asyncio.Semaphore(cfg.concurrency)
        random_done = 0
        # A failpoint its run never reached (the run stopped early: refused by its tenant's
        # window, out of budget) is made up by one more random kill, so the phase still
        # kills about cfg.kills times.
        made_up = 0
        stop_random = asyncio.Event()

        async with self.pool(settings, "kills") as pool:
            async def one(plan: ShopPlan) -> None:
                nonlocal made_up
                async with sem:
                    if self.time_left() < 0:
                        self.not_started += 1
                        return
                    amount = 900.0 if plan.approval else round(20 + plan.n % 37 * 3.5, 2)
                    metadata = {"approval_timeout_seconds": "3"} \
                        if plan.approval == "expire" else {}
                    req = RunRequest(agent=SHOP, input=order_request(
                        plan.n, qty=1 + plan.n % 3, sku=SKUS[plan.n % len(SKUS)],
                        amount=amount), metadata=metadata)
                    if self.governance is not None:
                        req = self.governance.shape("kills", req, eligible=not plan.approval)
                    rec, handle = await self.start(
                        "kills", plan.scenario, req, settings,
                        before=lambda wid: self.world.arm(wid, *plan.failpoints))
                    if plan.approval:
                        await self.approver(handle, pool, plan.approval, rec)
                    await self.finish(rec, handle)
                    if plan.failpoints:
                        made_up += sum(1 for fp in self.world.failpoints()
                                       if fp.workflow_id == rec.workflow_id
                                       and fp.fired_at is None)

            async def random_killer() -> None:
                nonlocal random_done
                last = 0.0
                while not stop_random.is_set():
                    await asyncio.sleep(0.1)
                    share = min(1.0, self.ended("kills") / (0.85 * len(plans)))
                    due = math.ceil(n_random * share) + made_up
                    if random_done < due and time.monotonic() - last > 0.4:
                        if pool.kill_random(self.rng, kind="random") is not None:
                            random_done += 1
                            last = time.monotonic()

            async def report() -> None:
                while True:
                    await asyncio.sleep(10)
                    fired = sum(1 for d in pool.deaths if d.cause != "stopped")
                    self.progress(f"kills: {self.ended('kills')}/{len(plans)} runs ended, "
                                  f"{fired} workers killed so far")

            killer = asyncio.create_task(random_killer())
            reporter = asyncio.create_task(report())
            try:
                await asyncio.gather(*(one(p) for p in plans))
            finally:
                stop_random.set()
                reporter.cancel()
                await asyncio.gather(killer, reporter, return_exceptions=True)
        self._kill_stats(pool)

    async def approver(self, handle: WorkflowHandle[Any, RunResult], pool: WorkerPool,
                       decision: str, rec: RunRecord) -> None:
        """Play on-call: once the run waits for approval, SIGKILL the worker that holds it,
        then approve / reject (or let the deadline pass)."""
        deadline = time.time() + 120
        state: RunState | None = None
        while time.time() < deadline:
            try:
                state = await handle.query("state", result_type=RunState,
                                           rpc_timeout=timedelta(seconds=3))
            except (RPCError, WorkflowQueryFailedError):
                state = None  # no worker picked it up yet, or its worker just died
            if state is not None and (state.pending_approvals or state.status != "running"):
                break
            await asyncio.sleep(0.2)
        if state is None or not state.pending_approvals:
            rec.scenario += " (no approval seen)"
            return
        pid = await holder_pid(handle)
        stat = self.fault("worker SIGKILL", "while waiting for approval")
        killed_at = time.time()
        if pid is not None and pool.kill(pid, kind="approval"):
            stat.injected += 1
        else:
            rec.scenario += " (holder already gone)"
        if decision in ("approve", "reject"):
            await asyncio.sleep(0.2)
            body = ApprovalDecision(approval_id=state.pending_approvals[0].approval_id,
                                    by="chaos-oncall", note=f"chaos {decision}")
            await handle.signal(decision, body)
        # Recovery: from the kill to the run's next step, read from the ledger later.
        self._approval_kills.append((rec.workflow_id, killed_at))

    def _kill_stats(self, pool: WorkerPool) -> None:
        for d in pool.deaths:
            if d.cause == "harness" and d.kind == "random":
                stat = self.fault("worker SIGKILL", "at a random moment")
                stat.injected += 1
                ready = self.world.ready_workers().get(d.replaced_by or -1)
                if ready is not None and d.killed_at is not None:
                    stat.recovery_s.append(ready - d.killed_at)
            elif d.cause == "crashed":
                self.fault("worker", "crashed (unexpected)").injected += 1

    # -------------------------------------------------------------- restarts

    async def phase_restart(self, which: Literal["temporal", "postgres"]) -> None:
        settings = self.settings_for(which)
        n = self.cfg.infra_runs
        stat = self.fault("infrastructure",
                          "Temporal dev server SIGKILL + restart" if which == "temporal"
                          else "PostgreSQL restart")
        async with self.pool(settings, which) as _pool:
            started: list[tuple[RunRecord, WorkflowHandle[Any, RunResult]]] = []
            for i in range(n):
                started.append(await self.start(which, f"{which} restart", RunRequest(
                    agent=SHOP, input=order_request(5000 + i, qty=1, sku=SKUS[i % len(SKUS)],
                                                    amount=25.0)), settings))
            waits = asyncio.gather(*(self.finish(r, h) for r, h in started))
            # Mid-load: a quarter done, the rest in flight.
            await self._until(lambda: self.ended(which) >= max(1, n // 4), within=120,
                              what=f"the first runs before the {which} restart")
            in_flight = n - self.ended(which)
            down_at = time.time()
            if which == "temporal":
                assert self.stack.temporal is not None
                # Killed, not stopped: nothing gets to flush or checkpoint its SQLite file.
                await asyncio.to_thread(self.stack.temporal.kill)
                await asyncio.sleep(self.cfg.outage_seconds)
                await self.stack.temporal.start()
            else:
                assert self.stack.postgres is not None
                await self.stack.postgres.stop()
                await asyncio.sleep(self.cfg.outage_seconds)
                await self.stack.postgres.start()
            back_at = time.time()
            stat.injected += 1
            progress_at = await self._first_progress(back_at, settings.temporal.task_queue,
                                                     [r.workflow_id for r, _ in started])
            await waits
        recovery = (progress_at - back_at) if progress_at is not None else float("nan")
        stat.recovery_s.append(recovery)
        stat.note = (f"down {back_at - down_at:.1f}s with {in_flight} runs in flight; first "
                     f"run progress {recovery:.2f}s after it was back")
        for r, _ in started:
            stat.outcomes[r.outcome] += 1
            stat.max_seconds = max(stat.max_seconds, r.seconds or 0.0)

    async def _first_progress(self, since: float, queue: str, wids: list[str],
                              within: float = 120) -> float | None:
        """When the ledger first moved for these runs after ``since`` (polled every 50 ms)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                async with self.ledger.pool.acquire() as c:
                    n = await c.fetchval(
                        "select (select count(*) from stead_tool_attempts where"
                        "  workflow_id = any($1) and started_at > to_timestamp($2))"
                        " + (select count(*) from stead_model_calls where"
                        "  workflow_id = any($1) and created_at > to_timestamp($2))",
                        wids, since)
                if n:
                    return time.time()
            except Exception:  # any error: the database may still be coming back
                pass
            await asyncio.sleep(0.05)
        return None

    # -------------------------------------------------------------- model faults

    MODEL_FAULTS: tuple[tuple[str, Fault | None], ...] = (
        ("429 rate limited, Retry-After 1 s", Fault("rate_limit", retry_after=1)),
        ("500 server error", Fault("server_error")),
        ("timeout (no answer within 3 s)", Fault("timeout", delay=6)),
        ("truncated JSON body", Fault("malformed_json")),
        ("HTML error page instead of JSON",
         Fault("malformed_json", body="<html>502 Bad Gateway</html>", content_type="text/html")),
        ("hallucinated tool name", Fault("unknown_tool", tool_name="refund_everything")),
        ("arguments violating the schema",
         Fault("bad_tool_arguments", arguments='{"order_id": 17}')),
        ("endless tool-call loop", None),
    )

    async def phase_model(self) -> None:
        responder = model_responder(ShopPlanner().model)
        async with FakeOpenAIServer(responder) as server:
            settings = self.settings_for("model", openai_api_key=SecretStr("sk-chaos"),
                                         openai_base_url=server.base_url,
                                         openai_model="gpt-4o-mini", model_max_attempts=5)
            async with self.pool(settings, "model", size=2):
                for i, (kind, fault) in enumerate(self.MODEL_FAULTS):
                    stat = self.fault("model", kind)
                    k = self.cfg.fault_runs
                    started = []
                    for j in range(k):
                        # One run at a time: each fault meets the first request of its own run
                        # (the server hands faults to whichever request comes next).
                        if fault is not None:
                            server.inject(fault)
                        stat.injected += 1
                        started.append(await self.start("model", f"model:{kind}", RunRequest(
                            agent=SHOP, input=order_request(
                                7000 + 10 * i + j, qty=1, sku=SKUS[j % len(SKUS)],
                                amount=30.0, loop=fault is None)), settings))
                        await self.finish(*started[-1])
                    left = server.pending_faults()
                    if left:  # leftovers would hit the next kind's runs: say so
                        stat.note = f"{left} fault(s) not consumed"
                    for r, _ in started:
                        self._outcome(stat, r)
                        if r.result is not None:
                            stat.recovery_s.extend(await self._model_recovery(r.workflow_id))
                    if fault is None:
                        stat.note = f"step budget {MAX_STEPS}: ended by the budget"
                    else:
                        done = sum(1 for r, _ in started if r.result is not None
                                   and " done: " in (r.result.answer or ""))
                        stat.note = "; ".join(filter(None, [
                            stat.note, f"orders fulfilled {done}/{len(started)}"]))

    async def _model_recovery(self, wid: str) -> list[float]:
        """Per failed model attempt: seconds until the same step's next attempt answered; per
        rejected tool call (unknown tool, bad arguments): until the model answered again."""
        trail = await self.ledger.trail(wid)
        rows = trail.model_calls
        out: list[float] = []
        for m in rows:
            if m.status != "error":
                continue
            nxt = [o for o in rows if o.step == m.step and o.attempt > m.attempt
                   and o.status == "ok"]
            if nxt:
                out.append((nxt[0].created_at - m.created_at).total_seconds())
        for d in trail.decisions:
            if d.kind != "call_rejected":
                continue
            later = [o for o in rows if o.step > d.step and o.status == "ok"]
            if later:
                out.append((later[0].created_at - d.created_at).total_seconds())
        return out

    def _outcome(self, stat: FaultStat, r: RunRecord) -> None:
        stat.outcomes[r.outcome] += 1
        if r.result is not None:
            stat.max_steps = max(stat.max_steps, r.result.steps)
        stat.max_seconds = max(stat.max_seconds, r.seconds or 0.0)

    # -------------------------------------------------------------- tool faults

    TOOL_FAULTS: dict[str, str] = {
        "timeout": "timeout (first attempt outlives start-to-close)",
        "heartbeat": "heartbeat lost on a long tool",
        "business": "non-retryable business error",
        "hang": "tool hanging forever",
        "oversized": "oversized result (3 MB)",
    }

    async def phase_tools(self) -> None:
        settings = self.settings_for("tools")
        async with self.pool(settings, "tools", size=2):
            started: list[tuple[str, RunRecord, WorkflowHandle[Any, RunResult]]] = []
            for kind in DRILLS_KINDS:
                for _ in range(self.cfg.fault_runs):
                    rec, h = await self.start("tools", f"tool:{kind}", RunRequest(
                        agent=DRILLS, input=f"drill: {kind}"), settings)
                    started.append((kind, rec, h))
                    self.fault("tool", self.TOOL_FAULTS[kind]).injected += 1
            await asyncio.gather(*(self.finish(r, h) for _, r, h in started))
        for kind, rec, _ in started:
            stat = self.fault("tool", self.TOOL_FAULTS[kind])
            self._outcome(stat, rec)
            if rec.seconds is not None:
                stat.recovery_s.append(rec.seconds)
            res = rec.result
            calls = [c for c in res.tool_calls if c.tool == DRILL_TOOL[kind]] if res else []
            if calls:
                c = calls[0]
                said = c.error or ""
                said = said if len(said) <= 130 else said[:129] + "…"
                stat.note = (f"{c.tool}: {c.status} after {c.attempts} attempt(s)"
                             + (f" — {said}" if said else ""))

    # -------------------------------------------------------------- recovery from the ledger

    async def failpoint_recovery(self) -> None:
        """Each fired failpoint: seconds from the kill to the run's next step in the ledger."""
        by_wid = {r.workflow_id: r for r in self.records}
        for fp in self.world.failpoints():
            if fp.fired_at is None or fp.workflow_id not in by_wid:
                continue
            stat = self.fault("worker SIGKILL", failpoint_kind(fp.point))
            stat.injected += 1
            rec = by_wid[fp.workflow_id]
            stat.outcomes[rec.outcome] += 1
            trail = await self.ledger.trail(fp.workflow_id)
            nxt = first_progress_after(trail, fp.fired_at)
            if nxt is not None:
                stat.recovery_s.append(nxt - fp.fired_at)
        for wid, killed_at in self._approval_kills:
            stat = self.fault("worker SIGKILL", "while waiting for approval")
            rec = by_wid[wid]
            stat.outcomes[rec.outcome] += 1
            nxt = first_progress_after(await self.ledger.trail(wid), killed_at)
            if nxt is not None:
                stat.recovery_s.append(nxt - killed_at)
        armed = [fp for fp in self.world.failpoints() if fp.workflow_id in by_wid]
        unfired = sum(1 for fp in armed if fp.fired_at is None)
        if unfired:
            self.fault("worker SIGKILL", "failpoints armed but never reached").injected = unfired


async def holder_pid(handle: WorkflowHandle[Any, Any]) -> int | None:
    """The pid of the worker that completed the run's last workflow task (it caches the run)."""
    identity = ""
    try:
        async for ev in handle.fetch_history_events():
            if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                identity = ev.workflow_task_completed_event_attributes.identity
    except RPCError:
        return None
    head = identity.split("@", 1)[0]
    return int(head) if head.isdigit() else None


# ---------------------------------------------------------------------------- the suite




async def run_chaos(cfg: ChaosConfig, *, progress: Progress = print) -> ChaosResult:
    """Start a throwaway stack, run the phases in ``cfg``, check the invariants."""
    t0 = time.monotonic()
    settings = throwaway_settings("stead-chaos-")
    data_dir = settings.stack.data_dir
    progress(f"embedded stack in {data_dir} (Temporal :{settings.stack.temporal_port}, "
             f"PostgreSQL :{settings.stack.postgres_port})")
    # The suite's ledger pool reconnects through the PostgreSQL restart it causes itself.
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    stack = EmbeddedStack(settings, ui=False)
    skipped: list[str] = []
    try:
        await stack.start()
        base = stack.resolved_settings()
        world = ChaosWorld(data_dir / "chaos-world.sqlite")
        ledger = await Ledger.connect(stack.database_url, retry_seconds=60)
        h: Harness | None = None
        try:
            # The suite's own client sees every outage it causes: its retries are expected,
            # so only errors are logged (the workers keep their usual logging).
            client = await connect(base, runtime=Runtime(telemetry=TelemetryConfig(
                logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR",
                                                             other_level="ERROR")))))
            h = Harness(cfg, stack, base, world, ledger, client, data_dir, progress)
            await Governance(h).__aenter__()
            phases: dict[Phase, Callable[[], Awaitable[None]]] = {
                "kills": h.phase_kills,
                "temporal": lambda: h.phase_restart("temporal"),
                "postgres": lambda: h.phase_restart("postgres"),
                "model": h.phase_model,
                "tools": h.phase_tools,
                "rollout": lambda: phase_rollout(h),
                "pgnet": lambda: phase_net(h, "pgnet"),
                "temporalnet": lambda: phase_net(h, "temporalnet"),
            }
            for name in cfg.phases:
                if h.time_left() < 30:
                    skipped.append(name)
                    progress(f"skipping {name}: the {cfg.minutes:g}-minute budget is spent")
                    continue
                progress(f"phase {name} ...")
                t = time.monotonic()
                await phases[name]()
                progress(f"phase {name} done in {time.monotonic() - t:.0f}s")
            if h.not_started:
                skipped.append(f"{h.not_started} kills-phase runs (out of time)")
            await h.failpoint_recovery()
            progress(f"checking invariants over {len(h.records)} runs ...")
            catalog = chaos_catalog(world)
            evidence = await collect(h.records, world=world, ledger=ledger,
                                     tools=tool_facts(catalog))
            verdict = check(evidence)
            verdict.phase_checks.extend(h.phase_findings)
            assert h.governance is not None
            verdict.phase_checks.extend(await h.governance.check(h.records))
        finally:
            if h is not None and h.governance is not None:
                await h.governance.__aexit__(None, None, None)
            await ledger.close()
    finally:
        await stack.stop()
        if not cfg.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    assert h is not None
    return ChaosResult(config=cfg, records=h.records, faults=list(h.faults.values()),
                       verdict=verdict, deaths=h.deaths, seconds=time.monotonic() - t0,
                       skipped=skipped, data_dir=str(data_dir) if cfg.keep else "")
