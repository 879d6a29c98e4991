"""What every ``stead`` command shares: consoles, exit codes, settings, error mapping, option
parsing and the ledger connection a command opens.

Command modules (``stead.cli.*``, ``stead.security.codec_server``) import from here, never from
each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import Client

from stead.errors import LedgerError, RunNotFound, SettingsError, StackError, SteadError
from stead.settings import Settings, load_settings

if TYPE_CHECKING:
    from stead.storage.ledger import Ledger

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


def fail_invalid(what: str, e: ValidationError) -> NoReturn:
    """Exit 2 with each of a model's validation errors as ``field: message``."""
    fail(f"invalid {what}: " + "; ".join(
        f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors()),
        EXIT_BAD_INPUT)


def json_object_option(option: str, text: str, *, example: str = "") -> dict[str, Any]:
    """The JSON object an option holds, e.g. ``--args '{"n": 1}'``; anything else exits 2."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{option} is not valid JSON: {e}", EXIT_BAD_INPUT)
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object" + (f", e.g. {example}" if example else ""),
             EXIT_BAD_INPUT)
    return value


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


NO_LEDGER_TABLES = ("the ledger has no tables yet ({error}); a worker creates them when it "
                    "starts (`stead up` or `python worker.py`)")


@asynccontextmanager
async def cli_ledger(settings: Settings, *,
                     missing_tables: str | None = None) -> AsyncIterator[Ledger]:
    """A small pool on the ledger for one command, closed when it is done.

    With ``missing_tables`` (a message with an ``{error}`` field), a ledger whose tables do not
    exist yet is a :class:`LedgerError` (exit 3) instead of a database error; so is a database
    that cannot be reached.
    """
    import asyncpg

    from stead.storage.ledger import Ledger

    assert settings.ledger.database_url is not None
    ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                  retry_seconds=0)
    try:
        yield ledger
    except asyncpg.UndefinedTableError as e:
        if missing_tables is None:
            raise
        raise LedgerError(missing_tables.format(error=e)) from e
    except OSError as e:
        # The pool connects lazily (min_size=0): an unreachable database shows up at the
        # first query, and is exit 3 like every other unreachable service.
        raise LedgerError(f"ledger unavailable: {e}") from e
    finally:
        await ledger.close()
