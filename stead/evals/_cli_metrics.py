"""CLI commands for metrics (filled in by the metrics work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
