"""AgentWorkflow: the durable agent loop.

think (model activity) -> gate each proposed call (guardrails) -> run tools (one activity per
tool, its own retry policy, then its fallbacks) -> think ... -> answer, within a step budget.
Deterministic: no I/O, clocks or randomness here; everything that touches the world is an
activity, and the agent's plan is pinned in history by the ``run.start`` local activity.
"""

from __future__ import annotations

import json
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from guardrails.calls import check_call
    from stead import errors
    from stead.models import (
        AgentPlan,
        DecisionRecord,
        FinishRun,
        Message,
        ModelRequest,
        ModelTurn,
        RunRef,
        RunRequest,
        RunResult,
        RunState,
        RunStatus,
        StartRun,
        StepInfo,
        ToolCall,
        ToolCallRecord,
        ToolInvocation,
        ToolOutcome,
        ToolPlan,
    )
    from stead.tools import activity_name

AGENT_KEY = SearchAttributeKey.for_keyword("SteadAgent")
TENANT_KEY = SearchAttributeKey.for_keyword("SteadTenant")

_LOCAL = timedelta(seconds=60)
_LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=2,
                           maximum_interval=timedelta(seconds=5), maximum_attempts=0,
                           non_retryable_error_types=[errors.UNKNOWN_AGENT])


