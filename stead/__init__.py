"""stead: durable execution for AI agents, on Temporal.

    from stead import Agent, AgentCatalog, RunRequest, tool, ToolContext

Agent runs are Temporal workflows (``AgentWorkflow``); model and tool calls are activities with
declarative retry policies; every step and decision lands in a PostgreSQL ledger.
"""

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.graph import Graph, when
from stead.authoring.tools import Tool, ToolContext, ToolRegistry, tool
from stead.contracts.models import (
    Message,
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
from stead.settings import Settings, load_settings

__all__ = [
    "Agent",
    "AgentCatalog",
    "FunctionModel",
    "Graph",
    "LedgerError",
    "Message",
    "ModelClient",
    "ModelTurn",
    "OpenAIModel",
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
