"""Tokens streamed out of durable runs, against the real stack: a worker whose model is the real
``openai`` SDK streaming from ``FakeOpenAIServer`` (word-sized chunks, a little apart), the
token stream in PostgreSQL, ``GET /v1/runs/{workflow_id}/events`` over a real uvicorn server,
and ``stead run --stream`` as a subprocess.

What these pin: the deltas arrive in order and add up to exactly the message the ledger
records; a reader that reconnects with ``Last-Event-ID`` loses and repeats nothing; a model
call retried after its stream broke starts its message again, said so (``restart``); a run is
only ever streamed to its own tenant; the publisher batches a token storm into few rows and
never lets a credential split across deltas into a row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from _cli import STEAD, cli_env
from pydantic import BaseModel, SecretStr

from stead.agents.refund import RefundWorld, refund_agent
from stead.api import ApiServer, Role, create_app, issue_token
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import ModelTurn, RunRef
from stead.integrations.llm import ModelClient, OpenAIModel, ScriptedModel, call
from stead.integrations.openai_responses import OpenAIResponsesModel
from stead.security.secrets import Redactor
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.streaming import Cursor, ResultEvent, StreamListener, TurnPublisher, follow_run
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.worker import WorkerHost

SECRET = "stream-test-secret-" + "x" * 40
MODEL = "gpt-4o-mini"
THINKING = "Let me look that up with the echo tool before I answer you."
ANSWER = ("The echo tool said hello, so the line to the tool is fine and it answers in "
          "time; nothing else needs doing today, and I will stop here.")
Json = Any
Event = tuple[str, str | None, Json]
"""(event name, id, data) as read off the wire."""


class Echo(BaseModel):
    text: str


@tool
async def echo(args: Echo, ctx: ToolContext) -> Echo:
    """Repeat the text."""
    return Echo(text=args.text)


SCRIPT = [ModelTurn(content=THINKING, tool_calls=[call("echo", call_id="call_1", text="hello")]),
          ModelTurn(content=ANSWER)]


# ---------------------------------------------------------------------------- the scene


@dataclass
class Scene:
    settings: Settings
    server: FakeOpenAIServer
    host: WorkerHost
    api: ApiServer
    http: httpx.AsyncClient

    async def start(self, tenant: str, *, agent: str = "echo", text: str = "say hello") -> str:
        r = await self.http.post("/v1/runs", json={"agent": agent, "input": text},
                                 headers=auth(tenant, "requester"))
        assert r.status_code == 201, r.text
        wid: str = r.json()["workflow_id"]
        return wid


def auth(tenant: str, *roles: Role) -> dict[str, str]:
    token = issue_token(SECRET, sub="alice", tenant=tenant, roles=roles or ("requester",),
                        ttl=timedelta(minutes=10))
    return {"Authorization": f"Bearer {token}"}


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def scene(settings: Settings) -> AsyncIterator[Scene]:
    async with _scene(settings, wire="chat") as s:
        yield s


@pytest.fixture
async def responses_scene(settings: Settings) -> AsyncIterator[Scene]:
    """The scene with the model on OpenAI's Responses API (``OpenAIResponsesModel``)."""
    async with _scene(settings, wire="responses") as s:
        yield s


@asynccontextmanager
async def _scene(settings: Settings, *, wire: Literal["chat", "responses"]
                 ) -> AsyncIterator[Scene]:
    settings = settings.replace(api_secret=SecretStr(SECRET))
    agent = Agent(name="echo", instructions="Use the echo tool, then answer.", tools=[echo],
                  offline_model=ScriptedModel([ModelTurn(content="offline")]))
    async with FakeOpenAIServer.from_model(ScriptedModel(SCRIPT), chunk_delay=0.02) as server:
        model: ModelClient = (
            OpenAIModel(model=MODEL, api_key="sk-test", base_url=server.base_url)
            if wire == "chat" else
            OpenAIResponsesModel(model=MODEL, api_key="sk-test", base_url=server.base_url))
        catalog = AgentCatalog([agent])
        async with WorkerHost(settings, catalog, model=model) as host:
            app = create_app(settings, client=host.client, poll_seconds=0.2)
            async with ApiServer(app, host="127.0.0.1", port=0) as api, \
                    httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                yield Scene(settings, server, host, api, http)


