"""CLI commands over figures from the ledger: ``stead metrics`` (and ``stead drift``).

Each command has its own ``_register_<name>(app)``; :func:`register` calls them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    cli_settings,
    fail,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.errors import LedgerError
from stead.settings import Settings

if TYPE_CHECKING:  # imported when a command runs, to keep `stead --help` fast
    from stead.evals.metrics import MetricsFilter, MetricsReport


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
    _register_metrics(app)
    _register_drift(app)


# =============================================================================== metrics

def _register_metrics(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics_cmd(
        since: str = typer.Option("24h", help="Start of the window: a duration back from now "
                                              "(30m, 24h, 7d, 1h30m) or an ISO date/time"),
        until: str = typer.Option("now", help="End of the window (same forms as --since)"),
        agent: str | None = typer.Option(None, help="Only runs of this agent"),
        tenant: str | None = typer.Option(None, help="Only runs of this tenant"),
        include_synthetic: bool = typer.Option(
            False, "--include-synthetic",
            help="Count runs started by eval suites and counterfactual replays too"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    ) -> None:
        """Success rate, latency, failures, retries, approvals, denials, tokens and cost of the
        runs that started in a window, per agent and per tool, from the ledger."""
        from stead.evals.metrics import MetricsFilter, parse_when

        now = datetime.now(UTC)
        bounds = []
        for option, text in (("--since", since), ("--until", until)):
            try:
                bounds.append(parse_when(text, now=now))
            except ValueError as e:
                fail(f"{option}: {e}", EXIT_BAD_INPUT)
        flt = MetricsFilter(since=bounds[0], until=bounds[1], agent=agent, tenant=tenant,
                            include_synthetic=include_synthetic)
        if flt.since >= flt.until:
            fail(f"empty window: --since {since} ({flt.since:%Y-%m-%d %H:%M:%S} UTC) is not "
                 f"before --until {until} ({flt.until:%Y-%m-%d %H:%M:%S} UTC)", EXIT_BAD_INPUT)
        settings = resolved(cli_settings())
        report = run_async(_metrics(settings, flt))
        if as_json:
            print_json(report.model_dump(mode="json"))
            return
        _print_metrics(report)


async def _metrics(settings: Settings, flt: MetricsFilter) -> MetricsReport:
    import asyncpg

    from stead.evals.metrics import compute_metrics
    from stead.storage.ledger import Ledger

    assert settings.ledger.database_url is not None
    ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                  retry_seconds=0)
    try:
        return await compute_metrics(ledger, flt, prices=settings.models.prices)
    except asyncpg.UndefinedTableError as e:
        raise LedgerError(f"the ledger has no tables yet ({e}); a worker creates them when it "
                          f"starts (`stead up` or `python worker.py`)") from e
    finally:
        await ledger.close()


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    if v < 10:
        return f"{v:.1f} ms"
    if v < 1000:
        return f"{v:.0f} ms"
    if v < 60_000:
        return f"{v / 1000:.2f} s"
    if v < 3_600_000:
        return f"{v / 60_000:.1f} min"
    return f"{v / 3_600_000:.1f} h"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _print_metrics(report: MetricsReport) -> None:
    f = report.filter
    scope = "".join(f" {k}={v}" for k, v in (("agent", f.agent), ("tenant", f.tenant)) if v)
    out.print(f"[bold]runs started {f.since:%Y-%m-%d %H:%M:%S} – {f.until:%Y-%m-%d %H:%M:%S} "
              f"UTC[/]{scope}" + (" (synthetic runs included)" if f.include_synthetic else
                                  " (eval and counterfactual runs excluded)"), highlight=False)
    if report.overall.runs == 0:
        out.print("no runs in this window")
        return
    rows = report.agents + ([report.overall] if len(report.agents) > 1 else [])

    t = Table("agent", "runs", "completed", "failed", "denied", "refused", "escalated",
              "running", "success", "p50", "p95", "p99", title="runs")
    for a in rows:
        s = a.by_status
        t.add_row("all" if a.agent == "*" else a.agent, str(a.runs),
                  *(str(s.get(k, 0)) for k in ("completed", "failed", "denied", "refused",
                                               "escalated", "running")),
                  _pct(a.success_rate), _ms(a.latency_ms.p50), _ms(a.latency_ms.p95),
                  _ms(a.latency_ms.p99))
    out.print(t)

    t = Table("agent", "gate denials", "denied runs", "refused runs", "approvals asked",
              "approved", "rejected", "expired", "escalations", "wait p50", "wait p95",
              title="guardrails and approvals")
    for a in rows:
        ap = a.approvals
        t.add_row("all" if a.agent == "*" else a.agent, str(a.gate_denials), str(a.denied_runs),
                  str(a.refused_runs), str(ap.requested),
                  *(str(ap.decided.get(k, 0)) for k in ("approved", "rejected", "expired")),
                  str(ap.escalated), _ms(ap.wait_ms.p50), _ms(ap.wait_ms.p95))
    out.print(t)

    t = Table("agent", "model", "calls", "errors", "tokens in", "tokens out", "cost (USD)",
              "p50", "p95", title="model calls")
    for a in report.agents:
        for u in a.models:
            cost = (f"{u.cost_usd:.4f}" if u.cost_usd >= 0.01 else f"{u.cost_usd:.6f}") \
                if u.pricing == "priced" else f"0 ({u.pricing})"
            t.add_row(a.agent, u.model, str(u.calls), str(u.errors), f"{u.input_tokens:,}",
                      f"{u.output_tokens:,}", cost, _ms(u.latency_ms.p50),
                      _ms(u.latency_ms.p95))
    out.print(t)

    if report.tools:
        t = Table("tool", "calls", "attempts", "failure rate", "attempt failures",
                  "retry rate", "p50", "p95", "p99", title="tools")
        for tm in report.tools:
            t.add_row(tm.tool, str(tm.calls), str(tm.attempts), _pct(tm.failure_rate),
                      _pct(tm.attempt_failure_rate), _pct(tm.retry_rate),
                      _ms(tm.latency_ms.p50), _ms(tm.latency_ms.p95), _ms(tm.latency_ms.p99))
        out.print(t)


# =============================================================================== drift

def _register_drift(app: typer.Typer) -> None:
    """``stead drift``: compare a recent window of runs with a baseline window (signals, tests
    and thresholds: :mod:`stead.evals.drift`), schedule that check, list recorded checks."""
    from datetime import timedelta
    from pathlib import Path

    from stead.cli.common import EXIT_RUN_NOT_COMPLETED

    if TYPE_CHECKING:  # imported when the command runs: numpy and scipy are not free
        from stead.evals import drift as d
        from stead.storage.memory import Embedder

    _EMBEDDERS = ("auto", "model", "hashing", "none")

    @app.command("drift")
    def drift(
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
                 "off); model = OpenAI if OPENAI_API_KEY is set, else the MiniLM extra; "
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
        from stead.evals import drift as d
        from stead.evals.samples import BadWindow, parse_duration

        if embedder not in _EMBEDDERS:
            fail(f"--embedder {embedder!r}: use one of {', '.join(_EMBEDDERS)}", EXIT_BAD_INPUT)
        modes = [flag for flag, on in (("--checks", checks), ("--schedule", schedule),
                                       ("--html", html)) if on]
        if len(modes) > 1 and ("--checks" in modes or "--schedule" in modes):
            fail(f"{' and '.join(modes)} cannot be combined", EXIT_BAD_INPUT)
        try:
            thresholds = d.DriftThresholds().with_overrides(threshold)
        except ValueError as e:
            fail(str(e), EXIT_BAD_INPUT)
        if checks:
            _list(resolved(cli_settings()), agent=agent, tenant=tenant, limit=limit,
                  as_json=as_json)
            return
        if schedule is not None:
            if until is not None:
                fail("--until cannot be used with --schedule: a scheduled check's recent "
                     "window ends when it runs", EXIT_BAD_INPUT)
            try:
                every = parse_duration(schedule)
                check = d.relative_input(since=since, baseline_since=baseline_since,
                                         baseline_until=baseline_until, agent=agent,
                                         tenant=tenant, include_synthetic=include_synthetic,
                                         thresholds=thresholds)
            except BadWindow as e:
                fail(str(e), EXIT_BAD_INPUT)
            _schedule(resolved(cli_settings()), schedule_id, every, check, as_json=as_json)
            return
        try:
            windows = d.resolve_windows(since=since, until=until,
                                        baseline_since=baseline_since,
                                        baseline_until=baseline_until)
        except BadWindow as e:
            fail(str(e), EXIT_BAD_INPUT)
        settings = resolved(cli_settings())
        request = d.DriftCheckRequest(windows=windows, agent=agent, tenant=tenant,
                                      include_synthetic=include_synthetic,
                                      thresholds=thresholds)
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

    async def _check(settings: Settings, request: d.DriftCheckRequest,
                     choice: str) -> d.DriftCheck:
        import asyncpg

        from stead.evals import drift as d
        from stead.storage.ledger import Ledger

        emb = _embedder(settings, choice)
        assert settings.ledger.database_url is not None
        ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                      retry_seconds=0)
        try:
            return await d.run_check(ledger.pool, request, embedder=emb)
        except asyncpg.UndefinedTableError as e:
            raise LedgerError(f"the ledger has no tables yet ({e}); a worker creates them "
                              f"when it starts (`stead up` or `python worker.py`)") from e
        finally:
            await ledger.close()
            close = getattr(emb, "close", None)
            if close is not None:
                await close()

    def _embedder(settings: Settings, choice: str) -> Embedder | None:
        from stead.storage.memory import choose_embedder
        from stead.storage.memory.embedders import HashingEmbedder, embedder_from_settings

        if choice == "none" or (choice == "auto" and settings.memory.backend == "off"):
            return None
        if choice == "hashing":
            return HashingEmbedder(384)
        if choice == "model":
            try:
                return embedder_from_settings(settings.models,
                                              model=settings.memory.embedding_model,
                                              dimension=settings.memory.embedding_dimension)
            except ImportError as e:
                fail(str(e), EXIT_BAD_INPUT)
        return choose_embedder(settings)

    def _print_report(report: d.DriftReport) -> None:
        from rich.table import Table

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

    def _schedule(settings: Settings, schedule_id: str, every: timedelta,
                  check: d.DriftCheckInput, *, as_json: bool) -> None:
        from stead.cli.common import temporal_client
        from stead.evals import drift as d

        async def go() -> str:
            client = await temporal_client(settings)
            return await d.schedule_checks(client, schedule_id=schedule_id, every=every,
                                           check=check, task_queue=settings.temporal.task_queue)

        action = run_async(go())
        if as_json:
            print_json({"schedule_id": schedule_id, "action": action,
                        "every_seconds": every.total_seconds(),
                        "task_queue": settings.temporal.task_queue,
                        "input": check.model_dump(mode="json")})
            return
        out.print(f"{action} schedule [bold]{schedule_id}[/]: a drift check every {every} on "
                  f"task queue {settings.temporal.task_queue!r} (recent {check.recent}); list "
                  f"results with `stead drift --checks`", highlight=False)

    def _list(settings: Settings, *, agent: str | None, tenant: str | None, limit: int,
              as_json: bool) -> None:
        import asyncpg
        from rich.table import Table

        from stead.evals import drift as d
        from stead.storage.ledger import Ledger

        async def go() -> list[d.DriftCheckRow]:
            assert settings.ledger.database_url is not None
            ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                          retry_seconds=0)
            try:
                return await d.list_checks(ledger.pool, agent=agent, tenant=tenant,
                                           limit=limit)
            except asyncpg.UndefinedTableError as e:
                raise LedgerError(f"the ledger has no drift checks table yet ({e}); a worker "
                                  f"of this version creates it when it starts") from e
            finally:
                await ledger.close()

        rows = run_async(go())
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
