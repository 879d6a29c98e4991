"""History bytes per turn of a long conversation: stead vs a naive workflow.

    python -m bench.history                          # 200 turns, 20 KB tool output per turn
    python -m bench.history --turns 50 --tool-bytes 20000 --json history.json

Every turn is one user message; the agent calls one tool that returns ``--tool-bytes`` of
text, then answers. Both systems run on the same embedded stack, driven the same way (one
``say`` update per turn, sequentially):

- **stead**: ``ConversationWorkflow``; each turn is a child ``AgentWorkflow`` that continues
  the conversation by reference (``stead_blobs``), tool outputs over the threshold travel as
  references, and the conversation continues-as-new at turn boundaries.
- **naive**: one plain temporalio workflow that keeps the whole conversation in a list and
  passes it to every model activity, tool outputs inline.

Bytes are the serialized sizes of history events (``fetch_history``), every run of the
conversation (continue-as-new chain) plus, for stead, each turn's child run, attributed to the
turn whose ``say`` update was accepted last. The naive workflow stops at the first turn that
fails: Temporal refuses payloads over 2 MB and terminates histories over 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from bench.machine import machine_details
    from stead.authoring.agent import Agent
    from stead.authoring.tools import ToolContext, tool
    from stead.contracts.models import Message, ModelTurn, ToolSchema
    from stead.integrations.llm import FunctionModel, call

AGENT = "historian"
MARKS = (1, 10, 50, 100, 150, 200)
TURN_TIMEOUT = 120.0
"""Seconds one turn may take before the benchmark calls it broken (a workflow task that
Temporal refuses is retried forever)."""


# ---------------------------------------------------------------------------- the workload


class FetchArgs(BaseModel):
    turn: int
    n: int


class Document(BaseModel):
    turn: int
    body: str


def _document(turn: int, n: int) -> Document:
    """``n`` bytes of text that differ per turn (no two outputs share a digest)."""
    unit = f"turn {turn} line; "
    return Document(turn=turn, body=(unit * (n // len(unit) + 1))[:n])


def _answer(messages: Sequence[Message]) -> ModelTurn:
    """Call the tool for the latest user message, then answer from its output and from how
    many earlier tool outputs the conversation shows (so the model must see all of them)."""
    last = messages[-1]
    turn = sum(1 for m in messages if m.role == "user")
    if last.role != "tool":
        n = int((last.content or "0").rsplit(" ", 1)[-1])
        return ModelTurn(tool_calls=[call("fetch_document", call_id=f"c{turn}", turn=turn,
                                          n=n)])
    seen = sum(len(m.content or "") for m in messages if m.role == "tool")
    return ModelTurn(content=f"turn {turn}: read {seen:,} bytes of documents so far")


def historian() -> Agent:
    @tool(side_effect="read", idempotent=True)
    async def fetch_document(args: FetchArgs, ctx: ToolContext) -> Document:
        """Fetch the document for a turn."""
        return _document(args.turn, args.n)

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        return _answer(messages)

    return Agent(name=AGENT, instructions="Fetch the document the user asks for, then "
                 "summarise what you have read.", tools=[fetch_document],
                 offline_model=FunctionModel(plan, name=AGENT), max_steps=4)


# ---------------------------------------------------------------------------- naive baseline


class NaiveModelRequest(BaseModel):
    messages: list[Message]


class NaiveSay(BaseModel):
    text: str


@activity.defn(name="naive.model")
async def naive_model(req: NaiveModelRequest) -> ModelTurn:
    return _answer(req.messages)


@activity.defn(name="naive.fetch_document")
async def naive_fetch(args: FetchArgs) -> Document:
    return _document(args.turn, args.n)


_RETRY = RetryPolicy(maximum_attempts=3)


@workflow.defn(name="NaiveConversationWorkflow")
class NaiveConversationWorkflow:
    """The whole conversation in workflow state, passed in full to every model call."""

    def __init__(self) -> None:
        self.messages = [Message(role="system", content="Fetch, then summarise.")]
        self.done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return len(self.messages)

    @workflow.signal(name="end")
    def end(self) -> None:
        self.done = True

    @workflow.update(name="say")
    async def say(self, message: NaiveSay) -> str:
        self.messages.append(Message(role="user", content=message.text))
        while True:
            turn: ModelTurn = await workflow.execute_activity(
                naive_model, NaiveModelRequest(messages=self.messages),
                start_to_close_timeout=timedelta(seconds=60), retry_policy=_RETRY)
            self.messages.append(Message(role="assistant", content=turn.content,
                                         tool_calls=turn.tool_calls))
            if not turn.tool_calls:
                return turn.content or ""
            for c in turn.tool_calls:
                doc: Document = await workflow.execute_activity(
                    naive_fetch, FetchArgs.model_validate_json(c.arguments),
                    start_to_close_timeout=timedelta(seconds=60), retry_policy=_RETRY)
                self.messages.append(Message(role="tool", tool_call_id=c.id, name=c.name,
                                             content=json.dumps({"ok": True,
                                                                 "result": doc.model_dump()})))


# ---------------------------------------------------------------------------- measuring


@dataclass
class SystemHistory:
    turns_done: int = 0
    per_turn: list[int] = field(default_factory=list)
    """History bytes attributed to turn k (index k-1)."""
    total_bytes: int = 0
    runs: int = 1
    """Workflow runs of the conversation (1 + continue-as-new count)."""
    broke_at: int | None = None
    why: str = ""
    seconds: float = 0.0
    slope: float = 0.0
    """Least-squares slope of per-turn bytes against turn number (bytes per turn, per turn)."""
    at: dict[int, int] = field(default_factory=dict)


def _slope(ys: Sequence[int]) -> float:
    n = len(ys)
    if n < 2:
        return 0.0
    xs = range(1, n + 1)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


async def _run_chain(client: Any, wid: str, first_run: str) -> list[Any]:
    """Every history of a continue-as-new chain, in order."""
    from temporalio.api.enums.v1 import EventType

    histories, run = [], first_run
    while run:
        h = await client.get_workflow_handle(wid, run_id=run).fetch_history()
        histories.append(h)
        run = ""
        for e in h.events:
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                run = e.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


def _attribute(histories: Sequence[Any], turns: int) -> list[int]:
    """Bytes per turn: each event goes to the turn whose ``say`` was accepted last (events
    before the first one to turn 1)."""
    from temporalio.api.enums.v1 import EventType

    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    per = [0] * max(turns, 1)
    k = 0
    for h in histories:
        for e in h.events:
            if e.event_type == accepted:
                k += 1
            per[min(max(k, 1), len(per)) - 1] += len(e.SerializeToString())
    return per


async def _why_stuck(client: Any, wid: str) -> str:
    from temporalio.api.enums.v1 import EventType

    h = await client.get_workflow_handle(wid).fetch_history()
    reason = "no answer (no workflow task failure recorded)"
    for e in h.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            f = e.workflow_task_failed_event_attributes
            reason = f"workflow task failed ({f.cause}): {f.failure.message[:300]}"
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            reason = f"terminated: {e.workflow_execution_terminated_event_attributes.reason}"
    return reason


async def _drive(name: str, handle: Any, turns: int, tool_bytes: int, result: SystemHistory,
                 send: Any, progress: Any) -> None:
    began = time.perf_counter()
    for k in range(1, turns + 1):
        try:
            await asyncio.wait_for(send(handle, f"fetch document {tool_bytes}"), TURN_TIMEOUT)
        except Exception as err:  # the naive run's end: a refused payload, a terminated run
            result.broke_at = k
            result.why = f"{type(err).__name__}: {getattr(err, 'message', err)}"
            progress(f"{name}: turn {k} failed: {result.why}")
            break
        result.turns_done = k
        if k % 25 == 0:
            progress(f"{name}: {k} turns")
    result.seconds = time.perf_counter() - began


async def run_history_bench(turns: int, tool_bytes: int, *, max_history_events: int,
                            progress: Any = print) -> dict[str, SystemHistory]:
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from bench.runner import bench_stack
    from stead.conversation import (
        WORKFLOW_TYPE,
        ConversationResult,
        ConversationStart,
        SayInput,
        TurnOutcome,
    )
    from stead.worker import PASSTHROUGH

    out = {"stead": SystemHistory(), "naive": SystemHistory()}
    async with bench_stack(progress=progress, agents=[historian()]) as h:
        client, settings = h.client, h.stead_settings

        # stead
        wid = f"history-stead-{uuid.uuid4().hex[:8]}"
        start = await client.start_workflow(
            WORKFLOW_TYPE, ConversationStart(agent=AGENT, max_history_events=max_history_events),
            id=wid, task_queue=settings.temporal.task_queue, result_type=ConversationResult)
        conv = client.get_workflow_handle(wid, result_type=ConversationResult)

        async def stead_say(handle: Any, text: str) -> None:
            t: TurnOutcome = await handle.execute_update("say", SayInput(text=text),
                                                         result_type=TurnOutcome)
            if t.status != "completed":
                raise RuntimeError(f"turn {t.turn} {t.status}: {t.error}")

        progress(f"stead: {turns} turns, {tool_bytes:,}-byte tool output each")
        s = out["stead"]
        await _drive("stead", conv, turns, tool_bytes, s, stead_say, progress)
        chain = await _run_chain(client, wid, start.first_execution_run_id or "")
        s.runs = len(chain)
        s.per_turn = _attribute(chain, s.turns_done)
        for k in range(1, s.turns_done + 1):
            child = await client.get_workflow_handle(f"{wid}/turn-{k}").fetch_history()
            s.per_turn[k - 1] += sum(len(e.SerializeToString()) for e in child.events)
        await conv.signal("end")

        # naive
        queue = f"history-naive-{uuid.uuid4().hex[:8]}"
        worker = Worker(client, task_queue=queue, workflows=[NaiveConversationWorkflow],
                        activities=[naive_model, naive_fetch],
                        workflow_runner=SandboxedWorkflowRunner(
                            restrictions=SandboxRestrictions.default.with_passthrough_modules(
                                *PASSTHROUGH, "bench")))
        async with worker:
            nid = f"history-naive-{uuid.uuid4().hex[:8]}"
            nstart = await client.start_workflow(NaiveConversationWorkflow.run, id=nid,
                                                 task_queue=queue)

            async def naive_say(handle: Any, text: str) -> None:
                await handle.execute_update("say", NaiveSay(text=text), result_type=str)

            progress(f"naive: {turns} turns, {tool_bytes:,}-byte tool output each")
            n = out["naive"]
            await _drive("naive", client.get_workflow_handle(nid), turns, tool_bytes, n,
                         naive_say, progress)
            if n.broke_at is not None:
                n.why = await _why_stuck(client, nid) + f" (client saw {n.why})"
            nchain = await _run_chain(client, nid, nstart.first_execution_run_id or "")
            n.per_turn = _attribute(nchain, n.turns_done + (1 if n.broke_at else 0))
            with_failed = n.per_turn
            n.per_turn = with_failed[:n.turns_done]
            n.total_bytes = sum(with_failed)
            try:
                await client.get_workflow_handle(nid).terminate("benchmark done")
            except Exception:  # already terminated by the server (the history limit)
                pass
    for r in out.values():
        if r.total_bytes == 0:
            r.total_bytes = sum(r.per_turn)
        r.slope = _slope(r.per_turn)
        r.at = {k: r.per_turn[k - 1] for k in (*MARKS, r.turns_done)
                if 1 <= k <= len(r.per_turn)}
    return out


def print_table(res: dict[str, SystemHistory], turns: int, tool_bytes: int) -> None:
    marks = sorted({k for r in res.values() for k in r.at})
    print(f"\nhistory bytes added per turn ({turns} turns, {tool_bytes:,}-byte tool output "
          f"per turn)")
    print(f"{'turn':>6} " + " ".join(f"{name:>14}" for name in res))
    for k in marks:
        cells = [f"{r.at[k]:>14,}" if k in r.at else f"{'-':>14}" for r in res.values()]
        print(f"{k:>6} " + " ".join(cells))
    for name, r in res.items():
        print(f"{name}: {r.turns_done} turns in {r.seconds:.0f}s, {r.runs} run(s), "
              f"{r.total_bytes:,} history bytes in all; slope {r.slope:+,.1f} bytes/turn "
              f"per turn" + (f"; broke at turn {r.broke_at}: {r.why}" if r.broke_at else ""))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--tool-bytes", type=int, default=20_000)
    ap.add_argument("--max-history-events", type=int, default=1000,
                    help="stead's continue-as-new threshold (events per run)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.turns < 1 or args.tool_bytes < 1:
        ap.error("--turns and --tool-bytes must be positive")
    res = asyncio.run(run_history_bench(args.turns, args.tool_bytes,
                                        max_history_events=args.max_history_events,
                                        progress=lambda m: print(m, file=sys.stderr)))
    print_table(res, args.turns, args.tool_bytes)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": "python -m bench.history " + " ".join(argv or sys.argv[1:]),
            "turns": args.turns, "tool_bytes": args.tool_bytes,
            "machine": machine_details(),
            "systems": {k: asdict(v) for k, v in res.items()}}, indent=2, default=str))


if __name__ == "__main__":
    main()
