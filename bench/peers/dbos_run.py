"""The workloads on DBOS: one ``@DBOS.workflow`` whose model and tool calls are
``@DBOS.step`` functions, on the benchmark's PostgreSQL as DBOS's system database.

    async with dbos_system(dsn) as d:
        outcome = await d.run("five", run_id)

DBOS checkpoints each step's output in its system database before the workflow goes on, in
this process (no server between the workflow and its steps). The approval run waits in
``DBOS.recv_async`` (LISTEN/NOTIFY wakes it) after announcing itself with an event; the
harness answers with ``DBOS.send_async``. DBOS is a process-wide singleton: one
``dbos_system`` at a time per process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from bench.peers.models import RunOutcome
from bench.peers.temporal_run import Parked
from bench.peers.workload import HITL, Workload, workloads
from stead.contracts.models import Message, ToolCall

APPROVAL_TOPIC = "approval"
PARKED_EVENT = "parked"


@cache
def _workloads() -> dict[str, Workload]:
    return workloads()


@DBOS.step(name="bench.model")
async def model_step(workload: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    turn = await _workloads()[workload].think([Message.model_validate(m) for m in messages])
    return Message(role="assistant", content=turn.content,
                   tool_calls=turn.tool_calls).model_dump(mode="json")


@DBOS.step(name="bench.tool")
async def tool_step(workload: str, call: dict[str, Any], run_id: str,
                    step: int) -> dict[str, Any]:
    msg = await _workloads()[workload].act(ToolCall.model_validate(call), run_id=run_id,
                                           step=step)
    return msg.model_dump(mode="json")


@DBOS.workflow(name="bench.agent")
async def agent_workflow(workload: str, approval: bool) -> dict[str, Any]:
    run_id = DBOS.workflow_id or ""
    messages = [m.model_dump(mode="json") for m in _workloads()[workload].first_messages()]
    tools: list[str] = []
    turns = 0
    while True:
        turn = await model_step(workload, messages)
        turns += 1
        messages.append(turn)
        if not turn.get("tool_calls"):
            return {"answer": turn.get("content") or "", "tools_called": tools,
                    "model_calls": turns}
        for c in turn["tool_calls"]:
            if approval:
                await DBOS.set_event_async(PARKED_EVENT, True)
                if await DBOS.recv_async(APPROVAL_TOPIC, timeout_seconds=600) is None:
                    return {"answer": "approval timed out", "tools_called": tools,
                            "model_calls": turns}
            messages.append(await tool_step(workload, c, run_id, len(messages)))
            tools.append(c["name"])


class DbosSystem:
    temporal = False

    def __init__(self) -> None:
        self.name = "dbos"

    async def run(self, workload: str, run_id: str) -> RunOutcome:
        with SetWorkflowID(run_id):
            out = await agent_workflow(workload, False)
        return RunOutcome.model_validate(out)

    async def park(self, run_id: str, *, precise: bool = True) -> Parked:
        with SetWorkflowID(run_id):
            handle = await DBOS.start_workflow_async(agent_workflow, HITL, True)
        if not await DBOS.get_event_async(run_id, PARKED_EVENT, timeout_seconds=60):
            raise RuntimeError(f"dbos run {run_id} never waited for its approval")
        return Parked(run_id=run_id, handle=handle)

    async def release(self, p: Parked) -> None:
        await DBOS.send_async(p.run_id, {"approved": True}, topic=APPROVAL_TOPIC)

    async def finish(self, p: Parked) -> RunOutcome:
        return RunOutcome.model_validate(await p.handle.get_result())


@contextlib.asynccontextmanager
async def dbos_system(dsn: str, *, pool_size: int = 20) -> AsyncIterator[DbosSystem]:
    """DBOS launched on ``dsn`` (its system database: created if missing, migrated)."""
    config: DBOSConfig = {"name": "stead-bench", "system_database_url": dsn,
                          "sys_db_pool_size": pool_size, "log_level": "WARNING"}
    DBOS(config=config)
    try:
        DBOS.launch()
        yield DbosSystem()
    finally:
        DBOS.destroy()
        # DBOS installs its own default executor on the running loop and shuts it down on
        # destroy; whatever runs on this loop afterwards (asyncio.to_thread) needs one again.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
