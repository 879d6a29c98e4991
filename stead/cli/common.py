"""What every ``stead`` command shares: consoles, exit codes, settings and error mapping.

Command modules (``stead.cli.app``, ``stead.evals.*``) import from here, never from each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from temporalio.client import Client

from stead.errors import LedgerError, RunNotFound, SettingsError, StackError, SteadError
from stead.settings import Settings, load_settings

# Piped output (CI logs, `| less`) gets a readable width instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)

EXIT_RUN_NOT_COMPLETED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4

T = TypeVar("T")


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def cli_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)


def resolved(settings: Settings) -> Settings:
    """Settings with embedded defaults filled in for unset service addresses."""
    from stead.stack.embedded import EmbeddedStack

    return EmbeddedStack(settings).resolved_settings()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except StackError as e:
        fail(str(e), EXIT_UNREACHABLE)
    except LedgerError as e:
        fail(str(e), EXIT_UNREACHABLE)
    except RunNotFound as e:
        fail(str(e), EXIT_NOT_FOUND)
    except SteadError as e:
        fail(str(e), EXIT_BAD_INPUT)


def quiet_sdk_logs() -> None:
    # Expected tool failures (the demo's flaky tools) are logged by the SDK as warnings with
    # tracebacks; they are in the ledger and history, so keep the terminal readable.
    logging.getLogger("temporalio").setLevel(logging.ERROR)


def print_json(obj: object) -> None:
    out.print_json(json.dumps(obj, default=str))


def configure_cli_logging(settings: Settings) -> None:
    """STEAD_LOG_FORMAT (text or JSON lines) at STEAD_LOG_LEVEL, secrets redacted; for
    commands that run as services (up, worker, codec-server, db migrate)."""
    from stead.observability.logs import configure_logging

    try:
        configure_logging(settings)
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)


async def temporal_client(settings: Settings) -> Client:
    from stead.client import connect

    return await connect(settings)
