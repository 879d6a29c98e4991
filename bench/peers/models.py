"""Payloads: what any system's run produced, and the plain-temporalio peer's activity inputs
(pydantic, stead's message types)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stead.contracts.models import Message, ToolCall


class RunOutcome(BaseModel):
    """What one run of any system produced, for ``Workload.check``."""

    answer: str
    tools_called: list[str] = Field(default_factory=list)
    model_calls: int = 0


class PeerRequest(BaseModel):
    workload: str
    """``five``, ``long`` or ``hitl`` (:mod:`bench.peers.workload`)."""
    messages: list[Message]
    approval: bool = False
    """Wait for the ``approve`` signal before each tool call."""
    local_tools: bool = False
    """Run tool calls as local activities (inside the workflow task, no activity task)."""
    local_model: bool = False
    """Run model calls as local activities too (with ``local_tools`` and eager start: the
    engine's floor)."""


class PeerModelInput(BaseModel):
    workload: str
    messages: list[Message]


class PeerToolInput(BaseModel):
    workload: str
    call: ToolCall
    run_id: str
    step: int


class FrameworkRequest(BaseModel):
    """A run of an agent framework's workflow (pydantic-ai, the OpenAI Agents SDK): the
    workload names the framework's agent, ``input`` is the user's request."""

    workload: str
    input: str
