"""The workflow layer's contracts, read from the source: workflows import no evaluation code
(``stead.evals`` imports the worker, which imports the workflows), they schedule
activities through their definitions, never by a name written as a string, and the code that
runs inside a workflow reads no clock, randomness, environment or I/O of its own (the guard
that stands in for Temporal's sandbox, which stead's workflows run without by default)."""

from __future__ import annotations

import ast
from pathlib import Path

from stead.activities import defined
from stead.activities.runs import RunActivities

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SCHEDULERS = {"execute_activity", "execute_local_activity", "start_activity",
              "start_local_activity", "execute_activity_method",
              "execute_local_activity_method", "ActivityCall", "bookkeeping"}


ROOT = WORKFLOWS.parent
IN_WORKFLOW = (*sorted(WORKFLOWS.glob("*.py")), *sorted((ROOT / "guardrails").glob("*.py")),
               *sorted((ROOT / "stead" / "contracts").glob("*.py")),
               ROOT / "stead" / "authoring" / "graph.py")
"""What runs inside a workflow activation: the workflows and their parts, the guardrails they
decide with, the contracts they carry and the graph conditions and evaluators they call."""
NONDETERMINISTIC_MODULES = {"random", "secrets", "uuid", "time", "socket", "subprocess",
                            "threading", "urllib", "http", "httpx", "asyncpg", "openai",
                            "requests", "os"}
CLOCK_READS = {"now", "utcnow", "today"}


def nondeterministic(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports of modules whose use differs between a run and its replay, and reads of the
    clock (``datetime.now()``, ``date.today()``), the environment or files."""
    found: list[tuple[int, str]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found += [(n.lineno, f"import {a.name}") for a in n.names
                      if a.name.split(".")[0] in NONDETERMINISTIC_MODULES]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0 \
                and n.module.split(".")[0] in NONDETERMINISTIC_MODULES:
            found.append((n.lineno, f"from {n.module} import ..."))
        elif isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr in CLOCK_READS \
                    and isinstance(f.value, ast.Name) and f.value.id in ("datetime", "date"):
                found.append((n.lineno, f"{f.value.id}.{f.attr}()"))
            elif isinstance(f, ast.Name) and f.id in ("open", "input"):
                found.append((n.lineno, f"{f.id}()"))
    return found


def test_code_that_runs_in_a_workflow_reads_no_clock_randomness_or_io() -> None:
    found = [(p.relative_to(ROOT).as_posix(), line, what) for p in IN_WORKFLOW
             for line, what in nondeterministic(ast.parse(p.read_text()))]
    assert found == []
    assert len(IN_WORKFLOW) > 20  # the globs found the packages


def test_the_determinism_check_finds_what_it_looks_for() -> None:
    bad = ast.parse("import uuid\nfrom time import monotonic\nimport os.path\n"
                    "def f():\n    return datetime.now(), date.today(), open('x')\n")
    assert [what for _, what in nondeterministic(bad)] == [
        "import uuid", "from time import ...", "import os.path", "datetime.now()",
        "date.today()", "open()"]
    assert nondeterministic(ast.parse("from datetime import timedelta\n"
                                      "x = workflow.now()\n")) == []


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.name, ast.parse(p.read_text())) for p in sorted(WORKFLOWS.glob("*.py"))]


def test_no_workflow_module_imports_the_evaluation_package() -> None:
    found = [(name, n.module) for name, tree in _modules() for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and n.module
             and (n.module == "stead.evals" or n.module.startswith("stead.evals."))]
    found += [(name, a.name) for name, tree in _modules() for n in ast.walk(tree)
              if isinstance(n, ast.Import) for a in n.names if a.name.startswith("stead.evals")]
    assert found == []


def test_workflows_schedule_activities_by_definition_not_by_a_string() -> None:
    literal = []
    for name, tree in _modules():
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call) or not n.args:
                continue
            fn = n.func.attr if isinstance(n.func, ast.Attribute) else \
                n.func.id if isinstance(n.func, ast.Name) else ""
            if fn in SCHEDULERS and isinstance(n.args[0], ast.Constant):
                literal.append((name, n.lineno, n.args[0].value))
    assert literal == []


def test_the_worker_registers_each_defined_activity_of_a_class() -> None:
    runs = RunActivities.__new__(RunActivities)  # registration reads the class, not its state
    assert sorted(f.__name__ for f in defined(runs)) == [
        "finish_run", "plan_for", "record_decisions", "start_run", "subagent_spend"]
