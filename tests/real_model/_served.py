"""What the real-model session knows about its server and measured (tests/real_model/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stead.testing.llama_server import ServerTimings


@dataclass
class Served:
    """Where the model is, and what the session measured."""

    base_url: str
    model: str
    started_here: bool
    timings: ServerTimings | None = None
    """How long the server took to answer and to load the model (when started here)."""
    runs: list[tuple[str, str, float]] = field(default_factory=list)
    """(agent, status, seconds) of every run, in start order."""
