"""Commands that take files take directories too: the expansion every such command shares
(``stead.files``) and each command's use of it, on real files in temporary directories.

Pins that a directory stands for its matching files, searched recursively and sorted; that a
file is taken as given and in the order given; that a directory without a matching file, or a
path that does not exist, is an error naming it (in the command's own error type); and that a
command that needs one file (a policy, instructions) takes a directory holding exactly one.
No server is needed; the CLI runs of ``stead eval DIR``, ``stead replay DIR`` and
``stead counterfactual --policy DIR`` against a real stack are in the commands' own test files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stead.contracts.policy import PolicyError, load_policy, policy_file
from stead.evals.counterfactual import CounterfactualError, read_instructions
from stead.evals.replay import HistoryFileError, history_files, load_histories
from stead.evals.suite import SuiteError, load_suite, suite_files
from stead.files import expand_paths, one_file

ROOT = Path(__file__).resolve().parent.parent


class Bad(Exception):
    """The caller's own error type, which the helpers raise."""


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_directory_is_its_matching_files_recursively_sorted(tmp_path: Path) -> None:
    b = touch(tmp_path / "b.yaml")
    a = touch(tmp_path / "a.yml")
    deep = touch(tmp_path / "sub" / "deeper" / "c.yaml")
    touch(tmp_path / "notes.md")
    touch(tmp_path / "checks.py")
    (tmp_path / "empty-dir.yaml").mkdir()  # a directory named like a match is not a file

    found = expand_paths([tmp_path], ("*.yaml", "*.yml"), what="suite", error=Bad)

    assert found == [a, b, deep]


def test_files_are_taken_as_given_and_in_order_with_directories_in_place(
        tmp_path: Path) -> None:
    z = touch(tmp_path / "z.txt")  # a named file need not match the patterns
    d1 = touch(tmp_path / "dir" / "1.json")
    d2 = touch(tmp_path / "dir" / "2.json")

    found = expand_paths([z, tmp_path / "dir", z], ("*.json",), what="history", error=Bad)

    assert found == [z, d1, d2, z]


def test_a_directory_without_matches_or_a_missing_path_is_an_error_naming_it(
        tmp_path: Path) -> None:
    touch(tmp_path / "only.txt")
    with pytest.raises(Bad, match=r"no \*\.yaml or \*\.yml suite files in this directory"):
        expand_paths([tmp_path], ("*.yaml", "*.yml"), what="suite", error=Bad)
    with pytest.raises(Bad) as missing:
        expand_paths([tmp_path / "nope"], ("*.yaml",), what="suite", error=Bad)
    assert str(missing.value) == f"{tmp_path / 'nope'}: no such file or directory"


def test_one_file_takes_a_file_or_a_directory_holding_exactly_one(tmp_path: Path) -> None:
    only = touch(tmp_path / "one" / "nested" / "policy.yaml")
    assert one_file(tmp_path / "one", ("*.yaml",), what="policy", error=Bad) == only
    assert one_file(only, ("*.yaml",), what="policy", error=Bad) == only
    touch(tmp_path / "one" / "other.yaml")
    with pytest.raises(Bad) as several:
        one_file(tmp_path / "one", ("*.yaml",), what="policy", error=Bad)
    assert str(several.value) == (
        f"{tmp_path / 'one'}: holds 2 policy files (nested/policy.yaml, other.yaml); one is "
        f"needed: name the file")


def test_eval_suites_from_directories(tmp_path: Path) -> None:
    """`stead eval evals/` reads the reference suites; an empty directory is a SuiteError."""
    assert suite_files([ROOT / "evals"]) == [ROOT / "evals" / "ops.yaml",
                                            ROOT / "evals" / "refund.yaml"]
    assert [load_suite(p).name for p in suite_files([ROOT / "evals"])] == ["ops", "refund"]
    with pytest.raises(SuiteError, match=r"no \*\.yaml or \*\.yml suite files in this directory"):
        suite_files([tmp_path])


def test_replay_histories_from_directories_keep_their_messages(tmp_path: Path) -> None:
    corpus = ROOT / "evals" / "histories"
    files = history_files([corpus])
    # Subfolders too (the corpus keeps older recordings in one), each directory in order.
    assert files == sorted(corpus.rglob("*.json")) and len(files) >= 40
    assert len(load_histories([corpus])) == len(files)  # the corpus's README.md is not read
    with pytest.raises(HistoryFileError, match=r"no \*\.json history files in this directory"):
        history_files([tmp_path])
    with pytest.raises(HistoryFileError, match="no such file or directory"):
        history_files([tmp_path / "gone"])


def test_a_policy_directory_holding_one_policy_file(tmp_path: Path) -> None:
    """`stead counterfactual --policy agents/refund`: the directory holds one policy."""
    refund = policy_file(ROOT / "agents" / "refund")
    assert refund == ROOT / "agents" / "refund" / "policy.yaml"
    assert load_policy(refund).ref == "refund@1"
    with pytest.raises(PolicyError, match=r"agents: holds 2 policy files "
                                          r"\(ops/policy\.yaml, refund/policy\.yaml\)"):
        policy_file(ROOT / "agents")
    with pytest.raises(PolicyError, match=r"no \*\.yaml or \*\.yml policy files in this directory"):
        policy_file(tmp_path)
    # A path that is not a directory is left to load_policy, which names what it cannot read.
    assert policy_file(tmp_path / "missing.yaml") == tmp_path / "missing.yaml"
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(policy_file(tmp_path / "missing.yaml"))


def test_instructions_from_a_directory_holding_one_text_file(tmp_path: Path) -> None:
    touch(tmp_path / "prompts" / "refund.md", "Refund only after checking photos.")
    assert read_instructions(f"@{tmp_path / 'prompts'}") == "Refund only after checking photos."
    touch(tmp_path / "prompts" / "ops.txt", "Be brief.")
    with pytest.raises(CounterfactualError, match="holds 2 instructions files"):
        read_instructions(f"@{tmp_path / 'prompts'}")
    (tmp_path / "blank").mkdir()
    with pytest.raises(CounterfactualError, match=r"no \*\.md or \*\.txt instructions files"):
        read_instructions(f"@{tmp_path / 'blank'}")
