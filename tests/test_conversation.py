"""ConversationWorkflow: turns over time that keep their context, failed turns that do not end
the conversation, continue-as-new that loses nothing, and bad messages refused clearly."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence

import pytest
from _cli import STEAD, cli_env, stead
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import Message, ModelTurn, RunResult, ToolSchema
from stead.conversation import (
    ConversationResult,
    ConversationStart,
    ConversationState,
    SayInput,
    TurnOutcome,
    say,
    start_conversation,
)
from stead.integrations.llm import FunctionModel, ModelCallError, call
from stead.settings import Settings
from stead.storage.blobs import BlobStore
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

Handle = WorkflowHandle[object, ConversationResult]


class Size(BaseModel):
    n: int


class Page(BaseModel):
    body: str


@tool(side_effect="read", idempotent=True)
async def fetch_page(args: Size, ctx: ToolContext) -> Page:
    """Fetch a page of n bytes; its code is at the very end."""
    return Page(body="p" * args.n + f" CODE-{args.n % 1000:03d}")


def _plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
    """A model that can only answer from what it was shown: earlier turns included."""
    assert messages[0].role == "system"  # instructions first, the conversation after them
    users = [m.content or "" for m in messages if m.role == "user"]
    said = users[-1]
    if messages[-1].role == "tool":
        body = json.loads(messages[-1].content or "{}")["result"]["body"]
        return ModelTurn(content=f"fetched {len(body)} bytes")
    if said.startswith("remember "):
        return ModelTurn(content=f"noted {said.removeprefix('remember ')}")
    if said.startswith("fetch "):
        return ModelTurn(tool_calls=[call("fetch_page", n=int(said.split()[1]))])
    if said == "boom":
        raise ModelCallError("the model is down for this one", kind="ModelDown",
                             retryable=False)
    if said == "recall":
        items = [u.removeprefix("remember ") for u in users if u.startswith("remember ")]
        return ModelTurn(content="you told me: " + ", ".join(items))
    if said == "codes?":
        codes = [re.findall(r"CODE-\d+", m.content or "")[-1] for m in messages
                 if m.role == "tool"]
        return ModelTurn(content="codes: " + " ".join(codes))
    return ModelTurn(content=f"turn with {len(users)} user messages")


def _agent() -> Agent:
    return Agent(name="chatter", instructions="Talk; remember what you are told.",
                 tools=[fetch_page], offline_model=FunctionModel(_plan, name="chatter"))


@pytest.fixture
async def chat(settings: Settings) -> AsyncIterator[Client]:
    async with WorkerHost(settings, AgentCatalog([_agent()])) as host:
        assert host.client is not None
        yield host.client


async def _say(h: Handle, text: str) -> TurnOutcome:
    return await asyncio.wait_for(say(h, text), 60)


async def _state(h: Handle) -> ConversationState:
    s: ConversationState = await h.query("state", result_type=ConversationState)
    return s


async def test_a_conversation_keeps_its_context_across_turns(
        chat: Client, settings: Settings, ledger: Ledger) -> None:
    h = await start_conversation(chat, ConversationStart(agent="chatter", user="ann"),
                                 temporal=settings.temporal)
    a1 = await _say(h, "remember apples")
    a2 = await _say(h, "fetch 20123")
    a3 = await _say(h, "remember pears")
    a4 = await _say(h, "recall")
    a5 = await _say(h, "codes?")

    assert [a.turn for a in (a1, a2, a3, a4, a5)] == [1, 2, 3, 4, 5]
    assert a1.answer == "noted apples" and a1.run_id == f"{h.id}/turn-1"
    assert a2.answer == "fetched 20132 bytes"
    assert a4.answer == "you told me: apples, pears"  # turns 1 and 3, seen in turn 4
    assert a5.answer == "codes: CODE-123"  # a 20 KB tool result of turn 2, read in turn 5
    assert len({a.context for a in (a1, a2, a3, a4, a5)}) == 5
    # The stored context holds every turn (tool results by reference, so it stays small).
    said = await BlobStore(ledger.pool).load_manifest(a5.context)
    assert [m.content for m in said if m.role == "user"] == [
        "remember apples", "fetch 20123", "remember pears", "recall", "codes?"]
    assert said[-1].content == "codes: CODE-123"
    # Each turn is a child run carrying the conversation's labels.
    turn4 = chat.get_workflow_handle(a4.run_id, result_type=RunResult)
    assert (await turn4.result()).context == a4.context
    run = (await ledger.trail(a4.run_id)).runs[0]
    assert run.metadata == {"stead.conversation": h.id, "stead.turn": "4"}
    assert run.user_id == "ann"
    # History carries digests, never the 20 KB page.
    history = b"".join(e.SerializeToString() for e in (await h.fetch_history()).events)
    assert b"p" * 1000 not in history

    st = await _state(h)
    assert (st.status, st.turns, st.completed, st.failed, st.context) == (
        "open", 5, 5, 0, a5.context)
    await h.signal("end")
    done = await asyncio.wait_for(h.result(), 60)
    assert (done.reason, done.turns, done.context) == ("ended", 5, a5.context)


async def test_a_failed_turn_is_reported_and_the_conversation_goes_on(
        chat: Client, settings: Settings) -> None:
    h = await start_conversation(chat, ConversationStart(agent="chatter"),
                                 temporal=settings.temporal)
    await _say(h, "remember keys")
    bad = await _say(h, "boom")
    after = await _say(h, "recall")

    assert bad.status == "failed" and "the model is down for this one" in (bad.error or "")
    assert after.status == "completed" and after.answer == "you told me: keys"
    assert after.turn == 3
    st = await _state(h)
    assert (st.turns, st.completed, st.failed) == (3, 2, 1)
    await h.signal("end")
    assert (await asyncio.wait_for(h.result(), 60)).failed == 1


async def test_continue_as_new_keeps_turns_context_and_queued_messages(
        chat: Client, settings: Settings) -> None:
    """A tiny history threshold makes the conversation continue-as-new every turn or two;
    says sent all at once, and messages signalled in between, are each answered once, in
    order, and the context reaches across every run."""
    h = await start_conversation(chat, ConversationStart(agent="chatter", max_history_events=20),
                                 temporal=settings.temporal)
    first = await _say(h, "remember one")
    await h.signal("message", SayInput(text="remember two"))
    await h.signal("message", SayInput(text="remember three"))
    burst = await asyncio.gather(*(_say(h, f"remember b{i}") for i in range(4)))
    await h.signal("message", SayInput(text="remember four"))
    last = await _say(h, "recall")

    assert first.turn == 1
    assert sorted(b.turn for b in burst) == sorted({b.turn for b in burst})  # once each
    told = (last.answer or "").removeprefix("you told me: ").split(", ")
    assert told[:3] == ["one", "two", "three"]
    assert sorted(told[3:7]) == ["b0", "b1", "b2", "b3"]
    assert told[7:] == ["four"]
    assert last.turn == 9
    st = await _state(h)
    assert st.continued_as_new >= 2
    assert (st.turns, st.completed, st.queued, st.context) == (9, 9, 0, last.context)
    assert st.history_events < 60
    await h.signal("end")
    done = await asyncio.wait_for(h.result(), 60)
    assert (done.turns, done.continued_as_new) == (9, st.continued_as_new)


async def test_a_say_with_a_bad_payload_is_refused_clearly(
        chat: Client, settings: Settings) -> None:
    h = await start_conversation(chat, ConversationStart(agent="chatter"),
                                 temporal=settings.temporal)
    with pytest.raises(WorkflowUpdateFailedError) as missing:
        await h.execute_update("say", result_type=TurnOutcome)
    with pytest.raises(WorkflowUpdateFailedError) as blank:
        await h.execute_update("say", {"text": "   "}, result_type=TurnOutcome)
    with pytest.raises(WorkflowUpdateFailedError) as wrong:
        await h.execute_update("say", {"txt": "hello"}, result_type=TurnOutcome)

    assert 'say needs a payload: {"text": "..."}' in str(missing.value.cause)
    assert "say needs some text" in str(blank.value.cause)
    assert "text" in str(wrong.value.cause) and "Field required" in str(wrong.value.cause)
    ok = await _say(h, "hello")
    assert ok.turn == 1 and ok.status == "completed"  # refused says took no turn
    await h.signal("end")
    await asyncio.wait_for(h.result(), 60)
    with pytest.raises(RPCError, match=r"already completed"):
        await _say(h, "anyone?")


async def test_an_idle_conversation_closes_after_its_timeout(
        chat: Client, settings: Settings) -> None:
    h = await start_conversation(chat, ConversationStart(agent="chatter", idle_timeout_seconds=1),
                                 temporal=settings.temporal)
    await _say(h, "remember once")
    done = await asyncio.wait_for(h.result(), 60)
    assert (done.reason, done.turns) == ("idle", 1)


async def test_stead_chat_talks_and_continues_a_conversation_by_id(
        chat: Client, settings: Settings) -> None:
    env = cli_env(settings)
    cid = f"cli-chat-{settings.temporal.task_queue}"
    first = await stead("chat", "chatter", "--id", cid, "-m", "remember figs",
                        "-m", "fetch 3000", "--json", env=env)
    assert first.code == 0, first.err
    got = first.json()
    assert got["conversation_id"] == cid and got["ended"] is False
    assert [t["answer"] for t in got["turns"]] == ["noted figs", "fetched 3009 bytes"]

    other = await stead("chat", "refund", "--id", cid, "-m", "hi", env=env)
    assert other.code == 2 and "talks to agent 'chatter', not 'refund'" in other.err

    later = await stead("chat", "chatter", "--id", cid, "-m", "recall", "--end", env=env)
    assert later.code == 0, later.err
    assert "you told me: figs" in later.out and "turn 3: completed" in later.out
    done = await asyncio.wait_for(
        chat.get_workflow_handle(cid, result_type=ConversationResult).result(), 60)
    assert (done.reason, done.turns) == ("ended", 3)


async def test_stead_chat_reads_lines_until_end(chat: Client, settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(STEAD), "chat", "chatter", "--id", f"cli-lines-{settings.temporal.task_queue}",
        env=cli_env(settings), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(
        proc.communicate(b"remember kiwis\n\nrecall\n/end\nnever said\n"), 90)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "noted kiwis" in text and "you told me: kiwis" in text
    assert "never said" not in text and "turn 3" not in text
