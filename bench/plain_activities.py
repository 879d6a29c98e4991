"""Activities of the plain-temporalio agent: the same planner and lookups, nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from temporalio import activity

from bench.plain_models import (
    TOOLS,
    PlainLookup,
    PlainLookupResult,
    PlainModelRequest,
    PlainToolCall,
    PlainTurn,
)


@activity.defn(name="plain.model")
async def plain_model(req: PlainModelRequest) -> PlainTurn:
    k = sum(1 for m in req.messages if m.role == "assistant")
    if k < TOOLS:
        return PlainTurn(tool_calls=[PlainToolCall(
            id=f"call_{k + 1}", name=f"lookup_{k + 1}",
            arguments=json.dumps({"key": f"key-{k + 1}"}))])
    values = [str(json.loads(m.content or "{}").get("result", {}).get("value", "?"))
              for m in req.messages if m.role == "tool"]
    return PlainTurn(content="Values: " + ", ".join(values))


def _lookup(n: int) -> Callable[..., Any]:
    async def lookup(args: PlainLookup) -> PlainLookupResult:
        return PlainLookupResult(key=args.key, value=f"value-{n}-{args.key}")

    lookup.__name__ = lookup.__qualname__ = f"lookup_{n}"
    return activity.defn(name=f"plain.lookup_{n}")(lookup)


def plain_activities() -> list[Callable[..., Any]]:
    return [plain_model, *(_lookup(n) for n in range(1, TOOLS + 1))]
