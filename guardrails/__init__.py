"""Guardrails judge: pure, deterministic functions callable from workflows and tests.

    decision = route(text=..., tenant=..., metadata=..., policy=policy)     # before the model
    verdict = check_call(call, tools_by_name)                               # each proposed call
    risk = score_call(plan, args, policy=policy, route=decision, ...)
    gate = decide(plan, args, risk, policy=policy, route=decision)          # allow / ask / deny
    problems = validate_output(answer, rules=policy.output, evidence=..., request_text=...)
    guess = estimate(request_bytes, max_output_tokens=1024, price=price)  # before a model call
    spent = spent + settle(turn.usage, price)                               # after it
    missing = ungrounded_figures(answer, texts=[request], data=tool_results)  # 0.12 is 12 %

Nothing here reads clocks, randomness, the environment or files (except ``load_policy``, called
at worker start), so every function runs inside workflows and replays identically.
"""

from stead.contracts.policy import Policy, PolicyError, load_policy, parse_policy
from stead.guardrails.budget import estimate, settle
from stead.guardrails.calls import CallVerdict, check_call, schema_problems
from stead.guardrails.decisions import (
    CallDecision,
    OutputProblem,
    RiskAssessment,
    RiskFactor,
    RouteDecision,
)
from stead.guardrails.detect import PII_KINDS, SECRET_KINDS, find_pii, find_secrets, locate, redact
from stead.guardrails.figures import FigureCheck, check_figures, ungrounded_figures
from stead.guardrails.output import validate_output
from stead.guardrails.risk import decide, echoes_untrusted, score_call
from stead.guardrails.routing import route

__all__ = [
    "PII_KINDS",
    "SECRET_KINDS",
    "CallDecision",
    "CallVerdict",
    "FigureCheck",
    "OutputProblem",
    "Policy",
    "PolicyError",
    "RiskAssessment",
    "RiskFactor",
    "RouteDecision",
    "check_call",
    "check_figures",
    "decide",
    "echoes_untrusted",
    "estimate",
    "find_pii",
    "find_secrets",
    "load_policy",
    "locate",
    "parse_policy",
    "redact",
    "route",
    "schema_problems",
    "score_call",
    "settle",
    "ungrounded_figures",
    "validate_output",
]
