"""A run of a limited tenant waits its turn before its first step: admitted, queued or refused.

    gate = AdmissionGate(ctx, decisions)                  # in the workflow's __init__
    result = await gate.run(plan, graph.run, request, workflow.info())

When the run's pinned plan carries its tenant's quota (``AgentPlan.admission``: the tenant
caps runs in flight or starts per minute) the run asks the ``run.admit`` local activity for its
turn. Queued, it shows ``queued`` in the ``state`` query and waits — for the ``admit`` signal
that an ending run of its tenant sends when it frees a slot, or for the re-check interval (or
the time the starts-per-minute window frees up, whichever is sooner) — and asks again. The
request is never lost: the waiting run is a workflow in history, and a worker restart only
replays it. Refused (``over_quota: refuse``), the run ends ``refused`` with route
``refuse:quota`` and an answer that says which cap and when to try again. Once admitted it
runs, and gives its slot back (``run.release``) when it ends, fails or is cancelled.

Every answer is an audit row (kind ``admission``: ``queue``, ``admit``, ``refuse``). A
sub-agent (a child ``AgentWorkflow`` that a graph's sub-agent node starts) runs inside its
parent's admission: asking again could deadlock a tenant at its cap on runs waiting for their
own children. A conversation's turns are runs of their own and ask. Runs of tenants without
caps ask nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import TemporalError

from stead.workflows._context import Context
from stead.workflows._decisions import DecisionLog
from stead.workflows._seam import bookkeeping

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from stead.activities.admission import AdmissionActivities
    from stead.contracts.admission import Admission, AdmitRun, ReleaseRun
    from stead.contracts.models import AgentPlan, RunRequest, RunResult

ADMISSION_PATCH = "stead-admission"
"""Runs from this patch on ask for admission when their plan pins a tenant quota."""

QUEUE_TIMEOUT_PATCH = "stead-admission-queue-timeout"
"""Asked when a run first queues: from this patch on a run that waited its quota's
``queue_timeout_seconds`` is refused; a run recorded before waits on as it did."""

PARENT_KEY = "stead.parent"
"""``RunRequest.metadata`` key a sub-agent's request names its parent run by
(``stead.workflows._graph``)."""

ENDINGS = (asyncio.CancelledError, TemporalError, ValidationError)
"""How an admitted run may end besides returning: cancelled, or failed (the run's failure
types). Anything else fails a workflow task, which Temporal retries: the run is not over."""


class AdmissionGate:
    """The run's admission: asks, waits (``wake`` on the ``admit`` signal), releases."""

    def __init__(self, ctx: Context, decisions: DecisionLog) -> None:
        self._ctx = ctx
        self._decisions = decisions
        self._woken = False

    def wake(self) -> None:
        """The ``admit`` signal: the run's turn may have come; ask now."""
        self._woken = True

    async def run(self, plan: AgentPlan, go: Callable[[], Awaitable[RunResult]],
                  request: RunRequest, info: workflow.Info) -> RunResult:
        """``go()`` once admitted; the refusal as the run's result when refused."""
        ctx = self._ctx
        parent = info.parent.workflow_id if info.parent is not None else None
        subagent = parent is not None and request.metadata.get(PARENT_KEY) == parent
        if plan.admission is None or subagent or not ctx.seam.patched(ADMISSION_PATCH):
            return await go()
        ask = AdmitRun(ref=ctx.ref, first_run_id=info.first_execution_run_id)
        queued = False
        try:
            # The flag is cleared before each ask, not after: a wake-up that arrives while
            # the answer is being decided (a slot freed meanwhile) ends the next wait at once.
            self._woken = False
            answer = await self._ask(ask)
            deadline: datetime | None = None
            while answer.verdict == "queued":
                if not queued:
                    self._record(answer, "queue")
                    await self._decisions.flush()  # the run waits: its rows are written now
                    if ctx.seam.patched(QUEUE_TIMEOUT_PATCH):
                        deadline = ctx.seam.now() + timedelta(
                            seconds=plan.admission.queue_timeout_seconds)
                queued = True
                ctx.state.status = "queued"
                ctx.at("queued", f"Queued for admission: {answer.reason}")
                wait = answer.wait_seconds
                if deadline is not None:
                    left = (deadline - ctx.seam.now()).total_seconds()
                    if left <= 0:
                        return await self._timed_out(plan, answer)
                    wait = min(wait, left)
                await ctx.seam.wait(lambda: self._woken, timeout=wait)
                self._woken = False
                answer = await self._ask(ask.model_copy(update={"waited": True}))
            queued = False
            if answer.verdict == "refused":
                self._record(answer, "refuse")
                return RunResult(status="refused", answer=f"Refused: {answer.reason}.",
                                 steps=0, route="refuse:quota", policy=ctx.policy.ref,
                                 model=plan.model)
            self._record(answer, "admit")
            ctx.state.status = "running"
            ctx.at("start", f"Admitted ({answer.in_flight} runs of tenant "
                            f"{ctx.ref.tenant} in flight)")
            result = await go()
        except ENDINGS:
            await self._release(queued=queued)
            raise
        await self._release(queued=False)
        return result

    async def _timed_out(self, plan: AgentPlan, answer: Admission) -> RunResult:
        """The run waited its quota's ``queue_timeout_seconds``: it leaves the queue and
        ends ``refused``, saying so."""
        assert plan.admission is not None
        waited = plan.admission.queue_timeout_seconds
        why = (f"waited {_duration(waited)} for a slot (queue_timeout_seconds) and "
               f"{answer.reason}")
        self._record(answer.model_copy(update={"reason": why}), "refuse",
                     queue_timeout_seconds=waited)
        await self._release(queued=True)
        ctx = self._ctx
        ctx.at("refused", f"Refused: {why}")
        return RunResult(status="refused", answer=f"Refused: {why}.", steps=0,
                         route="refuse:quota", policy=ctx.policy.ref, model=plan.model)

    async def _ask(self, ask: AdmitRun) -> Admission:
        return await self._ctx.seam.activity(bookkeeping(
            AdmissionActivities.admit, ask, result_type=Admission,
            summary="ask for admission" if not ask.waited else "ask again for admission"))

    async def _release(self, *, queued: bool) -> None:
        await self._ctx.seam.activity(bookkeeping(
            AdmissionActivities.release, ReleaseRun(ref=self._ctx.ref, queued=queued),
            summary="give the admission slot back"))

    def _record(self, answer: Admission, decision: str, **extra: object) -> None:
        data: dict[str, object] = {"limit": answer.limit, "in_flight": answer.in_flight,
                                   **extra}
        if answer.verdict == "queued":
            data["position"] = answer.position
        if answer.retry_after is not None:
            data["retry_after"] = round(answer.retry_after, 3)
        self._decisions.record(self._ctx.state.step, "admission", decision,
                               answer.reason or "within the tenant's quota", data)


def _duration(seconds: float) -> str:
    """``seconds`` in words: 7 days, 3 h, 90 s."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {'day' if unit == 'days' and n == 1 else unit}"
    return f"{seconds:g} s"
