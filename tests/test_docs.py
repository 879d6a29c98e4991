"""The README and the pages under docs/ stay true to the tree: every relative link reaches a
file (and a heading, when it names one), every repository path they quote exists, and every
``stead`` command line in their shell blocks names a real command with options it really has.
No server is needed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pytest
import typer
from typer.core import TyperGroup

from stead.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def _links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in LINK.findall(page.read_text())
            if not target.startswith(("http://", "https://", "mailto:"))]


def test_the_docs_exist_and_the_readme_links_every_page() -> None:
    pages = {p.name for p in PAGES if p.parent.name == "docs"}
    assert {"README.md", "guardrails.md", "graphs.md", "memory.md", "evals.md",
            "observability.md", "security.md", "integrations.md", "deployment.md",
            "configuration.md", "reliability.md"} <= pages
    readme = (ROOT / "README.md").read_text()
    unlinked = {p for p in pages if f"](docs/{p}" not in readme}
    assert not unlinked, f"docs pages the README does not link: {sorted(unlinked)}"
    assert readme.count("```mermaid") == 1, "the README draws one picture of the parts"


@pytest.mark.parametrize(("page", "target"), _links(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_links_reach_a_file_and_its_heading(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{target}: an anchor into a file that is not Markdown"
        assert anchor in _anchors(dest), (
            f"{page.relative_to(ROOT)} links to {target}: no such heading in "
            f"{dest.relative_to(ROOT)} (headings: {sorted(_anchors(dest))})")


def test_the_link_check_sees_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    """The two checks above can fail: a made-up target and a made-up heading are caught."""
    assert "the-ledger" in _anchors(ROOT / "docs" / "contracts.md")
    assert "no-such-heading" not in _anchors(ROOT / "docs" / "contracts.md")
    assert not (ROOT / "docs" / "no-such-page.md").exists()
    assert _slug("Evaluation: suites, replay, metrics, drift") == \
        "evaluation-suites-replay-metrics-drift"
    assert _slug("From the `temporal` CLI") == "from-the-temporal-cli"


def _stead_command(segment: str) -> str | None:
    """``stead ARGS`` when a shell command runs stead (after ``VAR=value`` assignments or
    ``docker compose exec SERVICE``), else None."""
    words = segment.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:3] == ["docker", "compose", "exec"]:
        words = words[4:]
    if words and (words[0] == "stead" or words[0].endswith("/stead")):
        return " ".join(["stead", *words[1:]])
    return None


TOP = {"stead", "workflows", "activities", "guardrails", "agents", "evals", "tests", "deploy",
       "bench", "chaos", "docs"}


def _quoted_paths() -> list[tuple[str, str]]:
    """(page, path) for each `folder/`, `file.ext` path in backticks that starts at a
    top-level folder of the repository (``stead/idempotency-key`` is a name, not a path)."""
    found = []
    for page in PAGES:
        for path in re.findall(r"`([\w.\-]+(?:/[\w.\-*]*)+)`", page.read_text()):
            if path.split("/")[0] in TOP and (path.endswith("/") or Path(path).suffix):
                found.append((page.name, path))
    return found


def test_quoted_repository_paths_exist() -> None:
    paths = _quoted_paths()
    assert ("contracts.md", "stead/contracts/models.py") in paths
    missing = [f"{page}: {path}" for page, path in paths if not list(ROOT.glob(path))]
    assert not missing, "paths the docs name that the tree lacks:\n" + "\n".join(missing)


def _command_lines() -> list[tuple[str, str]]:
    """(page, command) for every ``stead ...`` command in the pages' shell blocks."""
    found: list[tuple[str, str]] = []
    for page in PAGES:
        for block in SHELL_BLOCK.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                code = line.split(" #", 1)[0].strip()
                if code.startswith("#"):
                    continue
                for segment in re.split(r"&&|\|\||[|;&]", code):
                    command = _stead_command(segment.strip())
                    if command is not None:
                        found.append((page.name, command))
    return found


class _Param(Protocol):
    @property
    def opts(self) -> Sequence[str]: ...
    @property
    def secondary_opts(self) -> Sequence[str]: ...


class _Command(Protocol):
    @property
    def params(self) -> Sequence[_Param]: ...


def _options(command: _Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def check_command_line(line: str) -> list[str]:
    """What is wrong with one documented ``stead`` command line (nothing: an empty list)."""
    words = shlex.split(line)
    command = typer.main.get_command(app)
    rest = words[1:]
    while isinstance(command, TyperGroup) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            return [f"no command {rest[0]!r} in {line!r}"]
        command, rest = sub, rest[1:]
    known = _options(command)
    return [f"{command.name} has no option {w.split('=')[0]} ({line!r})"
            for w in rest if w.startswith("--") and w.split("=")[0] not in known]


def test_documented_stead_commands_and_options_exist() -> None:
    lines = _command_lines()
    assert len(lines) > 40, "the shell blocks were not found"
    problems = [p for _, line in lines for p in check_command_line(line)]
    assert not problems, "\n".join(problems)
    # The check can fail: a command or an option that does not exist is reported.
    assert check_command_line("stead evaluate evals/") == [
        "no command 'evaluate' in 'stead evaluate evals/'"]
    assert check_command_line("stead eval evals/ --paralel 2") == [
        "eval has no option --paralel ('stead eval evals/ --paralel 2')"]
    assert check_command_line("stead memory search x --top-k 3") == []