def _short(args: dict[str, object], limit: int = 80) -> str:
    text = json.dumps(args, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@workflow.defn(name="AgentWorkflow", failure_exception_types=[ValidationError])
class AgentWorkflow:
    """Runs one agent on one request. Query ``state`` for progress."""

    def __init__(self) -> None:
        self._state = RunState(agent="", tenant="", status="running", step=0, node="start")

    @workflow.query(name="state")
    def state(self) -> RunState:
        return self._state

    def _at(self, node: str, details: str) -> None:
        self._state.node = node
        workflow.set_current_details(details)

    def _log(self, kind: str, name: str, status: str, detail: str = "") -> None:
        self._state.history.append(StepInfo(step=self._state.step, kind=kind,
                                            name=name, status=status, detail=detail))

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        info = workflow.info()
        self._state.agent, self._state.tenant = request.agent, request.tenant
        ref = RunRef(workflow_id=info.workflow_id, run_id=info.run_id, agent=request.agent,
                     tenant=request.tenant)
        self._key_root = f"{info.workflow_id}:{info.first_execution_run_id}"
        attrs = info.typed_search_attributes
        if attrs.get(AGENT_KEY) is None or attrs.get(TENANT_KEY) is None:
            workflow.upsert_search_attributes([AGENT_KEY.value_set(request.agent),
                                               TENANT_KEY.value_set(request.tenant)])
        self._at("start", f"Starting agent **{request.agent}** for tenant {request.tenant}")
        try:
            plan = await workflow.execute_local_activity(
                "run.start", StartRun(ref=ref, request=request), result_type=AgentPlan,
                start_to_close_timeout=_LOCAL, schedule_to_close_timeout=timedelta(minutes=10),
                retry_policy=_LOCAL_RETRY, summary="open run in ledger")
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == errors.UNKNOWN_AGENT:
                raise ApplicationError(cause.message, type=errors.UNKNOWN_AGENT,
                                       non_retryable=True) from None
            raise
        result = await self._loop(ref, request, plan)
        self._state.status = result.status
        self._state.result = result
        self._at("done", f"Finished: **{result.status}** after {result.steps} steps")
        await workflow.execute_local_activity(
            "run.finish", FinishRun(ref=ref, result=result), start_to_close_timeout=_LOCAL,
            schedule_to_close_timeout=timedelta(minutes=10), retry_policy=_LOCAL_RETRY,
            summary="close run in ledger")
        return result

    # ------------------------------------------------------------------ the loop

    async def _loop(self, ref: RunRef, request: RunRequest, plan: AgentPlan) -> RunResult:
        tools = {t.name: t for t in plan.tools}
        schemas = [t.schema_for_model() for t in plan.tools]
        messages = [Message(role="system", content=plan.instructions),
                    Message(role="user", content=request.input)]
        res = RunResult(status="running", steps=0, model=plan.model)
        budget = plan.max_steps

        def finish(status: RunStatus, answer: str | None = None,
                   error: str | None = None) -> RunResult:
            res.status, res.answer, res.error = status, answer, error
            res.steps = self._state.step
            return res

        while True:
            if self._state.step >= budget:
                return finish("failed", error=f"step budget of {budget} exhausted before an answer")
            self._state.step += 1
            self._at("think", f"Step {self._state.step}/{budget}: asking the model "
                              f"({plan.model}) what to do next")
            try:
                turn = await workflow.execute_activity(
                    "model.complete",
                    ModelRequest(ref=ref.model_copy(update={"step": self._state.step}),
                                 messages=messages, tools=schemas),
                    result_type=ModelTurn,
                    start_to_close_timeout=timedelta(seconds=plan.model_timeout),
                    schedule_to_close_timeout=timedelta(
                        seconds=plan.model_timeout * plan.model_max_attempts + 120),
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1),
                                             backoff_coefficient=2,
                                             maximum_interval=timedelta(seconds=30),
                                             maximum_attempts=plan.model_max_attempts),
                    summary=f"think (step {self._state.step})")
            except ActivityError as err:
                self._log("model", plan.model, "error", _cause(err))
                return finish("failed", error=f"model call failed: {_cause(err)}")
            res.model_turns += 1
            self._log("model", turn.model or plan.model, "ok",
                      f"{len(turn.tool_calls)} tool call(s)" if turn.tool_calls else "answer")
            messages.append(Message(role="assistant", content=turn.content,
                                    tool_calls=turn.tool_calls))
            if not turn.tool_calls:
                return finish("completed", answer=turn.content or "")
            for call in turn.tool_calls:
                if self._state.step >= budget:
                    messages.append(_tool_message(call, {"error": {
                        "type": "BudgetExhausted", "message": "step budget exhausted"}}))
                    continue
                self._state.step += 1
                outcome = await self._call(ref, call, tools, res)
                messages.append(_tool_message(call, outcome))
                if res.status == "escalated":
                    return finish("escalated", error=res.error)

    async def _call(self, ref: RunRef, call: ToolCall, tools: dict[str, ToolPlan],
                    res: RunResult) -> dict[str, object]:
        step = self._state.step
        verdict = check_call(call, tools)
        if verdict.error is not None or verdict.arguments is None:
            res.rejected_calls += 1
            self._log("rejected", call.name, verdict.kind, verdict.error or "")
            res.tool_calls.append(ToolCallRecord(step=step, call_id=call.id, tool=call.name,
                                                 arguments={}, status="rejected",
                                                 error=verdict.error))
            await self._decide(ref, step, "call_rejected", verdict.kind, verdict.error or "",
                               {"tool": call.name, "arguments": call.arguments[:2000]})
            return {"error": {"type": verdict.kind, "message": verdict.error}}
        args = verdict.arguments
        plan = tools[call.name]
        failures: list[dict[str, object]] = []
        for name in [plan.name, *plan.fallbacks]:
            tp = tools[name]
            self._at(f"tool:{name}", f"Step {step}: calling **{name}** {_short(args)}"
                     + (f" (fallback for {plan.name})" if name != plan.name else ""))
            try:
                out = await workflow.execute_activity(
                    activity_name(name),
                    ToolInvocation(ref=ref.model_copy(update={"step": step}), call_id=call.id,
                                   tool=name, requested_tool=plan.name, arguments=args,
                                   idempotency_key=f"{self._key_root}:{step}:{name}"),
                    result_type=ToolOutcome,
                    start_to_close_timeout=timedelta(seconds=tp.timeouts.start_to_close),
                    schedule_to_close_timeout=timedelta(seconds=_overall_bound(tp)),
                    heartbeat_timeout=(timedelta(seconds=tp.timeouts.heartbeat)
                                       if tp.timeouts.heartbeat else None),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=tp.retry.initial_interval),
                        backoff_coefficient=tp.retry.backoff,
                        maximum_interval=timedelta(seconds=tp.retry.max_interval),
                        maximum_attempts=tp.retry.max_attempts,
                        non_retryable_error_types=[*tp.retry.non_retryable, "InvalidArguments",
                                                   errors.TOOL_OUTCOME_UNKNOWN]),
                    summary=f"{name} {_short(args, 60)}")
            except ActivityError as err:
                attempts = _attempts(err, tp)
                res.retries += max(attempts - 1, 0)
                failures.append({"tool": name, "attempts": attempts, "error": _cause(err)})
                self._log("tool", name, "error", _cause(err))
                if _cause_type(err) == errors.TOOL_OUTCOME_UNKNOWN:
                    res.tool_calls.append(ToolCallRecord(
                        step=step, call_id=call.id, tool=plan.name, arguments=args,
                        status="error", served_by=name, attempts=attempts, error=_cause(err)))
                    await self._decide(ref, step, "outcome_unknown", "escalate", _cause(err),
                                       {"tool": name})
                    res.status, res.error = "escalated", _cause(err)
                    return {"error": {"type": errors.TOOL_OUTCOME_UNKNOWN,
                                      "message": _cause(err)}}
                continue
            res.retries += max(out.attempt - 1, 0)
            if name != plan.name:
                res.fallbacks += 1
                await self._decide(ref, step, "fallback", name,
                                   f"{plan.name} failed; served by fallback {name}",
                                   {"failures": failures})
            self._log("tool", name, "ok", "replayed from ledger" if out.replayed else "")
            res.tool_calls.append(ToolCallRecord(
                step=step, call_id=call.id, tool=plan.name, arguments=args, status="ok",
                served_by=name, attempts=out.attempt))
            return {"ok": True, "tool": name, "result": out.result}
        attempts_total = sum(int(str(f["attempts"])) for f in failures)
        res.tool_calls.append(ToolCallRecord(
            step=step, call_id=call.id, tool=plan.name, arguments=args, status="error",
            attempts=attempts_total, error="; ".join(str(f["error"]) for f in failures)))
        await self._decide(ref, step, "tool_failed", "report_to_model",
                           f"{plan.name} and its fallbacks failed", {"failures": failures})
        return {"error": {"type": errors.TOOL_FAILED,
                          "message": f"{plan.name} failed after retries"
                                     + (" and fallbacks" if plan.fallbacks else ""),
                          "failures": failures}}

    async def _decide(self, ref: RunRef, step: int, kind: str, decision: str, reason: str,
                      data: dict[str, object]) -> None:
        await workflow.execute_local_activity(
            "run.decision",
            DecisionRecord(ref=ref.model_copy(update={"step": step}), kind=kind,
                           decision=decision, reason=reason, data=data),
            start_to_close_timeout=_LOCAL, schedule_to_close_timeout=timedelta(minutes=10),
            retry_policy=_LOCAL_RETRY, summary=f"record {kind}")


