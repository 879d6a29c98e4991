"""``stead eval``: run behaviour suites as real workflows and report per case and expectation.

    stead eval evals/                                  # every suite under evals/, sorted
    stead eval evals/ops.yaml evals/refund.yaml --parallel 8 --html eval.html
    stead eval evals/refund.yaml --case small-refund-allowed --json
    stead eval tests/evals/regressions.yaml --ephemeral          # throwaway stack

Exit codes: 0 every case passed; 1 at least one failed; 2 a suite file, case name, catalog or
option is bad (nothing ran); 3 the stack is unreachable.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    cli_settings,
    err,
    fail,
    out,
    print_json,
    quiet_sdk_logs,
    run_async,
)
from stead.errors import SpecError

if TYPE_CHECKING:
    from stead.authoring.agent import AgentCatalog
    from stead.evals.runner import CaseReport, EvalReport
    from stead.evals.suite import Case, Suite
    from stead.settings import Settings

DEFAULT_CATALOG = "stead.agents:reference_catalog"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``stead`` app."""
    app.command("eval")(eval_cmd)


def eval_cmd(
    paths: list[Path] = typer.Argument(
        ..., help="Suite files (YAML) or directories of them (*.yaml, *.yml, searched "
                  "recursively)", metavar="SUITE..."),
    cases: list[str] = typer.Option([], "--case",
                                    help="Only this case: NAME or SUITE/NAME (repeatable)"),
    parallel: int = typer.Option(4, min=1, max=64, help="Cases running at the same time"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
    html: Path | None = typer.Option(None, "--html", help="Also write an HTML report here"),
    ephemeral: bool = typer.Option(False, "--ephemeral",
                                   help="Run on a throwaway embedded stack in a temp dir"),
    catalog: str = typer.Option(DEFAULT_CATALOG, "--catalog",
                                help="module:function(data_dir) -> AgentCatalog; its fake "
                                     "worlds live in a fresh temp dir"),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1,
                                  help="Seconds a case may take before it fails"),
) -> None:
    """Run behaviour suites: each case is a real agent run, checked against its expectations."""
    from stead.evals.runner import select_cases
    from stead.evals.suite import SuiteError, load_suite, suite_files

    settings = cli_settings()
    try:
        files = suite_files(paths)
    except SuiteError as e:
        fail(str(e), EXIT_BAD_INPUT)
    suites: list[Suite] = []
    problems: list[str] = []
    for path in files:
        try:
            suites.append(load_suite(path))
        except SuiteError as e:
            problems.append(str(e))
    if problems:
        fail("\n".join(problems), EXIT_BAD_INPUT)
    try:
        select_cases(suites, cases)
    except SuiteError as e:
        fail(str(e), EXIT_BAD_INPUT)
    if html is not None and html.exists() and html.is_dir():
        fail(f"--html {html} is a directory; give a file name", EXIT_BAD_INPUT)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_sdk_logs()
    world = Path(tempfile.mkdtemp(prefix="stead-eval-world-"))
    try:
        agents = _catalog(catalog, world)
        problems = [p for s in suites for p in s.check_agents(agents.names())]
        if problems:
            fail("invalid suite:\n  " + "\n  ".join(problems), EXIT_BAD_INPUT)
        report = run_async(_run(settings, agents, suites, cases, parallel=parallel,
                                timeout=timeout, ephemeral=ephemeral))
    finally:
        shutil.rmtree(world, ignore_errors=True)
    if as_json:
        print_json({"passed": report.passed, "total": len(report.cases),
                    "failed": len(report.failed), **report.model_dump(mode="json")})
    else:
        _print(report)
    if html is not None:
        from stead.evals.runner import eval_html

        written = eval_html(report).write(html)
        (err if as_json else out).print(f"HTML report: {written}", highlight=False)
    if not report.passed:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


