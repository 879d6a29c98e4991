"""Reference agents shipped with stead (they are also the demo)."""

from __future__ import annotations

from pathlib import Path

from stead.agent import AgentCatalog


def reference_catalog(data_dir: Path) -> AgentCatalog:
    """The reference agents, with their fake outside worlds under ``data_dir``."""
    from agents import ops, refund

    return AgentCatalog([ops.ops_agent(ops.default_world(data_dir)),
                         refund.refund_agent(refund.default_world(data_dir))])


__all__ = ["reference_catalog"]
