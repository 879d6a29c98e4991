"""The ``stead`` console script as users run it: a subprocess against the real dev server and
PostgreSQL, served by this test's in-process worker. Pins output people read, JSON scripts
parse, and the exit codes (0 ok, 1 run not completed, 2 bad input, 3 unreachable, 4 no run)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from _cli import Done, cli_env, stead
from _unanswering_workflow import UnansweringAgentWorkflow
from temporalio.client import Client
from temporalio.worker import Worker

from stead.settings import Settings
from stead.stack.embedded import free_port
from stead.worker import WorkerHost

RUN_ID = re.compile(r"default-ops-[0-9a-f]{12}")


@pytest.fixture
def env(settings: Settings, worker: WorkerHost) -> dict[str, str]:
    """Environment of a CLI process that talks to the stack this test's worker serves."""
    return cli_env(settings)


async def test_run_streams_steps_and_prints_the_answer(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    done = await stead("run", "ops", "is auth-service healthy?", env=env, cwd=tmp_path)

    assert done.code == 0, done.err
    assert re.search(r"started default-ops-[0-9a-f]{12} — streaming steps", done.out)
    # Streamed steps: a model turn, the tool call, the answering model turn.
    assert re.search(r"step +1 +model +scripted:ops +ok .*1 tool call", done.out), done.out
    assert re.search(r"step +2 +tool +service_status +ok", done.out), done.out
    assert re.search(r"step +3 +model +scripted:ops +ok .*answer", done.out), done.out
    assert re.search(r"default-ops-[0-9a-f]{12}: completed in 3 steps \(2 model turns, 1 tool "
                     r"calls, 0 retries, 0 fallbacks, 0 rejected\) — scripted:ops", done.out)
    assert ("answer: auth-service is healthy: error rate 0.1%, p95 45 ms, version 3.2.1."
            in done.out)


async def test_run_show_and_audit_as_json_and_tables(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """One run seen through every read command, for scripts (--json) and for people."""
    ran = await stead("run", "ops", "is auth-service healthy?", "--json", "--user", "alice",
                      env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err
    result = ran.json()
    run_id = result["workflow_id"]
    assert RUN_ID.fullmatch(run_id)
    assert result["status"] == "completed"
    assert result["answer"].startswith("auth-service is healthy")
    assert (result["steps"], result["model_turns"], result["model"]) == (3, 2, "scripted:ops")
    assert [c["tool"] for c in result["tool_calls"]] == ["service_status"]
    assert "streaming" not in ran.out  # nothing but the JSON document on stdout

    shown = await stead("show", run_id, "--json", env=env, cwd=tmp_path)
    assert shown.code == 0, shown.err
    data = shown.json()
    assert (data["workflow_id"], data["temporal_status"], data["status"]) == (
        run_id, "COMPLETED", "completed")
    assert data["answer"] == result["answer"]
    assert [(h["step"], h["name"], h["status"]) for h in data["history"]] == [
        (2, "service_status", "ok")]

    table = await stead("show", run_id, env=env, cwd=tmp_path)
    assert table.code == 0, table.err
    assert f"{run_id}  status: completed  temporal: COMPLETED" in table.out
    assert re.search(r"│ 2 +│ tool +│ service_status +│ ok", table.out), table.out
    assert "answer: auth-service is healthy" in table.out

    audited = await stead("audit", run_id, "--json", "--verify", env=env, cwd=tmp_path)
    assert audited.code == 0, audited.err
    trail = audited.json()
    assert (trail["chain_ok"], trail["chain_problems"]) == (True, [])
    (run_row,) = trail["runs"]
    assert (run_row["status"], run_row["user_id"], run_row["steps"]) == ("completed", "alice", 3)
    assert [(m["step"], m["attempt"], m["status"]) for m in trail["model_calls"]] == [
        (1, 1, "ok"), (3, 1, "ok")]
    assert [(a["tool"], a["status"]) for a in trail["tool_attempts"]] == [
        ("service_status", "ok")]
    assert "decisions" in trail

    audit_table = await stead("audit", run_id, "--verify", env=env, cwd=tmp_path)
    assert audit_table.code == 0, audit_table.err
    assert f"{run_id} (" in audit_table.out and "agent=ops tenant=default" in audit_table.out
    assert "status=completed steps=3 model=scripted:ops" in audit_table.out
    assert re.search(r"│ 1 +│ model#1 +│ ok +│ scripted:ops → service_status", audit_table.out)
    assert re.search(r"│ 2 +│ service_status#1 +│ ok", audit_table.out), audit_table.out
    assert re.search(r"│ 3 +│ model#1 +│ ok +│ scripted:ops → answer", audit_table.out)
    assert "hash chain intact" in audit_table.out


async def test_run_whose_steps_cannot_be_queried_still_prints_its_result(
        settings: Settings, client: Client, tmp_path: Path) -> None:
    """A watch query the worker fails (a replay that meets a temporalio limit, a bug) costs
    the steps, said once, and never the run's result or its exit code."""
    queue = f"{settings.temporal.task_queue}-unanswering"
    async with Worker(client, task_queue=queue, workflows=[UnansweringAgentWorkflow]):
        done = await stead("run", "ops", "is auth-service healthy?", cwd=tmp_path,
                           env=cli_env(settings, STEAD_TASK_QUEUE=queue))

    assert done.code == 0, done.err
    assert done.out.count("steps not shown: the worker did not answer") == 1, done.out
    assert "this worker answers no queries" in done.out
    assert "answer: done: is auth-service healthy?" in done.out
    assert "Traceback" not in done.out + done.err


async def test_run_that_does_not_complete_exits_1_with_its_error(
        env: dict[str, str], tmp_path: Path) -> None:
    done = await stead("run", "ops", "Checkout API is failing, open a ticket", "--max-steps",
                       "2", "--json", env=env, cwd=tmp_path)

    assert done.code == 1, done.err
    data = done.json()
    assert (data["status"], data["steps"]) == ("failed", 2)
    assert data["error"] == "step budget of 2 exhausted before an answer"


async def test_run_of_an_unknown_agent_exits_1_naming_the_known_agents(
        env: dict[str, str], tmp_path: Path) -> None:
    done = await stead("run", "billing", "refund order 7", env=env, cwd=tmp_path)

    assert done.code == 1
    assert re.search(r"error: run default-billing-[0-9a-f]{12} failed: unknown agent "
                     r"'billing'; this worker serves: ops", done.err), done.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "ops", ""], "invalid request: input: String should have at least 1 character"),
        (["run", "", "is auth-service healthy?"],
         "invalid request: agent: String should have at least 1 character"),
        (["run", "ops", "x", "--max-steps", "0"],
         "invalid request: max_steps: Input should be greater than or equal to 1"),
    ],
    ids=["empty-input", "empty-agent", "zero-steps"],
)
async def test_invalid_run_request_exits_2_before_contacting_the_stack(
        tmp_path: Path, settings: Settings, args: list[str], says: str) -> None:
    # A closed Temporal port: reaching for the stack would exit 3, not 2.
    env = cli_env(settings, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")

    done = await stead(*args, env=env, cwd=tmp_path)

    assert done.code == 2
    assert f"error: {says}" in done.err
    assert done.out == ""


async def test_show_of_an_unknown_run_exits_4(env: dict[str, str], settings: Settings,
                                              tmp_path: Path) -> None:
    done = await stead("show", "does-not-exist", env=env, cwd=tmp_path)

    assert done.code == 4
    assert f"error: no run 'does-not-exist' on {settings.temporal.address}" in done.err


async def test_exit_code_survives_interpreter_teardown(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    """The Temporal client's native threads can abort a process at exit (SIGABRT, code 134)
    after its work is done; scripts must get the real exit code every time."""
    limit = asyncio.Semaphore(8)

    async def once() -> Done:
        async with limit:
            return await stead("show", "does-not-exist", env=env, cwd=tmp_path)

    runs = await asyncio.gather(*(once() for _ in range(40)))

    assert [r.code for r in runs] == [4] * 40, [r.err for r in runs if r.code != 4][:1]
    assert all("Fatal Python error" not in r.err for r in runs)


async def test_audit_of_an_unknown_run_exits_4(env: dict[str, str], tmp_path: Path) -> None:
    done = await stead("audit", "does-not-exist", "--json", env=env, cwd=tmp_path)

    assert done.code == 4
    assert "error: the ledger has no run 'does-not-exist'" in done.err


async def test_unreachable_temporal_exits_3_naming_the_address(settings: Settings,
                                                               tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = cli_env(settings, TEMPORAL_ADDRESS=address)

    done = await stead("show", "x", env=env, cwd=tmp_path, timeout=60)

    assert done.code == 3
    assert f"cannot reach Temporal at {address}" in done.err
    assert "TEMPORAL_ADDRESS" in done.err
    assert "Traceback" not in done.err


@pytest.mark.parametrize("command", [["show", "x"], ["run", "ops", "hello"], ["audit", "x"]])
async def test_bad_setting_exits_2_naming_the_variable(settings: Settings, tmp_path: Path,
                                                       command: list[str]) -> None:
    env = cli_env(settings, STEAD_TEMPORAL_PORT="abc")

    done = await stead(*command, env=env, cwd=tmp_path)

    assert done.code == 2
    assert "error: invalid setting: STEAD_TEMPORAL_PORT='abc'" in done.err
    assert "Traceback" not in done.err


@pytest.mark.parametrize("argv", [("audit", "x"), ("metrics",), ("drift", "--checks")])
async def test_unreachable_ledger_exits_3(settings: Settings, tmp_path: Path,
                                          argv: tuple[str, ...]) -> None:
    env = cli_env(settings, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")

    done = await stead(*argv, env=env, cwd=tmp_path, timeout=60)

    assert done.code == 3
    assert "error: ledger unavailable" in done.err
    assert "Traceback" not in done.err
