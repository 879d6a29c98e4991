"""Money, tokens and model calls: what a run may spend, what a model costs, what was spent.

    rules = policy.budget                                  # BudgetRules from the policy YAML
    limit = rules.narrow(request.budget)                   # a request may only lower a limit
    spent = spent + settle(turn.usage, price)              # stead.guardrails.budget
    over = limit.exceeded(spent + estimate(...))           # ["max_usd"]: stop, ask or step down

Plain data, imported by workflow code: the policy (and with it the rules) and each model's
price travel inside the run's pinned ``AgentPlan``, so a run is judged by the prices and
limits it started with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

BudgetLimit = Literal["max_usd", "max_tokens", "max_model_calls"]
"""The three limits of a budget, by the name of their field."""

OnExceed = Literal["stop", "ask", "cheaper_model"]
"""What a run does when its next model call would pass a limit: end ``budget_exceeded``, ask a
person to raise the budget (a signal/update, audited), or go on with a cheaper model."""


class _Strict(BaseModel):
    # No inf or NaN: an infinite limit would serialise as null (no limit at all) on its way
    # through Temporal, and NaN compares false with everything.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Price(_Strict):
    """What a model costs, in US dollars per million tokens (the unit providers quote)::

        Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60)     # gpt-4o-mini
    """

    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Dollars for this many tokens in and out."""
        return (input_tokens * self.input_usd_per_mtok
                + output_tokens * self.output_usd_per_mtok) / 1_000_000


class Spend(_Strict):
    """Money, tokens and model calls: spent so far, or what one call is estimated to cost."""

    usd: float = Field(0.0, ge=0)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    model_calls: int = Field(0, ge=0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Spend) -> Spend:
        return Spend(usd=self.usd + other.usd,
                     input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens,
                     model_calls=self.model_calls + other.model_calls)


class Budget(_Strict):
    """Limits on what one run may spend; an unset limit is no limit::

        RunRequest(agent="ops", input="...", budget=Budget(max_usd=0.05))
    """

    max_usd: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    """Input plus output tokens, summed over the run's model calls."""
    max_model_calls: int | None = Field(None, ge=1)

    def narrow(self, other: Budget | None) -> Budget:
        """The tighter of each limit of this budget and ``other`` (a request's budget): a
        request may lower a limit, never raise one or lift it."""
        if other is None:
            return Budget(max_usd=self.max_usd, max_tokens=self.max_tokens,
                          max_model_calls=self.max_model_calls)
        return Budget(max_usd=_tighter(self.max_usd, other.max_usd),
                      max_tokens=_tighter(self.max_tokens, other.max_tokens),
                      max_model_calls=_tighter(self.max_model_calls, other.max_model_calls))

    def exceeded(self, spend: Spend) -> list[BudgetLimit]:
        """The limits ``spend`` is over, in field order (empty: within the budget)."""
        over: list[BudgetLimit] = []
        if self.max_usd is not None and spend.usd > self.max_usd:
            over.append("max_usd")
        if self.max_tokens is not None and spend.tokens > self.max_tokens:
            over.append("max_tokens")
        if self.max_model_calls is not None and spend.model_calls > self.max_model_calls:
            over.append("max_model_calls")
        return over

    @property
    def unlimited(self) -> bool:
        return self.max_usd is None and self.max_tokens is None and self.max_model_calls is None


class BudgetRules(Budget):
    """A policy's ``budget:`` section: the limits, and what happens when a call would pass one.

    .. code-block:: yaml

        budget:
          max_usd: 0.50
          max_model_calls: 40
          on_exceed: ask            # stop | ask | cheaper_model
          ask_timeout_seconds: 900
    """

    on_exceed: OnExceed = "stop"
    cheaper_model: str | None = None
    """For ``on_exceed: cheaper_model``: the name of a model of the agent's chain to go on
    with (it must have a price, and the run still stops when even it would pass a limit)."""
    ask_timeout_seconds: float = Field(900, gt=0)
    """For ``on_exceed: ask``: how long the run waits for a person before it ends
    ``budget_exceeded``."""


class RaiseBudget(_Strict):
    """Payload of the ``raise_budget`` update and signal: the new limits (each only higher
    than the run's, an unset one unchanged), who raises them and why (both audited)::

        {"max_usd": 1.0, "by": "ana@example.com", "reason": "the incident needs more"}
    """

    max_usd: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    max_model_calls: int | None = Field(None, ge=1)
    by: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)

    def problems(self, limit: Budget) -> list[str]:
        """Why this raise is refused against the run's ``limit`` (empty: it raises)."""
        out: list[str] = []
        given = {"max_usd": self.max_usd, "max_tokens": self.max_tokens,
                 "max_model_calls": self.max_model_calls}
        if all(v is None for v in given.values()):
            out.append("name at least one limit to raise (max_usd, max_tokens, "
                       "max_model_calls)")
        for name, new in given.items():
            old = getattr(limit, name)
            if new is None:
                continue
            if old is None:
                out.append(f"{name}: the run has no {name} limit; {new} would lower it")
            elif new <= old:
                out.append(f"{name}: {new} is not above the run's limit {old}; "
                           f"raise_budget only raises")
        return out

    def applied(self, limit: Budget) -> Budget:
        """``limit`` with this raise's limits in place of the run's."""
        return Budget(max_usd=self.max_usd if self.max_usd is not None else limit.max_usd,
                      max_tokens=self.max_tokens if self.max_tokens is not None
                      else limit.max_tokens,
                      max_model_calls=self.max_model_calls
                      if self.max_model_calls is not None else limit.max_model_calls)


class BudgetState(_Strict):
    """A run's budget as the ``state`` query shows it."""

    limit: Budget
    spent: Spend
    waiting: bool = False
    """True while the run waits for ``raise_budget`` before its next model call."""
    over: list[BudgetLimit] = Field(default_factory=list)
    """While waiting: the limits the next call would pass."""
    estimate: Spend | None = None
    """While waiting: what the next call is estimated to cost."""
    deadline: datetime | None = None
    """While waiting: when the run gives up and ends ``budget_exceeded``."""


_N = TypeVar("_N", int, float)


def _tighter(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