async def read_events(http: httpx.AsyncClient, workflow_id: str, headers: dict[str, str], *,
                      last_event_id: str | None = None, stop_after: int | None = None,
                      within: float = 60) -> list[Event]:
    """The run's events until the stream ends (or after ``stop_after`` token events, when
    the reader hangs up)."""
    h = dict(headers)
    if last_event_id is not None:
        h["Last-Event-ID"] = last_event_id
    got: list[Event] = []
    tokens = 0
    async with asyncio.timeout(within), \
            http.stream("GET", f"/v1/runs/{workflow_id}/events", headers=h) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        data: list[str] = []
        name, id_ = "message", None
        async for line in r.aiter_lines():
            if line == "":
                if data:
                    got.append((name, id_, json.loads("\n".join(data))))
                    tokens += name == "token"
                    if stop_after is not None and tokens >= stop_after:
                        return got
                name, id_, data = "message", None, []
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("id: "):
                id_ = line.removeprefix("id: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
    return got


def of(events: list[Event], name: str) -> list[Json]:
    return [d for n, _, d in events if n == name]


def render(tokens: list[Json]) -> dict[int, tuple[int, str]]:
    """What a reader shows per step, following the stream's rules: the latest ``start`` of a
    step begins its message (dropping what came before); ``text`` appends, ``reset``
    replaces, and events of the step's other messages are stale."""
    shown: dict[int, tuple[int, str]] = {}
    ids: dict[int, tuple[int, int]] = {}
    for t in tokens:
        step, attempt = t["step"], t["attempt"]
        key = (attempt, t.get("fallback", 0))
        current = shown.get(step)
        if t["type"] == "start":
            shown[step], ids[step] = (attempt, ""), key
        elif current is not None and ids[step] == key:
            if t["type"] == "text":
                shown[step] = (attempt, current[1] + t["text"])
            elif t["type"] == "reset":
                shown[step] = (attempt, t["text"])
    return shown


# ---------------------------------------------------------------------------- the API stream


async def test_deltas_arrive_in_order_and_add_up_to_the_recorded_answer(
        scene: Scene, ledger: Ledger) -> None:
    t = tenant()
    wid = await scene.start(t)
    events = await read_events(scene.http, wid, auth(t))

    assert events[-1][0] == "result" and [n for n, _, _ in events].count("result") == 1
    result = events[-1][2]
    assert (result["status"], result["result"]["answer"]) == ("completed", ANSWER)
    # Ids grow: each event's cursor is past the one before, in one source and no other.
    cursors = [Cursor.parse(i) for n, i, _ in events if n != "error" and i is not None]
    for a, b in itertools.pairwise(cursors):
        moved = [(x, y) for x, y in ((a.steps, b.steps), (a.decisions, b.decisions),
                                     (a.tokens, b.tokens), (a.done, b.done)) if x != y]
        assert len(moved) == 1 and moved[0][0] < moved[0][1], (a, b)
    assert cursors[-1].done

    tokens = of(events, "token")
    by_call: dict[tuple[int, int], list[Json]] = {}
    for tk in tokens:
        by_call.setdefault((tk["step"], tk["attempt"]), []).append(tk)
    trail = await ledger.trail(wid)
    recorded = {(m.step, m.attempt): m.content for m in trail.model_calls}
    assert set(by_call) == set(recorded) == {(1, 1), (3, 1)}
    for key, seq in by_call.items():
        kinds = [tk["type"] for tk in seq]
        assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"text"}, kinds
        assert "".join(tk["text"] for tk in seq) == recorded[key]
    assert by_call[(1, 1)][-1]["tool_calls"] == ["echo"]
    assert by_call[(1, 1)][0]["model"] == f"openai:{MODEL}"
    assert not any(tk["restart"] for tk in tokens)
    # Streamed, not sent whole: the answer came in several pieces, whole words each.
    pieces = [tk["text"] for tk in by_call[(3, 1)] if tk["type"] == "text"]
    assert len(pieces) >= 2 and all(p.endswith(" ") for p in pieces[:-1]), pieces

    steps = of(events, "step")
    assert [s["index"] for s in steps] == list(range(len(steps)))
    assert [(s["kind"], s["name"]) for s in steps] == [
        ("route", "default"), ("model", MODEL), ("tool", "echo"), ("model", MODEL)]
    # The provider was asked to stream, with usage; the ledger got the usage.
    assert scene.server.requests[0]["stream"] is True
    assert scene.server.requests[0]["stream_options"] == {"include_usage": True}


