"""``stead drift``: compare a recent window of runs with a baseline window, schedule that check,
or list the checks recorded (signals, tests and thresholds: :mod:`stead.evals.drift`).

    stead drift                                     # the last 24 hours vs the 7 days before
    stead drift --agent ops --since 7d --baseline-since 30d --html drift.html
    stead drift --schedule 1h --threshold alpha=0.01
    stead drift --checks --json

Exit codes: 0 no signal crossed its threshold (or the schedule / list was done); 1 a signal
crossed; 2 bad input (option, window, threshold); 3 the stack is unreachable.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    NO_LEDGER_TABLES,
    cli_ledger,
    cli_settings,
    fail,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)
from stead.settings import Settings

if TYPE_CHECKING:  # imported when the command runs: numpy and scipy are not free
    from stead.evals import drift as d
    from stead.storage.memory import Embedder

_EMBEDDERS = ("auto", "model", "hashing", "none")


def register(app: typer.Typer) -> None:
    """Add ``drift`` to the ``stead`` app."""
    app.command("drift")(drift_cmd)


def drift_cmd(
    since: str | None = typer.Option(
        None, "--since", help="Start of the recent window: a duration ago (24h, 7d) or an "
                              "ISO time. [default: 24h before --until]"),
    until: str | None = typer.Option(
        None, "--until", help="End of the recent window. [default: now]"),
    baseline_since: str | None = typer.Option(
        None, "--baseline-since",
        help="Start of the baseline window. [default: 7 days before its end]"),
    baseline_until: str | None = typer.Option(
        None, "--baseline-until",
        help="End of the baseline window. [default: start of the recent window]"),
    agent: str | None = typer.Option(None, "--agent", help="Only runs of this agent"),
    tenant: str | None = typer.Option(None, "--tenant", help="Only runs of this tenant"),
    include_synthetic: bool = typer.Option(
        False, "--include-synthetic", help="Count eval and counterfactual runs too"),
    threshold: list[str] = typer.Option(
        [], "--threshold", metavar="NAME=VALUE",
        help="Override a threshold, e.g. alpha=0.05 or min_runs=50 (repeatable)"),
    embedder: str = typer.Option(
        "auto", "--embedder",
        help="Embedder of request texts: auto = memory's embedder (none when memory is "
             "off); model = the one STEAD_EMBEDDER chooses, never the hashing fallback; "
             "hashing = word overlap only; none"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    html: str | None = typer.Option(
        None, "--html", metavar="PATH", help="Also write an HTML report with plots"),
    schedule: str | None = typer.Option(
        None, "--schedule", metavar="EVERY",
        help="Create or update a Temporal Schedule that runs this check every EVERY "
             "(e.g. 1h) on the worker's task queue and records each report"),
    schedule_id: str = typer.Option("stead-drift", "--schedule-id",
                                    help="Id of the schedule --schedule creates"),
    checks: bool = typer.Option(False, "--checks", help="List recorded checks instead"),
    limit: int = typer.Option(20, "--limit", min=1, help="Most checks --checks lists"),
) -> None:
    """Compare recent runs with a baseline: success rate, latency, tool-call sequences,
    guardrail triggers, tool failures, request topics. Exit 1 when a signal crosses its
    threshold, 2 on bad input."""
    thresholds = _thresholds(threshold, embedder=embedder, checks=checks, schedule=schedule,
                             html=html)
    if checks:
        _list(resolved(cli_settings()), agent=agent, tenant=tenant, limit=limit,
              as_json=as_json)
        return
    if schedule is not None:
        every, scheduled = _scheduled_input(
            schedule, since=since, until=until, baseline_since=baseline_since,
            baseline_until=baseline_until, agent=agent, tenant=tenant,
            include_synthetic=include_synthetic, thresholds=thresholds)
        _schedule(resolved(cli_settings()), schedule_id, every, scheduled, as_json=as_json)
        return
    windows = _windows(since=since, until=until, baseline_since=baseline_since,
                       baseline_until=baseline_until)
    settings = resolved(cli_settings())
    _compare(settings, _request(windows, agent=agent, tenant=tenant,
                                include_synthetic=include_synthetic, thresholds=thresholds),
             embedder=embedder, html=html, as_json=as_json)


# ----------------------------------------------------------------------------- options


def _thresholds(overrides: list[str], *, embedder: str, checks: bool, schedule: str | None,
                html: str | None) -> d.DriftThresholds:
    """The thresholds after ``--threshold`` overrides, once the options that do not go
    together have been refused (exit 2)."""
    from stead.evals import drift as d

    if embedder not in _EMBEDDERS:
        fail(f"--embedder {embedder!r}: use one of {', '.join(_EMBEDDERS)}", EXIT_BAD_INPUT)
    modes = [flag for flag, on in (("--checks", checks), ("--schedule", schedule),
                                   ("--html", html)) if on]
    if len(modes) > 1 and ("--checks" in modes or "--schedule" in modes):
        fail(f"{' and '.join(modes)} cannot be combined", EXIT_BAD_INPUT)
    try:
        return d.DriftThresholds().with_overrides(overrides)
    except ValueError as e:
        fail(str(e), EXIT_BAD_INPUT)


def _windows(*, since: str | None, until: str | None, baseline_since: str | None,
             baseline_until: str | None) -> d.DriftWindows:
    """The absolute windows of a check run now (exit 2 when they are empty or overlap)."""
    from stead.evals import drift as d
    from stead.evals.samples import BadWindow

    try:
        return d.resolve_windows(since=since, until=until, baseline_since=baseline_since,
                                 baseline_until=baseline_until)
    except BadWindow as e:
        fail(str(e), EXIT_BAD_INPUT)


def _request(windows: d.DriftWindows, *, agent: str | None, tenant: str | None,
             include_synthetic: bool, thresholds: d.DriftThresholds) -> d.DriftCheckRequest:
    from stead.evals import drift as d

    return d.DriftCheckRequest(windows=windows, agent=agent, tenant=tenant,
                               include_synthetic=include_synthetic, thresholds=thresholds)


def _scheduled_input(every: str, *, since: str | None, until: str | None,
                     baseline_since: str | None, baseline_until: str | None,
                     agent: str | None, tenant: str | None, include_synthetic: bool,
                     thresholds: d.DriftThresholds) -> tuple[timedelta, d.DriftCheckInput]:
    """``--schedule EVERY`` and the windows as durations before each scheduled run."""
    from stead.evals import drift as d
    from stead.evals.samples import BadWindow, parse_duration

    if until is not None:
        fail("--until cannot be used with --schedule: a scheduled check's recent "
             "window ends when it runs", EXIT_BAD_INPUT)
    try:
        return parse_duration(every), d.relative_input(
            since=since, baseline_since=baseline_since, baseline_until=baseline_until,
            agent=agent, tenant=tenant, include_synthetic=include_synthetic,
            thresholds=thresholds)
    except BadWindow as e:
        fail(str(e), EXIT_BAD_INPUT)


# ----------------------------------------------------------------------------- compare now


def _compare(settings: Settings, request: d.DriftCheckRequest, *, embedder: str,
             html: str | None, as_json: bool) -> None:
    """Run the check, print (and with ``--html`` write) its report; exit 1 when a signal
    crossed its threshold."""
    from stead.evals import drift as d

    result = run_async(_check(settings, request, embedder))
    report = result.report
    if html is not None:
        path = d.html_report(result).write(Path(html))
    if as_json:
        print_json({**report.model_dump(mode="json"),
                    "crossed": [s.name for s in report.crossed]})
    else:
        _print_report(report)
        if html is not None:
            out.print(f"HTML report: {path}", highlight=False)
    if report.crossed:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _check(settings: Settings, request: d.DriftCheckRequest, choice: str) -> d.DriftCheck:
    from stead.evals import drift as d

    emb = _embedder(settings, choice)
    try:
        async with cli_ledger(settings, missing_tables=NO_LEDGER_TABLES) as ledger:
            return await d.run_check(ledger.pool, request, embedder=emb)
    finally:
        close = getattr(emb, "close", None)
        if close is not None:
            await close()


def _embedder(settings: Settings, choice: str) -> Embedder | None:
    """The embedder ``--embedder`` names (``auto``: memory's own, none when memory is off)."""
    from stead.storage.memory import choose_embedder
    from stead.storage.memory.embedders import HashingEmbedder, embedder_from_settings

    if choice == "none" or (choice == "auto" and settings.memory.off):
        return None
    if choice == "hashing":
        return HashingEmbedder(384)
    if choice == "model":
        try:
            model = embedder_from_settings(settings)
        except ImportError as e:
            fail(str(e), EXIT_BAD_INPUT)
        if model is None:
            fail("--embedder model: STEAD_EMBEDDER=none chooses no model", EXIT_BAD_INPUT)
        return model
    return choose_embedder(settings)


def _print_report(report: d.DriftReport) -> None:
    w = report.windows
    scope = "".join(f", {k} {v}" for k, v in (("agent", report.agent),
                                               ("tenant", report.tenant)) if v)
    out.print(f"[bold]drift[/]: recent {w.recent.label()} vs baseline {w.baseline.label()} "
              f"(UTC){scope}", highlight=False)
    table = Table("signal", "status", "statistic", "threshold", "p-value", "baseline",
                  "recent", "n (b/r)", "detail")
    style = {"crossed": "bold red", "ok": "green", "insufficient data": "yellow",
             "skipped": "dim"}
    for s in report.signals:
        table.add_row(s.name, f"[{style[s.status]}]{s.status}[/]", _num(s.statistic),
                      _num(s.threshold), _num(s.p_value), _num(s.baseline),
                      _num(s.recent), f"{s.n_baseline}/{s.n_recent}", s.detail)
    out.print(table)
    short = [s.name for s in report.signals if s.status == "insufficient data"]
    if report.crossed:
        out.print(f"[bold red]{len(report.crossed)} signal(s) crossed:[/] "
                  + ", ".join(s.name for s in report.crossed), highlight=False)
    else:
        out.print("[green]no signal crossed its threshold[/]")
    if short:
        out.print(f"[yellow]insufficient data (not judged):[/] {', '.join(short)}",
                  highlight=False)


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1e}" if v != 0 and abs(v) < 0.001 else f"{v:.3f}"


