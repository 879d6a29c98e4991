"""Custom evaluators of the test suites (``function: "eval_checks.py:<name>"``)."""

from __future__ import annotations

from stead.evals.expect import CaseOutcome


def answer_is_short(outcome: CaseOutcome) -> tuple[bool, str]:
    """Pass/fail with a message."""
    n = len(outcome.answer or "")
    return n < 400, f"answer has {n} characters"


def root_cause_score(outcome: CaseOutcome) -> float:
    """A score: 1.0 when the answer names a root cause, else 0.2 (for the threshold)."""
    return 1.0 if "because" in (outcome.answer or "") else 0.2


def broken_evaluator(outcome: CaseOutcome) -> bool:
    """An evaluator with a bug: the case fails with what it raised."""
    raise KeyError("verdict")