async def test_resuming_with_last_event_id_loses_and_repeats_nothing(
        scene: Scene, ledger: Ledger) -> None:
    t = tenant()
    wid = await scene.start(t)
    first = await read_events(scene.http, wid, auth(t), stop_after=3)
    resume_at = next(i for n, i, _ in reversed(first) if i is not None)
    rest = await read_events(scene.http, wid, auth(t), last_event_id=resume_at)
    whole = await read_events(scene.http, wid, auth(t))  # afterwards, from the start

    assert not {i for _, i, _ in first} & {i for _, i, _ in rest} - {None}
    for name in ("token", "step", "result"):
        assert of(first, name) + of(rest, name) == of(whole, name), name
    assert render(of(first, "token") + of(rest, "token"))[3] == (1, ANSWER)

    # After the result there is nothing more: 204 tells an EventSource to stop.
    done = await scene.http.get(f"/v1/runs/{wid}/events",
                                headers={**auth(t), "Last-Event-ID": rest[-1][1] or ""})
    assert done.status_code == 204, done.text


async def test_a_model_call_retried_after_its_stream_broke_restarts_its_message(
        scene: Scene, ledger: Ledger) -> None:
    t = tenant()
    scene.server.inject(Fault("broken_stream", chunks=9))
    wid = await scene.start(t)
    events = await read_events(scene.http, wid, auth(t))
    assert events[-1][2]["status"] == "completed", events[-1]

    step1 = [tk for tk in of(events, "token") if tk["step"] == 1]
    first = [tk["type"] for tk in step1 if tk["attempt"] == 1]
    second = [tk for tk in step1 if tk["attempt"] == 2]
    assert first[0] == "start" and first[-1] == "error" and "text" in first, first
    assert "broke off" in step1[len(first) - 1]["error"]
    assert (second[0]["type"], second[0]["restart"]) == ("start", True)
    assert [tk["type"] for tk in second][-1] == "end"
    # A reader that follows the rules shows the message once, as recorded.
    trail = await ledger.trail(wid)
    calls = {(m.step, m.attempt): m for m in trail.model_calls}
    assert (calls[(1, 1)].status, calls[(1, 2)].status) == ("error", "ok")
    assert render(step1)[1] == (2, calls[(1, 2)].content) == (2, THINKING)


# ---------------------------------------------------------------------------- the Responses API


async def test_a_run_over_the_responses_api_streams_deltas_that_add_up_to_the_recorded_answer(
        responses_scene: Scene, ledger: Ledger) -> None:
    """As over chat completions: each model call's text comes in pieces that add up to what
    the ledger records, the first call's function-call name is streamed, and the tool runs."""
    scene = responses_scene
    t = tenant()
    wid = await scene.start(t)
    events = await read_events(scene.http, wid, auth(t))

    result = events[-1][2]
    assert (events[-1][0], result["status"], result["result"]["answer"]) == (
        "result", "completed", ANSWER)
    tokens = of(events, "token")
    by_call: dict[tuple[int, int], list[Json]] = {}
    for tk in tokens:
        by_call.setdefault((tk["step"], tk["attempt"]), []).append(tk)
    trail = await ledger.trail(wid)
    recorded = {(m.step, m.attempt): m.content for m in trail.model_calls}
    assert set(by_call) == set(recorded) == {(1, 1), (3, 1)}
    for key, seq in by_call.items():
        kinds = [tk["type"] for tk in seq]
        assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"text"}, kinds
        assert "".join(tk["text"] for tk in seq) == recorded[key]
    assert by_call[(1, 1)][-1]["tool_calls"] == ["echo"]
    assert by_call[(1, 1)][-1]["finish_reason"] == "tool_calls"
    assert by_call[(1, 1)][0]["model"] == f"openai:{MODEL}"
    assert not any(tk["restart"] for tk in tokens)
    for key in by_call:
        pieces = [tk["text"] for tk in by_call[key] if tk["type"] == "text"]
        assert len(pieces) >= 2 and all(p.endswith(" ") for p in pieces[:-1]), pieces
    # The tool the streamed call named ran, and its result went back to the model.
    steps = of(events, "step")
    assert [(s["kind"], s["name"]) for s in steps] == [
        ("route", "default"), ("model", MODEL), ("tool", "echo"), ("model", MODEL)]
    sent = scene.server.response_requests
    assert [r["stream"] for r in sent] == [True, True]
    outputs = [i for i in sent[1]["input"] if i.get("type") == "function_call_output"]
    assert [(o["call_id"], json.loads(o["output"])["result"]) for o in outputs] == [
        ("call_1", {"text": "hello"})]
    assert not scene.server.requests  # nothing went to chat completions


