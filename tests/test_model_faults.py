"""A misbehaving model server during real runs: ``OpenAIModel`` (the real ``openai`` SDK) against
``FakeOpenAIServer``, inside a worker on the dev server. Transient faults are retried by
Temporal — each failed attempt visible in the ledger — and a rejected request is not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import ModelCallRow, ModelTurn, RunRequest, RunResult, Trail
from stead.integrations.llm import OpenAIModel, ScriptedModel, call
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.worker import WorkerHost

MODEL = "gpt-4o-mini"
CLIENT_TIMEOUT = 1.0
"""Seconds the SDK waits for one answer; the timeout fault waits longer."""


class Echo(BaseModel):
    text: str


@tool
async def echo(args: Echo, ctx: ToolContext) -> Echo:
    """Repeat the text."""
    return Echo(text=args.text)


SCRIPT = [ModelTurn(tool_calls=[call("echo", call_id="call_echo", text="hello")]),
          ModelTurn(content="the tool said hello")]


@dataclass
class Served:
    server: FakeOpenAIServer
    host: WorkerHost
    settings: Settings

    async def run(self) -> tuple[str, RunResult]:
        assert self.host.client is not None
        handle = await start_run(self.host.client, RunRequest(agent="echo", input="say hello"),
                                 temporal=self.settings.temporal)
        return handle.id, await asyncio.wait_for(handle.result(), timeout=90)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    """A worker whose every model call goes through the SDK to a fake server playing SCRIPT."""
    agent = Agent(name="echo", instructions="Use the echo tool, then answer.", tools=[echo],
                  offline_model=ScriptedModel([ModelTurn(content="offline model used")]))
    async with FakeOpenAIServer.from_model(ScriptedModel(SCRIPT)) as server:
        model = OpenAIModel(model=MODEL, api_key="sk-test", base_url=server.base_url,
                            timeout=CLIENT_TIMEOUT)
        async with WorkerHost(settings, AgentCatalog([agent]), model=model) as host:
            yield Served(server, host, settings)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve(settings) as s:
        yield s


def _attempts(trail: Trail, step: int) -> list[ModelCallRow]:
    return [m for m in trail.model_calls if m.step == step]


@pytest.mark.parametrize(
    ("fault", "error_says"),
    [
        (Fault("server_error"), "model server error 500"),
        (Fault("server_error", status=503), "model server error 503"),
        (Fault("timeout", delay=5), "model call timed out"),
        (Fault("malformed_json"), "malformed model response"),
        (Fault("malformed_json", body="<html>502 Bad Gateway</html>", content_type="text/html"),
         "malformed model response"),
    ],
    ids=["500", "503", "timeout", "truncated-json", "html-page"],
)
async def test_transient_model_fault_is_retried_and_the_run_completes(
        served: Served, ledger: Ledger, fault: Fault, error_says: str) -> None:
    served.server.inject(fault)

    wid, r = await served.run()

    assert (r.status, r.answer) == ("completed", "the tool said hello")
    assert r.model == f"openai:{MODEL}"
    assert r.model_turns == 2 and [c.status for c in r.tool_calls] == ["ok"]
    trail = await ledger.trail(wid)
    first, second = _attempts(trail, 1)
    assert (first.attempt, first.status) == (1, "error")
    assert first.error.startswith("ModelCallError: " + error_says)
    assert (second.attempt, second.status) == (2, "ok")
    assert second.tool_calls[0]["name"] == "echo"
    (answer,) = _attempts(trail, 3)  # step 2 was the tool call
    assert (answer.attempt, answer.status, answer.content) == (1, "ok",
                                                                        "the tool said hello")
    assert len(served.server.requests) == 3
    assert served.server.pending_faults() == 0


async def test_timeout_attempt_ends_at_the_client_timeout(served: Served, ledger: Ledger) -> None:
    """The SDK gives up after its own timeout; the server's slow answer is not waited for."""
    served.server.inject(Fault("timeout", delay=20))

    wid, r = await served.run()

    assert r.status == "completed"
    first, _ = _attempts(await ledger.trail(wid), 1)
    assert CLIENT_TIMEOUT * 1000 <= first.duration_ms < (CLIENT_TIMEOUT + 3) * 1000


async def test_rate_limit_is_retried_after_the_servers_retry_after(
        served: Served, ledger: Ledger) -> None:
    """Retry-After (3 s) beats the retry policy's own first interval (1 s)."""
    served.server.inject(Fault("rate_limit", retry_after=3))

    wid, r = await served.run()

    assert r.status == "completed"
    first, second = _attempts(await ledger.trail(wid), 1)
    assert (first.attempt, first.status, second.attempt, second.status) == \
        (1, "error", 2, "ok")
    assert "rate limited" in first.error
    gap = (second.created_at - first.created_at).total_seconds()
    assert gap >= 2.8, gap


