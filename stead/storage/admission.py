"""Admission in PostgreSQL: runs in flight and starts per minute per tenant, a FIFO queue.

    admissions = Admissions(ledger.pool, retry_seconds=ledger.retry_seconds)
    verdict, woken = await admissions.admit(AdmitRun(ref=ref, first_run_id=rid), quota)
    woken = await admissions.release(ref, quota)     # the run ended: wake these runs

One row per run of a limited tenant in ``stead_admissions`` (migration 0011): ``queued``, then
``admitted`` (it holds a slot), then ``ended`` (kept one minute after its start, to count the
starts of the last minute). Every decision of a tenant is one call of a SQL function
(``stead_admit``, ``stead_release_admission``: migration 0012), one round trip, that takes
the tenant's advisory lock (class 726561641) for its transaction, so workers racing for the
last slot never admit more than the caps; tenants do not wait for each other.

A decision admits the tenant's queued runs in the order they queued, as many as the caps allow
now, the asking run included only when its turn has come: a run that asks later never overtakes
one that waits (FIFO per tenant). It returns who else it admitted, so the caller wakes them
(the ``admit`` signal) instead of letting them wait for their next re-check. Asking again is
idempotent: an admitted run stays admitted, a queued one keeps its place.

The database's clock decides, so workers whose clocks disagree still count the same minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from stead.contracts.admission import Admission, AdmitRun, Limit, TenantUsage
from stead.contracts.models import RunRef
from stead.contracts.quota import TenantQuota
from stead.storage.ledger._core import LedgerBase

MINUTE = timedelta(seconds=60)
"""The sliding window ``starts_per_minute`` counts in."""


@dataclass(frozen=True)
class Woken:
    """A run that a decision admitted on behalf of another: wake it (``admit`` signal)."""

    workflow_id: str
    run_id: str


class Admissions(LedgerBase):
    """The ``stead_admissions`` table, on the ledger's pool."""

    async def admit(self, ask: AdmitRun, quota: TenantQuota, *, recheck_seconds: float = 30.0,
                    recheck_max_seconds: float | None = None,
                    ) -> tuple[Admission, list[Woken]]:
        """Admit, queue or refuse the run ``ask`` names under ``quota``'s caps; the same
        answer when asked again. Also returns the other queued runs this decision admitted.
        A queued run's ``wait_seconds`` backs off with its time in the queue
        (:func:`recheck_wait`, up to ``recheck_max_seconds``; None: no back-off)."""
        ref = ask.ref
        every = recheck_seconds
        cap = recheck_max_seconds or recheck_seconds

        async def op(conn: asyncpg.Connection) -> tuple[Admission, list[Woken]]:
            row = await conn.fetchrow(
                "select * from stead_admit($1, $2, $3, $4, $5, $6)", ref.workflow_id,
                ask.first_run_id, ref.tenant, quota.runs_in_flight, quota.starts_per_minute,
                quota.over_quota == "refuse")
            assert row is not None
            woken = [Woken(w, r) for w, r in zip(row["woken_ids"], row["woken_runs"],
                                                 strict=True)]
            limit: Limit | None = row["lim"]
            retry: float | None = row["retry_after"]
            if row["outcome"] == "admitted":
                return Admission(verdict="admitted", in_flight=row["in_flight"]), woken
            assert limit is not None
            if row["outcome"] == "refused":
                return _refused(row["in_flight"], quota, limit, retry), woken
            position: int = row["pos"]
            wait = recheck_wait(row["queued_for"], every=every, cap=cap)
            if retry is not None:
                wait = min(retry, wait)
            return Admission(verdict="queued", limit=limit, position=position,
                             in_flight=row["in_flight"], retry_after=retry, wait_seconds=wait,
                             reason=_reason(quota, limit, position)), woken

        return await self._retrying(op)

    async def release(self, ref: RunRef, quota: TenantQuota | None) -> list[Woken]:
        """The run ended (or left the queue): free its slot, admit the next queued runs that
        ``quota`` now allows (every one if the tenant no longer has caps); returns them."""
        quota = quota or TenantQuota()

        async def op(conn: asyncpg.Connection) -> list[Woken]:
            rows = await conn.fetch("select * from stead_release_admission($1, $2, $3, $4)",
                                    ref.workflow_id, ref.tenant, quota.runs_in_flight,
                                    quota.starts_per_minute)
            return [Woken(r["workflow_id"], r["run_id"]) for r in rows]

        return await self._retrying(op)

    async def peek(self, tenant: str, quota: TenantQuota, *,
                   recheck_seconds: float = 30.0) -> Admission:
        """Would a new run of ``tenant`` be admitted now? Nothing is written: the HTTP API
        refuses a start with a 429 before it creates a run (``over_quota: refuse``)."""

        async def op(conn: asyncpg.Connection) -> Admission:
            # The same cap and retry-after stead_admit decides with (migration 0012), for a
            # run that would queue behind every run queued now; no lock, nothing written.
            row = await conn.fetchrow(
                "select c.in_flight, c.queued, c.lim, stead_admission_retry($1, c.now,"
                " c.recent, $3, c.queued, c.lim) as retry_after"
                " from (select t.now, n.*, stead_admission_full(n.in_flight, n.recent,"
                "   n.queued, $2, $3) as lim"
                "  from (select clock_timestamp() as now) t cross join lateral ("
                "   select count(*) filter (where a.state = 'admitted') as in_flight,"
                "    count(*) filter (where a.admitted_at > t.now - interval '60 seconds')"
                "     as recent,"
                "    count(*) filter (where a.state = 'queued') as queued"
                "   from stead_admissions a where a.tenant = $1) n) c",
                tenant, quota.runs_in_flight, quota.starts_per_minute)
            assert row is not None
            limit: Limit | None = row["lim"]
            if limit is None:
                return Admission(verdict="admitted", in_flight=row["in_flight"])
            retry: float | None = row["retry_after"]
            verdict = _refused(row["in_flight"], quota, limit, retry)
            if quota.over_quota == "queue":
                verdict = verdict.model_copy(update={
                    "verdict": "queued", "position": row["queued"],
                    "wait_seconds": min(retry or recheck_seconds, recheck_seconds)})
            return verdict

        return await self._retrying(op)

    async def admitted(self, tenant: str) -> list[Woken]:
        """The tenant's runs holding a slot, oldest first (to find runs that ended without
        releasing it: terminated, or reset)."""

        async def op(conn: asyncpg.Connection) -> list[Woken]:
            rows = await conn.fetch(
                "select workflow_id, run_id from stead_admissions where tenant = $1 and "
                "state = 'admitted' order by admitted_at, workflow_id", tenant)
            return [Woken(r["workflow_id"], r["run_id"]) for r in rows]

        return await self._retrying(op)

    async def usage(self, tenants: Sequence[str] | None = None) -> list[TenantUsage]:
        """Admission figures per tenant with rows (or of ``tenants``, zero when none), caps
        left unset: the caller knows the quotas."""

        async def op(conn: asyncpg.Connection) -> list[TenantUsage]:
            rows = await conn.fetch(
                "select tenant, count(*) filter (where state = 'admitted') as in_flight, "
                " count(*) filter (where state = 'queued') as queued, "
                " count(*) filter (where admitted_at > clock_timestamp() - $2::interval) "
                "   as recent, "
                " min(queued_at) filter (where state = 'queued') as oldest "
                "from stead_admissions where $1::text[] is null or tenant = any($1) "
                "group by tenant order by tenant",
                list(tenants) if tenants is not None else None, MINUTE)
            found = {r["tenant"]: TenantUsage(
                tenant=r["tenant"], in_flight=r["in_flight"], queued=r["queued"],
                started_last_minute=r["recent"], oldest_queued_at=r["oldest"]) for r in rows}
            for name in tenants or ():
                found.setdefault(name, TenantUsage(tenant=name))
            return [found[name] for name in sorted(found)]

        return await self._retrying(op)