def _tool_message(call: ToolCall, payload: dict[str, object]) -> Message:
    return Message(role="tool", tool_call_id=call.id, name=call.name,
                   content=json.dumps(payload, separators=(",", ":"), sort_keys=True,
                                      default=str))


def _overall_bound(tp: ToolPlan) -> float:
    """Every wait has a bound: the tool's own, or attempts x timeout plus backoff."""
    if tp.timeouts.schedule_to_close is not None:
        return tp.timeouts.schedule_to_close
    r = tp.retry
    backoff = 0.0
    interval = r.initial_interval
    for _ in range(r.max_attempts - 1):
        backoff += min(interval, r.max_interval)
        interval *= r.backoff
    return tp.timeouts.start_to_close * r.max_attempts + backoff + 5.0


def _cause(err: ActivityError) -> str:
    c = err.cause
    if isinstance(c, ApplicationError):
        return c.message
    if isinstance(c, TimeoutError):
        return f"timed out ({c.type.name.lower() if c.type else 'timeout'})"
    return str(c or err)


def _cause_type(err: ActivityError) -> str | None:
    c = err.cause
    return c.type if isinstance(c, ApplicationError) else None


def _attempts(err: ActivityError, tp: ToolPlan) -> int:
    c = err.cause
    if isinstance(c, ApplicationError) and c.details:
        detail = c.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return int(detail["attempt"])
    return tp.retry.max_attempts