async def test_a_responses_call_retried_after_its_stream_broke_restarts_its_message(
        responses_scene: Scene, ledger: Ledger) -> None:
    scene = responses_scene
    t = tenant()
    # created, in_progress, the message item added, its content part, then 5 text deltas.
    scene.server.inject(Fault("broken_stream", chunks=9), endpoint="responses")
    wid = await scene.start(t)
    events = await read_events(scene.http, wid, auth(t))
    assert events[-1][2]["status"] == "completed", events[-1]

    step1 = [tk for tk in of(events, "token") if tk["step"] == 1]
    first = [tk["type"] for tk in step1 if tk["attempt"] == 1]
    second = [tk for tk in step1 if tk["attempt"] == 2]
    assert first[0] == "start" and first[-1] == "error" and "text" in first, first
    assert "broke off" in step1[len(first) - 1]["error"]
    assert (second[0]["type"], second[0]["restart"]) == ("start", True)
    assert [tk["type"] for tk in second][-1] == "end"
    trail = await ledger.trail(wid)
    calls = {(m.step, m.attempt): m for m in trail.model_calls}
    assert (calls[(1, 1)].status, calls[(1, 2)].status) == ("error", "ok")
    assert render(step1)[1] == (2, calls[(1, 2)].content) == (2, THINKING)


async def test_approvals_of_a_run_are_events_of_its_stream(settings: Settings,
                                                           tmp_path: Path) -> None:
    """The refund agent's offline planner asks before refunding 300 EUR: the stream says so,
    then says who decided."""
    settings = settings.replace(api_secret=SecretStr(SECRET))
    catalog = AgentCatalog([refund_agent(RefundWorld(tmp_path / "refund-world.sqlite"))])
    t = tenant()
    who = auth(t, "approver", "requester")
    async with WorkerHost(settings, catalog) as host, \
            ApiServer(create_app(settings, client=host.client, poll_seconds=0.2),
                      host="127.0.0.1", port=0) as api, \
            httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        r = await http.post("/v1/runs", headers=who, json={
            "agent": "refund", "input": "Refund €300 on ORD-1005, headphones stopped working"})
        assert r.status_code == 201, r.text
        wid = r.json()["workflow_id"]
        reader = asyncio.create_task(read_events(http, wid, who))
        async with asyncio.timeout(60):
            while True:
                pending = (await http.get("/v1/approvals", headers=who)).json()
                if any(a["workflow_id"] == wid for a in pending):
                    break
                await asyncio.sleep(0.1)
        [a] = [a for a in pending if a["workflow_id"] == wid]
        r = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}", headers=who,
                            json={"approved": True, "note": "ok"})
        assert r.status_code == 200, r.text
        events = await reader

    approvals = of(events, "approval")
    assert [(x["type"], x["approval_id"]) for x in approvals] == [
        ("requested", a["approval_id"]), ("decided", a["approval_id"])]
    assert (approvals[0]["tool"], approvals[0]["arguments"]["amount"]) == ("issue_refund", 300)
    assert (approvals[1]["decision"], approvals[1]["actor"]) == ("approved", "alice")
    assert events[-1][2]["status"] == "completed"


async def test_a_run_streams_to_its_own_tenant_only_and_bad_requests_say_why(
        scene: Scene, ledger: Ledger) -> None:
    mine, theirs = tenant(), tenant()
    wid = await scene.start(mine)
    events = await read_events(scene.http, wid, auth(mine))
    run_id = events[-1][2]["result"] is not None and (await ledger.run_ids(wid))[0]
    assert run_id

    for who, path in ((auth(theirs), f"/v1/runs/{wid}/events"),
                      (auth(mine), "/v1/runs/no-such-run/events")):
        r = await scene.http.get(path, headers=who)
        assert r.status_code == 404, r.text
        body = r.json()["error"]
        assert body["type"] == "not_found" and body["message"].startswith("no run '"), body
    # The rows themselves are scoped too.
    assert await ledger.stream_rows(wid, run_id=run_id, tenant=theirs) == []
    assert await ledger.stream_rows(wid, run_id=run_id, tenant=mine)

    r = await scene.http.get(f"/v1/runs/{wid}/events",
                             headers={**auth(mine), "Last-Event-ID": "yesterday"})
    assert r.status_code == 422, r.text
    assert "Last-Event-ID" in r.json()["error"]["message"]
    r = await scene.http.get(f"/v1/runs/{wid}/events")
    assert r.status_code == 401, r.text