async def test_repeated_faults_use_up_attempts_in_order_then_succeed(
        served: Served, ledger: Ledger) -> None:
    served.server.inject(Fault("server_error", status=502), Fault("malformed_json"),
                         Fault("rate_limit", retry_after_ms=200))

    wid, r = await served.run()

    assert r.status == "completed"
    rows = _attempts(await ledger.trail(wid), 1)
    assert [(m.attempt, m.status) for m in rows] == [(1, "error"), (2, "error"),
                                                          (3, "error"), (4, "ok")]
    assert ["502" in rows[0].error, "malformed" in rows[1].error,
            "rate limited" in rows[2].error] == [True, True, True]


async def test_model_fault_that_outlasts_the_attempts_fails_the_run(
        settings: Settings, ledger: Ledger) -> None:
    """Retries are bounded by settings.models.max_attempts: that many errors fail the run."""
    async with serve(settings.replace(model_max_attempts=3)) as served:
        served.server.inject(*[Fault("server_error")] * 3)

        wid, r = await served.run()

        assert served.server.pending_faults() == 0 and len(served.server.requests) == 3
    assert r.status == "failed"
    assert r.error is not None and r.error.startswith("model call failed: model server error 500")
    rows = _attempts(await ledger.trail(wid), 1)
    assert [(m.attempt, m.status) for m in rows] == [(1, "error"), (2, "error"),
                                                          (3, "error")]
    (row,) = (await ledger.trail(wid)).runs
    assert row.status == "failed"


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_rejected_model_request_is_not_retried_and_fails_the_run(
        served: Served, ledger: Ledger, status: int) -> None:
    served.server.inject(Fault("client_error", status=status, message="Incorrect API key"))

    wid, r = await served.run()

    assert r.status == "failed"
    assert r.error is not None
    assert r.error.startswith(f"model call failed: model request rejected ({status})")
    assert "Incorrect API key" in r.error
    assert r.model_turns == 0 and r.tool_calls == []
    (only,) = (await ledger.trail(wid)).model_calls
    assert (only.attempt, only.status) == (1, "error")
    assert len(served.server.requests) == 1
    (row,) = (await ledger.trail(wid)).runs
    assert row.status == "failed" and f"({status})" in row.error


async def test_malformed_tool_arguments_from_the_server_go_back_to_the_model(
        served: Served, ledger: Ledger) -> None:
    """A 200 whose tool call carries broken JSON is a model mistake, not a transport fault:
    no retry, the call is rejected and the next request tells the model why."""
    served.server.inject(Fault("bad_tool_arguments", arguments='{"text": "hel'))

    wid, r = await served.run()

    assert (r.status, r.answer) == ("completed", "the tool said hello")
    assert r.rejected_calls == 1
    assert [c.status for c in r.tool_calls] == ["rejected"]
    assert r.tool_calls[0].tool == "echo"
    # Request 2 carries the assistant's broken call, its text inside a JSON object (strict
    # servers refuse a transcript with arguments they cannot parse; the fake does too), and
    # the error reply to it.
    sent = served.server.requests[1]["messages"]
    broken = sent[2]["tool_calls"][0]
    assert broken["function"] == {"name": "echo",
                                  "arguments": '{"unparsed_arguments": "{\\"text\\": \\"hel"}'}
    assert json.loads(broken["function"]["arguments"]) == {"unparsed_arguments": '{"text": "hel'}
    reply = sent[3]
    assert reply["role"] == "tool" and reply["tool_call_id"] == broken["id"]
    error = json.loads(reply["content"])["error"]
    assert error["type"] == "malformed_arguments"
    assert "not valid JSON" in error["message"]
    rows = (await ledger.trail(wid)).model_calls
    assert [(m.step, m.attempt, m.status) for m in rows] == [(1, 1, "ok"), (3, 1, "ok")]


async def test_unknown_tool_from_the_server_goes_back_to_the_model_with_the_tool_list(
        served: Served) -> None:
    served.server.inject(Fault("unknown_tool", tool_name="delete_everything"))

    _, r = await served.run()

    assert r.status == "completed" and r.rejected_calls == 1
    reply = served.server.requests[1]["messages"][3]
    error = json.loads(reply["content"])["error"]
    assert error == {"type": "unknown_tool",
                     "message": "unknown tool 'delete_everything'. Available tools: echo."}
