"""The workloads on LangGraph: a ``StateGraph`` (model node, tool node, loop) compiled with
``AsyncPostgresSaver`` on the benchmark's PostgreSQL, one thread per run.

    async with langgraph_system(dsn, durability="sync") as lg:
        outcome = await lg.run("five", run_id)

- ``durability="sync"`` (what stead is compared with): every step's checkpoint is committed
  to PostgreSQL before the next step starts, the guarantee Temporal gives for every event.
  ``"async"``, LangGraph's default, writes the checkpoint while the next step already runs.
- The tool node of the approval run calls ``interrupt()`` before the tool: ``ainvoke``
  returns with the run parked (its state is only the checkpoint in PostgreSQL), and
  ``ainvoke(Command(resume=...))`` on the same thread loads it and re-enters the node.
- The messages are stead's ``Message`` dumped to plain JSON, so the checkpointer's own
  serializer stores them without any class allow-list.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypedDict

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bench.peers.models import RunOutcome
from bench.peers.temporal_run import Parked
from bench.peers.workload import HITL, Workload, workloads
from stead.contracts.models import Message

Durability = Literal["sync", "async"]


class State(TypedDict):
    workload: str
    run_id: str
    approval: bool
    messages: Annotated[list[dict[str, Any]], operator.add]
    tools_called: Annotated[list[str], operator.add]
    model_calls: Annotated[int, operator.add]


class LangGraphSystem:
    temporal = False

    def __init__(self, saver: AsyncPostgresSaver, *, durability: Durability,
                 name: str) -> None:
        self.name = name
        self.durability: Durability = durability
        self.saver = saver
        self.workloads: dict[str, Workload] = workloads()
        self.graph = self._build().compile(checkpointer=saver)

    def _build(self) -> StateGraph[State]:
        g: StateGraph[State] = StateGraph(State)
        g.add_node("model", self._model)
        g.add_node("tools", self._tools)
        g.add_edge(START, "model")
        g.add_conditional_edges("model", self._route, ["tools", END])
        g.add_edge("tools", "model")
        return g

    async def _model(self, state: State) -> dict[str, Any]:
        w = self.workloads[state["workload"]]
        turn = await w.think([Message.model_validate(m) for m in state["messages"]])
        msg = Message(role="assistant", content=turn.content, tool_calls=turn.tool_calls)
        return {"messages": [msg.model_dump(mode="json")], "model_calls": 1}

    @staticmethod
    def _route(state: State) -> str:
        return "tools" if state["messages"][-1].get("tool_calls") else END

    async def _tools(self, state: State) -> dict[str, Any]:
        w = self.workloads[state["workload"]]
        last = Message.model_validate(state["messages"][-1])
        if state["approval"]:
            interrupt({"tools": [c.name for c in last.tool_calls]})
        out = [await w.act(c, run_id=state["run_id"], step=len(state["messages"]))
               for c in last.tool_calls]
        return {"messages": [m.model_dump(mode="json") for m in out],
                "tools_called": [c.name for c in last.tool_calls]}

    def _config(self, run_id: str) -> Any:
        return {"configurable": {"thread_id": run_id}}

    @staticmethod
    def _outcome(state: dict[str, Any]) -> RunOutcome:
        return RunOutcome(answer=state["messages"][-1].get("content") or "",
                          tools_called=state["tools_called"], model_calls=state["model_calls"])

    def _input(self, workload: str, run_id: str, *, approval: bool) -> State:
        w = self.workloads[workload]
        return State(workload=workload, run_id=run_id, approval=approval,
                     messages=[m.model_dump(mode="json") for m in w.first_messages()],
                     tools_called=[], model_calls=0)

    async def run(self, workload: str, run_id: str) -> RunOutcome:
        state = await self.graph.ainvoke(self._input(workload, run_id, approval=False),
                                         self._config(run_id), durability=self.durability)
        return self._outcome(state)

    async def park(self, run_id: str, *, precise: bool = True) -> Parked:
        state = await self.graph.ainvoke(self._input(HITL, run_id, approval=True),
                                         self._config(run_id), durability=self.durability)
        if "__interrupt__" not in state:
            raise RuntimeError(f"{self.name} run {run_id} did not stop for its approval")
        return Parked(run_id=run_id, handle=None)

    async def release(self, p: Parked) -> None:
        p.extra["state"] = await self.graph.ainvoke(
            Command(resume={"approved": True}), self._config(p.run_id),
            durability=self.durability)

    async def finish(self, p: Parked) -> RunOutcome:
        return self._outcome(p.extra.pop("state"))


@contextlib.asynccontextmanager
async def langgraph_system(dsn: str, *, durability: Durability = "sync",
                           name: str = "langgraph", pool_size: int = 20
                           ) -> AsyncIterator[LangGraphSystem]:
    """``dsn``: a database of its own (the checkpointer's tables are created in it). The
    pool is configured as ``AsyncPostgresSaver.from_conn_string`` configures its connection
    (autocommit, no server-side prepares, dict rows)."""
    async with AsyncConnectionPool(dsn, min_size=2, max_size=pool_size, open=False,
                                   kwargs={"autocommit": True, "prepare_threshold": 0,
                                           "row_factory": dict_row}) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield LangGraphSystem(saver, durability=durability, name=name)