# ---------------------------------------------------------------------------- stead run --stream


async def test_stead_run_stream_shows_the_answer_as_it_is_written_then_the_result(
        scene: Scene, tmp_path: Path) -> None:
    """Read as the command writes: the answer's first words are on screen while its last ones
    are not written yet; then the result, as without --stream."""
    proc = await asyncio.create_subprocess_exec(
        str(STEAD), "run", "echo", "say hello", "--stream", env=cli_env(scene.settings),
        cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    seen = ""
    partial = False
    async with asyncio.timeout(90):
        while chunk := await proc.stdout.read(256):
            seen += chunk.decode()
            partial = partial or ("The echo tool" in seen and "stop here." not in seen)
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, (seen, err)
    assert partial, seen
    assert f"  › {THINKING}\n" in seen and f"  › {ANSWER}\n" in seen, seen
    assert seen.index(f"› {ANSWER}") < seen.index("completed in 3 steps"), seen
    assert f"answer: {ANSWER}" in seen
    assert "step  2  tool     echo" in seen, seen


async def test_stead_run_stream_json_prints_one_event_per_line_the_result_last(
        scene: Scene, tmp_path: Path) -> None:
    from _cli import stead

    done = await stead("run", "echo", "say hello", "--stream", "--json",
                       env=cli_env(scene.settings), cwd=tmp_path)
    assert done.code == 0, done.err
    lines = [json.loads(line) for line in done.out.splitlines()]
    assert {line["event"] for line in lines} >= {"step", "token", "result"}
    assert lines[-1]["event"] == "result"
    assert lines[-1]["data"]["result"]["answer"] == ANSWER
    shown = render([line["data"] for line in lines if line["event"] == "token"])
    assert shown[3] == (1, ANSWER)

    refused = await stead("run", "echo", "x", "--stream", "--no-wait",
                          env=cli_env(scene.settings), cwd=tmp_path)
    assert refused.code == 2 and "--no-wait" in refused.err, refused


# ---------------------------------------------------------------------------- offline models


async def test_an_offline_model_streams_its_answer_as_one_delta(
        worker: WorkerHost, settings: Settings, ledger: Ledger) -> None:
    from stead.client import start_run
    from stead.contracts.models import RunRequest

    assert worker.client is not None
    handle = await start_run(worker.client, RunRequest(agent="ops",
                                                       input="is auth-service healthy?"),
                             temporal=settings.temporal)
    assert settings.ledger.database_url is not None and handle.result_run_id is not None
    async with StreamListener(settings.ledger.database_url) as listener:
        events = [e async for e in follow_run(worker.client, ledger, listener,
                                              workflow_id=handle.id,
                                              run_id=handle.result_run_id, tenant="default")
                  if e is not None]
    result = events[-1].data
    assert isinstance(result, ResultEvent) and result.result is not None
    tokens = [e.data.model_dump() for e in events if e.name == "token"]
    answer_step = max(tk["step"] for tk in tokens)
    texts = [tk["text"] for tk in tokens if tk["step"] == answer_step and tk["type"] == "text"]
    assert texts == [result.result.answer], texts
    assert tokens[0]["model"] == "scripted:ops"
    # Each answer came whole: its rows went in with the call's own record, in one statement
    # (one transaction: the same now()), not through a writer of their own.
    stamps = await ledger.pool.fetch(
        "select c.step, c.created_at = all(array_agg(s.created_at)) as together,"
        " array_agg(s.kind order by s.seq) as kinds"
        " from stead_model_calls c join stead_stream s on s.workflow_id=c.workflow_id"
        "  and s.step=c.step and s.attempt=c.attempt"
        " where c.workflow_id=$1 group by c.step, c.created_at order by c.step", handle.id)
    assert stamps and all(r["together"] for r in stamps), stamps
    assert [list(r["kinds"]) for r in stamps][-1] == ["start", "text", "end"]


# ---------------------------------------------------------------------------- the publisher


def _ref(tenant: str = "default") -> RunRef:
    return RunRef(workflow_id=f"pub-{uuid.uuid4().hex[:10]}", run_id=str(uuid.uuid4()),
                  agent="ops", tenant=tenant, step=1)


async def test_a_token_storm_is_a_few_rows_and_its_text_is_exact(ledger: Ledger) -> None:
    ref = _ref()
    pub = TurnPublisher(ledger, ref, attempt=1)
    pub.begin("m")
    words = [f" w{i}" for i in range(2000)]
    for i, w in enumerate(words):
        pub.text(w)
        if i % 50 == 0:
            await asyncio.sleep(0.001)  # the provider's socket, now and then
    pub.finish(ModelTurn(content="".join(words)))
    await pub.drained()
    rows = await ledger.stream_rows(ref.workflow_id, run_id=ref.run_id, tenant="default",
                                    limit=10_000)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0].kind == "start" and rows[-1].kind == "end"
    assert "".join(r.text for r in rows if r.kind == "text") == "".join(words)
    assert pub.writes < 50 and len(rows) < 50, (pub.writes, len(rows))


