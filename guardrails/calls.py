"""Gate for proposed tool calls: is the tool known, is the argument text JSON, does it fit the
tool's schema? Pure and deterministic, so it runs inside workflows and replays identically.

    verdict = check_call(call, tools_by_name)
    if verdict.error: tell the model verdict.error
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from stead.contracts.models import ToolCall, ToolPlan


@dataclass(frozen=True)
class CallVerdict:
    """The gate's answer. Exactly one of ``arguments`` and ``error`` is set."""

    arguments: dict[str, Any] | None = None
    error: str | None = None
    kind: str = "ok"
    """``ok``, ``unknown_tool``, ``malformed_arguments`` or ``invalid_arguments``."""


def check_call(call: ToolCall, tools: Mapping[str, ToolPlan]) -> CallVerdict:
    """Check one proposed call against the run's tool plans."""
    plan = tools.get(call.name)
    if plan is None:
        known = ", ".join(sorted(tools)) or "(none)"
        return CallVerdict(
            error=f"unknown tool {call.name!r}. Available tools: {known}.", kind="unknown_tool")
    text = call.arguments.strip() or "{}"
    try:
        args = json.loads(text)
    except json.JSONDecodeError as err:
        return CallVerdict(
            error=f"arguments for {call.name!r} are not valid JSON ({err.msg} at char "
                  f"{err.pos}). Send a JSON object matching the tool's schema.",
            kind="malformed_arguments")
    if not isinstance(args, dict):
        return CallVerdict(
            error=f"arguments for {call.name!r} must be a JSON object, got "
                  f"{type(args).__name__}.", kind="malformed_arguments")
    if _has_lone_surrogate(args):
        # JSON may escape half a UTF-16 pair (a truncated emoji: "\ud83d"); no payload can
        # carry it on, so the call could never be sent. Tell the model instead.
        return CallVerdict(
            error=f"arguments for {call.name!r} contain an unpaired UTF-16 surrogate (half "
                  f"an emoji?); send valid Unicode text.", kind="malformed_arguments")
    problems = schema_problems(plan.parameters, args)
    if problems:
        return CallVerdict(
            error=f"invalid arguments for {call.name!r}: " + "; ".join(problems),
            kind="invalid_arguments")
    return CallVerdict(arguments=args)


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Draft202012Validator:
    # Building a validator costs more than validating; tool schemas repeat on every call.
    return Draft202012Validator(json.loads(schema_json))


def schema_problems(schema: Mapping[str, Any], value: object, *, limit: int = 5) -> list[str]:
    """Every way ``value`` violates ``schema`` (JSON Schema 2020-12), as short sentences."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    out: list[str] = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(arguments)"
        out.append(f"{where}: {err.message}")
        if len(out) >= limit:
            break
    return out
