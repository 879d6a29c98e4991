"""The package layout: what the tree shows is what installs, and every module says its job.

The repository keeps ``workflows/``, ``activities/``, ``guardrails/`` and ``agents/`` at its top;
they are linked into the package (``stead/workflows -> ../workflows`` ...) and install as
``stead.workflows`` and so on, so nothing but ``stead`` lands in site-packages (``agents`` and
``guardrails`` are other libraries' import names)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINKED = ("workflows", "activities", "guardrails", "agents")


def _modules() -> list[Path]:
    """Every module of the installed package: stead/ and the folders linked into it (``rglob``
    does not follow the links)."""
    return sorted(p for base in ("stead", *LINKED) for p in (ROOT / base).rglob("*.py")
                  if "__pycache__" not in p.parts)


@pytest.mark.parametrize("name", LINKED)
def test_top_level_folders_are_linked_into_the_package(name: str) -> None:
    link = ROOT / "stead" / name
    assert link.is_symlink(), f"stead/{name} should link to ../{name}"
    assert link.resolve() == (ROOT / name).resolve()
    assert (link / "__init__.py").is_file()


def test_every_module_starts_with_a_docstring_that_says_its_job() -> None:
    missing = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        doc = ast.get_docstring(tree)
        empty_init = path.name == "__init__.py" and not tree.body
        if not empty_init and (doc is None or len(doc.split()) < 3):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a docstring: {missing}"


def test_nothing_imports_the_linked_folders_by_their_top_level_names() -> None:
    """``import workflows`` would load a second copy of the module beside
    ``stead.workflows`` (two AgentWorkflow classes); only the package names are used."""
    roots = [ROOT / "stead", ROOT / "tests", ROOT / "bench", ROOT / "chaos", ROOT / "worker.py"]
    offenders = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom)
                         and node.module and node.level == 0 else [])
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in LINKED]
    assert not offenders, offenders


def test_importing_stead_imports_nothing_else_of_it() -> None:
    """Temporal's sandbox imports ``stead`` again for each run of ``stead.workflows.agent``;
    with the default restrictions that import must not drag the library in (a plain
    ``Replayer`` would otherwise replay the workflow against fresh copies of its models)."""
    import subprocess
    import sys

    code = ("import sys, stead; print(sorted(m for m in sys.modules if m.startswith('stead.')));"
            "print(sorted(stead.__all__) == sorted(stead._EXPORTS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split("\n")
    assert out[:2] == ["[]", "True"], out
