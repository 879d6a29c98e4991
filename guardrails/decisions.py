"""What the guardrails decide: plain data recorded in history and in the ledger."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteDecision(_Data):
    """Where routing sent a request."""

    action: Literal["allow", "refuse", "human", "profile", "model", "agent"]
    rule: str | None = None
    """Name of the rule that matched (None: no rule matched, default allow)."""
    reason: str = ""
    profile: str | None = None
    model: str | None = None
    agent: str | None = None
    """For ``agent``: the agent the request is handed to."""
    signals: list[str] = Field(default_factory=list)
    """What was detected in the request, e.g. ``pii:credit_card``, ``keyword:refund``."""
    policy: str = ""
    """``policy.ref`` of the policy that routed."""


class RiskFactor(_Data):
    name: str
    """e.g. ``tier:high``, ``side_effect:irreversible``, ``argument:amount>100``,
    ``prior_failures:2``, ``untrusted``, ``route:strict``, ``confidence:0.40``."""
    weight: float


class RiskAssessment(_Data):
    score: float
    """0..1, the sum of the factors capped at 1."""
    factors: list[RiskFactor]
    untrusted: bool = False
    """The arguments echo untrusted content (a tool output or recalled memory)."""


class CallDecision(_Data):
    action: Literal["allow", "ask", "deny"]
    reason: str
    risk: RiskAssessment
    policy: str = ""


class OutputProblem(_Data):
    kind: Literal["secret", "pii", "ungrounded", "schema"]
    detail: str
