"""Validation of a run's final answer. Pure.

    problems = validate_output(answer, rules=policy.output, evidence=tool_results,
                               request_text=request.input)
    if problems: reask the model with the details (bounded), then escalate or fail

Checks, in this order: leaked secrets, personal data of the kinds the policy names, grounding
(numbers and identifiers must come from tool results or the request), and the declared JSON
schema. Problem details name what was found without repeating a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

from stead.contracts.policy import OutputRules
from stead.guardrails.calls import schema_problems
from stead.guardrails.decisions import OutputProblem
from stead.guardrails.detect import find_pii, locate

_SECRET_NAMES: Final[dict[str, str]] = {
    "private_key": "a private key",
    "aws_access_key": "an AWS access key id",
    "github_token": "a GitHub token",
    "slack_token": "a Slack token",
    "openai_key": "an API key (sk-...)",
    "jwt": "a JSON Web Token",
    "bearer_token": "a bearer token",
    "credential": "a password or secret assignment",
}

_PII_NAMES: Final[dict[str, str]] = {
    "email": "an email address",
    "phone": "a phone number",
    "credit_card": "a card number",
    "iban": "an IBAN",
    "ssn": "a US social security number",
}

# Identifier-like: letters then segments joined by "-" or "_" with a digit somewhere (ORD-1234,
# OPS-1001, web-3, pay_9f3a), or capitals glued to digits (INC12345).
_IDENTIFIER = re.compile(
    r"(?<![\w-])(?:[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)+|[A-Z]{2,}\d{2,}[A-Z0-9]*)(?![\w-])")
# A number in prose: 40000, 40,000, 12.5, €300, $ 1,234.56, 300€. Not inside words (v2, p99).
_ANSWER_NUMBER = re.compile(
    r"(?<![\w.,])(?P<cur>[$€£¥]\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?)(?P<post>\s?[€$£¥])?")
# In evidence every digit run counts, inside ids and dates too; "1,000" reads both ways.
_EVIDENCE_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)")
_EVIDENCE_PLAIN = re.compile(r"\d+(?:\.\d+)?")


def _normal_number(text: str) -> str:
    """``"40,000"`` -> ``"40000"``, ``"12.50"`` -> ``"12.5"``, ``"300.00"`` -> ``"300"``."""
    whole, _, frac = text.replace(",", "").partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


@lru_cache(maxsize=4096)
def _token_re(token: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", re.IGNORECASE)


def _masked(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _grounding(answer: str, sources: list[str]) -> list[OutputProblem]:
    ids = list(_IDENTIFIER.finditer(answer))
    numbers: set[str] = set()
    for text in sources:
        numbers.update(_normal_number(m.group()) for m in _EVIDENCE_GROUPED.finditer(text))
        numbers.update(_normal_number(m.group()) for m in _EVIDENCE_PLAIN.finditer(text))
    found: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for m in ids:
        token = m.group()
        if not any(ch.isdigit() for ch in token) or f"id:{token.casefold()}" in seen:
            continue
        seen.add(f"id:{token.casefold()}")
        if not any(_token_re(token).search(text) for text in sources):
            found.append((m.start(), token, f"The identifier {token} is not in any tool result "
                                            f"or in the request."))
    prose = _masked(answer, (m.span() for m in ids))
    for m in _ANSWER_NUMBER.finditer(prose):
        digits = m.group("num")
        money = bool(m.group("cur") or m.group("post"))
        if not (money or "." in digits or sum(ch.isdigit() for ch in digits) >= 2):
            continue
        value = _normal_number(digits)
        if value in seen:
            continue
        seen.add(value)
        if value not in numbers:
            shown = m.group().strip()
            found.append((m.start(), shown, f"The number {shown} is not in any tool result or "
                                            f"in the request."))
    return [OutputProblem(kind="ungrounded", detail=detail) for _, _, detail in sorted(found)]


def _pii_hint(kind: str, text: str) -> str:
    """Enough to find the item again without repeating it."""
    if kind == "email":
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    digits = "".join(ch for ch in text if ch.isalnum())
    return f"ending in {digits[-4:]}"


def validate_output(answer: str, *, rules: OutputRules, evidence: list[str], request_text: str,
                    schema: dict[str, Any] | None = None) -> list[OutputProblem]:
    """Every problem with ``answer`` under ``rules``; an empty list means it may be sent."""
    problems: list[OutputProblem] = []
    secret_spans = (locate(answer, pii_kinds=(), secrets=True)
                    if rules.secrets or rules.grounding else [])
    if rules.secrets:
        counts: dict[str, int] = {}
        for _, _, kind in secret_spans:
            counts[kind] = counts.get(kind, 0) + 1
        for kind, n in counts.items():
            times = f" ({n} occurrences)" if n > 1 else ""
            problems.append(OutputProblem(
                kind="secret", detail=f"The answer contains {_SECRET_NAMES[kind]}{times}; "
                                      f"credentials must never appear in an answer."))
    if rules.pii:
        seen: set[tuple[str, str]] = set()
        for kind, text in find_pii(answer, rules.pii):
            if (kind, text) in seen:
                continue
            seen.add((kind, text))
            problems.append(OutputProblem(
                kind="pii", detail=f"The answer contains {_PII_NAMES[kind]} "
                                   f"({_pii_hint(kind, text)}), which the policy forbids."))
    if rules.grounding:
        # Secrets are masked first: a token must never come back quoted as an "identifier".
        prose = _masked(answer, ((a, b) for a, b, _ in secret_spans))
        problems.extend(_grounding(prose, [*evidence, request_text]))
    if schema is not None:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as err:
            problems.append(OutputProblem(
                kind="schema", detail=f"The answer is not valid JSON ({err.msg} at char "
                                      f"{err.pos}); it must be a JSON document matching the "
                                      f"declared schema."))
        else:
            problems.extend(
                OutputProblem(kind="schema",
                              detail=f"The answer does not match the schema: {problem}.")
                for problem in schema_problems(schema, value))
    return problems