async def test_a_credential_split_across_deltas_never_reaches_a_row(ledger: Ledger) -> None:
    key = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zB9dF1hJ"
    red = ledger.redacting(Redactor(known=[("openai_api_key", key)]))
    ref = _ref()
    pub = TurnPublisher(red, ref, attempt=2)
    pub.begin("m")
    text = (f"the key is {key} and the mail ana@example.com, the card 4111 1111 1111 1111 "
            f"and password: hunter2hunter2 done")
    for k in range(0, len(text), 3):
        pub.text(text[k:k + 3])
        await asyncio.sleep(0.005)
    pub.finish(ModelTurn(content=text))
    await pub.drained()
    rows = await ledger.stream_rows(ref.workflow_id, run_id=ref.run_id, tenant="default")
    stored = json.dumps([r.model_dump(mode="json") for r in rows])
    for part in (key, key[:12], key[-12:], "ana@example.com", "4111 1111", "hunter2"):
        assert part not in stored, part
    assert rows[0].data["restart"] is True  # attempt 2: drop what attempt 1 wrote
    shown = render([{"step": 1, "attempt": 2, "type": r.kind, "text": r.text} for r in rows])
    assert shown[1][1] == red.redactor.text(text)
    assert "[REDACTED:secret/openai_api_key]" in shown[1][1]


async def test_an_answer_that_came_whole_is_stored_with_its_call_and_wakes_readers(
        stack: Any, ledger: Ledger) -> None:
    from stead.contracts.models import ModelCallRecord, Usage

    ref = _ref()
    async with StreamListener(stack.database_url) as listener:
        with listener.watch(ref.workflow_id) as mine:
            mine.arm()
            first = TurnPublisher(ledger, ref, attempt=1)
            first.begin("m")  # an earlier, streamed attempt: written by its publisher
            first.fail("broke off")
            await first.drained()
            assert await mine.wait(timeout=10)
            mine.arm()
            again = TurnPublisher(ledger, ref, attempt=2)
            turn = ModelTurn(content="all at once", tool_calls=[call("lookup", q="x")],
                             finish_reason="tool_calls")
            rows = again.end(turn, model="scripted:ops")
            await again.drained()
            assert again.writes == 0  # no writer of its own: the rows are the caller's
            await ledger.record_model_call(ref, ModelCallRecord(
                attempt=2, model="scripted:ops", status="ok", content=turn.content,
                usage=Usage(), duration_ms=1.0), stream=rows)
            assert await mine.wait(timeout=10)
    stored = await ledger.stream_rows(ref.workflow_id, run_id=ref.run_id, tenant="default")
    assert [(r.seq, r.attempt, r.kind) for r in stored] == [
        (1, 1, "start"), (2, 1, "error"), (3, 2, "start"), (4, 2, "text"), (5, 2, "end")]
    assert stored[2].data == {"model": "scripted:ops", "restart": True}
    assert stored[3].text == "all at once" and stored[4].data["tool_calls"] == ["lookup"]
    # Streamed once begun: end() queues the rest for the publisher and hands back nothing.
    streamed = TurnPublisher(ledger, _ref(), attempt=1)
    streamed.begin("m")
    streamed.text("hi")
    assert streamed.end(ModelTurn(content="hi"), model="m") == []
    await streamed.drained()
    assert streamed.writes >= 1


