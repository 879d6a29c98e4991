"""The ``rollout`` chaos phase: a rolling upgrade in the middle of the load.

Build A's workers serve a Worker Deployment's task queue and take the first third of the
runs, some of which wait for an approval; build B's workers join the same task queue (same
code, another ``STEAD_BUILD_ID``), B ramps to 50 % for the next third, and B is promoted
while runs of both are in flight; workers of both builds are SIGKILLed (among them the A
worker holding each approval-waiting run) while runs keep starting; A must then drain. What
must hold, read from Temporal's history (the build recorded on every completed workflow
task), on top of the suite's invariants:

- a run pinned to a build (its first workflow task ran there) finishes there: every task on
  it (A's runs, and those the ramp sent to B);
- a run started after the promotion settled runs on B only;
- A drains (``stead.deployments.wait_drained``) once its last pinned run has ended.

A violation is written on the run's record (``RunRecord.versioning``), where
``chaos.invariants.check`` turns it into a finding.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from chaos.agent import SHOP, order_request
from chaos.invariants import RunRecord
from chaos.world import SKUS
from stead.contracts.models import RunRequest, RunResult
from stead.deployments import set_current, set_ramping, wait_drained, wait_version

if TYPE_CHECKING:
    from chaos.harness import Harness
    from chaos.pool import WorkerPool

A, B = "build-a", "build-b"
DRAIN_BOUND = 90.0
"""Seconds after build A's last run ended within which Temporal must call it drained (the
embedded server re-checks drainage every 2 s, ``DEV_SERVER_DRAINAGE_CONFIG``)."""

Started = tuple[RunRecord, WorkflowHandle[Any, RunResult]]


async def phase_rollout(h: Harness) -> None:
    cfg = h.cfg
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    sa = h.settings_for("rollout", deployment_name=name, build_id=A)
    sb = sa.replace(build_id=B)
    n = max(cfg.infra_runs, 6)
    n_before = n // 3
    n_ramp = n // 3
    n_approval = min(3, max(1, n_before // 5))
    n_kills = max(2, min(cfg.kills, 8))
    h.world.set_knobs(hold_seconds=0.3)  # long enough runs to be mid-run at the promotion
    promo = h.fault("rollout", "build B promoted mid-load (same task queue)")
    kill_stat = h.fault("rollout", "worker SIGKILL during the rollout (both builds)")
    started: list[Started] = []
    waits: list[asyncio.Task[None]] = []

    async def start(i: int, scenario: str, *, approval: bool = False) -> Started:
        req = RunRequest(agent=SHOP, input=order_request(
            7000 + i, qty=1 + i % 3, sku=SKUS[i % len(SKUS)],
            amount=900.0 if approval else round(20 + i % 37 * 3.5, 2)))
        rec, handle = await h.start("rollout", scenario, req, sa)
        started.append((rec, handle))
        if not approval:
            waits.append(asyncio.create_task(h.finish(rec, handle)))
        return rec, handle

    size = max(2, min(cfg.workers, 2))
    async with h.pool(sa, "rollout-a", size=size) as pool_a:
        await wait_version(h.client, name, A, timeout=60)
        await set_current(h.client, name, A)
        approvals = [await start(i, "rollout: pinned to A, approval across the promotion",
                                 approval=True) for i in range(n_approval)]
        for i in range(n_approval, n_before):
            await start(i, "rollout: started on A")
        await asyncio.gather(*(_wait_pending(h, hd) for _, hd in approvals))

        async with h.pool(sb, "rollout-b", size=size) as pool_b:
            await wait_version(h.client, name, B, timeout=60)
            # A ramp first: half of these runs start on B; each stays where it started.
            await set_ramping(h.client, name, B, 50)
            for i in range(n_before, n_before + n_ramp):
                await start(i, "rollout: started during a 50% ramp to B")
                await asyncio.sleep(0.1)
            in_flight = sum(1 for r, _ in started if r.result is None)
            t = time.time()
            status = await set_current(h.client, name, B)
            promoted_at = time.time()
            promo.injected += 1
            promo.note = (f"{in_flight} runs in flight; routing settled "
                          f"{promoted_at - t:.2f}s after the call"
                          + ("" if status.routing_settled else " (NOT settled in 30 s)"))
            pools = (pool_a, pool_b)
            killer = asyncio.create_task(_kill(h, pools, n_kills, kill_stat))
            for i in range(n_before + n_ramp, n):
                await start(i, "rollout: started after B was promoted")
                await asyncio.sleep(0.15)
            # The A worker holding each waiting run dies before its on-call answers.
            for rec, hd in approvals:
                await h.approver(hd, pool_a, "approve", rec)
                waits.append(asyncio.create_task(h.finish(rec, hd)))
            await killer
            await asyncio.gather(*waits)
            last_a = await _judge(h, started, promoted_at)
            drained_note = await _drained(h, name, started, last_a)
            promo.note += f"; {drained_note}"
    for rec, _ in started:
        promo.outcomes[rec.outcome] += 1
        promo.max_seconds = max(promo.max_seconds, rec.seconds or 0.0)


async def _wait_pending(h: Harness, handle: WorkflowHandle[Any, RunResult]) -> None:
    from stead.contracts.models import RunState

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = await handle.query("state", result_type=RunState)
            if state.pending_approvals or state.status != "running":
                return
        except Exception:  # no worker answered yet
            pass
        await asyncio.sleep(0.2)


async def _kill(h: Harness, pools: tuple[WorkerPool, WorkerPool], n: int, stat: Any) -> None:
    """SIGKILL ``n`` ready workers, alternating the builds, ~0.7 s apart."""
    for i in range(n):
        await asyncio.sleep(0.7)
        pool = pools[i % 2]
        if pool.kill_random(h.rng, kind="rollout") is not None:
            stat.injected += 1


async def _builds(handle: WorkflowHandle[Any, RunResult]) -> list[str]:
    """The build of each completed workflow task of the run, in order."""
    for _ in range(10):
        try:
            return [e.workflow_task_completed_event_attributes.deployment_version.build_id
                    async for e in handle.fetch_history_events()
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
        except RPCError:
            await asyncio.sleep(0.5)
    return []


async def _judge(h: Harness, started: list[Started], promoted_at: float) -> float:
    """Write each run's versioning violation on its record; when A's last run ended."""
    last_a = 0.0
    counts = {"pinned to A": 0, "sent to B by the ramp": 0, "started after the promotion": 0}
    for rec, handle in started:
        builds = await _builds(handle)
        if not builds:
            rec.versioning = "no completed workflow task in its history"
            continue
        pinned, ran = builds[0], sorted(set(builds))
        after = rec.started_at > promoted_at
        if ran != [pinned]:
            rec.versioning = f"pinned to {pinned} but workflow tasks ran on {ran}"
        elif after and pinned != B:
            rec.versioning = f"started after {B} was promoted, yet ran on {pinned}"
        if pinned == A:
            counts["pinned to A"] += 1
            last_a = max(last_a, rec.ended_at or time.time())
        counts["sent to B by the ramp"] += pinned == B and "ramp" in rec.scenario
        counts["started after the promotion"] += after
        rec.scenario += f" [{'+'.join(dict.fromkeys(builds))}]"
    h.progress("rollout: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return last_a


async def _drained(h: Harness, name: str, started: list[Started], last_a: float) -> str:
    """Wait for A to drain; a failure is a finding on every run pinned to A."""
    try:
        v = await wait_drained(h.client, name, A, timeout=DRAIN_BOUND, every=0.5)
    except TimeoutError as e:
        for rec, _ in started:
            if "[build-a" in rec.scenario and not rec.versioning:
                rec.versioning = f"its build never drained: {e}"
        return f"{A} NOT drained within {DRAIN_BOUND:.0f}s"
    return f"{A} {v.state} {time.time() - last_a:.1f}s after its last run ended"
