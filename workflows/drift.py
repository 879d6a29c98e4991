"""DriftWorkflow: one drift check, started by a Temporal Schedule (``stead drift --schedule``).

The windows are durations before the workflow's start time (``workflow.now()``), resolved
here so the activity compares exactly what this run was scheduled for even when it is retried
later. Deterministic: the only side effects are in the ``drift.check`` activity.

    temporal workflow start --type DriftWorkflow --task-queue stead --input '{"recent": "PT1H"}'
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from stead.activities.drift import DriftActivities
    from stead.contracts.drift import (
        DRIFT_WORKFLOW,
        DriftCheckInput,
        DriftCheckRequest,
        DriftCheckSummary,
    )

BAD_DRIFT_INPUT = "BadDriftInput"
"""Failure type of a run whose windows are empty or overlap (retrying cannot fix them)."""


@workflow.defn(name=DRIFT_WORKFLOW)
class DriftWorkflow:
    @workflow.run
    async def run(self, check: DriftCheckInput) -> DriftCheckSummary:
        now = workflow.now()
        try:
            windows = check.windows_at(now)
        except ValueError as err:
            raise ApplicationError(f"bad drift windows: {err}", type=BAD_DRIFT_INPUT,
                                   non_retryable=True) from None
        scope = ", ".join(f"{k} {v}" for k, v in (("agent", check.agent),
                                                   ("tenant", check.tenant)) if v)
        summary = await workflow.execute_activity_method(
            DriftActivities.check,
            DriftCheckRequest(windows=windows, agent=check.agent, tenant=check.tenant,
                              include_synthetic=check.include_synthetic,
                              thresholds=check.thresholds, checked_at=now),
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=5,
                                     maximum_interval=timedelta(minutes=1)),
            summary=f"drift: {windows.recent.label()} vs {windows.baseline.label()}"
                    + (f" ({scope})" if scope else ""))
        workflow.set_current_details(
            f"check {summary.check_id}: "
            + (f"crossed: {', '.join(summary.crossed)}" if summary.crossed
               else f"nothing crossed of {summary.signals} signals")
            + (f"; insufficient data: {', '.join(summary.insufficient)}"
               if summary.insufficient else ""))
        return summary
