"""What the real-model session knows about its server and measured (tests/real_model/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stead.testing.llama_server import ServerTimings


@dataclass(frozen=True)
class RunSummary:
    """One run as the session's summary prints it."""

    agent: str
    status: str
    seconds: float
    steps: int
    model_turns: int
    proposed: int
    """Tool calls the model proposed."""
    rejected: int
    """Of those, rejected by the gate (unknown tool, arguments not JSON or off the schema)."""
    ran: int
    """Tool calls that ran (the gate allowed them)."""
    error: str | None = None
    """Why the run did not complete, as its result says."""


@dataclass
class Served:
    """Where the model is, and what the session measured."""

    base_url: str
    model: str
    started_here: bool
    timings: ServerTimings | None = None
    """How long the server took to answer and to load the model (when started here)."""
    runs: list[RunSummary] = field(default_factory=list)
    """Every run, in start order."""
    notes: list[str] = field(default_factory=list)
    """Lines the tests add to the summary (what metrics and grading reported)."""
