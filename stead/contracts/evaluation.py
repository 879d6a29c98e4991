"""Online evaluation's contracts, which the workflow layer may import: ``EvaluationWorkflow``'s
input and output and its two activities' inputs and outputs.

    temporal workflow start --type EvaluationWorkflow --task-queue stead --input '{}'

What is evaluated and how is declared on agents (``stead.authoring.evaluation``); the sweep
itself lives in ``stead.evals.online``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EVALUATION_WORKFLOW",
    "EvaluateRuns",
    "EvaluationSweep",
    "EvaluationSweepSummary",
    "PendingRequest",
    "PendingRuns",
    "RunKey",
    "RunVerdict",
    "RunVerdicts",
]

EVALUATION_WORKFLOW = "EvaluationWorkflow"
"""Workflow type of the sweep (``workflows/evaluation.py``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluationSweepSummary(_Model):
    """Output of ``EvaluationWorkflow`` (of the last continued run: it adds up the earlier)."""

    since: datetime
    until: datetime
    runs: int = 0
    """Runs graded (this run and the runs it continued from)."""
    succeeded: int = 0
    unsuccessful: int = 0
    unknown: int = 0
    rows: int = 0
    """Score rows written (as the activities reported: an attempt that stored its rows and
    then failed is not counted; its retry finds them and writes none)."""
    failed_activities: int = 0
    """Runs whose evaluation activity failed for good (they stay pending for the next sweep)."""
    agents: list[str] = Field(default_factory=list)
    """The agents the worker declares evaluators for."""
    rounds: int = 1
    more: bool = False
    """Runs were left for the next sweep (``rounds`` ran out)."""


class EvaluationSweep(_Model):
    """Input of ``EvaluationWorkflow``: which finished runs to look at.

    ``{}`` evaluates the sampled runs of every agent with evaluators that finished in the 24
    hours before the sweep started and have no scores yet."""

    lookback: timedelta = Field(timedelta(hours=24), gt=timedelta(0),
                                le=timedelta(days=90))
    """Runs that finished this long before the sweep started, or later, are looked at."""
    agent: str | None = None
    """Only this agent's runs (None: every agent the worker declares evaluators for)."""
    limit: int = Field(200, ge=1, le=5000)
    """Most runs one workflow run evaluates; more go on in a continued run."""
    batch: int = Field(10, ge=1, le=100)
    """Runs one evaluation activity grades (loaded and stored together)."""
    concurrency: int = Field(2, ge=1, le=64)
    """Evaluation activities in flight at once."""
    rounds: int = Field(10, ge=1, le=1000)
    """Most continued runs (``limit`` runs each) one scheduled sweep goes on for."""
    round: int = Field(0, ge=0)
    """How many continued runs came before this one (0: the first)."""
    until: datetime | None = None
    """End of the window; set by the first run for the runs continued from it."""
    carried: EvaluationSweepSummary | None = None
    """What the runs before this one (continued from) graded."""

    @model_validator(mode="after")
    def _aware(self) -> EvaluationSweep:
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until must be timezone-aware")
        return self


class RunKey(_Model):
    workflow_id: str
    run_id: str
    agent: str


class PendingRequest(_Model):
    """Input of ``evals.pending``: the window of finish times and how many runs at most."""

    since: datetime
    until: datetime
    agent: str | None = None
    limit: int = Field(200, ge=1)


class PendingRuns(_Model):
    """Output of ``evals.pending``: sampled finished runs that some evaluator has not scored,
    oldest first; ``more``: the window holds more than ``limit`` of them."""

    runs: list[RunKey] = Field(default_factory=list)
    more: bool = False
    agents: list[str] = Field(default_factory=list)
    """The agents the worker declares evaluators for (whichever ``agent`` asked for)."""


class EvaluateRuns(_Model):
    """Input of ``evals.evaluate``: the runs one activity grades (a batch)."""

    runs: list[RunKey] = Field(min_length=1)


Outcome = Literal["succeeded", "unsuccessful", "unknown", "missing"]
"""``unknown``: an evaluator raised and none failed the run; ``missing``: no such run in the
ledger (or its agent has no evaluators on this worker)."""


class RunVerdict(_Model):
    """One run's verdict (small: the scores are in ``stead_evaluations``)."""

    run: RunKey
    outcome: Outcome
    written: int = 0
    """Rows this attempt added (0 when an earlier attempt had written them)."""
    failed: list[str] = Field(default_factory=list)
    """Evaluators that failed the run."""
    errors: list[str] = Field(default_factory=list)
    """Evaluators that raised."""


class RunVerdicts(_Model):
    """Output of ``evals.evaluate``: a verdict per run, in the input's order."""

    verdicts: list[RunVerdict]