# ----------------------------------------------------------------------------- --schedule


def _schedule(settings: Settings, schedule_id: str, every: timedelta,
              check: d.DriftCheckInput, *, as_json: bool) -> None:
    action = run_async(_create_schedule(settings, schedule_id, every, check))
    if as_json:
        print_json({"schedule_id": schedule_id, "action": action,
                    "every_seconds": every.total_seconds(),
                    "task_queue": settings.temporal.task_queue,
                    "input": check.model_dump(mode="json")})
        return
    out.print(f"{action} schedule [bold]{schedule_id}[/]: a drift check every {every} on "
              f"task queue {settings.temporal.task_queue!r} (recent {check.recent}); list results "
              f"with `stead drift --checks`", highlight=False)


async def _create_schedule(settings: Settings, schedule_id: str, every: timedelta,
                           check: d.DriftCheckInput) -> str:
    from stead.evals import drift as d

    client = await temporal_client(settings)
    return await d.schedule_checks(client, schedule_id=schedule_id, every=every, check=check,
                                   task_queue=settings.temporal.task_queue)


# ----------------------------------------------------------------------------- --checks


def _list(settings: Settings, *, agent: str | None, tenant: str | None, limit: int,
          as_json: bool) -> None:
    rows = run_async(_recorded_checks(settings, agent=agent, tenant=tenant, limit=limit))
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    table = Table("id", "checked at (UTC)", "recent", "baseline", "scope", "result")
    for r in rows:
        scope = ", ".join(v for v in (r.agent, r.tenant) if v) or "all"
        result = ("[bold red]crossed:[/] " + ", ".join(r.crossed_signals)
                  if r.crossed else "[green]ok[/]")
        table.add_row(str(r.id), f"{r.checked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                      r.windows.recent.label(), r.windows.baseline.label(), scope, result)
    out.print(table)


async def _recorded_checks(settings: Settings, *, agent: str | None, tenant: str | None,
                           limit: int) -> list[d.DriftCheckRow]:
    from stead.evals import drift as d

    missing = ("the ledger has no drift checks table yet ({error}); a worker of this version "
               "creates it when it starts")
    async with cli_ledger(settings, missing_tables=missing) as ledger:
        return await d.list_checks(ledger.pool, agent=agent, tenant=tenant, limit=limit)
