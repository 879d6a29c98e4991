"""Payloads of the plain-temporalio agent (pydantic, same data converter as stead).

Shaped like what any agent loop on Temporal carries: the transcript and the tool schemas go
to the model activity, the tool's arguments go to the tool activity.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class PlainToolCall(BaseModel):
    id: str
    name: str
    arguments: str
    """JSON text, as a model writes it."""


class PlainMessage(BaseModel):
    role: str
    content: str | None = None
    tool_calls: list[PlainToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class PlainToolSchema(BaseModel):
    name: str
    description: str
    parameters: dict[str, object]


class PlainModelRequest(BaseModel):
    messages: list[PlainMessage]
    tools: list[PlainToolSchema]


class PlainTurn(BaseModel):
    content: str | None = None
    tool_calls: list[PlainToolCall] = Field(default_factory=list)


class PlainLookup(BaseModel):
    key: str


class PlainLookupResult(BaseModel):
    key: str
    value: str


class PlainRequest(BaseModel):
    input: str


class PlainResult(BaseModel):
    answer: str
    model_turns: int
    tool_calls: int


TOOLS = 5

TOOL_SCHEMAS = [
    PlainToolSchema(name=f"lookup_{n}", description=f"Look up a key in table {n}.",
                    parameters=PlainLookup.model_json_schema())
    for n in range(1, TOOLS + 1)
]
