"""Policy-aware routing of a request, before the model runs. Pure and deterministic.

    decision = route(text=request.input, tenant=request.tenant, metadata=request.metadata,
                     policy=policy)
    if decision.action == "refuse": finish the run with decision.reason

Rules are evaluated in order and the first whose conditions all hold decides. Cheap conditions
(tenant, role, metadata) are checked before text matchers and PII detectors, and a rule stops
at its first failing condition.
"""

from __future__ import annotations

import re
from functools import lru_cache

from stead.contracts.policy import Match, Policy, RouteRule
from stead.guardrails.decisions import RouteDecision
from stead.guardrails.detect import find_pii


@lru_cache(maxsize=1024)
def _keyword_re(keyword: str) -> re.Pattern[str]:
    # Word start, any case; inner whitespace of a phrase matches any run of whitespace.
    body = r"\s+".join(re.escape(part) for part in keyword.split())
    return re.compile(rf"(?<!\w){body}", re.IGNORECASE)


@lru_cache(maxsize=1024)
def _pattern_re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _signals(when: Match, text: str, tenant: str, metadata: dict[str, str]) -> list[str] | None:
    """What made every condition of ``when`` hold, or None when one does not."""
    signals: list[str] = []
    if when.tenants:
        if tenant not in when.tenants:
            return None
        signals.append(f"tenant:{tenant}")
    if when.roles:
        role = metadata.get("role")
        if role is None or role not in when.roles:
            return None
        signals.append(f"role:{role}")
    for key, value in when.metadata.items():
        if metadata.get(key) != value:
            return None
        signals.append(f"metadata:{key}={value}")
    if when.keywords:
        hits = [f"keyword:{k}" for k in when.keywords if k.strip() and _keyword_re(k).search(text)]
        if not hits:
            return None
        signals.extend(hits)
    if when.patterns:
        hits = [f"pattern:{p}" for p in when.patterns if _pattern_re(p).search(text)]
        if not hits:
            return None
        signals.extend(hits)
    if when.pii:
        kinds = {kind for kind, _ in find_pii(text, when.pii)}
        if not kinds:
            return None
        signals.extend(f"pii:{kind}" for kind in kinds)
    return sorted(set(signals))


def _reason(rule: RouteRule, signals: list[str]) -> str:
    if rule.reason:
        return rule.reason
    why = (f"rule {rule.name!r} matched on {', '.join(signals)}" if signals
           else f"rule {rule.name!r} matches every request")
    if rule.action == "allow":
        outcome = "the request runs normally"
    elif rule.action == "refuse":
        outcome = "the request is refused"
    elif rule.action == "human":
        outcome = "a human must handle the request before the agent runs"
    elif rule.action == "profile":
        outcome = f"the request runs under profile {rule.profile!r}"
    else:
        outcome = f"the request runs with model {rule.model!r}"
    return f"{why[0].upper()}{why[1:]}: {outcome}."


def route(*, text: str, tenant: str, metadata: dict[str, str], policy: Policy) -> RouteDecision:
    """Evaluate ``policy.routing`` in order; the first matching rule decides."""
    for rule in policy.routing:
        signals = _signals(rule.when, text, tenant, metadata)
        if signals is None:
            continue
        return RouteDecision(
            action=rule.action, rule=rule.name, reason=_reason(rule, signals),
            profile=rule.profile if rule.action == "profile" else None,
            model=rule.model if rule.action == "model" else None,
            agent=rule.agent if rule.action == "agent" else None,
            signals=signals, policy=policy.ref)
    return RouteDecision(
        action="allow", reason="No routing rule matched; the request runs under the policy's "
                               "default thresholds.", policy=policy.ref)
