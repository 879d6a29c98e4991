"""EvaluationWorkflow: one sweep of online evaluation, started by a Temporal Schedule (the worker
processes create it; ``stead grade --schedule``) or now (``stead grade``).

It asks ``evals.pending`` for sampled finished runs that some evaluator has not scored, then
grades them with ``evals.evaluate``, ``batch`` runs per activity, ``concurrency`` activities
at a time. A run is never touched: the sweep reads the ledger and writes only
``stead_evaluations``. Runs whose evaluation fails for good are left for the next sweep; the
sweep itself never fails for them.
More runs than ``limit`` continue as new (the window stays the first run's).
Deterministic: the window comes from ``workflow.now()``, every side effect is an activity.

    temporal workflow start --type EvaluationWorkflow --task-queue stead --input '{}'
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from stead.activities.evaluation import EvaluationActivities
    from stead.contracts.evaluation import (
        EVALUATION_WORKFLOW,
        EvaluateRuns,
        EvaluationSweep,
        EvaluationSweepSummary,
        PendingRequest,
        RunKey,
        RunVerdict,
    )


@workflow.defn(name=EVALUATION_WORKFLOW)
class EvaluationWorkflow:
    @workflow.run
    async def run(self, sweep: EvaluationSweep) -> EvaluationSweepSummary:
        until = sweep.until or workflow.now()
        since = until - sweep.lookback
        total = sweep.carried or EvaluationSweepSummary(since=since, until=until, rounds=0)
        pending = await workflow.execute_activity_method(
            EvaluationActivities.pending,
            PendingRequest(since=since, until=until, agent=sweep.agent, limit=sweep.limit),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=1)),
            summary=f"find runs to evaluate ({sweep.agent or 'every agent'})")
        batches = [pending.runs[i:i + sweep.batch]
                   for i in range(0, len(pending.runs), sweep.batch)]
        verdicts: list[RunVerdict] = []
        failed = 0
        for i in range(0, len(batches), sweep.concurrency):
            chunk = batches[i:i + sweep.concurrency]
            got = await asyncio.gather(*(self._grade(b) for b in chunk))
            for batch, done in zip(chunk, got, strict=True):
                if done is None:
                    failed += len(batch)
                else:
                    verdicts += done
        graded = [v for v in verdicts if v.outcome != "missing"]
        total = total.model_copy(update={
            "runs": total.runs + len(graded),
            "succeeded": total.succeeded + sum(v.outcome == "succeeded" for v in graded),
            "unsuccessful": total.unsuccessful + sum(v.outcome == "unsuccessful"
                                                     for v in graded),
            "unknown": total.unknown + sum(v.outcome == "unknown" for v in graded),
            "rows": total.rows + sum(v.written for v in verdicts),
            "failed_activities": total.failed_activities + failed,
            "rounds": total.rounds + 1, "more": pending.more,
            "agents": total.agents or pending.agents})
        workflow.set_current_details(
            f"round {sweep.round + 1}: {len(graded)} run(s) graded"
            + (f", {failed} evaluation(s) failed" if failed else "")
            + ("; more to grade" if pending.more else ""))
        # Go on while there is more and this round got somewhere (a round whose every
        # evaluation failed would only find the same runs again).
        if pending.more and sweep.round + 1 < sweep.rounds and verdicts:
            workflow.continue_as_new(sweep.model_copy(update={
                "round": sweep.round + 1, "until": until, "carried": total}))
        return total

    async def _grade(self, batch: list[RunKey]) -> list[RunVerdict] | None:
        try:
            done = await workflow.execute_activity_method(
                EvaluationActivities.evaluate, EvaluateRuns(runs=batch),
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=RetryPolicy(maximum_attempts=3,
                                         maximum_interval=timedelta(seconds=30)),
                summary=f"evaluate {len(batch)} run(s)")
        except ActivityError:
            return None
        return done.verdicts
