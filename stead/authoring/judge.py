"""The model-as-judge prompt and the parser of its reply.

Shared by the graph's judge evaluators (``Evaluator(rubric=...)``, run by ``AgentWorkflow`` as a
model activity) and by eval suites' ``judge`` expectations (``stead.evals.expect``).

    score, reason = parse_judgement('{"score": 0.8, "reason": "cites the tool result"}')
"""

from __future__ import annotations

import json
import re

__all__ = ["JUDGE_INSTRUCTIONS", "parse_judgement"]

JUDGE_INSTRUCTIONS = """You grade one run of an AI agent against a rubric.
Read the request, what the agent did and its answer, then reply with ONLY a JSON object:
{"score": <number from 0 to 1>, "reason": "<one sentence>"}
1 means the run fully meets the rubric, 0 means it does not meet it at all."""


def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score, reason) from a judge's reply: a JSON object, else a bare number in [0, 1]."""
    m = re.search(r"\{.*\}", text, re.DOTALL)
    if m:
        try:
            data = json.loads(m.group())
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("score"), int | float) \
                and not isinstance(data.get("score"), bool):
            score = float(data["score"])
            if 0 <= score <= 1:
                return score, str(data.get("reason", ""))
    m = re.fullmatch(r"\s*(0(?:\.\d+)?|1(?:\.0+)?)\s*", text)
    if m:
        return float(m.group(1)), ""
    return None, ""