async def test_a_stream_row_the_database_refuses_never_costs_the_call_its_record(
        ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    from stead.contracts.models import ModelCallRecord, Usage
    from stead.storage.ledger import StreamPiece

    ref = _ref()
    bad = [StreamPiece("start"), StreamPiece("bogus", "x")]  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="stead.streaming"):
        await ledger.record_model_call(ref, ModelCallRecord(
            attempt=1, model="m", status="ok", content="kept", usage=Usage(),
            duration_ms=1.0), stream=bad)
    calls = await ledger.pool.fetch(
        "select content from stead_model_calls where workflow_id=$1", ref.workflow_id)
    assert [c["content"] for c in calls] == ["kept"]
    assert await ledger.stream_rows(ref.workflow_id, run_id=ref.run_id, tenant="default") == []
    assert any("not published" in r.getMessage() and "CheckViolation" in r.getMessage()
               for r in caplog.records), caplog.records


async def test_a_listener_wakes_the_readers_of_the_workflow_written_to(
        stack: Any, ledger: Ledger) -> None:
    ref, other = _ref(), _ref()
    async with StreamListener(stack.database_url) as listener:
        with listener.watch(ref.workflow_id) as mine, listener.watch(other.workflow_id) as not_mine:
            mine.arm()
            not_mine.arm()
            pub = TurnPublisher(ledger, ref, attempt=1)
            pub.begin("m")
            pub.finish(ModelTurn(content="hi"))
            await pub.drained()
            assert await mine.wait(timeout=10)
            assert not await not_mine.wait(timeout=0.3)


# ---------------------------------------------------------------------------- model chains


async def test_the_next_model_of_the_chain_restarts_the_message_it_takes_over(
        settings: Settings, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first model's stream breaks off on both its attempts; the second model of the
    agent's chain answers. Each restart says so, the fallback's with ``fallback`` 1, and a
    reader that follows the rules shows the second model's message once."""
    from stead.contracts.models import ModelEndpoint

    monkeypatch.setenv("STEAD_TEST_STREAM_KEY", "sk-stream-test-0123456789abcdef")
    agent_turns = [ModelTurn(content=THINKING), ModelTurn(content=ANSWER)]
    async with FakeOpenAIServer.from_model(ScriptedModel(agent_turns)) as first, \
            FakeOpenAIServer.from_model(ScriptedModel(agent_turns)) as second:
        first.inject(Fault("broken_stream", chunks=6), Fault("broken_stream", chunks=6))
        chain = [ModelEndpoint.model_validate({
            "model": MODEL, "base_url": srv.base_url, "api_key_env": "STEAD_TEST_STREAM_KEY",
            "name": name, "max_attempts": 2}) for srv, name in ((first, "primary"),
                                                                (second, "secondary"))]
        agent = Agent(name="chained", instructions="Answer.", tools=[], models=chain,
                      offline_model=ScriptedModel([ModelTurn(content="offline")]))
        async with WorkerHost(settings, AgentCatalog([agent])) as host:
            assert host.client is not None and settings.ledger.database_url is not None
            from stead.client import start_run
            from stead.contracts.models import RunRequest

            handle = await start_run(host.client, RunRequest(agent="chained", input="hi"),
                                     temporal=settings.temporal)
            assert handle.result_run_id is not None
            async with StreamListener(settings.ledger.database_url) as listener:
                events = [e async for e in follow_run(
                    host.client, ledger, listener, workflow_id=handle.id,
                    run_id=handle.result_run_id, tenant="default") if e is not None]
    result = events[-1].data
    assert isinstance(result, ResultEvent) and result.result is not None
    assert result.result.answer == THINKING
    tokens = [e.data.model_dump() for e in events if e.name == "token"]
    starts = [(t["attempt"], t["fallback"], t["restart"]) for t in tokens
              if t["type"] == "start"]
    assert starts == [(1, 0, False), (2, 0, True), (1, 1, True)], starts
    assert [t["type"] for t in tokens if t["fallback"] == 0][-1] == "error"
    assert render(tokens)[1] == (1, THINKING)
    trail = await ledger.trail(handle.id)
    assert [(m.fallback, m.attempt, m.status) for m in trail.model_calls] == [
        (0, 1, "error"), (0, 2, "error"), (1, 1, "ok")]
