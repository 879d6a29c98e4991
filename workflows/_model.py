"""The run's model calls: one turn of the agent (``think``) and the model-as-judge.

A call is the ``model.complete`` activity, remote or local as the run's policy says, with the
agent's timeout and attempts. It carries the decisions recorded since the last activity; a
failed call gives them back.

An agent with a model chain (``AgentPlan.models``) gets one activity per model, in order: the
first model's activity with its own timeout and attempts, and only when those are spent on a
failure of ``errors.MODEL_FALLBACK_KINDS`` (down, 5xx, rate limited, timing out, garbage) or
Temporal's own timeout, the next model's activity, with its own. Walking the chain here, not
inside one activity attempt, keeps every attempt of every model in Temporal's history and
under Temporal's retry policy, and a replay takes the same path from the recorded results.
Each handover is an audit row (``model_fallback``); which model answered goes into the
``RunResult`` (``model``, ``models``, ``model_fallbacks``).

Each call is held to the run's budget first (``stead.workflows._budget``): estimated at the
pinned price of the model about to be called, admitted, stepped down to a cheaper model or
refused (the run ends ``budget_exceeded``), and settled from the usage it reported. A tenant's
spending window refusing the call (``errors.TENANT_BUDGET_EXCEEDED``) ends the run the same
way, without falling back to the next model. A run with no budget whose tenant has no spending
windows (``AgentPlan.spend_windows``) skips the estimate and the check; its calls are still
settled (``RunResult.spend``).

    turn = await models.think(schemas, model_setting)   # None: the run has ended
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

from stead.workflows._budget import BudgetBook, BudgetStop
from stead.workflows._context import Context, Frame, execution
from stead.workflows._decisions import DecisionLog
from stead.workflows._seam import ActivityCall
from stead.workflows._toolcall import cause

with workflow.unsafe.imports_passed_through():
    from stead import errors
    from stead.activities.model import ModelActivities
    from stead.authoring.graph import Evaluator, Score
    from stead.authoring.judge import JUDGE_INSTRUCTIONS, parse_judgement
    from stead.contracts.budget import Price, Spend
    from stead.contracts.models import (
        Message,
        ModelEndpoint,
        ModelRequest,
        ModelTurn,
        ToolSchema,
    )
    from stead.guardrails.budget import DEFAULT_MAX_OUTPUT_TOKENS, estimate, request_bytes

MAX_MODEL_REQUEST_BYTES = 1_800_000
"""Largest transcript (messages plus tool schemas, as JSON) sent to one model call: below
Temporal's 2 MiB payload limit, with room for the request's other fields."""


class ModelCalls:
    """The model activity calls of one run."""

    def __init__(self, ctx: Context, frame: Frame, decisions: DecisionLog, *,
                 budget: BudgetBook | None = None) -> None:
        self._ctx = ctx
        self._frame = frame
        self._decisions = decisions
        self.budget = budget if budget is not None else BudgetBook(ctx, decisions)

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
            turn, served, place = await self._complete(
                ModelRequest(ref=ctx.ref.model_copy(update={"step": ctx.state.step}),
                             messages=gs.messages, tools=schemas, model=model_setting,
                             decisions=carried, context=frame.request.context),
                summary=f"think (step {ctx.state.step})", size=size)
        except BudgetStop as stop:
            self._decisions.give_back(carried)
            self._over_budget(str(stop))
            return None
        except ActivityError as err:
            self._decisions.give_back(carried)
            if tenant_refused(err):
                self._tenant_over(err)
                return None
            ctx.log("model", plan.model, "error", cause(err))
            frame.end("failed", error=f"model call failed: {cause(err)}")
            return None
        res.model_turns += 1
        answered = served.name if served is not None else model_setting or plan.model
        if served is not None:
            res.model = served.name
            if place:
                res.model_fallbacks += 1
        if answered not in res.models:
            res.models.append(answered)
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
        except BudgetStop as stop:
            self._decisions.give_back(carried)
            self._over_budget(str(stop))
            return Score(evaluator="judge", value=0.0, passed=False, feedback=str(stop))
        except ActivityError as err:
            self._decisions.give_back(carried)
            if tenant_refused(err):
                self._tenant_over(err)
                return Score(evaluator="judge", value=0.0, passed=False, feedback=cause(err))
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
        """One model answer: the run's model, or its chain's first model that gives one."""
        turn, _, _ = await self._complete(req, summary=summary)
        return turn

    def _over_budget(self, why: str) -> None:
        self._ctx.log("model", self._frame.plan.model, "budget", why)
        self._frame.end("budget_exceeded", answer=f"Stopped before the next model call: {why}.",
                        error=why)

    def _tenant_over(self, err: ActivityError) -> None:
        why = cause(err)
        self._decisions.record(self._ctx.state.step, "budget", "tenant_window", why,
                               {"error": errors.TENANT_BUDGET_EXCEEDED})
        self._ctx.log("model", self._frame.plan.model, "budget", why)
        self._frame.end("budget_exceeded",
                        answer=f"Stopped before the next model call: {why}.", error=why)

    @staticmethod
    def _estimate(size: int, ep: ModelEndpoint | None, price: Price | None) -> Spend:
        limit = ep.max_output_tokens if ep is not None else None
        return estimate(size, max_output_tokens=limit or DEFAULT_MAX_OUTPUT_TOKENS,
                        price=price)

    async def _complete(self, req: ModelRequest, *, summary: str, size: int | None = None
                        ) -> tuple[ModelTurn, ModelEndpoint | None, int]:
        """The answer, the chain's model that gave it (None: no chain) and its place. Held
        to the run's budget first: raises ``BudgetStop`` when the call may not be made."""
        plan, book = self._frame.plan, self.budget
        models = plan.models if req.model is None else []  # a routed model stands alone
        chain = list(enumerate(models))
        if book.stepped_down is not None:  # cheaper_model: the rest of the run on that one
            chain = [(i, ep) for i, ep in chain if ep.name == book.stepped_down] or chain
        first = chain[0][1] if chain else None
        # A routed model is charged at the price pinned for it at run start (none pinned, as
        # in runs recorded before: tokens and calls, no money).
        price = (first.price if first is not None else plan.price if req.model is None
                 else plan.routed_prices.get(req.model))
        # Estimates are for a run with a budget (held to it here) and for a tenant with
        # spending windows (the model activity reserves the estimate). A run with neither
        # measures and estimates nothing, and its requests carry no estimate.
        limited = not book.limit.unlimited
        if limited or plan.spend_windows:
            size = request_bytes(req.messages, req.tools) if size is None else size
        else:
            size = None
        guess = None if size is None else self._estimate(size, first, price)

        def cheaper() -> tuple[ModelEndpoint, Spend] | None:
            name = book.rules.cheaper_model
            ep = next((e for e in models if e.name == name), None)
            if ep is None or size is None:
                return None
            return ep, self._estimate(size, ep, ep.price)

        if limited and guess is not None:
            stepped = await book.admit(req.ref.step, guess, cheaper=cheaper,
                                       model=first.name if first is not None
                                       else req.model or plan.model)
            if stepped is not None:
                chain = [(models.index(stepped), stepped)]
        if not chain:
            if price is not None or guess is not None:
                req = req.model_copy(update={"price": price, "estimate": guess})
            turn = await self._call(req, summary=summary, timeout=plan.model_timeout,
                                    attempts=plan.model_max_attempts, grace=0)
            book.settle(turn.usage, price)
            return turn, None, 0
        for n, (place, ep) in enumerate(chain):
            est = (guess if ep is first or size is None
                   else self._estimate(size, ep, ep.price))
            if n and limited and est is not None:
                # a later model of the chain may cost more: held to the budget in turn
                await book.admit(req.ref.step, est, model=ep.name, cheaper=lambda: None)
            try:
                turn = await self._call(
                    req.model_copy(update={"endpoint": ep, "fallback": place, "price": ep.price,
                                           "estimate": est}),
                    summary=summary + (f" with {ep.name} (fallback {place})" if place else ""),
                    timeout=ep.timeout_seconds or plan.model_timeout,
                    attempts=ep.max_attempts or plan.model_max_attempts, grace=GRACE_SECONDS)
            except ActivityError as err:
                why = fallback_reason(err)
                if why is None or n == len(chain) - 1:
                    raise
                nxt = chain[n + 1][1]
                self._ctx.log("model", ep.name, "error", f"{cause(err)}; falling back")
                self._decisions.record(
                    req.ref.step, "model_fallback", nxt.name,
                    f"{ep.name} failed ({why}) after its attempts: {cause(err)}",
                    {"from": ep.name, "to": nxt.name, "fallback": place + 1, "error": why})
                continue
            book.settle(turn.usage, ep.price)
            return turn, ep, place
        raise AssertionError("a model chain is never empty here")

    async def _call(self, req: ModelRequest, *, summary: str, timeout: float, attempts: int,
                    grace: float) -> ModelTurn:
        ex = execution(self._ctx.policy)
        retry = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2,
                            maximum_interval=timedelta(seconds=30), maximum_attempts=attempts)
        overall = timedelta(seconds=(timeout + grace) * attempts + 120)
        if ex.local_model_calls:
            return await self._ctx.seam.activity(ActivityCall(
                ModelActivities.complete, req, result_type=ModelTurn,
                start_to_close=timedelta(seconds=min(timeout + grace, ex.local_max_seconds)),
                schedule_to_close=overall, retry=retry, summary=summary + " (local)",
                local=True))
        return await self._ctx.seam.activity(ActivityCall(
            ModelActivities.complete, req, result_type=ModelTurn,
            start_to_close=timedelta(seconds=timeout + grace), schedule_to_close=overall,
            retry=retry, summary=summary))


GRACE_SECONDS = 5.0
"""Added to a chain model's timeout for its activity's start-to-close: the client's own
timeout (the same seconds) ends a slow call first, as a ``ModelTimeout`` the ledger records;
Temporal's is the backstop for an attempt that hangs anyway."""


def fallback_reason(err: ActivityError) -> str | None:
    """Why a failed model call hands the turn to the next model, or None when it must not."""
    c = err.cause
    if isinstance(c, ApplicationError):
        return c.type if c.type in errors.MODEL_FALLBACK_KINDS else None
    if isinstance(c, ActivityTimeout):
        return "ModelTimeout"
    return None


def tenant_refused(err: ActivityError) -> bool:
    """The model call was refused by its tenant's spending window (not a model failure)."""
    c = err.cause
    return isinstance(c, ApplicationError) and c.type == errors.TENANT_BUDGET_EXCEEDED
