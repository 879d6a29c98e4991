"""The drift check's contracts, which the workflow layer may import: ``DriftWorkflow``'s input,
the ``drift.check`` activity's input and output, and the time windows they compare.

    windows = DriftCheckInput(recent=timedelta(hours=1)).windows_at(now)

The statistics behind a check live in ``stead.evals.drift``; loading runs in
``stead.evals.samples``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_LIMIT",
    "DRIFT_WORKFLOW",
    "DriftCheckInput",
    "DriftCheckRequest",
    "DriftCheckSummary",
    "DriftThresholds",
    "DriftWindows",
    "Window",
]

DRIFT_WORKFLOW = "DriftWorkflow"
"""Workflow type of the scheduled check (``workflows/drift.py``)."""

DEFAULT_LIMIT = 5000
"""Most runs loaded per window. Larger windows are sampled evenly (by a hash of the run id,
so the same window always gives the same sample) rather than cut at one end."""


class Window(BaseModel):
    """A half-open time range ``[since, until)`` of run start times, in UTC."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: datetime
    until: datetime

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if self.since >= self.until:
            raise ValueError(f"window starts ({self.since.isoformat()}) at or after it ends "
                             f"({self.until.isoformat()})")
        return self

    @property
    def span(self) -> timedelta:
        return self.until - self.since

    def label(self) -> str:
        return f"{_short(self.since)} → {_short(self.until)}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftThresholds(_Model):
    """When a signal counts as crossed, and how much data it needs first."""

    alpha: float = Field(0.01, gt=0, lt=1)
    """Significance level of every test: a change must be this unlikely under no drift."""
    min_runs: int = Field(20, ge=2)
    """Fewest finished runs per window for run-level signals (and request embeddings)."""
    min_calls: int = Field(20, ge=2)
    """Fewest tool attempts (per tool) or gate decisions per window for per-call signals."""
    success_rate_delta: float = Field(0.05, ge=0, le=1)
    """Smallest change of the success rate (absolute, 0.05 = 5 points) that is reported."""
    task_success_delta: float = Field(0.05, ge=0, le=1)
    """Smallest change of evaluated task success (absolute) that is reported; it needs
    ``min_runs`` evaluated runs per window."""
    latency_ks: float = Field(0.2, ge=0, le=1)
    """Smallest Kolmogorov–Smirnov distance between latency distributions."""
    sequence_js: float = Field(0.1, ge=0, le=1)
    """Smallest Jensen–Shannon distance between tool-call sequence distributions."""
    guardrail_delta: float = Field(0.05, ge=0, le=1)
    """Smallest change of a guardrail trigger rate (absolute)."""
    tool_failure_delta: float = Field(0.05, ge=0, le=1)
    """Smallest change of a tool's failed-attempt rate (absolute)."""
    permutations: int = Field(500, ge=50, le=20000)
    """Permutations of the permutation tests (sequences, embeddings)."""
    embedding_sample: int = Field(500, ge=10, le=5000)
    """Most requests embedded per window (spread evenly over the window)."""

    def with_overrides(self, pairs: Sequence[str]) -> DriftThresholds:
        """These thresholds with ``NAME=VALUE`` overrides (``["alpha=0.05"]``); a
        ``ValueError`` names an unknown field or a value out of range."""
        changes: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in DriftThresholds.model_fields:
                raise ValueError(f"bad threshold {pair!r}: use NAME=VALUE with NAME one of "
                                 + ", ".join(DriftThresholds.model_fields))
            changes[name] = value.strip()
        try:
            return DriftThresholds.model_validate({**self.model_dump(), **changes})
        except ValidationError as err:
            raise ValueError("bad threshold: " + "; ".join(
                f"{e['loc'][0]}={e.get('input')!r}: {e['msg']}" for e in err.errors())
            ) from None


class DriftWindows(_Model):
    """The baseline window and the recent window compared with it; they may not overlap."""

    baseline: Window
    recent: Window

    @model_validator(mode="after")
    def _apart(self) -> DriftWindows:
        if self.baseline.until > self.recent.since:
            raise ValueError(f"the baseline window ({self.baseline.label()}) must end before "
                             f"the recent window starts ({self.recent.label()})")
        return self


class DriftCheckInput(_Model):
    """Input of ``DriftWorkflow``: windows as durations before the workflow's start time.

    ``{"recent": "PT24H"}`` (or seconds, ``{"recent": 86400}``) compares the last 24 hours with
    the 7 days before them."""

    recent: timedelta = timedelta(hours=24)
    """The recent window is ``[now - recent, now)``."""
    baseline_since: timedelta | None = None
    """The baseline starts this long before now; default ``recent`` + 7 days."""
    baseline_until: timedelta | None = None
    """The baseline ends this long before now; default ``recent`` (where the recent starts)."""
    agent: str | None = None
    tenant: str | None = None
    include_synthetic: bool = False
    thresholds: DriftThresholds = DriftThresholds()

    def windows_at(self, now: datetime) -> DriftWindows:
        """The absolute windows at ``now``; ``ValueError`` when they are empty or overlap."""
        b_until = self.baseline_until if self.baseline_until is not None else self.recent
        b_since = self.baseline_since if self.baseline_since is not None \
            else b_until + timedelta(days=7)
        for name, d in (("recent", self.recent), ("baseline_since", b_since),
                        ("baseline_until", b_until)):
            if d < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {d}")
        return DriftWindows(baseline=Window(since=now - b_since, until=now - b_until),
                            recent=Window(since=now - self.recent, until=now))


class DriftCheckRequest(_Model):
    """Input of the ``drift.check`` activity: absolute windows and what to look at."""

    windows: DriftWindows
    agent: str | None = None
    tenant: str | None = None
    include_synthetic: bool = False
    thresholds: DriftThresholds = DriftThresholds()
    checked_at: datetime | None = None
    """When the check ran (the workflow's time); default now."""
    limit: int = Field(DEFAULT_LIMIT, ge=1)
    """Most runs loaded per window (sampled evenly beyond that)."""


class DriftCheckSummary(_Model):
    """Output of the ``drift.check`` activity and of ``DriftWorkflow`` (small: the full
    report is in ``stead_drift_checks``)."""

    check_id: int
    """``stead_drift_checks.id`` of the stored report."""
    checked_at: datetime
    crossed: list[str]
    """Names of the signals that crossed their thresholds."""
    insufficient: list[str]
    """Names of the signals with too little data to judge."""
    signals: int
    """How many signals the report has."""


def _short(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
