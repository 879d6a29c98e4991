"""The online evaluation activities: find finished runs to grade, and grade a batch of them.

``EvaluationWorkflow`` (``workflows/evaluation.py``) runs them; the grading itself is
``stead.evals.online``.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import activity

from stead.authoring.agent import AgentCatalog
from stead.evals.online import (
    EvaluateRuns,
    PendingRequest,
    PendingRuns,
    RunVerdicts,
    evaluate_runs,
    pending_runs,
)
from stead.integrations.llm import ModelClient
from stead.storage.ledger import Ledger


class EvaluationActivities:
    """Bound to the worker's catalog (whose agents declare the evaluators) and ledger.

    ``judge_model_for``: the model of an agent's judges when its ``OnlineEvals`` names none
    (the worker passes the model that serves the agent). ``sample``: ``STEAD_EVAL_SAMPLE``,
    overriding every agent's share."""

    def __init__(self, catalog: AgentCatalog, ledger: Ledger, *,
                 judge_model_for: Callable[[str], ModelClient] | None = None,
                 sample: float | None = None, judge_timeout: float = 60.0) -> None:
        self._catalog = catalog
        self._ledger = ledger
        self._judge_model_for = judge_model_for
        self._sample = sample
        self._judge_timeout = judge_timeout

    @activity.defn(name="evals.pending")
    async def pending(self, req: PendingRequest) -> PendingRuns:
        """Sampled finished runs that a current evaluator has not scored, oldest first."""
        return await pending_runs(self._ledger.pool, self._catalog, req, sample=self._sample)

    @activity.defn(name="evals.evaluate")
    async def evaluate(self, req: EvaluateRuns) -> RunVerdicts:
        """Grade a batch of runs and store their scores once (a retried attempt adds
        nothing)."""
        info = activity.info()
        return RunVerdicts(verdicts=await evaluate_runs(
            self._ledger, self._catalog, req.runs,
            source=f"{info.workflow_id}/{info.workflow_run_id}",
            judge_model_for=self._judge_model_for, judge_timeout=self._judge_timeout))
