"""Admission activities: a run of a limited tenant asks for its turn, and gives its slot back.

    admission = await run.admit(AdmitRun(ref=ref, first_run_id=rid))   # admitted/queued/refused
    await run.release(ReleaseRun(ref=ref))                             # wakes the next in line

Short database transactions (``stead.storage.admission``), run as local activities. The caps
are this worker's ``STEAD_TENANT_QUOTAS`` as they are now, so a changed quota applies to the
runs already waiting. A run that a decision admits on behalf of another (a slot freed by an
ending run) is woken with the ``admit`` signal; a signal that cannot be delivered costs that
run only its re-check interval, which backs off with its time in the queue (doubling from
``STEAD_ADMISSION_RECHECK_SECONDS`` up to ``STEAD_ADMISSION_RECHECK_MAX_SECONDS``), so a run
queued for days keeps a bounded history. A queued run at the head of its tenant's queue that
waited its interval out also looks for runs that hold a slot though they have closed
(terminated, say, so they never released it) and frees those slots. So does a run that
would be refused for the tenant's runs in flight (``over_quota: refuse``, where nothing ever
queues to do it), at most once per re-check interval per tenant on this worker: else closed
runs' slots would pile up and refuse the tenant for good.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from stead.contracts.admission import Admission, AdmitRun, ReleaseRun
from stead.contracts.models import RunRef
from stead.contracts.quota import TenantQuota, quota_for
from stead.observability.telemetry import NO_METRICS, SteadMetrics
from stead.storage.admission import Admissions, Woken

log = logging.getLogger("stead.admission")

ADMIT_SIGNAL = "admit"
"""The signal that tells a queued run its turn has come (``AgentWorkflow.admit``)."""


class AdmissionActivities:
    """Bound to the admission table, the worker's Temporal client and its tenant quotas."""

    def __init__(self, admissions: Admissions, client: Client, *,
                 quotas: Mapping[str, TenantQuota], recheck_seconds: float = 30.0,
                 recheck_max_seconds: float | None = None,
                 metrics: SteadMetrics = NO_METRICS) -> None:
        self._admissions = admissions
        self._client = client
        self._quotas = quotas
        self._recheck = recheck_seconds
        self._recheck_max = recheck_max_seconds
        self._metrics = metrics
        self._swept: dict[str, float] = {}  # tenant -> when a refusal last freed closed slots

    def _quota(self, tenant: str) -> TenantQuota | None:
        quota = quota_for(self._quotas, tenant)
        return quota if quota is not None and quota.limits_admission else None

    @activity.defn(name="run.admit")
    async def admit(self, ask: AdmitRun) -> Admission:
        """Admit, queue or refuse the run; the same answer to a retried call."""
        quota = self._quota(ask.ref.tenant)
        if quota is None:  # the tenant lost its caps since the run started
            await self.release(ReleaseRun(ref=ask.ref, queued=ask.waited))
            return Admission(verdict="admitted")
        verdict, woken = await self._decide(ask, quota)
        if verdict.verdict == "queued" and ask.waited and verdict.position == 0 and \
                verdict.limit == "runs_in_flight" and await self._free_closed(
                    ask.ref.tenant, quota, woken, taker=ask.ref.workflow_id):
            verdict, more = await self._decide(ask, quota)
            woken += more
        elif verdict.verdict == "refused" and verdict.limit == "runs_in_flight" and \
                self._may_sweep(ask.ref.tenant) and await self._free_closed(
                    ask.ref.tenant, quota, woken, taker=ask.ref.workflow_id):
            verdict, more = await self._decide(ask, quota)
            woken += more
        await self._wake(ask.ref.tenant, quota, woken)
        self._metrics.admission(tenant=ask.ref.tenant, verdict=verdict.verdict,
                                was_queued=ask.waited)
        if verdict.verdict == "queued" and verdict.wait_seconds >= self._recheck:
            # Spread the re-checks: runs queued in one burst would otherwise all ask again
            # in the same instant, interval after interval. (Random here, in the activity:
            # its answer is recorded, so the run replays with the same wait.) The wait has
            # backed off with the run's time in the queue already; never past the moment the
            # starts-per-minute window frees up.
            wait = verdict.wait_seconds * random.uniform(0.75, 1.25)
            if verdict.retry_after is not None:
                wait = min(wait, verdict.retry_after)
            verdict = verdict.model_copy(update={"wait_seconds": wait})
        return verdict

    def _may_sweep(self, tenant: str) -> bool:
        """Whether a refusal may look for closed runs' slots now: once per re-check interval
        per tenant (each look describes every run holding a slot)."""
        now = time.monotonic()
        last = self._swept.get(tenant)
        if last is not None and now - last < self._recheck:
            return False
        self._swept[tenant] = now
        return True

    async def _decide(self, ask: AdmitRun, quota: TenantQuota) -> tuple[Admission, list[Woken]]:
        return await self._admissions.admit(ask, quota, recheck_seconds=self._recheck,
                                            recheck_max_seconds=self._recheck_max)

    @activity.defn(name="run.release")
    async def release(self, release: ReleaseRun) -> None:
        """The run ended (or was cancelled while it waited): free its slot and wake the
        runs of its tenant that may start now."""
        quota = self._quota(release.ref.tenant)
        woken = await self._admissions.release(release.ref, quota)
        if release.queued:
            self._metrics.admission_left_queue(tenant=release.ref.tenant)
        await self._wake(release.ref.tenant, quota, woken)

    async def _wake(self, tenant: str, quota: TenantQuota | None, woken: list[Woken]) -> None:
        """Signal each run admitted on its behalf; one that no longer exists gives its slot
        to the next in line."""
        while woken:
            run = woken.pop(0)
            try:
                await self._client.get_workflow_handle(run.workflow_id).signal(ADMIT_SIGNAL)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    log.warning("admitted run %s not woken (%s); it wakes at its re-check",
                                run.workflow_id, err)
                    continue
                log.info("admitted run %s has closed; its slot goes to the next", run.workflow_id)
                woken += await self._admissions.release(self._ref(tenant, run), quota)

    async def free_closed_slots(self, tenant: str) -> bool:
        """For the HTTP API's 429 (``over_quota: refuse``), which would else refuse the tenant
        for good once closed runs hold its slots: free those slots, at most once per re-check
        interval per tenant; True if any was freed (the queued runs that took them are woken)."""
        quota = self._quota(tenant)
        if quota is None or not self._may_sweep(tenant):
            return False
        woken: list[Woken] = []
        freed = await self._free_closed(tenant, quota, woken)
        await self._wake(tenant, quota, woken)
        return freed

    async def _free_closed(self, tenant: str, quota: TenantQuota, woken: list[Woken], *,
                           taker: str | None = None) -> bool:
        """Release the slots of the tenant's admitted runs that have closed (True if any);
        the runs that took them, but ``taker`` (the asking run's workflow id), join ``woken``."""
        freed = False
        for run in await self._admissions.admitted(tenant):
            try:
                desc = await self._client.get_workflow_handle(run.workflow_id).describe()
                closed = desc.status not in (None, WorkflowExecutionStatus.RUNNING) or \
                    desc.raw_description.workflow_execution_info.first_run_id != run.run_id
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    log.warning("cannot check admitted run %s: %s", run.workflow_id, err)
                    continue
                closed = True
            if closed:
                log.warning("run %s of tenant %s closed without giving its slot back; freed",
                            run.workflow_id, tenant)
                woken += [w for w in await self._admissions.release(
                    self._ref(tenant, run), quota) if w.workflow_id != taker]
                freed = True
        return freed

    @staticmethod
    def _ref(tenant: str, run: Woken) -> RunRef:
        return RunRef(workflow_id=run.workflow_id, run_id=run.run_id, agent="", tenant=tenant)
