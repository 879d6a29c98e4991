"""Fuzzed command lines: ``stead run/show/audit/approve/reject/pending/stuck`` with any
argument text, against the test stack.

The commands run in-process (typer's ``CliRunner``, in a worker thread so that their own
``asyncio.run`` does not meet the session loop); a handful of the same inputs also go through
the real ``stead`` script, whose ``main()`` maps exits the same way.

Properties, for every command line:

- it ends with a documented exit code (0 ok, 1 run not completed or check failed, 2 bad
  input, 4 no such run; 3, "unreachable", never happens against a live stack) and never with
  an uncaught exception;
- a non-zero exit says why (``error: ...``, or click's usage error);
- ids that name no run give 2 or 4 (never 0 or 3), and ``stead run`` of an agent the worker
  does not serve never succeeds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from _cli import cli_env, stead
from _fuzz import argv_text, fuzz, json_values, run_property
from hypothesis import event, example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from stead.cli.app import app
from stead.settings import Settings
from stead.worker import WorkerHost

EXIT_CODES = {0, 1, 2, 4}

ids = argv_text
flag = st.booleans()


def opt(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """``[name, value]`` or nothing."""
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["run", "show", "audit", "approve", "reject", "pending",
                                 "stuck"]))
    argv: list[str] = [kind]
    if kind == "run":
        # Never "ops" (the one agent served): those runs would do real work, or wait.
        argv += [draw(argv_text.filter(lambda a: a.strip() != "ops")), draw(argv_text)]
        argv += draw(opt("--tenant", argv_text)) + draw(opt("--user", argv_text))
        argv += draw(opt("--max-steps", argv_text | st.integers(-5, 300).map(str)))
    elif kind in ("show", "audit"):
        argv.append(draw(ids))
        if kind == "audit" and draw(flag):
            argv.append("--verify")
    elif kind in ("approve", "reject"):
        argv += [draw(ids), draw(argv_text), "--as", draw(argv_text)]
        argv += draw(opt("--role", argv_text)) + draw(opt("--note", argv_text))
        if kind == "approve":
            argv += draw(opt("--args", argv_text | json_values.map(json.dumps)))
    elif kind == "pending":
        argv += draw(opt("--tenant", argv_text)) + draw(opt("--agent", argv_text))
    else:
        argv += draw(opt("--older-than", argv_text | st.sampled_from(["30s", "5m", "1h30m"])))
        argv += draw(opt("--task-queue", argv_text)) + draw(opt("--query", argv_text))
    if draw(flag):
        argv.append("--json")
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["--bogus", "-x"])))
    return argv


@pytest.fixture
def quiet_worker_logs() -> Iterator[None]:
    """The in-process worker's expected failures (unknown agents) would otherwise be logged
    with tracebacks into the output the runner captures."""
    logger = logging.getLogger("temporalio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def judge(argv: list[str], code: int, exception: BaseException | None, output: str) -> str:
    assert exception is None or isinstance(exception, SystemExit), (argv, exception, output)
    assert code in EXIT_CODES, (argv, code, output)
    if code != 0:
        assert "error:" in output or "Error" in output or "stuck" in output, (argv, output)
    kind = argv[0]
    usage = "--bogus" in argv or "-x" in argv
    if kind == "run" and not usage:
        assert code != 0, (argv, output)
    if kind in ("show", "audit", "approve", "reject") and not usage:
        assert code in (2, 4), (argv, code, output)
    return f"{kind}: exit {code}"


async def test_fuzzed_command_lines_exit_with_a_code_and_a_reason(
        settings: Settings, worker: WorkerHost, quiet_worker_logs: None) -> None:
    env = cli_env(settings)
    runner = CliRunner()

    def invoke(argv: list[str]) -> str:
        result = runner.invoke(app, argv, env=env)
        return judge(argv, result.exit_code, result.exception, result.stdout + result.stderr)

    @fuzz(40)
    @given(command_lines())
    @example(["show", "no-such-run"])
    @example(["audit", "no-such-run", "--verify", "--json"])
    @example(["approve", "no-such-run", "a2", "--as", "alice", "--args", "[1, 2]"])
    @example(["approve", "no-such-run", "a2", "--as", "alice", "--args", "{"])
    @example(["reject", "no-such-run", "a2", "--as", ""])
    @example(["run", "billing", "refund order 42", "--max-steps", "many"])
    @example(["run", " ", "hi"])
    @example(["pending", "--tenant", "a\"b\\c'", "--agent", "é\n"])
    @example(["stuck", "--older-than", "0s"])
    @example(["stuck", "--query", "ExecutionStatus = "])
    @example(["stuck", "--task-queue", "a'b\\"])
    def prop(argv: list[str]) -> None:
        event(invoke(argv))

    await run_property(prop)


async def test_the_stead_script_maps_bad_input_the_same_way(
        settings: Settings, worker: WorkerHost) -> None:
    """The console script (``main()``) against the same stack: codes and messages, no
    traceback."""
    env = cli_env(settings)
    cases: list[tuple[list[str], int, str]] = [
        (["show", "no-such-run"], 4, "error: no run 'no-such-run'"),
        (["approve", "no-such-run", "a2", "--as", "alice", "--args", "{"], 2,
         "error: --args is not valid JSON"),
        (["run", "billing", "hi"], 1, "unknown agent 'billing'; this worker serves: ops"),
        (["run", "ops", ""], 2, "error: invalid request: input"),
        (["stuck", "--query", "ExecutionStatus = "], 2, "rejected the query"),
        (["pending", "--tenant", "a\"b\\c'"], 0, "no approvals pending"),
    ]
    done = await asyncio.gather(*(stead(*argv, env=env) for argv, _, _ in cases))
    for (argv, code, says), d in zip(cases, done, strict=True):
        assert d.code == code, (argv, d)
        assert says in d.out + d.err, (argv, d)
        assert "Traceback" not in d.err, (argv, d.err)


async def test_an_empty_run_id_is_bad_input(settings: Settings, worker: WorkerHost,
                                            quiet_worker_logs: None) -> None:
    env = cli_env(settings)
    runner = CliRunner()

    def invoke(argv: list[str]) -> Any:
        return runner.invoke(app, argv, env=env)

    for argv in (["show", ""], ["approve", "", "a2", "--as", "alice"]):
        result = await asyncio.to_thread(invoke, argv)
        assert result.exception is None or isinstance(result.exception, SystemExit), argv
        assert result.exit_code in (2, 4), (argv, result.exit_code, result.output)


