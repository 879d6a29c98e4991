"""The OpenAI Agents SDK and Temporal's plugin for it, imported past this repository's own
``agents/`` folder.

    from bench.peers.openai_sdk import Agent, activity_as_tool
    agent = Agent(name="...", tools=[activity_as_tool(some_activity)])

The SDK's import name is ``agents``. So is the folder of stead's reference agents at the top
of this repository, which installs as ``stead.agents`` but, whenever Python runs from the
repository root (``python -m bench.peers``, pytest), sits on ``sys.path`` before
site-packages and would be what ``import agents`` finds. This module imports the SDK from
where its distribution installed it, under its own name, before anything else asks for it;
the plugin and this benchmark then use it through the ordinary import system (its
submodules resolve through the package's own path). Nothing in stead imports a top-level
``agents`` (``tests/test_layout.py``), so the SDK owning that name in this process hides
nothing stead uses.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

DISTRIBUTION = "openai-agents"


def _site(dist: importlib.metadata.Distribution) -> Path:
    init = next((f for f in dist.files or () if str(f) == "agents/__init__.py"), None)
    if init is None:
        raise ImportError(f"the {DISTRIBUTION} distribution has no agents/__init__.py")
    return Path(str(dist.locate_file(init))).parent.parent


def load_sdk() -> ModuleType:
    """The SDK's ``agents`` package, imported from the SDK's installation if it is not yet.
    Raises ImportError (naming the extra) when the SDK is missing, RuntimeError when another
    package already holds the name ``agents`` in this process."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"the openai-agents peer needs {DISTRIBUTION}: "
                          f"pip install -e '.[bench]'") from None
    site = _site(dist)
    loaded = sys.modules.get("agents")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", None) or "?").resolve()
        if where.parent.parent != site.resolve():
            raise RuntimeError(f"'agents' is already imported from {where}, not from the "
                               f"OpenAI Agents SDK in {site}: import bench.peers.openai_sdk "
                               f"before anything imports a top-level 'agents'")
        return loaded
    spec = importlib.machinery.PathFinder.find_spec("agents", [str(site)])
    if spec is None or spec.loader is None:
        raise ImportError(f"no 'agents' package in {site}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["agents"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["agents"]
        raise
    return module


sdk = load_sdk()
"""The SDK's top-level package (``agents``)."""
_items = importlib.import_module("agents.items")

# What the benchmark uses of the SDK. Loaded by hand, the SDK has no static types here.
Agent: Any = sdk.Agent
Runner: Any = sdk.Runner
RunConfig: Any = sdk.RunConfig
Model: Any = sdk.Model
ModelProvider: Any = sdk.ModelProvider
ModelResponse: Any = sdk.ModelResponse
Usage: Any = sdk.Usage
ToolCallItem: Any = _items.ToolCallItem
ToolCallOutputItem: Any = _items.ToolCallOutputItem

# Temporal's plugin imports ``agents`` itself, so it may only be imported once the SDK holds
# that name: these imports follow the load on purpose.
from temporalio.openai_agents import (  # noqa: E402
    ModelActivityParameters,
    OpenAIAgentsPlugin,
)
from temporalio.openai_agents.workflow import activity_as_tool  # noqa: E402

__all__ = ["Agent", "Model", "ModelActivityParameters", "ModelProvider", "ModelResponse",
           "OpenAIAgentsPlugin", "RunConfig", "Runner", "ToolCallItem", "ToolCallOutputItem",
           "Usage", "activity_as_tool", "load_sdk", "sdk"]
