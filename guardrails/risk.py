"""Risk scoring and the allow / ask / deny decision for a proposed tool call. Pure.

    risk = score_call(plan, args, policy=policy, route=route, prior_failures=1,
                      untrusted_texts=tool_outputs, request_text=request.input)
    decision = decide(plan, args, risk, policy=policy, route=route)

The score is the sum of named factors, each from the policy: the tool's risk tier and
side-effect class, argument rules (amounts, production targets), the request's route, failures
earlier in the run, arguments echoing untrusted content, and the model's own confidence. Factors
come in that fixed order so the same inputs always give the same record.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

from stead.contracts.models import ToolPlan
from stead.contracts.policy import ArgumentRule, Policy
from stead.guardrails.decisions import CallDecision, RiskAssessment, RiskFactor, RouteDecision

_MIN_ECHO = 4
"""Shorter argument strings ("prod", "yes") are too common to prove where they came from."""
_MIN_ECHO_NUMBER = 10
"""Likewise numbers below 10 (counts, limits, page sizes)."""


@lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def _num(x: float) -> str:
    """A number as people write it: 0.5, 0.45, 100, 1e+06 for huge ones."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _lookup(arguments: dict[str, Any], field: str) -> Any:
    """``arguments[field]``; a dotted field (``refund.amount``) walks nested objects."""
    if field in arguments:
        return arguments[field]
    node: Any = arguments
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _numbers(value: Any) -> Iterator[float]:
    """Numeric readings of an argument. Numeric strings count, so ``"amount": "5000"`` cannot
    slip past a line that ``"amount": 5000`` would cross."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            return
        if math.isfinite(number):
            yield number
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _strings(value: Any) -> Iterator[str]:
    """Every string in an argument value, nested lists and objects included (in order)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _argument_factor(rule: ArgumentRule, arguments: dict[str, Any]) -> RiskFactor | None:
    value = _lookup(arguments, rule.field)
    if value is None:
        return None
    name: str | None = None
    if rule.above is not None and any(n > rule.above for n in _numbers(value)):
        name = f"{rule.field}>{_num(rule.above)}"
    elif rule.matches:
        for pattern, compiled in zip(rule.matches, _matcher(tuple(rule.matches)), strict=True):
            if any(compiled.search(s) for s in _strings(value)):
                name = f"{rule.field}~{pattern}"
                break
    if name is None or rule.add == 0:
        return None
    return RiskFactor(name=f"argument:{rule.label or name}", weight=rule.add)


def echoes_untrusted(arguments: dict[str, Any], untrusted_texts: list[str],
                     request_text: str) -> bool:
    """Does a string in the arguments (at least 4 characters) occur in untrusted content but
    not in the request? Then the model copied it from a tool output or recalled memory."""
    if not untrusted_texts:
        return False
    untrusted = [_fold(t) for t in untrusted_texts]
    request = request_text.casefold()
    for value in _strings(arguments):
        needle = value.strip().casefold()
        if len(needle) < _MIN_ECHO or needle in request:
            continue
        if any(needle in text for text in untrusted):
            return True
    # Numbers too: an amount the request never named but a tool output did (e.g. "transfer
    # 900") was copied from untrusted content. Small numbers are too common to tell.
    numbers = [n for v in arguments.values() for n in _all_numbers(v)
               if abs(n) >= _MIN_ECHO_NUMBER]
    if not numbers:
        return False
    request_numbers = _number_tokens(request)
    untrusted_numbers = [_number_tokens(t) for t in untrusted]
    return any(n not in request_numbers and any(n in u for u in untrusted_numbers)
               for n in numbers)


@lru_cache(maxsize=4096)
def _fold(text: str) -> str:
    # A run's earlier tool outputs are re-checked on every call: fold each once.
    return text.casefold()


_NUMBER_TOKEN = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")


def _all_numbers(value: Any) -> Iterator[float]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _all_numbers(item)
    else:
        yield from _numbers(value)


@lru_cache(maxsize=4096)
def _number_tokens(text: str) -> frozenset[float]:
    return frozenset(float(m.group(0).replace(",", "")) for m in _NUMBER_TOKEN.finditer(text))


