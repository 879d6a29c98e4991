"""What one tenant may spend and start: spending windows, runs in flight, starts per minute.

    quotas = settings.tenants.quotas                      # STEAD_TENANT_QUOTAS, by tenant
    quota = quota_for(quotas, "acme")                     # its own entry, else "*", else None

A tenant's money is counted in windows kept in PostgreSQL (a UTC day and a UTC month), shared
by every worker: each model call reserves its estimate against them before the model is
called and settles to what it cost after (``Ledger.reserve_spend``/``settle_spend``,
``stead.storage.ledger._spend``). Admission counts the
tenant's runs in flight and its starts in the last minute; over either, a start waits its
turn in the tenant's queue (``over_quota: queue``, the default) or is refused with the time
after which to try again (``over_quota: refuse``: a 429 with ``Retry-After`` in the HTTP API).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OverQuota = Literal["queue", "refuse"]
"""What a start over the tenant's runs-in-flight or starts-per-minute cap does."""

WindowKind = Literal["day", "month"]
"""The spending windows: the UTC calendar day and the UTC calendar month."""

ANY_TENANT = "*"
"""The key of ``STEAD_TENANT_QUOTAS`` whose quota applies to every tenant not listed."""


class TenantQuota(BaseModel):
    """One tenant's limits; an unset limit is no limit::

        {"acme": {"usd_per_day": 20, "runs_in_flight": 50, "starts_per_minute": 120},
         "*":    {"usd_per_month": 100, "runs_in_flight": 10, "over_quota": "refuse"}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    usd_per_day: float | None = Field(None, gt=0)
    """Dollars the tenant's model calls may cost per UTC day, over all its runs."""
    usd_per_month: float | None = Field(None, gt=0)
    """Dollars per UTC calendar month."""
    runs_in_flight: int | None = Field(None, ge=1)
    """Runs of the tenant admitted and not yet ended, at once."""
    starts_per_minute: int | None = Field(None, ge=1)
    """Runs admitted in any sliding minute."""
    over_quota: OverQuota = "queue"
    queue_timeout_seconds: float = Field(7 * 86400, gt=0)
    """How long a start waits its turn (``over_quota: queue``) before it is refused with
    that reason. The default, 7 days, keeps a waiting run's history (about 1,700 events a day
    at the longest re-check interval) far below Temporal's limit of 51,200 events."""

    @property
    def windows(self) -> dict[WindowKind, float]:
        """The spending windows this quota limits, with their caps in dollars."""
        caps: dict[WindowKind, float] = {}
        if self.usd_per_day is not None:
            caps["day"] = self.usd_per_day
        if self.usd_per_month is not None:
            caps["month"] = self.usd_per_month
        return caps

    @property
    def limits_admission(self) -> bool:
        return self.runs_in_flight is not None or self.starts_per_minute is not None


def quota_for(quotas: Mapping[str, TenantQuota], tenant: str) -> TenantQuota | None:
    """The tenant's quota: its own entry, else the ``"*"`` entry, else None (no limits)."""
    return quotas.get(tenant) or quotas.get(ANY_TENANT)
