"""stead: durable execution for AI agents, on Temporal.

    from stead import Agent, AgentCatalog, RunRequest, tool, ToolContext

Agent runs are Temporal workflows (``AgentWorkflow``); model and tool calls are activities with
declarative retry policies; every step and decision lands in a PostgreSQL ledger.

The names below are imported when first used, not when ``stead`` is: Temporal's workflow
sandbox imports ``stead`` again for every run of ``stead.workflows.agent`` (its parent
package), and with the default sandbox restrictions (a plain ``Replayer``, a worker built by
hand) that import must not pull the whole library in behind the workflow's back.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stead.authoring.agent import Agent, AgentCatalog
    from stead.authoring.graph import Graph, when
    from stead.authoring.tools import Tool, ToolContext, ToolRegistry, tool
    from stead.contracts.models import (
        Message,
        ModelEndpoint,
        ModelTurn,
        RetrySpec,
        RunRequest,
        RunResult,
        RunState,
        Timeouts,
        ToolCall,
    )
    from stead.errors import (
        LedgerError,
        RunNotFound,
        SettingsError,
        SpecError,
        StackError,
        SteadError,
    )
    from stead.integrations.llm import (
        FunctionModel,
        ModelClient,
        OpenAIModel,
        ScriptedModel,
        ToolHistory,
        call,
        tool_history,
    )
    from stead.integrations.openai_responses import OpenAIResponsesModel
    from stead.settings import Settings, load_settings

_EXPORTS: dict[str, str] = {
    "Agent": "stead.authoring.agent",
    "AgentCatalog": "stead.authoring.agent",
    "FunctionModel": "stead.integrations.llm",
    "Graph": "stead.authoring.graph",
    "LedgerError": "stead.errors",
    "Message": "stead.contracts.models",
    "ModelClient": "stead.integrations.llm",
    "ModelEndpoint": "stead.contracts.models",
    "ModelTurn": "stead.contracts.models",
    "OpenAIModel": "stead.integrations.llm",
    "OpenAIResponsesModel": "stead.integrations.openai_responses",
    "RetrySpec": "stead.contracts.models",
    "RunNotFound": "stead.errors",
    "RunRequest": "stead.contracts.models",
    "RunResult": "stead.contracts.models",
    "RunState": "stead.contracts.models",
    "ScriptedModel": "stead.integrations.llm",
    "Settings": "stead.settings",
    "SettingsError": "stead.errors",
    "SpecError": "stead.errors",
    "StackError": "stead.errors",
    "SteadError": "stead.errors",
    "Timeouts": "stead.contracts.models",
    "Tool": "stead.authoring.tools",
    "ToolCall": "stead.contracts.models",
    "ToolContext": "stead.authoring.tools",
    "ToolHistory": "stead.integrations.llm",
    "ToolRegistry": "stead.authoring.tools",
    "call": "stead.integrations.llm",
    "load_settings": "stead.settings",
    "tool": "stead.authoring.tools",
    "tool_history": "stead.integrations.llm",
    "when": "stead.authoring.graph",
}
"""Public name -> the module that defines it."""

__all__ = [
    "Agent",
    "AgentCatalog",
    "FunctionModel",
    "Graph",
    "LedgerError",
    "Message",
    "ModelClient",
    "ModelEndpoint",
    "ModelTurn",
    "OpenAIModel",
    "OpenAIResponsesModel",
    "RetrySpec",
    "RunNotFound",
    "RunRequest",
    "RunResult",
    "RunState",
    "ScriptedModel",
    "Settings",
    "SettingsError",
    "SpecError",
    "StackError",
    "SteadError",
    "Timeouts",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolHistory",
    "ToolRegistry",
    "call",
    "load_settings",
    "tool",
    "tool_history",
    "when",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stead' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
