"""``stead grade``: online evaluation of finished runs — grade them now, keep the schedule
that grades them, or show how one run was graded (:mod:`stead.evals.online`).

    stead grade                          # one sweep now, through the workers
    stead grade --agent ops --since 7d   # ops runs that finished in the last 7 days
    stead grade --schedule 5m            # create or update the schedule
    stead grade --show WORKFLOW_ID       # the scores of a run

A sweep grades the sampled finished runs that some evaluator of their agent has not scored;
it runs as ``EvaluationWorkflow`` on the task queue, so a worker must be polling it.
Exit codes: 0 done; 2 bad input; 3 the stack is unreachable (or no worker answered in
``--wait`` seconds); 4 ``--show``: no scores for that run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
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

if TYPE_CHECKING:  # imported when the command runs
    from stead.evals.online import EvaluationRow, EvaluationSweep, EvaluationSweepSummary

_MISSING = ("the ledger has no evaluations table yet ({error}); a worker of this version "
            "creates it when it starts")


def register(app: typer.Typer) -> None:
    """Add ``grade`` to the ``stead`` app."""
    app.command("grade")(grade_cmd)


def grade_cmd(
    since: str = typer.Option("24h", "--since",
                              help="Look at runs that finished this long ago or later "
                                   "(a duration: 30m, 24h, 7d)"),
    agent: str | None = typer.Option(None, "--agent", help="Only this agent's runs"),
    limit: int = typer.Option(200, "--limit", min=1, max=5000,
                              help="Most runs one sweep round grades (more continue)"),
    schedule: str | None = typer.Option(
        None, "--schedule", metavar="EVERY",
        help="Create or update the Temporal Schedule that sweeps every EVERY (e.g. 1m) on the "
             "worker's task queue, instead of sweeping now"),
    schedule_id: str | None = typer.Option(
        None, "--schedule-id", help="Id of that schedule [default: stead-evaluations]"),
    show: str | None = typer.Option(None, "--show", metavar="WORKFLOW_ID",
                                    help="Show the scores of a run instead"),
    run_id: str | None = typer.Option(None, "--run-id", help="With --show: only this run"),
    tenant: str | None = typer.Option(None, "--tenant", help="With --show: only this "
                                                              "tenant's runs"),
    wait: float = typer.Option(300.0, "--wait", min=1,
                               help="Seconds to wait for a sweep started now"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Grade finished runs with their agents' evaluators (task success), schedule that, or
    show a run's scores."""
    if show is not None and schedule is not None:
        fail("--show and --schedule cannot be combined", EXIT_BAD_INPUT)
    if show is None and (run_id is not None or tenant is not None):
        fail("--run-id and --tenant go with --show", EXIT_BAD_INPUT)
    if show is not None:
        _show(resolved(cli_settings()), show, run_id=run_id, tenant=tenant, as_json=as_json)
        return
    sweep = _sweep(since, agent=agent, limit=limit)
    settings = resolved(cli_settings())
    if schedule is not None:
        _schedule(settings, schedule, schedule_id, sweep, as_json=as_json)
        return
    summary = run_async(_sweep_now(settings, sweep, wait))
    if agent is not None and agent not in summary.agents:
        fail(f"--agent {agent!r}: the workers of task queue {settings.temporal.task_queue!r} "
             f"declare no evaluators for it; they do for: "
             f"{', '.join(summary.agents) or 'no agent'}", EXIT_BAD_INPUT)
    if as_json:
        print_json(summary.model_dump(mode="json"))
        return
    from stead.evals.online import summary_text

    out.print(f"[bold]online evaluation[/]: runs that finished "
              f"{summary.since.astimezone(UTC):%Y-%m-%d %H:%M} – "
              f"{summary.until.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
              + (f", agent {agent}" if agent else ""), highlight=False)
    out.print(summary_text(summary), highlight=False)


