"""The peer benchmark's systems do the same work (bench/peers): plain temporalio (and the
engine's floor), stead, pydantic-ai and the OpenAI Agents SDK on Temporal, LangGraph on its
PostgreSQL checkpointer and DBOS each answer the 5-tool request the same way, calling the five
tools in order; each runs the way it claims to (the floor in one eagerly started workflow
task, the frameworks' model and tool calls as activities), and the PostgreSQL peers' durable
state really is in PostgreSQL.

The peers are the ``bench`` extra. Without it these tests fail (they are never skipped),
saying ``pip install -e '.[bench]'``; ``make test`` installs it.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

# bench/ is a directory of the repository, not an installed package (like chaos/ is run).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.api.enums.v1 import EventType

from bench import approvals
from bench.peers import missing_extra
from bench.peers.databases import DBOS_DB, LANGGRAPH_DB, ensure_database
from bench.peers.workload import FIVE, HITL, workloads
from stead.stack.embedded import EmbeddedStack


@pytest.fixture
def extra() -> None:
    problem = missing_extra()
    if problem is not None:
        pytest.fail(problem, pytrace=False)


def _run_id(system: str) -> str:
    return f"test-{system}-{uuid.uuid4().hex[:10]}"


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def test_bench_extra_is_installed(extra: None) -> None:
    """The peers import (this is the check that names the extra when they do not)."""
    assert missing_extra() is None


async def test_temporal_systems_answer_alike(extra: None, stack: EmbeddedStack) -> None:
    """stead (minimal) and plain temporalio: the same answer after lookup_1..lookup_5."""
    from bench.peers.temporal_run import PLAIN, STEAD_MIN, temporal_system

    w = workloads()[FIVE]
    answers = set()
    for system in (STEAD_MIN, PLAIN):
        async with temporal_system(stack.resolved_settings(), system, otlp=None) as s:
            run_id = _run_id(system)
            out = await s.run(FIVE, run_id)
            w.check(system, run_id, out)
            assert out.tools_called == [f"lookup_{n}" for n in range(1, 6)]
            answers.add(out.answer)
    assert answers == {"Values: value-1-key-1, value-2-key-2, value-3-key-3, value-4-key-4, "
                       "value-5-key-5"}


async def _history(client: Any, run_id: str) -> list[Any]:
    return list((await client.get_workflow_handle(run_id).fetch_history()).events)


async def test_the_floor_is_one_eagerly_started_workflow_task(extra: None,
                                                              stack: EmbeddedStack) -> None:
    """The engine's floor does the 5-tool work with every model and tool call a local
    activity (a marker, no activity task) inside the one workflow task its eager start
    handed the worker."""
    from bench.peers.temporal_run import FLOOR, temporal_system

    w = workloads()[FIVE]
    async with temporal_system(stack.resolved_settings(), FLOOR, otlp=None) as s:
        run_id = _run_id(FLOOR)
        w.check(FLOOR, run_id, await s.run(FIVE, run_id))
        assert (s.started, s.started_eagerly) == (1, 1)
        events = await _history(s.client, run_id)
    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED) == 1, kinds
    assert kinds.count(EventType.EVENT_TYPE_MARKER_RECORDED) == 11, kinds
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds


@pytest.mark.parametrize("system", ["pydantic-ai", "openai-agents"])
async def test_agent_frameworks_on_temporal_do_the_work_in_activities(
        extra: None, stack: EmbeddedStack, system: str) -> None:
    """pydantic-ai's durable agent and the OpenAI Agents SDK's plugin give the same answer
    after lookup_1..lookup_5 with 6 calls of the shared scripted planner, and each of those
    model calls and tool calls was an activity of the run (the frameworks' own ones); an
    approval run stops before its tool, and the ``approve`` signal resumes it to the answer
    (the frameworks' own tool approvals: deferred tools, interruptions)."""
    from bench.peers.temporal_run import temporal_system

    ws = workloads()
    async with temporal_system(stack.resolved_settings(), system, otlp=None) as s:
        run_id = _run_id(system)
        out = await s.run(FIVE, run_id)
        ws[FIVE].check(system, run_id, out)
        assert out.model_calls == 6 and out.tools_called == [f"lookup_{n}" for n in range(1, 6)]
        events = await _history(s.client, run_id)

        parked_id = _run_id(f"{system}-hitl")
        parked = await s.park(parked_id)
        assert parked_id not in approvals._entered  # stopped before the tool
        await s.release(parked)
        ws[HITL].check(system, parked_id, await s.finish(parked))
        assert approvals._entered.pop(parked_id) > 0
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    model = [n for n in scheduled if "model" in n]
    assert len(model) == 6 and len(scheduled) == 11, scheduled
    if system == "openai-agents":
        assert model == ["invoke_model_activity"] * 6
        assert [n for n in scheduled if n not in model] == [
            f"peers.openai.lookup_{n}" for n in range(1, 6)]
    else:
        assert set(model) == {"agent__peers_five__model_request"}
        assert set(scheduled) - set(model) == {"agent__peers_five__toolset__lookups__call_tool"}


async def test_langgraph_checkpoints_every_step_in_postgres(extra: None,
                                                            stack: EmbeddedStack) -> None:
    """LangGraph gives the same answer, tools in order, with a checkpoint per step in its own
    database; an interrupted run resumes with ``Command(resume=...)`` and runs the tool once."""
    from bench.peers.langgraph_run import langgraph_system

    dsn = await ensure_database(stack.database_url, LANGGRAPH_DB)
    ws = workloads()
    async with langgraph_system(dsn, durability="sync", pool_size=4) as lg:
        run_id = _run_id("langgraph")
        out = await lg.run(FIVE, run_id)
        ws[FIVE].check("langgraph", run_id, out)
        assert out.model_calls == 6

        parked_id = _run_id("langgraph-hitl")
        parked = await lg.park(parked_id)
        assert parked_id not in approvals._entered  # stopped before the tool
        await lg.release(parked)
        ws[HITL].check("langgraph", parked_id, await lg.finish(parked))
        assert approvals._entered.pop(parked_id) > 0
    [row] = await _fetch(dsn, "select count(*) as n from checkpoints where thread_id = $1",
                         run_id)
    # input + 6 model steps + 5 tool steps, each committed before the next step (sync).
    assert row["n"] >= 12, row["n"]


async def test_dbos_records_workflow_and_steps_in_postgres(extra: None,
                                                           stack: EmbeddedStack) -> None:
    """DBOS gives the same answer, tools in order; its workflow status row says SUCCESS and
    each of the 11 steps has its output row; recv/send carries the approval."""
    from bench.peers.dbos_run import dbos_system

    dsn = await ensure_database(stack.database_url, DBOS_DB)
    ws = workloads()
    async with dbos_system(dsn, pool_size=4) as d:
        run_id = _run_id("dbos")
        out = await d.run(FIVE, run_id)
        ws[FIVE].check("dbos", run_id, out)

        parked_id = _run_id("dbos-hitl")
        parked = await d.park(parked_id)
        assert parked_id not in approvals._entered
        await d.release(parked)
        ws[HITL].check("dbos", parked_id, await d.finish(parked))
        assert approvals._entered.pop(parked_id) > 0
    [status] = await _fetch(dsn, "select status from dbos.workflow_status "
                                 "where workflow_uuid = $1", run_id)
    assert status["status"] == "SUCCESS"
    steps = await _fetch(dsn, "select function_name from dbos.operation_outputs "
                              "where workflow_uuid = $1 order by function_id", run_id)
    names = [r["function_name"] for r in steps]
    assert names.count("bench.model") == 6 and names.count("bench.tool") == 5, names
