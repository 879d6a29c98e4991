"""The run's memory steps: recall before the model thinks, remember a completed run.

Memory is advisory: a failed recall or write is logged in the run's steps and the run goes on.

    items = await memory.recall()            # [] when the plan has no memory
    await memory.remember(result, plan)      # a completed run's summary note
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from stead.workflows._context import Context, Frame
from stead.workflows._seam import ActivityCall
from stead.workflows._toolcall import cause

with workflow.unsafe.imports_passed_through():
    from stead.activities.memory import MemoryActivities
    from stead.contracts.models import (
        AgentPlan,
        MemoryNote,
        RecalledItem,
        RecallRequest,
        RecallResult,
        RunResult,
        WriteRequest,
    )


class MemorySteps:
    """Recall and remember for one run, as its plan's memory settings say."""

    def __init__(self, ctx: Context, frame: Frame) -> None:
        self._ctx = ctx
        self._frame = frame

    async def recall(self) -> list[RecalledItem]:
        ctx, request = self._ctx, self._frame.request
        mem = self._frame.plan.memory
        if mem is None or mem.recall_top_k == 0:
            return []
        ctx.at("recall", "Recalling relevant memory for the request")
        try:
            got = await ctx.seam.activity(ActivityCall(
                MemoryActivities.recall,
                RecallRequest(ref=ctx.ref, query=request.input[:4000], top_k=mem.recall_top_k,
                              namespaces=mem.recall_namespaces, min_score=mem.min_score),
                result_type=RecallResult, start_to_close=timedelta(seconds=30),
                schedule_to_close=timedelta(minutes=2),
                retry=RetryPolicy(maximum_attempts=3), summary="recall memory"))
        except ActivityError as err:
            ctx.log("memory", "recall", "error", cause(err))
            return []
        ctx.log("memory", "recall", "ok",
                f"{len(got.items)} item(s): " + ", ".join(i.id for i in got.items)[:200])
        return got.items

    async def remember(self, res: RunResult, plan: AgentPlan) -> None:
        """Write ``res``'s summary note, as ``plan`` (the run's own, or the agent's the
        request was handed over to) says."""
        ctx, request = self._ctx, self._frame.request
        mem = plan.memory
        if mem is None or not mem.write_summary or res.status != "completed" or not res.answer:
            return
        note = MemoryNote(text=f"Request: {request.input[:4000]}\nAnswer: {res.answer[:8000]}",
                          namespace="runs", subject=request.user,
                          ttl_seconds=mem.summary_ttl_seconds,
                          metadata={"kind": "run_summary", "status": res.status})
        try:
            await ctx.seam.activity(ActivityCall(
                MemoryActivities.write,
                WriteRequest(ref=ctx.ref.model_copy(update={"step": ctx.state.step}),
                             notes=[note]),
                start_to_close=timedelta(seconds=30), schedule_to_close=timedelta(minutes=2),
                retry=RetryPolicy(maximum_attempts=3), summary="remember run summary"))
            ctx.log("memory", "write", "ok", "run summary")
        except ActivityError as err:
            ctx.log("memory", "write", "error", cause(err))
