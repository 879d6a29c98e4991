"""Fuzzed tool arguments: a model proposes calls with any argument text (objects of right and
wrong fields, any JSON, text that is not JSON) and any tool name, in a real run.

Properties, for every proposed call:

- the gate's verdict decides: a call it accepts runs once, with exactly the validated
  arguments; a call it rejects never runs, the model is told why, and the ledger records a
  ``call_rejected`` decision with the same kind and reason (as the ledger stores text:
  personal data redacted);
- the run completes (the model answers after hearing back), no tool call is left claimed
  but unfinished, the audit chain verifies, and the worker goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import pytest
from _fuzz import bound, fuzz, json_values, near, run_property, text
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from temporalio.service import RPCError

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import Message, ModelTurn, RunRequest, RunResult, ToolCall, ToolSchema
from stead.guardrails.calls import check_call
from stead.integrations.llm import FunctionModel
from stead.security.secrets import Redactor
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost


class Lookup(BaseModel):
    key: str = Field(min_length=1, max_length=20)
    count: int = Field(1, ge=1, le=10)
    mode: Literal["fast", "full"] = "fast"
    tags: list[str] = Field(default_factory=list, max_length=3)


class NoArgs(BaseModel):
    pass


class Found(BaseModel):
    value: str


class Calls:
    """What the tools really received, per run (the test's outside world)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def record(self, ctx: ToolContext, name: str, args: BaseModel) -> None:
        self.seen.setdefault(ctx.workflow_id, []).append((name, args.model_dump()))


class Scripts:
    """The model: each run's first turn is the calls the test put under its request text;
    then it answers."""

    def __init__(self) -> None:
        self.turns: dict[str, list[ToolCall]] = {}
        self.model = FunctionModel(self._next, name="fuzz:tools")

    def _next(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if any(m.role == "assistant" for m in messages):
            return ModelTurn(content="done")
        request = next(m.content or "" for m in messages if m.role == "user")
        return ModelTurn(tool_calls=self.turns[request])


@pytest.fixture
async def fuzz_agent(settings: Settings) -> AsyncIterator[tuple[WorkerHost, Scripts, Calls]]:
    calls, scripts = Calls(), Scripts()

    @tool(side_effect="read", risk="low")
    async def lookup(args: Lookup, ctx: ToolContext) -> Found:
        """Look a key up."""
        calls.record(ctx, "lookup", args)
        return Found(value=f"{args.key}={args.count}")

    @tool(side_effect="read", risk="low")
    async def nothing(args: NoArgs, ctx: ToolContext) -> Found:
        """Take no arguments."""
        calls.record(ctx, "nothing", args)
        return Found(value="ok")

    agent = Agent(name="fuzz", instructions="Use the tools.", tools=[lookup, nothing],
                  offline_model=scripts.model, max_steps=12)
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        yield host, scripts, calls


argument_texts = (
    near({"key": "a", "count": 2},
         {"key": st.sampled_from(["a", "", "x" * 21]) | text | json_values,
          "count": st.integers(-2, 12) | json_values,
          "mode": st.sampled_from(["fast", "full", "FAST"]) | json_values,
          "tags": st.lists(text, max_size=4) | json_values}).map(json.dumps)
    | json_values.map(json.dumps)
    | text)
"""What a model may write as arguments: near-valid objects, any JSON, or not JSON at all."""


proposals = st.lists(
    st.tuples(st.sampled_from(["lookup", "nothing"]) | text,
              argument_texts),
    min_size=1, max_size=3)


async def test_fuzzed_tool_arguments_are_gated_audited_and_never_half_run(
        fuzz_agent: tuple[WorkerHost, Scripts, Calls], settings: Settings,
        ledger: Ledger) -> None:
    host, scripts, calls = fuzz_agent
    assert host.client is not None
    client = host.client
    plans = {name: host.catalog["fuzz"].registry[name].plan() for name in ("lookup", "nothing")}
    loop = asyncio.get_running_loop()
    redactor = Redactor.from_settings(settings)

    def stored(text: str) -> str:
        """Text as the ledger keeps it: redacted (personal data, secrets), NUL as U+FFFD."""
        return redactor.text(text).replace("\x00", "\ufffd")

    async def check(proposed: list[tuple[str, str]]) -> str:
        case = f"case {uuid.uuid4().hex}"
        turn = [ToolCall(id=f"c{i}", name=name, arguments=args)
                for i, (name, args) in enumerate(proposed)]
        scripts.turns[case] = turn
        handle = await start_run(client, RunRequest(agent="fuzz", input=case),
                                 temporal=settings.temporal)
        try:
            result: RunResult = await asyncio.wait_for(handle.result(), 20)  # takes < 2 s
        except TimeoutError:
            await handle.terminate("fuzz example over: hung")
            raise
        assert (result.status, result.answer) == ("completed", "done"), result

        verdicts = [check_call(c, plans) for c in turn]
        trail = await ledger.trail(handle.id)
        rejected = [d for d in trail.decisions if d.kind == "call_rejected"]
        assert [(r.call_id, r.tool) for r in result.tool_calls] == [(c.id, c.name) for c in turn]
        ran: list[tuple[str, dict[str, Any]]] = []
        for c, v, record in zip(turn, verdicts, result.tool_calls, strict=True):
            if v.arguments is not None:
                assert (record.status, record.arguments) == ("ok", v.arguments), record
                ran.append((c.name, v.arguments))
            else:
                assert (record.status, record.error) == ("rejected", v.error), record
                assert any((d.decision, d.reason, d.data["tool"])
                           == (v.kind, stored(v.error or ""), stored(c.name))
                           for d in rejected), (v, rejected)
        assert len(rejected) == sum(v.arguments is None for v in verdicts)
        # Each accepted call ran once, with its validated arguments (plus model defaults).
        seen = calls.seen.get(handle.id, [])
        assert [name for name, _ in seen] == [name for name, _ in ran]
        for (_, got), (name, sent) in zip(seen, ran, strict=True):
            model = Lookup if name == "lookup" else NoArgs
            assert got == model.model_validate(sent).model_dump()
        assert len(trail.tool_calls) == len(ran)
        assert {c.status for c in trail.tool_calls} <= {"completed"}
        assert await ledger.verify_chain(handle.id) == []
        return f"{len(ran)} ran, {len(turn) - len(ran)} rejected"

    sync = bound(loop, check)

    @fuzz(12)
    @given(proposals)
    @example([("lookup", '{"key": "a"'), ("lookup", '["a"]'), ("lookkup", '{"key": "a"}')])
    @example([("lookup", '{"key": 5}'), ("lookup", '{"count": 2}'),
              ("lookup", '{"key": "a", "count": 99, "mode": "FAST"}')])
    @example([("nothing", ""), ("nothing", "{}"), ("nothing", '{"x": 1}')])
    @example([("mail bob@example.com", "{}"), ("look\x00up", "{")])  # kept redacted, U+FFFD
    @example([("lookup", '{"key": "\\u00e9\\u2028", "tags": ["\\ud83d\\ude00"]}')])
    def prop(proposed: list[tuple[str, str]]) -> None:
        event(sync(proposed))

    await run_property(prop)

    # The worker still serves an ordinary call.
    scripts.turns["good"] = [ToolCall(id="g", name="lookup", arguments='{"key": "k"}')]
    good = await start_run(client, RunRequest(agent="fuzz", input="good"),
                           temporal=settings.temporal)
    assert (await asyncio.wait_for(good.result(), 30)).tool_calls[0].status == "ok"


async def test_a_tool_call_with_a_nul_character_ends(
        fuzz_agent: tuple[WorkerHost, Scripts, Calls], settings: Settings,
        ledger: Ledger) -> None:
    """Found by the fuzzer: NUL in argument text used to make the ledger writes fail on every
    retry (the run then hung in run.finish)."""
    host, scripts, _ = fuzz_agent
    assert host.client is not None
    scripts.turns["nul"] = [ToolCall(id="n", name="lookup", arguments='{"key": "a\\u0000"}'),
                            ToolCall(id="m", name="look\x00up", arguments="{\x00")]
    handle = await start_run(host.client, RunRequest(agent="fuzz", input="nul"),
                             temporal=settings.temporal)
    try:
        result = await asyncio.wait_for(handle.result(), 5)  # a sound run takes < 1 s
    finally:
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")
    assert result.status == "completed"
    assert [c.status for c in result.tool_calls] == ["ok", "rejected"]
    assert await ledger.verify_chain(handle.id) == []


async def test_an_accepted_call_with_a_large_float_keeps_the_audit_chain_intact(
        fuzz_agent: tuple[WorkerHost, Scripts, Calls], settings: Settings,
        ledger: Ledger) -> None:
    host, scripts, _ = fuzz_agent
    assert host.client is not None
    scripts.turns["float"] = [ToolCall(id="f", name="nothing", arguments='{"x": 1e16}')]
    handle = await start_run(host.client, RunRequest(agent="fuzz", input="float"),
                             temporal=settings.temporal)
    result = await asyncio.wait_for(handle.result(), 30)
    assert result.tool_calls[0].status == "ok"
    assert await ledger.verify_chain(handle.id) == []


async def test_a_tool_call_with_half_an_emoji_is_rejected(
        fuzz_agent: tuple[WorkerHost, Scripts, Calls], settings: Settings) -> None:
    host, scripts, _ = fuzz_agent
    assert host.client is not None
    scripts.turns["emoji"] = [ToolCall(id="e", name="lookup", arguments='{"key": "\\ud83d"}')]
    handle = await start_run(host.client, RunRequest(agent="fuzz", input="emoji"),
                             temporal=settings.temporal)
    done = asyncio.ensure_future(handle.result())
    try:
        for _ in range(100):  # a sound run takes < 1 s
            if (await asyncio.wait({done}, timeout=0.1))[0]:
                break
            pending = (await handle.describe()).raw_description.pending_workflow_task
            assert pending.attempt < 2, "the run's workflow task fails on every attempt"
        result = await done
        assert result.tool_calls[0].status == "rejected"
    finally:
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")
        with contextlib.suppress(BaseException):
            await done
