"""The workflow layer's contracts, read from the source: workflows import no evaluation code
(``stead.evals`` imports the worker, which imports the workflows), and they schedule
activities through their definitions, never by a name written as a string."""

from __future__ import annotations

import ast
from pathlib import Path

from stead.activities import defined
from stead.activities.runs import RunActivities

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SCHEDULERS = {"execute_activity", "execute_local_activity", "start_activity",
              "start_local_activity", "execute_activity_method",
              "execute_local_activity_method", "ActivityCall", "bookkeeping"}


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
