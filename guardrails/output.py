"""Validation of a run's final answer. Pure."""

from __future__ import annotations

from typing import Any

from guardrails.decisions import OutputProblem
from guardrails.policy import OutputRules


def validate_output(answer: str, *, rules: OutputRules, evidence: list[str], request_text: str,
                    schema: dict[str, Any] | None = None) -> list[OutputProblem]:
    raise NotImplementedError
