"""``stead counterfactual``: replay recorded real runs with a changed agent, offline.

Exit codes: 0 when the replay ran (differences are findings, not errors), 2 bad input (unknown
run, unreadable policy, bad option), 3 the stack is unreachable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    cli_ledger,
    cli_settings,
    err,
    fail,
    out,
    print_json,
    quiet_sdk_logs,
    resolved,
    run_async,
)

if TYPE_CHECKING:
    from stead.evals.counterfactual import Change, CounterfactualReport, RunComparison


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
    app.command("counterfactual")(counterfactual)


def counterfactual(
    run: list[str] = typer.Option([], "--run", help="Workflow id of a recorded run "
                                  "(repeatable)"),
    agent: str | None = typer.Option(None, help="Replay recent finished, non-synthetic runs "
                                     "of this agent"),
    since: str = typer.Option("7d", help="With --agent: runs started within this window "
                              "(e.g. 12h, 7d, 2w)"),
    tenant: str | None = typer.Option(None, help="With --agent: only this tenant's runs"),
    limit: int = typer.Option(20, help="With --agent: at most this many runs (newest first)"),
    policy: Path | None = typer.Option(None, help="Replacement policy YAML for the agent, or "
                                       "a directory holding one (e.g. agents/refund)"),
    instructions: str | None = typer.Option(None, help="Replacement instructions: TEXT, "
                                            "@FILE, or @DIR holding one *.md or *.txt"),
    model: str = typer.Option("agent", help="agent (its own model), recorded (the original "
                              "run's turns) or openai:<model>"),
    catalog: str = typer.Option("stead.agents:reference_catalog",
                                help="module:function returning the AgentCatalog to change"),
    timeout: float = typer.Option(300.0, help="Seconds each counterfactual run may take"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
    html: Path | None = typer.Option(None, "--html", help="Also write an HTML report here"),
) -> None:
    """Re-run recorded runs with a changed policy, instructions or model; tools are served
    from the ledger's recorded results (no side effects). Reports how decisions, tool
    sequences and outcomes would differ, run by run."""
    from stead.contracts.policy import PolicyError, load_policy, policy_file
    from stead.evals import counterfactual as cf

    if bool(run) == bool(agent):
        fail("give recorded runs with --run ID (repeatable) or select them with --agent NAME, "
             "not both", EXIT_BAD_INPUT)
    if limit < 1:
        fail(f"--limit must be at least 1, got {limit}", EXIT_BAD_INPUT)
    if timeout <= 0:
        fail(f"--timeout must be positive, got {timeout:g}", EXIT_BAD_INPUT)
    try:
        window = cf.parse_since(since) if agent else None
        model_setting = cf.check_model_setting(model)
        new_instructions = cf.read_instructions(instructions) if instructions is not None \
            else None
        policy = policy_file(policy) if policy is not None else None
        new_policy = load_policy(policy) if policy is not None else None
    except (cf.CounterfactualError, PolicyError) as e:
        fail(str(e), EXIT_BAD_INPUT)
    change = cf.Change(policy=new_policy, policy_source=str(policy) if policy else None,
                       instructions=new_instructions, model=model_setting)
    settings = resolved(cli_settings())
    try:
        agents = cf.load_catalog(catalog, settings.stack.data_dir)
    except cf.CounterfactualError as e:
        fail(str(e), EXIT_BAD_INPUT)
    if agent is not None and agent not in agents:
        fail(f"unknown agent {agent!r}; the catalog serves: {', '.join(agents.names())}",
             EXIT_BAD_INPUT)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_sdk_logs()

    async def go() -> CounterfactualReport:
        async with cli_ledger(settings) as ledger:
            if run:
                runs = [await cf.load_run(ledger, wf) for wf in dict.fromkeys(run)]
            else:
                assert agent is not None
                runs = await cf.select_runs(ledger, agent=agent, since=window, tenant=tenant,
                                            limit=limit)
        if not as_json:
            err.print(escape(f"replaying {len(runs)} run(s) with {_describe(change)}; tools "
                             f"served from the recording"), highlight=False)
        return await cf.run_counterfactual(
            settings, agents, runs, change, run_timeout=timeout,
            on_result=None if as_json else _progress)

    report = run_async(go())
    if html is not None:
        try:
            path = cf.html_report(report).write(html)
        except OSError as e:
            fail(f"cannot write the HTML report to {html}: {e.strerror or e}", EXIT_BAD_INPUT)
        if not as_json:
            err.print(f"HTML report: {path}", highlight=False)
    if as_json:
        print_json(cf.to_json(report))
    else:
        _print(report)


def _describe(change: Change) -> str:
    parts = []
    if change.policy is not None:
        parts.append(f"policy {change.policy.ref}"
                     + (f" ({change.policy_source})" if change.policy_source else ""))
    if change.instructions is not None:
        parts.append("new instructions")
    parts.append(f"model {change.model}")
    return ", ".join(parts)


def _progress(r: RunComparison) -> None:
    colour = {"same": "green", "changed": "yellow", "diverged": "red", "error": "red"}
    err.print(f"  [{colour.get(r.verdict, 'white')}]{r.verdict:>8}[/] "
              + escape(f"{r.original.workflow_id}: {r.original.status} → "
                       f"{r.counterfactual.status}"),
              highlight=False)


def _print(report: CounterfactualReport) -> None:
    from stead.evals.counterfactual import approval_summary, gate_summary, tool_sequence

    for r in report.runs:
        t = Table(title=escape(f"{r.original.workflow_id} ({r.agent}) → "
                               f"{r.counterfactual.workflow_id}"),
                  title_justify="left", show_lines=True)
        t.add_column("")
        t.add_column("original", overflow="fold")
        t.add_column("counterfactual", overflow="fold")
        o, c = r.original, r.counterfactual
        rows = [
            ("status", o.status, c.status + (" (would wait for approval)"
                                             if r.waits_for_approval else "")),
            ("route", o.route, c.route),
            ("policy / model", f"{o.policy} / {o.model}", f"{c.policy} / {c.model}"),
            ("tools", tool_sequence(o), tool_sequence(c)),
            ("gates", gate_summary(o.gates), gate_summary(c.gates)),
            ("approvals", approval_summary(o.approvals) or "none",
             approval_summary(c.approvals) or "none"),
            ("answer", o.answer or o.error or "", c.answer or c.error or ""),
        ]
        for row in rows:  # recorded text is data, not rich markup ("[deny_tools]")
            t.add_row(*(escape(cell) for cell in row))
        out.print(t)
        if r.differences:
            for d in r.differences:
                style = "red" if d.startswith(("not in the recording", "diverged")) else "yellow"
                out.print(f"  [{style}]•[/] {escape(d)}", highlight=False)
        else:
            out.print("  [green]no differences[/]")
        out.print(f"  {r.served_from_recording} tool call(s) served from the recording",
                  highlight=False)
        out.print()
    s = report.summary
    t = Table(title="counterfactual summary", title_justify="left")
    for h in ("runs", "changed", "outcome", "decisions", "tools", "answer", "would wait",
              "diverged", "errors"):
        t.add_column(h, justify="right")
    t.add_row(*(str(v) for v in (s.runs, s.changed, s.outcome_changed, s.decisions_changed,
                                 s.tools_changed, s.answer_changed, s.would_wait, s.diverged,
                                 s.errors)))
    out.print(t)
