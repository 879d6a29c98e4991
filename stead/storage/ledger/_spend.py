"""Tenant spending windows: reserve a model call's estimate before the model is called, settle
it to what the call cost after, release it when the call failed (migration 0009).

    key = SpendKey.of(req.ref, fallback=req.fallback)       # the same across retries
    got = await ledger.reserve_spend("acme", key, usd=0.004, caps={"day": 20.0}, ttl_seconds=900)
    if got.outcome == "refused": ...                        # got.window, spent, cap, resets_at
    await ledger.settle_spend(key, usd=0.0031, attempt=1)   # or release_spend(key, attempt=1)
    rows = await ledger.spend_usage(settings.tenants.quotas)  # stead budget, GET /v1/budget

Each operation is one statement (one round trip): ``stead_reserve_spend`` and
``stead_settle_spend`` are SQL functions that take a lock per tenant, so the reservations of
one tenant are decided one at a time, by every worker alike. A reservation is taken only when
``spent + live reservations + estimate <= cap`` holds in each capped window; two workers racing
therefore cannot both pass a cap, and a window goes over its cap only by what calls cost beyond
their estimates (the estimate assumes a full-length answer, so this is rare and small).

An attempt that reserved and was never settled nor released (its worker died mid-call: the
provider may have answered, and billed it) is charged at its estimate (migration 0013): when a
later attempt of the same call reserves, which then reserves its own estimate (refused if that
would pass a cap), or, with no later attempt, once the reservation's ``ttl_seconds`` have
passed — ``spend_usage`` reads it as spent from then, and the tenant's next reserve writes it
into the window (lazily, under the tenant's lock: no sweep). If the abandoned attempt settles
after all (a slow worker, not a dead one), its real cost replaces the estimate. A released
attempt (the call failed cleanly) is charged nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from stead.contracts.models import RunRef
from stead.contracts.quota import ANY_TENANT, TenantQuota, WindowKind, quota_for
from stead.storage.ledger._core import LedgerBase

OnWait = Callable[[], None] | None

_RESERVE = ("select * from stead_reserve_spend($1, $2, $3, $4, $5, $6, $7::float8, $8::float8,"
            " $9::float8, $10::float8)")
_SETTLE = "select stead_settle_spend($1, $2, $3, $4, $5, $6::float8)"
_RELEASE = (
    "update stead_spend_reservations set state='released'"
    " where workflow_id=$1 and run_id=$2 and step=$3 and fallback=$4 and state='reserved'"
    " and ($5::int is null or attempt=$5)")
_USAGE = """
with now_ as (select now() as t),
w as (select date_trunc('day', t at time zone 'UTC') at time zone 'UTC' as d,
             date_trunc('month', t at time zone 'UTC') at time zone 'UTC' as m, t from now_),
kinds as (select 'day'::text as kind, d as start, d + interval '1 day' as stop, t from w
          union all
          select 'month', m, m + interval '1 month', t from w),
tenants as (
    select $1::text as tenant where $1::text is not null
    union
    select * from (
        select s.tenant from stead_tenant_spend s join kinds k
            on s.kind = k.kind and s.window_start = k.start
        union select r.tenant from stead_spend_reservations r, w
            where r.state = 'reserved' and r.expires_at > w.t
        union select unnest($2::text[])) everyone
    where $1::text is null)
select t.tenant, k.kind, k.start as window_start, k.stop as window_end,
       (coalesce(s.spent_usd, 0)
        + coalesce((select sum(r.usd) from stead_spend_reservations r
                    where r.tenant = t.tenant and r.state = 'reserved' and r.expires_at <= k.t
                      and (case k.kind when 'day' then r.day_start else r.month_start end)
                          = k.start), 0))::float8 as spent_usd,
       coalesce((select sum(r.usd) from stead_spend_reservations r
                 where r.tenant = t.tenant and r.state = 'reserved' and r.expires_at > k.t
                   and (case k.kind when 'day' then r.day_start else r.month_start end)
                       = k.start), 0)::float8 as reserved_usd
from tenants t cross join kinds k
left join stead_tenant_spend s
    on s.tenant = t.tenant and s.kind = k.kind and s.window_start = k.start