def score_call(tool: ToolPlan, arguments: dict[str, Any], *, policy: Policy,
               route: RouteDecision, prior_failures: int, untrusted_texts: list[str],
               request_text: str, confidence: float | None = None) -> RiskAssessment:
    """The risk of one proposed call: the named factors that apply and their capped sum."""
    weights = policy.risk
    factors: list[RiskFactor] = []

    def add(name: str, weight: float) -> None:
        if weight:
            factors.append(RiskFactor(name=name, weight=round(weight, 4)))

    add(f"tier:{tool.risk}", weights.tiers.get(tool.risk, 0.0))
    add(f"side_effect:{tool.side_effect}", weights.side_effects.get(tool.side_effect, 0.0))
    for rule in weights.arguments:
        if rule.tool is None or rule.tool == tool.name:
            factor = _argument_factor(rule, arguments)
            if factor is not None:
                factors.append(factor)
    if route.action == "profile" and route.profile is not None:
        add(f"route:{route.profile}", weights.routes.get(route.profile, 0.0))
    if prior_failures > 0:
        add(f"prior_failures:{prior_failures}",
            min(weights.per_prior_failure * prior_failures, weights.max_failure_risk))
    untrusted = echoes_untrusted(arguments, untrusted_texts, request_text)
    if untrusted:
        add("untrusted", weights.untrusted)
    if confidence is not None:
        c = min(max(confidence, 0.0), 1.0) if math.isfinite(confidence) else 0.0
        add(f"confidence:{c:.2f}", weights.low_confidence * (1.0 - c))
    total = math.fsum(f.weight for f in factors)
    return RiskAssessment(score=round(min(1.0, max(0.0, total)), 4), factors=factors,
                          untrusted=untrusted)


def _explain(risk: RiskAssessment) -> str:
    if not risk.factors:
        return "no risk factors"
    return ", ".join(f"{f.name} {f.weight:+.4g}" for f in risk.factors)


def decide(tool: ToolPlan, arguments: dict[str, Any], risk: RiskAssessment, *, policy: Policy,
           route: RouteDecision) -> CallDecision:
    """Allow, ask a human, or deny: deny-listed tools and hard limits first, then the score
    against the thresholds of the route's profile, then prompt-injection containment."""
    score = _num(risk.score)

    def decision(action: Literal["allow", "ask", "deny"], reason: str) -> CallDecision:
        return CallDecision(action=action, reason=reason, risk=risk, policy=policy.ref)

    if tool.name in policy.deny_tools:
        return decision("deny", f"Tool {tool.name!r} is never allowed under policy "
                                f"{policy.ref} (deny_tools); risk score {score}.")
    for limit in policy.hard_limits:
        if limit.tool != tool.name:
            continue
        crossing = [n for n in _numbers(_lookup(arguments, limit.field)) if n > limit.above]
        if crossing:
            why = limit.reason.rstrip(".") + ". " if limit.reason else ""
            return decision("deny", f"{why}The {limit.field} {_num(max(crossing))} is above "
                                    f"the hard limit of {_num(limit.above)} for {tool.name!r}, "
                                    f"so the call is denied whatever its risk score ({score}).")
    profile = route.profile if route.action == "profile" else None
    lines = policy.thresholds_for(profile)
    under = f" of profile {profile!r}" if profile and profile in policy.profiles else ""
    factors = _explain(risk)
    if risk.score >= lines.deny_at:
        return decision("deny", f"Risk score {score} is at or above the deny line "
                                f"{_num(lines.deny_at)}{under} ({factors}).")
    if risk.score >= lines.approve_at:
        also = (" The arguments also repeat untrusted content (a tool result or recalled "
                "memory).") if risk.untrusted else ""
        return decision("ask", f"Risk score {score} is at or above the approval line "
                               f"{_num(lines.approve_at)}{under} ({factors}); a human must "
                               f"approve.{also}")
    if risk.untrusted and risk.score >= policy.approvals.untrusted_line:
        return decision("ask", f"The arguments repeat untrusted content (a tool result or "
                               f"recalled memory) and the risk score {score} is at or above "
                               f"the untrusted line {_num(policy.approvals.untrusted_line)} "
                               f"({factors}); a human must approve (prompt-injection "
                               f"containment).")
    return decision("allow", f"Risk score {score} is below the approval line "
                             f"{_num(lines.approve_at)}{under} ({factors}).")
