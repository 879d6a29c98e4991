"""The path of one tool call: schema gate -> risk -> approval -> execution -> outcome.

``ToolCalls.call`` checks the model's call against the tool's schema, scores its risk and lets
the policy allow, ask a human (``ApprovalBook.ask``; edited arguments are checked and scored
again) or deny it, then runs the tool activity and, if it fails, its fallbacks. It answers
with a typed :data:`CallOutcome`; the caller decides what an outcome means for the run (a
:class:`Lost` call ends it escalated).

    outcome = await calls.call(ToolCall(id="c1", name="lookup", arguments="{}"), step=2)
    match outcome:
        case Ran(): ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

from stead.workflows._approvals import Approval, ApprovalBook, short
from stead.workflows._context import Context, Frame, execution
from stead.workflows._decisions import DecisionLog
from stead.workflows._seam import ActivityCall

with workflow.unsafe.imports_passed_through():
    from stead import errors
    from stead.authoring.tools import activity_name
    from stead.contracts.models import (
        JsonObject,
        Message,
        ToolCall,
        ToolCallRecord,
        ToolInvocation,
        ToolOutcome,
        ToolPlan,
    )
    from stead.contracts.search_attributes import RISK_KEY
    from stead.guardrails.calls import check_call
    from stead.guardrails.decisions import CallDecision
    from stead.guardrails.risk import decide, score_call

LOST_NON_IDEMPOTENT_PATCH = "escalate-lost-non-idempotent-call"
"""Patch that made a timed-out non-idempotent call escalate instead of being reported."""


@dataclass(frozen=True)
class Ran:
    """The tool ran (``tool``: the one that served it, maybe a fallback); ``result`` is
    untrusted data for the model and the gate."""

    tool: str
    result: JsonObject
    kind: Literal["ran"] = "ran"


@dataclass(frozen=True)
class NotRun:
    """The call was not run: its arguments were wrong, the policy or an approver denied it,
    or the step budget was spent. ``type`` and ``message`` are what the model is told."""

    type: str
    message: str
    expired: bool = False
    """Denied because no approver decided before the last deadline."""
    kind: Literal["not_run"] = "not_run"


@dataclass(frozen=True)
class Failed:
    """The tool and its fallbacks failed after their retries."""

    message: str
    failures: list[dict[str, object]]
    """Per tool tried: ``tool``, ``attempts``, ``error``."""
    kind: Literal["failed"] = "failed"


@dataclass(frozen=True)
class Lost:
    """The call may have taken effect but its outcome is unknown: the run escalates."""

    message: str
    kind: Literal["lost"] = "lost"


CallOutcome = Ran | NotRun | Failed | Lost

BUDGET_OUT = NotRun(type="BudgetExhausted", message="step budget exhausted")
"""What a call the step budget no longer allows reports."""


def tool_message(call: ToolCall, outcome: CallOutcome) -> Message:
    """The outcome as the ``tool`` message the model reads."""
    body: dict[str, Any]
    match outcome:
        case Ran(tool=tool, result=result):
            body = {"ok": True, "tool": tool, "result": result, "untrusted": True}
        case NotRun(type=kind, message=message):
            body = {"error": {"type": kind, "message": message}}
        case Failed(message=message, failures=failures):
            body = {"error": {"type": errors.TOOL_FAILED, "message": message,
                              "failures": failures}}
        case Lost(message=message):
            body = {"error": {"type": errors.TOOL_OUTCOME_UNKNOWN, "message": message}}
    return Message(role="tool", tool_call_id=call.id, name=call.name,
                   content=json.dumps(body, separators=(",", ":"), sort_keys=True, default=str))


class ToolCalls:
    """Gates and runs the tool calls of one run."""

    def __init__(self, ctx: Context, frame: Frame, decisions: DecisionLog,
                 book: ApprovalBook) -> None:
        self._ctx = ctx
        self._frame = frame
        self._decisions = decisions
        self._book = book

    async def call(self, call: ToolCall, step: int) -> CallOutcome:
        """Gate one call (schema, risk, policy), ask a human if the policy says so, run it."""
        res, decisions = self._frame.res, self._decisions
        verdict = check_call(call, self._frame.tools)
        if verdict.error is not None or verdict.arguments is None:
            res.rejected_calls += 1
            self._ctx.log("rejected", call.name, verdict.kind, verdict.error or "")
            res.tool_calls.append(ToolCallRecord(step=step, call_id=call.id, tool=call.name,
                                                 arguments={}, status="rejected",
                                                 error=verdict.error))
            decisions.record(step, "call_rejected", verdict.kind, verdict.error or "",
                             {"tool": call.name, "arguments": call.arguments[:2000]})
            return NotRun(type=verdict.kind, message=verdict.error or "")
        args = verdict.arguments
        plan = self._frame.tools[call.name]
        gate = self._gate(plan, args)
        decisions.record(step, "gate", gate.action, gate.reason,
                         {"tool": plan.name, "arguments": args, "risk": gate.risk.score,
                          "factors": [f.model_dump() for f in gate.risk.factors],
                          "untrusted": gate.risk.untrusted})
        if gate.action == "deny":
            return self._denied(call, plan, args, gate.reason, step)
        if gate.action == "ask":
            a = await self._book.ask(plan.name, args, gate.risk, gate.reason, step=step)
            res.escalations += a.level
            if a.status == "expired":
                res.escalations += 1
                return self._denied(call, plan, args,
                                    f"no approver decided before the last deadline; auto-denied "
                                    f"after escalating to {self._ctx.policy.approvals.chain[-1]}",
                                    step, expired=True)
            if a.status == "rejected":
                return self._denied(call, plan, args, f"rejected by {a.decided_by}"
                                    + (f": {a.note}" if a.note else ""), step)
            if a.edited is not None:
                checked = self._recheck(plan, a)
                decisions.record(step, "approval_edit", "deny" if checked is None else "allow",
                                 a.log[-1], {"approval_id": a.approval_id,
                                             "arguments": a.edited, "risk": a.rescored})
                if checked is None:
                    return self._denied(call, plan, a.edited, a.log[-1], step)
                args = checked
            res.approvals += 1
        return await self._execute(call, plan, args, step)

    def _gate(self, plan: ToolPlan, args: dict[str, Any]) -> CallDecision:
        frame, policy = self._frame, self._ctx.policy
        failures = sum(1 for c in frame.res.tool_calls if c.status == "error")
        risk = score_call(plan, args, policy=policy, route=frame.routed,
                          prior_failures=failures, untrusted_texts=frame.untrusted,
                          request_text=frame.request.input, confidence=frame.confidence)
        if risk.score > frame.max_risk:
            frame.max_risk = risk.score
            self._ctx.seam.upsert([RISK_KEY.value_set(risk.score)])
        return decide(plan, args, risk, policy=policy, route=frame.routed)

    def _recheck(self, plan: ToolPlan, a: Approval) -> dict[str, Any] | None:
        """Edited arguments: validate against the schema and score again; None if denied."""
        edited = a.edited or {}
        verdict = check_call(ToolCall(id="edit", name=plan.name, arguments=json.dumps(edited)),
                             self._frame.tools)
        if verdict.arguments is None:
            a.status = "denied_after_edit"
            a.log.append(f"edited arguments rejected: {verdict.error}")
            return None
        gate = self._gate(plan, verdict.arguments)
        a.rescored = gate.risk.score
        if gate.action == "deny":
            a.status = "denied_after_edit"
            a.log.append(f"edited arguments denied: {gate.reason}")
            return None
        a.log.append(f"edited arguments approved (risk {gate.risk.score:g})")
        return verdict.arguments

    def _denied(self, call: ToolCall, plan: ToolPlan, args: dict[str, Any], reason: str,
                step: int, *, expired: bool = False) -> NotRun:
        res = self._frame.res
        res.denials += 1
        self._ctx.log("denied", plan.name, "denied", reason)
        res.tool_calls.append(ToolCallRecord(step=step, call_id=call.id, tool=plan.name,
                                             arguments=args, status="rejected", error=reason))
        return NotRun(type="PolicyDenied", message=f"{plan.name} was not run: {reason}",
                      expired=expired)

    def _runs_locally(self, tp: ToolPlan) -> bool:
        """Read tools run as local activities when the run's policy allows it (the policy
        is pinned in history, so a replay takes the same path)."""
        ex = execution(self._ctx.policy)
        return (ex.local_reads and tp.side_effect == "read" and tp.idempotent
                and tp.timeouts.heartbeat is None
                and tp.timeouts.start_to_close <= ex.local_max_seconds)

    def _activity(self, name: str, inv: ToolInvocation, args: dict[str, Any]
                  ) -> ActivityCall[ToolOutcome]:
        """The activity that runs tool ``name``, with that tool's timeouts and retries."""
        tp = self._frame.tools[name]
        retry = RetryPolicy(
            initial_interval=timedelta(seconds=tp.retry.initial_interval),
            backoff_coefficient=tp.retry.backoff,
            maximum_interval=timedelta(seconds=tp.retry.max_interval),
            maximum_attempts=tp.retry.max_attempts,
            non_retryable_error_types=[*tp.retry.non_retryable, "InvalidArguments",
                                       errors.TOOL_OUTCOME_UNKNOWN])
        local = self._runs_locally(tp)
        return ActivityCall(
            activity_name(name), inv, result_type=ToolOutcome,
            start_to_close=timedelta(seconds=tp.timeouts.start_to_close),
            schedule_to_close=timedelta(seconds=overall_bound(tp)),
            heartbeat=(timedelta(seconds=tp.timeouts.heartbeat)
                       if tp.timeouts.heartbeat and not local else None),
            retry=retry, summary=f"{name} {short(args, 60)}" + (" (local)" if local else ""),
            local=local)

    async def _execute(self, call: ToolCall, plan: ToolPlan, args: dict[str, Any],
                       step: int) -> CallOutcome:
        ctx, res, decisions = self._ctx, self._frame.res, self._decisions
        failures: list[dict[str, object]] = []
        for name in [plan.name, *plan.fallbacks]:
            tp = self._frame.tools[name]
            ctx.at(f"tool:{name}", f"Step {step}: calling **{name}** {short(args)}"
                   + (f" (fallback for {plan.name})" if name != plan.name else ""))
            carried = decisions.carry(side_effect=not (tp.idempotent
                                                       and tp.side_effect == "read"))
            try:
                inv = ToolInvocation(ref=ctx.ref.model_copy(update={"step": step}),
                                     call_id=call.id, tool=name, requested_tool=plan.name,
                                     arguments=args,
                                     idempotency_key=f"{ctx.key_root}:{step}:{name}",
                                     decisions=carried)
                out = await ctx.seam.activity(self._activity(name, inv, args))
            except ActivityError as err:
                decisions.give_back(carried)
                attempts = _attempts(err, tp)
                res.retries += max(attempts - 1, 0)
                failures.append({"tool": name, "attempts": attempts, "error": cause(err)})
                ctx.log("tool", name, "error", cause(err))
                if _cause_type(err) == errors.TOOL_OUTCOME_UNKNOWN or (
                        # A non-idempotent call whose last attempt timed out may have taken
                        # effect: telling the model it failed invites a second one.
                        isinstance(err.cause, ActivityTimeout) and not tp.idempotent
                        and tp.side_effect != "read"
                        and ctx.seam.patched(LOST_NON_IDEMPOTENT_PATCH)):
                    res.tool_calls.append(ToolCallRecord(
                        step=step, call_id=call.id, tool=plan.name, arguments=args,
                        status="error", served_by=name, attempts=attempts, error=cause(err)))
                    decisions.record(step, "outcome_unknown", "escalate", cause(err),
                                     {"tool": name})
                    return Lost(message=cause(err))
                continue
            res.retries += max(out.attempt - 1, 0)
            if name != plan.name:
                res.fallbacks += 1
                decisions.record(step, "fallback", name,
                                 f"{plan.name} failed; served by fallback {name}",
                                 {"failures": failures})
            ctx.log("tool", name, "ok", "replayed from ledger" if out.replayed else "")
            res.tool_calls.append(ToolCallRecord(
                step=step, call_id=call.id, tool=plan.name, arguments=args, status="ok",
                served_by=name, attempts=out.attempt))
            # Tool output is untrusted input to the model (and to the gate: see _gate).
            return Ran(tool=name, result=out.result)
        attempts_total = sum(int(str(f["attempts"])) for f in failures)
        res.tool_calls.append(ToolCallRecord(
            step=step, call_id=call.id, tool=plan.name, arguments=args, status="error",
            attempts=attempts_total, error="; ".join(str(f["error"]) for f in failures)))
        decisions.record(step, "tool_failed", "report_to_model",
                         f"{plan.name} and its fallbacks failed", {"failures": failures})
        return Failed(message=f"{plan.name} failed after retries"
                              + (" and fallbacks" if plan.fallbacks else ""),
                      failures=failures)


def overall_bound(tp: ToolPlan) -> float:
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


def cause(err: ActivityError) -> str:
    """Why an activity failed, in words."""
    c = err.cause
    if isinstance(c, ApplicationError):
        return c.message
    if isinstance(c, ActivityTimeout):
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
