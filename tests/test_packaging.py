"""The built wheel as a user installs it: nothing but ``stead`` at the top of site-packages,
requirements as ranges, and a home beside the OpenAI Agents SDK, whose import name is
``agents``.

The wheel is built from a copy of the repository with the test environment's setuptools (no
build isolation, so nothing is fetched to build it). It is then installed, with
``openai-agents``, into a fresh virtual environment from the package index under
constraints.txt, the way a user's ``pip install`` would, and never with
``--system-site-packages``: the test environment holds stead editable, whose import hook maps
``stead`` and the repository's top-level folders back to a checkout, so it would answer for the
wheel and hide exactly the shadowing this module is about. One environment serves the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Runs inside the fresh environment: which files answer `import agents` and `import stead`,
# and which other distributions write a top-level name that stead's wheel writes.
PROBE = """
import json, sys
from importlib import metadata

import agents
from agents import Agent, Runner, function_tool  # the SDK's own API, not a namesake
import stead.worker

owners = metadata.packages_distributions()
print(json.dumps({
    "agents": agents.__file__,
    "agents_dist": owners.get("agents", []),
    "stead": stead.__file__,
    "worker": stead.worker.__file__,
    "prefix": sys.prefix,
    "shared": {top: dists for top, dists in owners.items() if "stead" in dists and len(dists) > 1},
}))
"""


def _run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the suite runs with the checkout on it, whose top-level folders would
    # answer the imports this module checks.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{command[:4]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stead's wheel, built from a copy of the repo (the build writes build/ and egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".stead", ".*_cache", "__pycache__", "*.egg-info", "build", "dist"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", root / "dist", source)
    (built,) = (root / "dist").glob("stead-*.whl")
    return built


def _metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(zf.read(name).decode())
    return {key: message.get_all(key, []) for key in ("Requires-Python", "Requires-Dist")}


def test_the_wheel_puts_nothing_but_stead_at_the_top_of_site_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1, tops
    # `agents` is the OpenAI Agents SDK's import name and `guardrails` Guardrails AI's.
    assert tops - dist_info == {"stead"}, sorted(tops - dist_info)


def test_the_wheel_requires_ranges_and_python_3_11_to_3_13(wheel: Path) -> None:
    meta = _metadata(wheel)
    (python,) = meta["Requires-Python"]
    assert SpecifierSet(python) == SpecifierSet(">=3.11,<3.14")
    requirements = [Requirement(r) for r in meta["Requires-Dist"]]
    assert len(requirements) >= len(PROJECT["dependencies"]), requirements
    for requirement in requirements:
        operators = {spec.operator for spec in requirement.specifier}
        assert not operators & {"==", "==="}, f"exact pin: {requirement}"
        assert ">=" in operators, f"no lower bound (the release we test): {requirement}"
    versions = {f"3.{minor}" for minor in (11, 12, 13)}
    classifiers = {c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"]
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert classifiers == versions


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh environment holding the wheel and openai-agents, at the versions we test."""
    root = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", root / "env")
    python = root / "env" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, wheel, "openai-agents")
    yield python
    shutil.rmtree(root, ignore_errors=True)


def test_openai_agents_and_the_stead_worker_import_side_by_side(venv: Path) -> None:
    # From an empty folder in isolated mode: neither the checkout nor the user's site answers.
    done = _run(venv, "-I", "-c", PROBE, cwd=venv.parent.parent.parent)
    found = json.loads(done.stdout)
    site = Path(found["prefix"])
    assert found["agents_dist"] == ["openai-agents"], found
    for key in ("agents", "stead", "worker"):
        assert Path(found[key]).is_relative_to(site), (key, found[key])
    assert found["shared"] == {}, f"stead's and another's: {found['shared']}"


def test_the_environment_is_consistent(venv: Path) -> None:
    done = _run(venv, "-m", "pip", "check")
    assert "No broken requirements found" in done.stdout
