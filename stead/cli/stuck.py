"""``stead stuck``: running workflows without progress, and why (see ``stead.observability.stuck``).

    stead stuck                         # no progress for 5 minutes
    stead stuck --older-than 30s --task-queue stead --json

Exit codes: 0 nothing stuck; 1 at least one run is stuck; 2 bad input (duration, query);
3 the stack is unreachable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    cli_settings,
    err,
    fail,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from stead.observability.stuck import RunHealth, StuckReport
    from stead.settings import Settings


def register(app: typer.Typer) -> None:
    """Add ``stuck`` to the ``stead`` app."""
    app.command("stuck")(stuck_cmd)


def stuck_cmd(
    older_than: str = typer.Option(
        "5m", "--older-than",
        help="No progress for this long makes a run stuck: 90s, 5m, 1h, 1h30m"),
    task_queue: str | None = typer.Option(None, "--task-queue",
                                          help="Only runs on this task queue"),
    query: str | None = typer.Option(
        None, "--query", "-q",
        help="Narrow the running workflows with a visibility query, e.g. \"SteadAgent='ops'\""),
    no_ledger: bool = typer.Option(False, "--no-ledger",
                                   help="Judge from Temporal alone (skip the ledger)"),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many running runs"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Running workflows that made no progress (history, heartbeats, ledger) beyond a
    threshold or past their approval deadline, with the reason: no worker polling, a workflow
    task failing, an activity retrying, an overdue approval. Runs waiting for a human within
    their deadline are listed apart. Exit 1 when any run is stuck."""
    from stead.evals.samples import BadWindow, parse_duration

    try:
        threshold = parse_duration(older_than)
    except BadWindow as e:
        fail(f"--older-than: {e}", EXIT_BAD_INPUT)
    settings = resolved(cli_settings())
    report = run_async(_find(settings, threshold, task_queue=task_queue, query=query,
                             use_ledger=not no_ledger, limit=limit))
    if as_json:
        print_json({**report.summary(), **report.model_dump(mode="json")})
    else:
        _print(report)
    if report.stuck:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _find(settings: Settings, threshold: timedelta, *, task_queue: str | None,
                query: str | None, use_ledger: bool, limit: int) -> StuckReport:
    from stead.errors import LedgerError
    from stead.observability.stuck import find_stuck
    from stead.storage.ledger import Ledger

    client = await temporal_client(settings)
    ledger: Ledger | None = None
    if use_ledger and settings.ledger.database_url is not None:
        try:
            ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                          retry_seconds=0)
        except LedgerError as e:
            ledger = None  # judged from Temporal alone; the report says so
            err.print(f"note: {e}; progress is judged from Temporal alone", highlight=False)
    try:
        return await find_stuck(client, older_than=threshold, query=query,
                                task_queue=task_queue, ledger=ledger, limit=limit)
    finally:
        if ledger is not None:
            await ledger.close()


_VERDICT = {"stuck": "[bold red]stuck[/]", "waiting": "[yellow]waiting[/]",
            "progressing": "[green]progressing[/]"}


def _idle(r: RunHealth) -> str:
    s = r.idle_seconds
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")


def _print(report: StuckReport) -> None:
    if report.stuck:
        table = Table(title=f"stuck runs (no progress for over "
                            f"{report.older_than_seconds:g}s, or past their deadline)")
        for col in ("run", "agent", "task queue", "idle", "reason", "detail"):
            table.add_column(col)
        for r in report.stuck:
            table.add_row(r.workflow_id, r.agent or r.workflow_type, r.task_queue, _idle(r),
                          r.reason, r.detail)
        out.print(table)
    if report.waiting:
        table = Table(title="waiting for a human (within the approval deadline)")
        for col in ("run", "agent", "task queue", "idle", "deadline (UTC)", "detail"):
            table.add_column(col)
        for r in report.waiting:
            table.add_row(r.workflow_id, r.agent or r.workflow_type, r.task_queue, _idle(r),
                          r.deadline.strftime("%Y-%m-%d %H:%M:%S") if r.deadline else "?",
                          r.detail)
        out.print(table)
    n = report.summary()
    ledger = "" if report.ledger_checked else " (ledger not checked)"
    if report.ledger_problem:
        err.print(f"note: the ledger could not be read ({report.ledger_problem}); progress "
                  f"was judged from Temporal alone", highlight=False)
    out.print(f"{n['running']} running: [bold]{n['stuck']} stuck[/], {n['waiting']} waiting "
              f"for approval, {n['progressing']} progressing{ledger}", highlight=False)
