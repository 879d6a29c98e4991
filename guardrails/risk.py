"""Risk scoring and the allow / ask / deny decision for a proposed tool call. Pure."""

from __future__ import annotations

from typing import Any

from guardrails.decisions import CallDecision, RiskAssessment, RouteDecision
from guardrails.policy import Policy
from stead.models import ToolPlan


def score_call(tool: ToolPlan, arguments: dict[str, Any], *, policy: Policy,
               route: RouteDecision, prior_failures: int, untrusted_texts: list[str],
               request_text: str, confidence: float | None = None) -> RiskAssessment:
    raise NotImplementedError


def decide(tool: ToolPlan, arguments: dict[str, Any], risk: RiskAssessment, *, policy: Policy,
           route: RouteDecision) -> CallDecision:
    raise NotImplementedError
