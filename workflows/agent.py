"""AgentWorkflow: the durable agent loop, as a thin Temporal shell over its parts.

route the request (policy) -> think (model activity) -> gate each proposed call (schema, risk,
policy: allow / ask a human / deny) -> run tools (one activity per tool, its own retry policy,
then its fallbacks) -> think ... -> validate the answer (reask, escalate) -> result.

The shell holds the run's entry points (``run``, the ``approve``/``reject`` signals, the
``decide`` update and its validator, the ``raise_budget`` update and signal, the ``state``
query); the parts do the work:

- ``stead.workflows._graph``: the graph interpreter, one handler per node kind;
- ``stead.workflows._toolcall``: one tool call, schema gate -> risk -> approval -> execution;
- ``stead.workflows._approvals``: the approval book (early signals, deadlines, escalation);
- ``stead.workflows._decisions``: the decision buffer that becomes the run's audit rows;
- ``stead.workflows._budget``: the run's budget book (limits, spending, stop/ask/step down);
- ``stead.workflows._model`` and ``stead.workflows._memory``: the model and memory activity calls;
- ``stead.workflows._seam``: the only place the parts reach Temporal.

Deterministic: no I/O, clocks or randomness here; everything that touches the world is an
activity, and the agent's plan and policy are pinned in history by the ``run.start`` local
activity, so a run replays with the rules it started with.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from stead.workflows._admission import AdmissionGate
from stead.workflows._approvals import ApprovalBook
from stead.workflows._budget import BudgetBook
from stead.workflows._context import Context, Frame, unpinned_policy
from stead.workflows._decisions import DecisionLog
from stead.workflows._graph import GraphRun
from stead.workflows._seam import TemporalSeam, bookkeeping

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from stead import errors
    from stead.activities.runs import RunActivities
    from stead.client import WORKFLOW_TYPE
    from stead.contracts.budget import Budget, RaiseBudget
    from stead.contracts.models import (
        AgentPlan,
        ApprovalDecision,
        DecideInput,
        DecideOutcome,
        FinishRun,
        RunRef,
        RunRequest,
        RunResult,
        RunState,
        StartRun,
    )
    from stead.contracts.search_attributes import AGENT_KEY, TENANT_KEY


@workflow.defn(name=WORKFLOW_TYPE, failure_exception_types=[ValidationError])
class AgentWorkflow:
    """Runs one agent on one request. Query ``state``; signal ``approve``/``reject``;
    update ``decide``."""

    seam: ClassVar[type[TemporalSeam]] = TemporalSeam
    """How the parts reach Temporal (tests wrap it to change what a run does)."""

    def __init__(self) -> None:
        # Handlers may run before ``run`` starts: everything they touch exists from here on.
        info = workflow.info()
        self._ctx = Context(
            seam=self.seam(),
            state=RunState(agent="", tenant="", status="running", step=0, node="start"),
            ref=RunRef(workflow_id=info.workflow_id, run_id=info.run_id, agent="", tenant=""))
        self._decisions = DecisionLog(self._ctx)
        self._book = ApprovalBook(self._ctx, self._decisions)
        self._admission = AdmissionGate(self._ctx, self._decisions)
        self._budget = BudgetBook(self._ctx, self._decisions)

    # ------------------------------------------------------------------ queries & handlers

    @workflow.query(name="state")
    def state(self) -> RunState:
        return self._ctx.state.model_copy(update={"pending_approvals": self._book.pending(),
                                                  "budget": self._budget.state()})

    # Signals and the update accept a missing payload (``temporal workflow signal`` without
    # --input, an empty Web UI form): it is refused and audited, never fails the workflow task.
    @workflow.signal(name="approve")
    def approve(self, decision: ApprovalDecision | None = None) -> None:
        self._book.apply(decision, approved=True, via="signal")

    @workflow.signal(name="reject")
    def reject(self, decision: ApprovalDecision | None = None) -> None:
        self._book.apply(decision, approved=False, via="signal")

    @workflow.signal(name="admit")
    def admit(self) -> None:
        """A slot of the run's tenant freed up: a queued run asks for admission again."""
        self._admission.wake()

    @workflow.update(name="decide")
    async def decide_update(self, decision: DecideInput | None = None) -> DecideOutcome:
        assert decision is not None  # the validator refuses a missing payload
        self._book.apply(decision, approved=decision.approved, via="update")
        return await self._book.outcome(decision.approval_id)

    @decide_update.validator
    def _validate_decide(self, decision: DecideInput | None = None) -> None:
        self._book.validate(decision)

    @workflow.update(name="raise_budget")
    def raise_budget_update(self, raised: RaiseBudget | None = None) -> Budget:
        """Raise the run's budget (each limit only upward; who and why are audited); returns
        the new limit. A run waiting under ``on_exceed: ask`` goes on once its call fits."""
        return self._budget.apply(raised, via="update")

    @raise_budget_update.validator
    def _validate_raise_budget(self, raised: RaiseBudget | None = None) -> None:
        why = self._budget.refusal(raised)
        if why is not None:
            raise ValueError(why)

    @workflow.signal(name="raise_budget")
    def raise_budget_signal(self, raised: RaiseBudget | None = None) -> None:
        """The update's fire-and-forget twin: a refused raise is audited, never applied."""
        self._budget.apply(raised, via="signal")

    # ------------------------------------------------------------------ the run

    @workflow.run
    async def run(self, request: RunRequest | None = None) -> RunResult:
        if request is None:  # a null or missing payload skips the converter's validation
            raise ApplicationError(
                'a run needs a RunRequest, e.g. {"agent": "ops", "input": "..."}; got none',
                type=errors.BAD_REQUEST, non_retryable=True)
        ctx, decisions = self._ctx, self._decisions
        info = workflow.info()
        ctx.state.agent, ctx.state.tenant = request.agent, request.tenant
        ctx.ref = RunRef(workflow_id=info.workflow_id, run_id=info.run_id,
                         agent=request.agent, tenant=request.tenant)
        ctx.key_root = f"{info.workflow_id}:{info.first_execution_run_id}"
        attrs = info.typed_search_attributes
        if attrs.get(AGENT_KEY) is None or attrs.get(TENANT_KEY) is None:
            ctx.seam.upsert([AGENT_KEY.value_set(request.agent),
                             TENANT_KEY.value_set(request.tenant)])
        ctx.at("start", f"Starting agent **{request.agent}** for tenant {request.tenant}")
        plan = await self._start(request)
        ctx.policy = plan.policy or unpinned_policy(ctx.seam)
        ctx.approval_timeout = ctx.policy.approvals.timeout_seconds
        override = request.metadata.get("approval_timeout_seconds")
        if override is not None:
            try:  # a request may shorten the deadline (e.g. a drill), never lengthen it
                ctx.approval_timeout = min(ctx.approval_timeout, max(float(override), 0.1))
            except ValueError:
                pass
        self._budget.start(ctx.policy, request)
        graph = GraphRun(ctx, Frame.start(ctx, request, plan), decisions, self._book,
                         budget=self._budget)
        try:
            result = await self._admission.run(plan, graph.run, request, info)
            await graph.memory.remember(result, plan)
        except ApplicationError as err:
            # The run fails: its failure carries what it spent, for a parent to count (the
            # same error otherwise, its cause included).
            failed = self._budget.failure(err)
            if failed is err:
                raise
            raise failed from err.__cause__
        self._book.flush_ignored(ctx.state.step)
        result.decisions, result.audit_head = decisions.seq, decisions.head
        ctx.state.status = result.status
        ctx.state.result = result
        ctx.at("done", f"Finished: **{result.status}** after {result.steps} steps")
        await ctx.seam.activity(bookkeeping(
            RunActivities.finish_run,
            FinishRun(ref=ctx.ref, result=result, decisions=decisions.take()),
            summary="close run in ledger"))
        return result

    async def _start(self, request: RunRequest) -> AgentPlan:
        """Pin the agent's plan and policy in history and open the run in the ledger."""
        try:
            return await self._ctx.seam.activity(bookkeeping(
                RunActivities.start_run, StartRun(ref=self._ctx.ref, request=request),
                result_type=AgentPlan, summary="open run in ledger"))
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == errors.UNKNOWN_AGENT:
                raise ApplicationError(cause.message, type=errors.UNKNOWN_AGENT,
                                       non_retryable=True) from None
            raise
