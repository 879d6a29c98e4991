"""CLI commands for suites (filled in by the suites work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