def _sweep(since: str, *, agent: str | None, limit: int) -> EvaluationSweep:
    from pydantic import ValidationError

    from stead.evals.online import EvaluationSweep
    from stead.evals.samples import BadWindow, parse_duration

    try:
        lookback = parse_duration(since)
    except BadWindow as e:
        fail(f"--since: {e}", EXIT_BAD_INPUT)
    try:
        return EvaluationSweep(lookback=lookback, agent=agent, limit=limit)
    except ValidationError as e:
        fail(f"--since {since}: " + "; ".join(str(x["msg"]) for x in e.errors()),
             EXIT_BAD_INPUT)


async def _sweep_now(settings: Settings, sweep: EvaluationSweep, wait: float,
                     ) -> EvaluationSweepSummary:
    import asyncio

    from stead.evals.online import EVALUATION_WORKFLOW, EvaluationSweepSummary

    client = await temporal_client(settings)
    handle = await client.start_workflow(
        EVALUATION_WORKFLOW, sweep, id=f"stead-grade-{uuid.uuid4().hex[:12]}",
        task_queue=settings.temporal.task_queue, result_type=EvaluationSweepSummary,
        static_summary="online evaluation started by `stead grade`")
    try:
        return await asyncio.wait_for(handle.result(), wait)
    except TimeoutError:
        fail(f"the sweep {handle.id} did not finish within {wait:g} s: is a worker polling "
             f"task queue {settings.temporal.task_queue!r}? (it goes on when one does)",
             EXIT_UNREACHABLE)


def _schedule(settings: Settings, every_text: str, schedule_id: str | None,
              sweep: EvaluationSweep, *, as_json: bool) -> None:
    from stead.evals.online import schedule_id_for, schedule_sweeps
    from stead.evals.samples import BadWindow, parse_duration

    try:
        every = parse_duration(every_text)
    except BadWindow as e:
        fail(f"--schedule: {e}", EXIT_BAD_INPUT)
    if every < timedelta(seconds=10):
        fail(f"--schedule {every_text}: sweep at most every 10 seconds", EXIT_BAD_INPUT)
    queue = settings.temporal.task_queue
    sid = schedule_id or schedule_id_for(queue)

    async def make() -> str:
        client = await temporal_client(settings)
        return await schedule_sweeps(client, schedule_id=sid, every=every, sweep=sweep,
                                     task_queue=queue)

    action = run_async(make())
    if as_json:
        print_json({"schedule_id": sid, "action": action, "every_seconds": every.total_seconds(),
                    "task_queue": queue, "input": sweep.model_dump(mode="json")})
        return
    out.print(f"{action} schedule [bold]{sid}[/]: an evaluation sweep every {every} on task "
              f"queue {queue!r} (runs that finished in the last {sweep.lookback}); read task "
              f"success with `stead metrics`", highlight=False)


def _show(settings: Settings, workflow_id: str, *, run_id: str | None, tenant: str | None,
          as_json: bool) -> None:
    rows = run_async(_rows(settings, workflow_id, run_id=run_id, tenant=tenant))
    if not rows:
        fail(f"no evaluation scores for {workflow_id}"
             + (f" run {run_id}" if run_id else "")
             + (f" of tenant {tenant}" if tenant else "")
             + ": not finished, not in its agent's sample, or not swept yet", EXIT_NOT_FOUND)
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    table = Table("run", "evaluator", "version", "kind", "status", "score", "passed",
                  "feedback / error", "at (UTC)", title=f"online evaluation of {workflow_id}")
    style = {"scored": "", "skipped": "dim", "error": "bold yellow"}
    for r in rows:
        passed = "–" if r.passed is None else ("[green]yes[/]" if r.passed else "[red]no[/]")
        table.add_row(r.run_id[:8], r.evaluator, str(r.version), r.kind,
                      f"[{style[r.status]}]{r.status}[/]" if style.get(r.status) else r.status,
                      "–" if r.score is None else f"{r.score:.2f}", passed,
                      r.error or r.feedback, f"{r.evaluated_at.astimezone(UTC):%H:%M:%S}")
    out.print(table)


async def _rows(settings: Settings, workflow_id: str, *, run_id: str | None,
                tenant: str | None) -> list[EvaluationRow]:
    from stead.evals.online import list_evaluations

    async with cli_ledger(settings, missing_tables=_MISSING) as ledger:
        return await list_evaluations(ledger.pool, workflow_id, run_id=run_id, tenant=tenant)
