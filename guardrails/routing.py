"""Policy-aware routing of a request, before the model runs. Pure and deterministic."""

from __future__ import annotations

from guardrails.decisions import RouteDecision
from guardrails.policy import Policy


def route(*, text: str, tenant: str, metadata: dict[str, str], policy: Policy) -> RouteDecision:
    """Evaluate ``policy.routing`` in order; the first matching rule decides."""
    raise NotImplementedError
