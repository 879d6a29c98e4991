"""CLI commands for replay (filled in by the replay work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
