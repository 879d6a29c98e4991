"""The run's budget book: what the run may spend, what it has spent, and what happens at the
limit.

The limit is the agent's policy budget narrowed by the request's (``Budget.narrow``: a request
may only lower a limit); a sub-agent's request carries what its parent has left, a
conversation's turn what its earlier turns spent (``RunRequest.spent``). Before every model
call the call is estimated (request bytes and the model's output limit at its pinned price,
``guardrails.budget.estimate``) and checked against the limit; after it, the call is settled
from the usage its server reported. Spending comes only from model results recorded in
history, so a retried activity or a replay after a worker crash counts each answer once. A
sub-agent that fails still counts: its failure carries its spending (``failure``), which the
parent reads from its own history (``add_failed``). One that times out, is terminated or
cancelled says nothing: the parent reads what its model calls cost from the ledger
(``add_lost``), as an activity whose answer history keeps.

When a call would pass a limit, the policy's ``on_exceed`` decides: ``stop`` ends the run
``budget_exceeded``; ``ask`` waits (``ask_timeout_seconds``) for the ``raise_budget`` update
or signal; ``cheaper_model`` goes on with the named model of the agent's chain (still over:
stop). Each decision is an audit row of kind ``budget``.

    book.start(policy, request)
    step_down = await book.admit(step, estimate, model="openai:gpt-4o")  # raises BudgetStop
    book.settle(turn.usage, price)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.exceptions import TimeoutError as TemporalTimeout

from stead.workflows._context import Context
from stead.workflows._decisions import DecisionLog
from stead.workflows._seam import bookkeeping

with workflow.unsafe.imports_passed_through():
    from stead.activities.runs import RunActivities
    from stead.contracts.budget import (
        Budget,
        BudgetLimit,
        BudgetRules,
        BudgetState,
        Price,
        RaiseBudget,
        Spend,
    )
    from stead.contracts.models import LostSubagent, ModelEndpoint, RunRequest, Usage
    from stead.contracts.policy import Policy
    from stead.guardrails.budget import settle

BUDGET_PATCH = "stead-run-budget-1"
"""Asked only by runs with a budget, at their first call that would pass it: a run recorded
before budgets were enforced replays without stopping."""


CHILD_FAILURE_SPEND_PATCH = "stead-child-failure-spend-1"
"""Asked by a parent only when a failed sub-agent's error carries its spending: a parent
recorded before such spending was counted replays without counting it."""

CHILD_LOST_SPEND_PATCH = "stead-child-lost-spend-1"
"""Asked by a parent only when a sub-agent timed out, was terminated or cancelled (it left
neither a result nor a failure that says what it spent): from this patch on the parent reads
that spending from the ledger (``run.subagent_spend``) and counts it; a parent recorded
before replays without the activity."""

LOST = (TemporalTimeout, TerminatedError, CancelledError)
"""How a sub-agent ends without a word about its spending."""

SPEND_DETAIL = "stead.spend"
"""Key of the detail a failing run adds to its ``ApplicationError``: its spending
(``Spend``), so that a parent counts what a sub-agent spent before it failed."""


def failed_spend(cause: BaseException | None) -> Spend | None:
    """The spending a failed child run's error carries (``BudgetBook.failure``); None: none
    (it failed before spending, was timed out or terminated, or ran older code)."""
    if not isinstance(cause, ApplicationError):
        return None
    found = next((d[SPEND_DETAIL] for d in cause.details
                  if isinstance(d, dict) and SPEND_DETAIL in d), None)
    if found is None:
        return None
    try:
        return Spend.model_validate(found)
    except ValueError:
        return None


class BudgetStop(Exception):
    """A model call would pass the run's budget and nobody raised it (or a cheaper model does
    not fit either): the run ends ``budget_exceeded`` with this message."""


class BudgetBook:
    """The budget of one run and what it has spent."""

    def __init__(self, ctx: Context, decisions: DecisionLog) -> None:
        self._ctx = ctx
        self._decisions = decisions
        self.rules = BudgetRules()
        self.limit = Budget()
        self.carried = Spend()
        """Spent before this run against the same budget (a conversation's earlier turns)."""
        self.own = Spend()
        """This run's model calls and its sub-agents' spending (``RunResult.spend``)."""
        self.stepped_down: str | None = None
        """The chain model the run went on with under ``cheaper_model``."""
        self._enforced: bool | None = None
        self._waiting: BudgetState | None = None

    # ------------------------------------------------------------------ set up and spend

    def start(self, policy: Policy, request: RunRequest) -> None:
        """The run's limit from its pinned policy and its request."""
        rules = policy.budget
        if rules is not None:
            self.rules = rules
        base = Budget(max_usd=self.rules.max_usd, max_tokens=self.rules.max_tokens,
                      max_model_calls=self.rules.max_model_calls)
        self.limit = base.narrow(request.budget)
        self.carried = request.spent or Spend()

    @property
    def spent(self) -> Spend:
        """What counts against the limit: the carried spending plus this run's."""
        return self.carried + self.own

    def settle(self, usage: Usage, price: Price | None) -> None:
        self.own = self.own + settle(usage, price)

    def add(self, spend: Spend) -> None:
        """A sub-agent's spending (its ``RunResult.spend``) counts as this run's."""
        self.own = self.own + spend

    def failure(self, err: ApplicationError) -> ApplicationError:
        """``err`` (about to fail the run) with the run's spending added to its details.

        The failure is the one thing of a failed child that its parent reads from its own
        history (the child's ``ChildWorkflowExecutionFailed`` event): a deterministic input,
        unlike a query of the closed child or a ledger read. A failure's details are not
        commands, so the child needs no patch; the parent asks one before counting."""
        if self.own == Spend():
            return err
        return ApplicationError(err.message, *err.details,
                                {SPEND_DETAIL: self.own.model_dump()}, type=err.type,
                                non_retryable=err.non_retryable,
                                next_retry_delay=err.next_retry_delay, category=err.category)

    def add_failed(self, cause: BaseException | None) -> Spend | None:
        """A failed sub-agent's spending, from its error's details (``failure``), counted as
        this run's; None when it carried none (a child that failed before spending, or ran
        code older than this; one that timed out or was terminated: ``add_lost``)."""
        spend = failed_spend(cause)
        if spend is None or not self._ctx.seam.patched(CHILD_FAILURE_SPEND_PATCH):
            return None
        self.add(spend)
        return spend

    async def add_lost(self, child_id: str, cause: BaseException | None) -> Spend | None:
        """A sub-agent that ended with ``cause`` (``LOST``: timed out, terminated,
        cancelled): its spending read from the ledger and counted as this run's, with an
        audit row; None for any other cause, or a run recorded before the patch."""
        ctx = self._ctx
        if not isinstance(cause, LOST) or not ctx.seam.patched(CHILD_LOST_SPEND_PATCH):
            return None
        spend = await ctx.seam.activity(bookkeeping(
            RunActivities.subagent_spend, LostSubagent(ref=ctx.ref, workflow_id=child_id),
            result_type=Spend, summary=f"what sub-agent {child_id} spent"))
        self.add(spend)
        how = type(cause).__name__.removesuffix("Error").lower()
        self._decisions.record(
            ctx.state.step, "budget", "subagent_counted",
            f"sub-agent {child_id} ended ({how}) without saying what it spent: its "
            f"answered model calls in the ledger cost ${spend.usd:.6f}",
            {"subagent": child_id, "ended": how, "spend": spend.model_dump()})
        return spend

    def remaining(self) -> Budget | None:
        """What a sub-agent may spend: the limit minus the spending, per limit (None: no
        limit). Raises ``BudgetStop`` when a limit has nothing left."""
        if self.limit.unlimited:
            return None
        s, lim = self.spent, self.limit
        left: dict[str, float | int | None] = {
            "max_usd": None if lim.max_usd is None else lim.max_usd - s.usd,
            "max_tokens": None if lim.max_tokens is None else lim.max_tokens - s.tokens,
            "max_model_calls": None if lim.max_model_calls is None
            else lim.max_model_calls - s.model_calls}
        gone = [k for k, v in left.items() if v is not None and v <= 0]
        if gone and self._enforce():
            raise BudgetStop(f"budget exceeded: nothing is left of {', '.join(gone)} for a "
                             f"sub-agent ({self._amounts(s)} spent; limit {self._limits()})")
        return Budget.model_validate({k: v for k, v in left.items() if k not in gone})

    def state(self) -> BudgetState | None:
        """The ``state`` query's view (None: the run has no budget)."""
        if self._waiting is not None:
            return self._waiting.model_copy(update={"limit": self.limit, "spent": self.spent})
        if self.limit.unlimited:
            return None
        return BudgetState(limit=self.limit, spent=self.spent)

    # ------------------------------------------------------------------ the check

    async def admit(self, step: int, estimate: Spend, *, model: str,
                    cheaper: Callable[[], tuple[ModelEndpoint, Spend] | None]
                    ) -> ModelEndpoint | None:
        """Let a model call estimated at ``estimate`` go ahead: None to call as planned, a
        chain model to call instead (``cheaper_model``); raises ``BudgetStop`` to end the
        run. ``cheaper``: the cheaper model and its estimate for this call, if any."""
        over = self.limit.exceeded(self.spent + estimate)
        if not over or not self._enforce():
            return None
        why = self._why(over, estimate, model)
        record = self._decisions.record
        match self.rules.on_exceed:
            case "cheaper_model":
                alt = cheaper() if self.stepped_down is None else None
                if alt is not None and not self.limit.exceeded(self.spent + alt[1]):
                    ep, est = alt
                    self.stepped_down = ep.name
                    record(step, "budget", "stepped_down", f"{why}; going on with {ep.name}",
                           self._data(over, estimate, model) | {"to": ep.name,
                                                                "estimate_to": est.usd})
                    self._ctx.log("model", model, "budget", f"stepped down to {ep.name}")
                    return ep
                reason = (f"{why}; the cheaper model {self.rules.cheaper_model} does not fit "
                          f"either" if self.stepped_down is None and alt is not None
                          else why)
                record(step, "budget", "stopped", reason, self._data(over, estimate, model))
                raise BudgetStop(f"budget exceeded: {reason}")
            case "ask":
                await self._ask(step, estimate, over, why, model)
                return None
            case _:
                record(step, "budget", "stopped", why, self._data(over, estimate, model))
                raise BudgetStop(f"budget exceeded: {why}")

    async def _ask(self, step: int, estimate: Spend, over: list[BudgetLimit], why: str,
                   model: str) -> None:
        ctx, timeout = self._ctx, self.rules.ask_timeout_seconds
        self._decisions.record(step, "budget", "asked",
                               f"{why}; waiting up to {timeout:g}s for raise_budget",
                               self._data(over, estimate, model))
        await self._decisions.flush()  # the question is on record while the run waits
        deadline = ctx.seam.now() + timedelta(seconds=timeout)
        self._waiting = BudgetState(limit=self.limit, spent=self.spent, waiting=True, over=over,
                                    estimate=estimate, deadline=deadline)
        node = ctx.state.node
        ctx.at("budget", f"Waiting for a person to raise the budget ({why}); update "
                         f"`raise_budget` until {deadline:%Y-%m-%d %H:%M:%S} UTC")
        try:
            fits = await ctx.seam.wait(
                lambda: not self.limit.exceeded(self.spent + estimate), timeout=timeout)
        finally:
            self._waiting = None
        if fits:
            ctx.at(node, f"Budget raised to {self._limits()}; going on")
            return
        ctx.state.node = node
        self._decisions.record(step, "budget", "timed_out",
                               f"nobody raised the budget within {timeout:g}s; {why}",
                               self._data(self.limit.exceeded(self.spent + estimate),
                                          estimate, model))
        raise BudgetStop(f"budget exceeded: {why}; nobody raised it within {timeout:g}s")

    # ------------------------------------------------------------------ raise_budget

    def refusal(self, raised: RaiseBudget | None) -> str | None:
        """Why a ``raise_budget`` is refused (None: it raises)."""
        if raised is None:
            return ('raise_budget needs a payload, e.g. {"max_usd": 1.0, "by": "ana", '
                    '"reason": "..."}')
        problems = raised.problems(self.limit)
        return "; ".join(problems) if problems else None

    def apply(self, raised: RaiseBudget | None, *, via: str) -> Budget:
        """Raise the limit (audited with who and why); a refused signal is audited too."""
        why = self.refusal(raised)
        step = self._ctx.state.step
        if why is not None or raised is None:
            self._decisions.record(step, "budget", "raise_refused", why or "",
                                   {"via": via}, actor=raised.by if raised else "unknown")
            return self.limit
        old, self.limit = self.limit, raised.applied(self.limit)
        self._decisions.record(
            step, "budget", "raised", raised.reason,
            {"via": via, "from": old.model_dump(exclude_none=True),
             "to": self.limit.model_dump(exclude_none=True), "by": raised.by},
            actor=raised.by)
        return self.limit

    # ------------------------------------------------------------------ words

    def _enforce(self) -> bool:
        if self._enforced is None:
            self._enforced = self._ctx.seam.patched(BUDGET_PATCH)
        return self._enforced

    def _limits(self) -> str:
        lim = self.limit
        parts = [f"max_usd ${lim.max_usd:.6f}" if lim.max_usd is not None else "",
                 f"max_tokens {lim.max_tokens}" if lim.max_tokens is not None else "",
                 f"max_model_calls {lim.max_model_calls}"
                 if lim.max_model_calls is not None else ""]
        return ", ".join(p for p in parts if p)

    @staticmethod
    def _amounts(s: Spend) -> str:
        return f"${s.usd:.6f}, {s.tokens} tokens, {s.model_calls} model call(s)"

    def _why(self, over: list[BudgetLimit], est: Spend, model: str) -> str:
        s, lim = self.spent, self.limit
        said = {"max_usd": f"max_usd: ${s.usd:.6f} spent + ${est.usd:.6f} estimated > "
                           f"limit ${lim.max_usd or 0:.6f}",
                "max_tokens": f"max_tokens: {s.tokens} spent + {est.tokens} estimated > "
                              f"limit {lim.max_tokens}",
                "max_model_calls": f"max_model_calls: {s.model_calls} made + 1 > limit "
                                   f"{lim.max_model_calls}"}
        return f"the next call to {model} would pass " + "; ".join(said[o] for o in over)

    def _data(self, over: list[BudgetLimit], est: Spend, model: str) -> dict[str, object]:
        return {"over": list(over), "model": model,
                "limit": self.limit.model_dump(exclude_none=True),
                "spent": self.spent.model_dump(), "estimate": est.model_dump()}
