"""The drift check activity: compare two windows of runs and record the report.

``DriftWorkflow`` (``workflows/drift.py``) runs it on a Temporal Schedule; ``stead drift``
computes the same report in the CLI without recording it.
"""

from __future__ import annotations

from temporalio import activity

from stead.evals.drift import (
    DriftCheckRequest,
    DriftCheckSummary,
    record_check,
    run_check,
    summarize,
)
from stead.storage.ledger import Ledger
from stead.storage.memory import Embedder


class DriftActivities:
    """Bound to the ledger and, when the worker has memory, its embedder (used to compare the
    topics of incoming requests; without one that signal is reported as skipped)."""

    def __init__(self, ledger: Ledger, *, embedder: Embedder | None = None) -> None:
        self._ledger = ledger
        self._embedder = embedder

    @activity.defn(name="drift.check")
    async def check(self, request: DriftCheckRequest) -> DriftCheckSummary:
        """Compute the report and store it in ``stead_drift_checks`` once per scheduled run
        (keyed by workflow and run id, so a retried attempt replaces its own row)."""
        check = await run_check(self._ledger.pool, request, embedder=self._embedder)
        info = activity.info()
        check_id = await record_check(self._ledger.pool, check.report,
                                      source=f"{info.workflow_id}/{info.workflow_run_id}")
        return summarize(check.report, check_id)
