"""``stead metrics``: completion rate and evaluated task success, latency, failures, retries,
approvals, denials, tokens and cost of the runs that started in a window, per agent and per
tool, from the ledger.

    stead metrics --since 7d --agent ops
    stead metrics --since 1h30m --include-synthetic --json

Exit codes: 0 success; 2 bad input (window, option); 3 the ledger is unreachable or has no
tables yet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    NO_LEDGER_TABLES,
    cli_ledger,
    cli_settings,
    fail,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.settings import Settings

if TYPE_CHECKING:  # imported when a command runs, to keep `stead --help` fast
    from stead.evals.metrics import AgentMetrics, MetricsFilter, MetricsReport


def register(app: typer.Typer) -> None:
    """Add ``metrics`` to the ``stead`` app."""
    app.command("metrics")(metrics_cmd)


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
    """Completion rate and evaluated task success, latency, failures, retries, approvals,
    denials, tokens and cost of the runs that started in a window, per agent and per tool,
    from the ledger."""
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
    from stead.evals.metrics import compute_metrics

    async with cli_ledger(settings, missing_tables=NO_LEDGER_TABLES) as ledger:
        return await compute_metrics(ledger, flt, prices=settings.models.prices)


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


def _task(a: AgentMetrics) -> str:
    """``33.3% of 3`` (evaluated runs), ``+1 unknown`` when an evaluator could not grade."""
    ts = a.task_success
    if not ts.evaluated and not ts.unknown:
        return "not evaluated"
    return f"{_pct(ts.rate)} of {ts.evaluated}" + (f" +{ts.unknown} unknown" if ts.unknown
                                                   else "")


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
              "over budget", "running", "completion", "task success", "p50", "p95", "p99",
              title="runs")
    # An agent's name (the row's key) and its task success are never cut short or wrapped,
    # however narrow the table is: the other columns give way (their headers wrap).
    for col, widest in ((0, max(len("all" if a.agent == "*" else a.agent) for a in rows)),
                        (10, max(len(_task(a)) for a in rows))):
        t.columns[col].no_wrap = True
        t.columns[col].min_width = widest
    for a in rows:
        s = a.by_status
        t.add_row("all" if a.agent == "*" else a.agent, str(a.runs),
                  *(str(s.get(k, 0)) for k in ("completed", "failed", "denied", "refused",
                                               "escalated", "budget_exceeded", "running")),
                  _pct(a.success_rate), _task(a), _ms(a.latency_ms.p50),
                  _ms(a.latency_ms.p95), _ms(a.latency_ms.p99))
    out.print(t)
    if any(a.task_success.evaluators for a in report.agents):
        t = Table("agent", "evaluator", "version", "scored", "passed", "pass rate", "errors",
                  "skipped", title="online evaluation (task success: completed and no "
                                   "evaluator failed it)")
        for a in report.agents:
            for e in a.task_success.evaluators:
                t.add_row(a.agent, e.evaluator, str(e.version), str(e.scored), str(e.passed),
                          _pct(e.pass_rate), str(e.errors), str(e.skipped))
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