order by t.tenant, k.kind
"""


@dataclass(frozen=True)
class SpendKey:
    """One model call, as its reservation is keyed: the same for every attempt of it."""

    workflow_id: str
    run_id: str
    step: int
    fallback: int = 0
    """The called model's place in the agent's chain: a fallback is another call."""

    @classmethod
    def of(cls, ref: RunRef, *, fallback: int = 0) -> SpendKey:
        return cls(ref.workflow_id, ref.run_id, ref.step, fallback)

    def args(self) -> tuple[str, str, int, int]:
        return (self.workflow_id, self.run_id, self.step, self.fallback)


@dataclass(frozen=True)
class Reservation:
    """What ``reserve_spend`` answered."""

    outcome: Literal["reserved", "held", "refused"]
    """``reserved``: the estimate now counts against the windows (an earlier attempt of this
    call that still held a reservation was charged at its estimate first); ``held``: this
    attempt holds a live reservation already (a reserve re-sent after a dropped connection;
    its expiry renewed); ``refused``: ``window`` would pass its cap."""
    window: WindowKind | None = None
    window_start: datetime | None = None
    spent_usd: float | None = None
    """For ``refused``: what ``window`` has spent (settled calls)."""
    reserved_usd: float | None = None
    """For ``refused``: what other calls in flight hold in ``window``."""
    cap_usd: float | None = None

    @property
    def resets_at(self) -> datetime | None:
        """For ``refused``: when ``window`` ends and the next one starts from nothing."""
        if self.window is None or self.window_start is None:
            return None
        return window_end(self.window, self.window_start)


class WindowUsage(BaseModel):
    """One tenant's current spending window, as ``stead budget`` and ``GET /v1/budget`` show."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    window: WindowKind
    window_start: datetime
    resets_at: datetime
    """The window's end: UTC midnight, or the first of the next month."""
    spent_usd: float
    """Settled cost of the model calls reserved in this window, plus the estimates of attempts
    abandoned mid-call (never settled nor released)."""
    reserved_usd: float
    """Estimates held by calls in flight (live reservations)."""
    cap_usd: float | None
    """The tenant's cap for this window (``STEAD_TENANT_QUOTAS``); None: not capped."""

    @property
    def left_usd(self) -> float | None:
        """What calls may still reserve in this window (never below 0); None: no cap."""
        if self.cap_usd is None:
            return None
        return max(self.cap_usd - self.spent_usd - self.reserved_usd, 0.0)


def window_end(kind: WindowKind, start: datetime) -> datetime:
    """The end of the UTC day or month that starts at ``start``."""
    if kind == "day":
        return start + timedelta(days=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month, day=1)


class LedgerSpend(LedgerBase):
    """Tenant spending windows (see the module docstring)."""

    async def reserve_spend(self, tenant: str, key: SpendKey, *, usd: float,
                            caps: Mapping[WindowKind, float], ttl_seconds: float,
                            attempt: int = 1, on_wait: OnWait = None) -> Reservation:
        """Hold ``usd`` for attempt ``attempt`` of the call ``key`` in ``tenant``'s day and
        month windows, if every window of ``caps`` stays within its cap with it; idempotent per
        ``key`` and attempt while the reservation is live. An earlier attempt that still holds
        it (it died mid-call) is charged at its estimate first (see :class:`Reservation`)."""
        if usd < 0:
            raise ValueError(f"reserve_spend: usd must be >= 0, not {usd}")

        async def op(c: asyncpg.Connection) -> asyncpg.Record:
            row = await c.fetchrow(_RESERVE, *key.args(), attempt, tenant, usd,
                                   caps.get("day"), caps.get("month"), ttl_seconds)
            assert row is not None
            return row
        r = await self._retrying(op, on_wait)
        return Reservation(outcome=r["outcome"], window=r["kind"], window_start=r["window_start"],
                           spent_usd=r["spent"], reserved_usd=r["reserved"], cap_usd=r["cap"])

    async def settle_spend(self, key: SpendKey, *, usd: float, attempt: int = 1,
                           on_wait: OnWait = None) -> bool:
        """Attempt ``attempt`` of the call ``key`` cost ``usd``: end its reservation and add the
        cost to the windows it was reserved in (for an attempt charged at its estimate as
        abandoned: in place of the estimate). False: nothing added (no reservation, or this
        attempt was settled already)."""

        async def op(c: asyncpg.Connection) -> bool:
            return bool(await c.fetchval(_SETTLE, *key.args(), attempt, usd))
        return await self._retrying(op, on_wait)

    async def release_spend(self, key: SpendKey, *, attempt: int | None = None,
                            on_wait: OnWait = None) -> bool:
        """The call ``key`` failed without cost: its reservation stops counting. With
        ``attempt``, only if that attempt holds it (a late attempt's failure does not release
        what a newer attempt goes on with). False: no live reservation was released."""

        async def op(c: asyncpg.Connection) -> bool:
            status: str = await c.execute(_RELEASE, *key.args(), attempt)
            return status.rsplit(" ", 1)[-1] != "0"
        return await self._retrying(op, on_wait)

    async def spend_usage(self, quotas: Mapping[str, TenantQuota], *,
                          tenant: str | None = None) -> list[WindowUsage]:
        """The current day and month windows of ``tenant`` (None: of every tenant that spent or
        holds reservations in them, or has its own quota), with the caps ``quotas`` give."""
        named = [t for t in quotas if t != ANY_TENANT]

        async def op(c: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await c.fetch(_USAGE, tenant, named))
        rows = await self._retrying(op)
        out: list[WindowUsage] = []
        for r in rows:
            quota = quota_for(quotas, r["tenant"])
            cap = quota.windows.get(r["kind"]) if quota is not None else None
            out.append(WindowUsage(tenant=r["tenant"], window=r["kind"],
                                   window_start=r["window_start"], resets_at=r["window_end"],
                                   spent_usd=r["spent_usd"], reserved_usd=r["reserved_usd"],
                                   cap_usd=cap))
        return out
