"""Reference agents shipped with stead (they are also the demo)."""

from __future__ import annotations

from pathlib import Path

from stead.agent import AgentCatalog


def reference_catalog(data_dir: Path) -> AgentCatalog:
    """The reference agents, with their fake outside world under ``data_dir``."""
    from agents.ops import default_world, ops_agent

    return AgentCatalog([ops_agent(default_world(data_dir))])


__all__ = ["reference_catalog"]
