"""Reference agents shipped with stead (they are also the demo)."""

from __future__ import annotations

from pathlib import Path

from stead.authoring.agent import AgentCatalog
from stead.authoring.graph import Graph
from stead.settings import Settings


def reference_catalog(data_dir: Path) -> AgentCatalog:
    """The reference agents, with their fake outside worlds under ``data_dir``."""
    from stead.agents import ops, refund

    return AgentCatalog([ops.ops_agent(ops.default_world(data_dir)),
                         refund.refund_agent(refund.default_world(data_dir))])


def reference_graphs() -> list[Graph]:
    """The reference agents' execution graphs, without building their worlds (replay)."""
    from stead.agents import ops, refund

    return [ops.GRAPH, ops.DELEGATING_GRAPH, refund.GRAPH]


def served_catalog(settings: Settings) -> AgentCatalog:
    """What ``stead up``, ``stead worker`` and ``worker.py`` serve: the reference agents plus
    the OpenAPI tools ``STEAD_OPENAPI_SOURCES`` gives them (MCP servers in
    ``STEAD_MCP_SERVERS`` are connected by the worker itself). Raises ``SettingsError``."""
    from stead.integrations.openapi import with_openapi_sources

    return with_openapi_sources(reference_catalog(settings.stack.data_dir), settings.integrations)


__all__ = ["reference_catalog", "reference_graphs", "served_catalog"]