def _catalog(ref: str, world: Path) -> AgentCatalog:
    """The eval worker's agents, their fake worlds under ``world`` (never the demo's)."""
    from stead.authoring.agent import AgentCatalog
    from stead.evals.suite import load_function

    try:
        factory = load_function(ref, base_dir=Path.cwd())
    except ValueError as e:
        fail(f"--catalog {ref}: {e}", EXIT_BAD_INPUT)
    try:
        agents = factory(world)
    except SpecError as e:
        fail(f"--catalog {ref}: {e}", EXIT_BAD_INPUT)
    except Exception as e:
        fail(f"--catalog {ref} raised {type(e).__name__}: {e}", EXIT_BAD_INPUT)
    if not isinstance(agents, AgentCatalog):
        fail(f"--catalog {ref} returned {type(agents).__name__}, not an AgentCatalog",
             EXIT_BAD_INPUT)
    return agents


async def _run(settings: Settings, agents: AgentCatalog, suites: list[Suite],
               cases: list[str], *, parallel: int, timeout: float,
               ephemeral: bool) -> EvalReport:
    from stead.evals.runner import SuiteRunner, eval_stack, select_cases

    total = len(select_cases(suites, cases))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)
    where = "a throwaway embedded stack" if ephemeral else (
        settings.temporal.address or "the embedded stack")
    err.print(f"running {total} case(s) from {len(suites)} suite(s) on {where}",
              highlight=False)
    async with eval_stack(settings, ephemeral=ephemeral) as resolved:
        runner = SuiteRunner(resolved, agents, parallel=parallel, case_timeout=timeout)
        with progress:
            task = progress.add_task("cases", total=total)

            def started(suite: Suite, case: Case) -> None:
                progress.update(task, description=f"{suite.name}/{case.name}")

            def finished(r: CaseReport) -> None:
                mark = Text("✓ ", style="green") if r.passed else Text("✗ ", style="red")
                line = mark + Text(f"{r.suite}/{r.case}  {r.run_status}  "
                                   f"{r.duration_ms:.0f} ms")
                if not r.passed:
                    line += Text(f"  ({len(r.failures)} failed)", style="red")
                progress.console.print(line)
                progress.advance(task)

            return await runner.run(suites, only=cases or None, on_start=started,
                                    on_done=finished)


def _print(report: EvalReport) -> None:
    failed = len(report.failed)
    table = Table(title=f"stead eval — {len(report.cases)} case(s), "
                        f"{len(report.cases) - failed} passed, {failed} failed "
                        f"({report.duration_s:.1f} s)", show_lines=True)
    for col in ("suite", "case", "result", "run", "time", "expectations"):
        table.add_column(col, justify="right" if col == "time" else "left",
                         overflow="fold")
    for c in report.cases:
        result = Text("pass", style="bold green") if c.passed else Text("FAIL", style="bold red")
        table.add_row(c.suite, c.case, result, c.run_status, f"{c.duration_ms:.0f} ms",
                      _checks_cell(c))
    out.print(table)
    models = sorted({m for c in report.cases for m in c.models})
    if models:
        offline = any(m.startswith("scripted:") and m.count(":") == 1 for m in models)
        out.print(Text(f"models: {', '.join(models)}" + (
            " (offline rule-based planners — set OPENAI_API_KEY for a real model)"
            if offline else "")))
    for c in report.failed:
        out.print(Text(f"{c.suite}/{c.case}: run {c.workflow_id} — `stead audit "
                       f"{c.workflow_id}` shows its trail", style="dim"))


def _checks_cell(c: CaseReport) -> Text:
    """Passing checks on one wrapped line; each failing (or skipped) one on its own with the
    reason."""
    cell = Text()
    passing = [x.name for x in c.checks if x.status == "pass"]
    if passing:
        cell.append("✓ ", style="green")
        cell.append(" · ".join(passing))
    for x in c.checks:
        if x.status == "pass":
            continue
        if cell:
            cell.append("\n")
        if x.status == "fail":
            cell.append("✗ " + x.name, style="bold red")
        else:
            cell.append("– " + x.name + " (skipped)", style="yellow")
        if x.reason:
            cell.append(f": {x.reason}")
    if not c.checks:
        cell.append("(no expectations)", style="yellow")
    return cell
