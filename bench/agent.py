"""The bench agent: five trivial read tools and a planner that calls them one per turn.

A run is always 6 model calls (5 that each ask for one tool, then the answer) and 5 tool
calls, with no artificial delays, so what the benchmark measures is the runtime itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from stead.authoring.agent import Agent
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import Message, ModelTurn, ToolSchema
from stead.contracts.policy import Policy
from stead.integrations.llm import FunctionModel, assistant_turns, call

AGENT = "bench"
TOOLS = 5
"""Tool calls per run; model calls per run are one more."""
REQUEST = "Look up keys one to five and tell me their values."


class LookupQuery(BaseModel):
    key: str = Field(min_length=1, max_length=100, description="The key to look up")


class LookupResult(BaseModel):
    key: str
    value: str


def _lookup(n: int) -> Tool[LookupQuery, LookupResult]:
    async def lookup(args: LookupQuery, ctx: ToolContext) -> LookupResult:
        return LookupResult(key=args.key, value=f"value-{n}-{args.key}")

    declare = tool(name=f"lookup_{n}", description=f"Look up a key in table {n}.")
    return declare(lookup)


def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
    """Turn k (0-based) calls ``lookup_{k+1}``; after the last tool, answer from the results."""
    k = assistant_turns(messages)
    if k < TOOLS:
        return ModelTurn(tool_calls=[call(f"lookup_{k + 1}", call_id=f"call_{k + 1}",
                                          key=f"key-{k + 1}")])
    values: list[str] = []
    for m in messages:
        if m.role == "tool":
            payload: dict[str, Any] = json.loads(m.content or "{}")
            values.append(str(payload.get("result", {}).get("value", "?")))
    return ModelTurn(content="Values: " + ", ".join(values))


def bench_tools() -> list[Tool[Any, Any]]:
    """The five lookups. Agents served by one worker must share these objects (tool names
    are activity types), so build them once and pass them to each ``bench_agent``."""
    return [_lookup(n) for n in range(1, TOOLS + 1)]


def bench_agent(*, name: str = AGENT, policy: Policy | None = None,
                tools: list[Tool[Any, Any]] | None = None) -> Agent:
    """The bench agent; by default without a policy (stead's built-in allow-all)."""
    return Agent(name=name, instructions="Look things up with the tools, then answer.",
                 tools=tools if tools is not None else bench_tools(),
                 offline_model=FunctionModel(plan, name="scripted:bench"),
                 description="Benchmark agent: five lookups, then an answer.", policy=policy)
