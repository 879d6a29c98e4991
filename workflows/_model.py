"""The run's model calls: one turn of the agent (``think``) and the model-as-judge.

A call is the ``model.complete`` activity, remote or local as the run's policy says, with the
agent's timeout and attempts. It carries the decisions recorded since the last activity; a
failed call gives them back.

    turn = await models.think(schemas, model_setting)   # None: the run has ended
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from stead.workflows._context import Context, Frame, execution
from stead.workflows._decisions import DecisionLog
from stead.workflows._seam import ActivityCall
from stead.workflows._toolcall import cause

with workflow.unsafe.imports_passed_through():
    from stead.activities.model import ModelActivities
    from stead.authoring.graph import Evaluator, Score
    from stead.authoring.judge import JUDGE_INSTRUCTIONS, parse_judgement
    from stead.contracts.models import Message, ModelRequest, ModelTurn, ToolSchema

MAX_MODEL_REQUEST_BYTES = 1_800_000
"""Largest transcript (messages plus tool schemas, as JSON) sent to one model call: below
Temporal's 2 MiB payload limit, with room for the request's other fields."""


class ModelCalls:
    """The model activity calls of one run."""

    def __init__(self, ctx: Context, frame: Frame, decisions: DecisionLog) -> None:
        self._ctx = ctx
        self._frame = frame
        self._decisions = decisions

    async def think(self, schemas: list[ToolSchema], model_setting: str | None
                    ) -> ModelTurn | None:
        """One model turn on the conversation so far (a step); None when the run ended
        instead (the budget is spent, the transcript is too big, the call failed)."""
        ctx, frame = self._ctx, self._frame
        plan, gs, res = frame.plan, frame.gs, frame.res
        budget = plan.max_steps
        if not ctx.budget_left(plan):
            frame.end("failed", error=f"step budget of {budget} exhausted before an answer")
            return None
        ctx.state.step += 1
        ctx.at("think", f"Step {ctx.state.step}/{budget}: asking the model "
                        f"({model_setting or plan.model}) what to do next")
        size = request_bytes(gs.messages, schemas)
        if size > MAX_MODEL_REQUEST_BYTES:
            # Scheduling it would fail this workflow task on every retry (Temporal refuses
            # payloads over 2 MiB): end the run, saying why, instead.
            why = (f"the conversation is {size:,} bytes, over the {MAX_MODEL_REQUEST_BYTES:,}"
                   f" one model request may carry; shorten tool outputs "
                   f"(STEAD_MAX_PAYLOAD_BYTES caps each one)")
            ctx.log("model", plan.model, "error", why)
            frame.end("failed", error=why)
            return None
        carried = self._decisions.carry(side_effect=False)
        try:
            turn = await self.complete(
                ModelRequest(ref=ctx.ref.model_copy(update={"step": ctx.state.step}),
                             messages=gs.messages, tools=schemas, model=model_setting,
                             decisions=carried, context=frame.request.context),
                summary=f"think (step {ctx.state.step})")
        except ActivityError as err:
            self._decisions.give_back(carried)
            ctx.log("model", plan.model, "error", cause(err))
            frame.end("failed", error=f"model call failed: {cause(err)}")
            return None
        res.model_turns += 1
        if turn.context is not None:
            res.context = turn.context
        ctx.log("model", turn.model or plan.model, "ok",
                f"{len(turn.tool_calls)} tool call(s)" if turn.tool_calls else "answer")
        return turn

    async def judge(self, ev: Evaluator) -> Score:
        """Model-as-judge: the run's model grades the step (a model activity)."""
        ctx, gs = self._ctx, self._frame.gs
        body = (f"Rubric:\n{ev.rubric}\n\nRequest:\n{gs.input}\n\nTool results:\n"
                + ("\n".join(t[:2000] for t in gs.tool_results[-10:]) or "(none)")
                + f"\n\nAnswer:\n{gs.answer or '(no answer)'}")
        # A judgement is a model call of its own: its own step, or the ledger (keyed by step
        # and attempt) would keep only the answer's call and drop the judge's.
        ctx.state.step += 1
        carried = self._decisions.carry(side_effect=False)
        try:
            turn = await self.complete(
                ModelRequest(ref=ctx.ref.model_copy(update={"step": ctx.state.step}),
                             messages=[Message(role="system", content=JUDGE_INSTRUCTIONS),
                                       Message(role="user", content=body)],
                             tools=[], decisions=carried), summary="judge the step")
        except ActivityError as err:
            self._decisions.give_back(carried)
            return Score(evaluator="judge", value=0.0, passed=False,
                         feedback=f"the judge model failed: {cause(err)}")
        score, why = parse_judgement(turn.content or "")
        if score is None:
            return Score(evaluator="judge", value=0.0, passed=False,
                         feedback=f"judge reply not understood: {(turn.content or '')[:120]!r}")
        return Score(evaluator="judge", value=score, passed=score >= ev.threshold,
                     feedback=why if score >= ev.threshold
                     else f"score {score:g} < {ev.threshold:g}: {why}")

    async def complete(self, req: ModelRequest, *, summary: str) -> ModelTurn:
        plan, ex = self._frame.plan, execution(self._ctx.policy)
        retry = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2,
                            maximum_interval=timedelta(seconds=30),
                            maximum_attempts=plan.model_max_attempts)
        overall = timedelta(seconds=plan.model_timeout * plan.model_max_attempts + 120)
        if ex.local_model_calls:
            return await self._ctx.seam.activity(ActivityCall(
                ModelActivities.complete, req, result_type=ModelTurn,
                start_to_close=timedelta(
                    seconds=min(plan.model_timeout, ex.local_max_seconds)),
                schedule_to_close=overall, retry=retry, summary=summary + " (local)",
                local=True))
        return await self._ctx.seam.activity(ActivityCall(
            ModelActivities.complete, req, result_type=ModelTurn,
            start_to_close=timedelta(seconds=plan.model_timeout), schedule_to_close=overall,
            retry=retry, summary=summary))


def request_bytes(messages: list[Message], schemas: list[ToolSchema]) -> int:
    return (sum(len(m.model_dump_json().encode()) for m in messages)
            + sum(len(t.model_dump_json().encode()) for t in schemas))
