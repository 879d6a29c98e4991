"""``stead replay`` and ``stead histories export``: determinism checks of recorded runs.

    stead replay evals/histories                       # the repo's corpus (what CI runs)
    stead replay --query "WorkflowType='AgentWorkflow' AND ExecutionStatus='Running'"
    stead histories export --query "SteadAgent='refund'" --limit 50 --out evals/histories

Exit codes: 0 every history replays; 1 at least one is non-deterministic or failed; 2 a file is
unreadable or not a history, or the query is invalid; 3 the server is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
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
from stead.errors import SteadError
from stead.evals.replay import DEFAULT_QUERY

if TYPE_CHECKING:
    from temporalio.client import WorkflowHistory

    from stead.evals.replay import RecordedHistory, ReplayReport

histories_app = typer.Typer(help="Recorded workflow histories: export them from the server.",
                            no_args_is_help=True)

_STYLE = {"ok": "[green]ok[/]", "nondeterministic": "[red]NON-DETERMINISTIC[/]",
          "failed": "[red]FAILED[/]"}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
    app.command("replay")(replay_cmd)
    app.add_typer(histories_app, name="histories")


def _quiet_replay_logs() -> None:
    # A history that fails replay is logged by the SDK with a traceback; the report says it.
    for name in ("temporalio", "temporalio.worker"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def replay_cmd(
    paths: list[Path] = typer.Argument(
        None, help="History JSON files or directories of them (searched recursively), as "
                   "`temporal workflow show --output json`, the Web UI or `stead histories "
                   "export` write them", show_default=False),
    query: str | None = typer.Option(
        None, "--query", "-q",
        help=f"Also replay runs from the Temporal server selected by this visibility query, "
             f"e.g. \"{DEFAULT_QUERY} AND ExecutionStatus='Running'\""),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many runs by --query"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Replay recorded histories against the current workflow code; report non-determinism.

    A run in flight continues on the code workers run now: every history here that does not
    replay is a run a deploy of this code would break."""
    from stead.evals.replay import fetch_histories, load_histories, replay

    paths = paths or []
    if not paths and query is None:
        fail("nothing to replay: give history files or directories, and/or --query to replay "
             f"runs from the server (e.g. --query \"{DEFAULT_QUERY}\")", EXIT_BAD_INPUT)
    try:
        loaded = load_histories(paths)  # every file is checked before anything is replayed
    except SteadError as e:
        fail(str(e), EXIT_BAD_INPUT)
    settings = resolved(cli_settings()) if query is not None else None
    _quiet_replay_logs()

    async def sources() -> AsyncIterator[RecordedHistory]:
        for rec in loaded:
            yield rec
        if query is not None and settings is not None:
            client = await temporal_client(settings)
            async for rec in fetch_histories(client, query, limit=limit):
                yield rec

    async def go() -> ReplayReport:
        return await replay(sources() if query is not None else loaded)

    report = run_async(go())
    if as_json:
        print_json({"ok": report.ok, "histories": len(report.outcomes),
                    "nondeterministic": report.count("nondeterministic"),
                    "failed": report.count("failed"), "seconds": round(report.seconds, 3),
                    "histories_per_second": round(report.histories_per_second, 1),
                    "outcomes": [o.model_dump(mode="json") for o in report.outcomes]})
    else:
        _print_report(report)
    if not report.outcomes:
        err.print(f"note: the query selected no runs ({query!r}); nothing was replayed",
                  highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


def _print_report(report: ReplayReport) -> None:
    table = Table(title="replay against the current workflow code")
    for col in ("result", "workflow id", "run id", "type", "events", "diverged at"):
        table.add_column(col, justify="right" if col == "events" else "left")
    for o in report.outcomes:
        at = f"event {o.event_id} {o.event_type}" if o.event_id else ""
        table.add_row(_STYLE[o.status], o.workflow_id, o.run_id, o.workflow_type,
                      str(o.events), at)
    out.print(table)
    for o in report.outcomes:
        if o.status != "ok":
            where = f" at event {o.event_id} ({o.event_type})" if o.event_id else ""
            out.print(f"[bold]{o.workflow_id}[/] run {o.run_id} ({o.source}): "
                      f"{o.status}{where}: {o.detail}", highlight=False)
    n = len(report.outcomes)
    out.print(f"{n} histories replayed in {report.seconds:.2f} s "
              f"({report.histories_per_second:.0f}/s): {report.count('ok')} ok, "
              f"{report.count('nondeterministic')} non-deterministic, "
              f"{report.count('failed')} failed", highlight=False)


@histories_app.command("export")
def export_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Directory to write the histories to"),
    query: str = typer.Option(DEFAULT_QUERY, "--query", "-q",
                              help="Visibility query selecting the runs"),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many runs"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Write the histories of runs on the server as JSON files, one per run (named from the
    workflow id): how a corpus for `stead replay` grows from real runs."""
    from stead.evals.corpus import fetch_for_export, write_exports

    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir} exists and is not a directory", EXIT_BAD_INPUT)
    settings = resolved(cli_settings())

    async def go() -> list[tuple[WorkflowHistory, str]]:
        client = await temporal_client(settings)
        return await fetch_for_export(client, query=query, limit=limit)

    fetched = run_async(go())
    try:
        written = write_exports(fetched, out_dir)
    except (SteadError, OSError) as problem:
        fail(str(problem), EXIT_BAD_INPUT)
    if as_json:
        print_json({"out": str(out_dir), "query": query, "histories": [
            {"path": str(e.path), "workflow_id": e.workflow_id, "run_id": e.run_id,
             "workflow_type": e.workflow_type, "status": e.status, "events": e.events}
            for e in written]})
        return
    table = Table(title=f"exported to {out_dir}")
    for col in ("file", "workflow id", "run id", "status", "events"):
        table.add_column(col, justify="right" if col == "events" else "left")
    for e in written:
        table.add_row(e.path.name, e.workflow_id, e.run_id, e.status, str(e.events))
    out.print(table)
    out.print(f"{len(written)} histories written to {out_dir} (query: {query})",
              highlight=False)
