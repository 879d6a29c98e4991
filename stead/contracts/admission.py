"""What admission answers: a run of a limited tenant is admitted, queued, or refused.

    verdict = await admissions.admit(ref, quota)        # stead.storage.admission
    if verdict.verdict == "queued": wait verdict.wait_seconds or the ``admit`` signal

The payloads of the ``run.admit`` and ``run.release`` activities, and the figures of
``GET /v1/quota`` and ``stead quota``. Caps come from ``stead.contracts.quota.TenantQuota``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from stead.contracts.models import RunRef

Verdict = Literal["admitted", "queued", "refused"]
"""``admitted``: the run may start now and holds a slot until released; ``queued``: it waits
its turn (FIFO per tenant); ``refused``: the tenant's ``over_quota`` is ``refuse``."""

Limit = Literal["runs_in_flight", "starts_per_minute"]
"""The cap a queued or refused start ran into."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdmitRun(_Model):
    """Input of ``run.admit``: the run asking, once at its start and again after each wait."""

    ref: RunRef
    first_run_id: str
    """The run's first execution id: with the workflow id, names the run across retries."""
    waited: bool = False
    """The run was queued at its previous ask (it waited a re-check out or was woken)."""


class Admission(_Model):
    """Answer of ``run.admit`` (the same answer to a retried activity)."""

    verdict: Verdict
    limit: Limit | None = None
    """Which cap held the run back (queued or refused)."""
    position: int = 0
    """Runs of the tenant queued before this one (queued only)."""
    in_flight: int = 0
    """Runs of the tenant admitted and not ended, this one included once admitted."""
    retry_after: float | None = None
    """Seconds until the cap that held the run back lets a start through: when the oldest
    start of the last minute leaves it; None when it waits for a run to end."""
    wait_seconds: float = 0.0
    """How long a queued run waits before asking again unless an ending run wakes it first:
    the shorter of ``retry_after`` and the re-check interval, which backs off with the run's
    time in the queue from ``STEAD_ADMISSION_RECHECK_SECONDS`` up to
    ``STEAD_ADMISSION_RECHECK_MAX_SECONDS`` (``stead.storage.admission.recheck_wait``)."""
    reason: str = ""
    """In words, for the run's answer and its audit row."""


class ReleaseRun(_Model):
    """Input of ``run.release``: the run ended (or was cancelled while queued)."""

    ref: RunRef
    queued: bool = False
    """The run was still waiting for its turn (it leaves the queue, e.g. cancelled)."""


class TenantUsage(_Model):
    """One tenant's admission figures now (``GET /v1/quota``, ``stead quota``)."""

    tenant: str
    in_flight: int = 0
    queued: int = 0
    started_last_minute: int = 0
    oldest_queued_at: datetime | None = None
    runs_in_flight: int | None = None
    """The tenant's cap (None: none)."""
    starts_per_minute: int | None = None
    """The tenant's cap (None: none)."""
    over_quota: Literal["queue", "refuse"] = "queue"