def with_caps(usage: TenantUsage, quota: TenantQuota | None) -> TenantUsage:
    """``usage`` with the caps of ``quota`` (the tenant's, or None: no caps)."""
    if quota is None:
        return usage
    return usage.model_copy(update={"runs_in_flight": quota.runs_in_flight,
                                    "starts_per_minute": quota.starts_per_minute,
                                    "over_quota": quota.over_quota})


def recheck_wait(queued_for: float, *, every: float, cap: float) -> float:
    """Seconds a run queued for ``queued_for`` seconds waits before it looks again on its own:
    as long as it has waited, at least ``every`` and at most ``cap`` (``every`` if lower).

    So the looks come at about 1, 2, 4, 8 ... intervals after it queued, then every ``cap``:
    each look is ~6 events in the run's history, so the back-off is what keeps a run queued
    for days far from Temporal's 50k-event limit (86,400 / 300 s = 288 looks a day at the
    default cap, instead of 2,880 at a fixed 30 s). The ``admit`` signal, sent by the ending run
    that frees a slot, stays the prompt wake-up; the look is the fallback."""
    return min(max(queued_for, every), max(cap, every))


# ------------------------------------------------------------------------- the answers


def _reason(quota: TenantQuota, limit: Limit, position: int) -> str:
    cap = (f"{quota.runs_in_flight} runs in flight" if limit == "runs_in_flight"
           else f"{quota.starts_per_minute} starts per minute")
    ahead = f", {position} run{'s' if position != 1 else ''} ahead" if position else ""
    return f"the tenant is at its quota of {cap}{ahead}"


def _refused(in_flight: int, quota: TenantQuota, limit: Limit,
             retry: float | None) -> Admission:
    when = f"; try again in {retry:.0f} s" if retry is not None else \
        "; try again when one of its runs has ended"
    return Admission(verdict="refused", limit=limit, in_flight=in_flight,
                     retry_after=retry, reason=_reason(quota, limit, 0) + when)
