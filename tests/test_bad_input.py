"""Bad input from every side: raw JSON from the ``temporal`` CLI, unknown agents, a model that
gets tool calls wrong or never stops, and bad settings. Each must end cleanly and say why."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import Message, ModelTurn, RunRequest, RunResult, ToolCall, ToolSchema
from stead.errors import SettingsError
from stead.integrations.llm import FunctionModel, call, raw_call
from stead.settings import Settings, load_settings
from stead.stack.embedded import find_binary
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

# ---------------------------------------------------------------------------- temporal CLI


async def temporal_start(settings: Settings, workflow_id: str, payload: str) -> None:
    """``temporal workflow start`` with a raw JSON input, as an operator would type it."""
    assert settings.temporal.address is not None
    proc = await asyncio.create_subprocess_exec(
        str(find_binary("temporal")), "workflow", "start", "--type", "AgentWorkflow",
        "--task-queue", settings.temporal.task_queue, "--address", settings.temporal.address,
        "--namespace", settings.temporal.namespace, "--workflow-id", workflow_id,
        "--input", payload,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (out + err).decode()


async def test_raw_json_run_request_from_the_temporal_cli_completes(
        client: Client, settings: Settings) -> None:
    """The JSON contract: a hand-written RunRequest is a valid workflow input."""
    wid = f"cli-json-{uuid.uuid4().hex[:8]}"
    await temporal_start(settings, wid,
                         json.dumps({"agent": "ops", "input": "is auth-service healthy?"}))

    result = await asyncio.wait_for(
        client.get_workflow_handle(wid, result_type=RunResult).result(), timeout=60)

    assert result.status == "completed"
    assert result.answer is not None and result.answer.startswith("auth-service is healthy")
    desc = await client.get_workflow_handle(wid).describe()
    # The workflow tags CLI-started runs itself, so the Web UI can list them by agent.
    assert desc.typed_search_attributes.get(SearchAttributeKey.for_keyword("SteadAgent")) == "ops"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"agent": "ops"}, "input"),
        ({"agent": 5, "input": "is auth-service healthy?"}, "agent"),
        ({"agent": "ops", "input": "is auth-service healthy?", "priority": "high"}, "priority"),
        ({"agent": "ops", "input": ""}, "input"),
        ({"agent": "ops", "input": "x", "max_steps": 0}, "max_steps"),
    ],
    ids=["missing-input", "agent-not-a-string", "unknown-field", "empty-input", "zero-steps"],
)
async def test_malformed_run_request_fails_the_workflow_promptly_naming_the_field(
        client: Client, settings: Settings, payload: dict[str, object], field: str) -> None:
    """A bad payload is a failed run with a readable reason, not a workflow task retried
    forever (which would leave the run 'Running' with nothing to show)."""
    wid = f"cli-bad-{uuid.uuid4().hex[:8]}"
    await temporal_start(settings, wid, json.dumps(payload))
    handle = client.get_workflow_handle(wid, result_type=RunResult)

    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), timeout=20)

    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert field in cause.message
    assert "validation error" in cause.message
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def test_unknown_agent_fails_the_run_listing_known_agents(
        client: Client, settings: Settings, ledger: Ledger) -> None:
    handle = await start_run(client, RunRequest(agent="billing", input="refund order 42"),
                             temporal=settings.temporal)

    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), timeout=20)

    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnknownAgent"
    assert cause.message == "unknown agent 'billing'; this worker serves: ops"
    assert cause.non_retryable
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
    assert (await ledger.trail(handle.id)).runs == []


# ---------------------------------------------------------------------------- model mistakes


class Lookup(BaseModel):
    key: str = Field(min_length=1)
    count: int = Field(1, ge=1, le=10)


class Found(BaseModel):
    value: str


@tool
async def lookup(args: Lookup, ctx: ToolContext) -> Found:
    """Look a key up."""
    return Found(value=f"{args.key}={args.count}")


class Recorder:
    """A model that plays ``turns`` (by assistant-turn count) and keeps every transcript."""

    def __init__(self, turns: Sequence[ModelTurn]) -> None:
        self.turns = list(turns)
        self.seen: list[list[Message]] = []
        self.model = FunctionModel(self._next, name="recorder")

    def _next(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        self.seen.append(list(messages))
        k = sum(1 for m in messages if m.role == "assistant")
        return self.turns[min(k, len(self.turns) - 1)]

    def tool_replies(self) -> list[dict[str, object]]:
        """What the model was told about each tool call, from the last transcript it saw."""
        return [json.loads(m.content or "") for m in self.seen[-1] if m.role == "tool"]


@pytest.fixture
async def model_host(settings: Settings) -> AsyncIterator[tuple[Recorder, WorkerHost]]:
    """An in-process worker serving one agent, ``lookup``, whose model the test scripts."""
    recorder = Recorder([ModelTurn(content="unset")])
    agent = Agent(name="lookup", instructions="Look things up.", tools=[lookup],
                  offline_model=recorder.model, max_steps=12)
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        yield recorder, host


async def run_lookup(host: WorkerHost, settings: Settings, *,
                     max_steps: int | None = None) -> tuple[str, RunResult]:
    assert host.client is not None
    handle = await start_run(host.client,
                             RunRequest(agent="lookup", input="find a", max_steps=max_steps),
                             temporal=settings.temporal)
    return handle.id, await asyncio.wait_for(handle.result(), timeout=60)


@pytest.mark.parametrize(
    ("bad_call", "kind", "says"),
    [
        (raw_call("lookup", '{"key": "a"'), "malformed_arguments", "not valid JSON"),
        (raw_call("lookup", '["a"]'), "malformed_arguments", "must be a JSON object"),
        (call("lookkup", key="a"), "unknown_tool",
         "unknown tool 'lookkup'. Available tools: lookup."),
        (call("lookup", key=5), "invalid_arguments", "key: 5 is not of type 'string'"),
        (call("lookup", count=2), "invalid_arguments", "'key' is a required property"),
        (call("lookup", key="a", count=99), "invalid_arguments",
         "count: 99 is greater than the maximum of 10"),
    ],
    ids=["malformed-json", "not-an-object", "unknown-tool", "wrong-type", "missing-required",
         "out-of-range"],
)
async def test_bad_tool_call_is_rejected_told_to_the_model_and_the_run_completes(
        model_host: tuple[Recorder, WorkerHost], settings: Settings, ledger: Ledger,
        bad_call: ToolCall, kind: str, says: str) -> None:
    recorder, host = model_host
    recorder.turns = [ModelTurn(tool_calls=[bad_call]),
                      ModelTurn(tool_calls=[call("lookup", key="a")]),
                      ModelTurn(content="a is 1")]

    wid, r = await run_lookup(host, settings)

    assert (r.status, r.answer) == ("completed", "a is 1")
    assert r.rejected_calls == 1
    assert [(c.tool, c.status) for c in r.tool_calls] == [(bad_call.name, "rejected"),
                                                          ("lookup", "ok")]
    assert r.tool_calls[0].error is not None and says in r.tool_calls[0].error
    # The model's next turn saw the error, as the reply to the bad call.
    (told, ok) = recorder.tool_replies()
    assert told["error"]["type"] == kind  # type: ignore[index]
    assert says in told["error"]["message"]  # type: ignore[index]
    assert ok == {"ok": True, "tool": "lookup", "result": {"value": "a=1"}, "untrusted": True}
    # The rejection is an audited decision; the tool itself ran once, for the good call.
    trail = await ledger.trail(wid)
    (rejected,) = [d for d in trail.decisions if d.kind == "call_rejected"]
    assert rejected.decision == kind and says in rejected.reason
    assert [a.status for a in trail.tool_attempts] == ["ok"]
    assert await ledger.verify_chain(wid) == []


async def test_two_bad_calls_in_one_turn_are_each_answered(
        model_host: tuple[Recorder, WorkerHost], settings: Settings) -> None:
    recorder, host = model_host
    recorder.turns = [ModelTurn(tool_calls=[raw_call("lookup", "{"), call("nope"),
                                            call("lookup", key="b", count=2)]),
                      ModelTurn(content="b is 2")]

    _, r = await run_lookup(host, settings)

    assert (r.status, r.rejected_calls) == ("completed", 2)
    assert [c.status for c in r.tool_calls] == ["rejected", "rejected", "ok"]
    replies = recorder.tool_replies()
    assert [reply.get("ok") for reply in replies] == [None, None, True]
    # Every proposed call got exactly one reply, matched by call id (OpenAI requires it).
    ids = [c.id for c in recorder.seen[-1][2].tool_calls]
    assert [m.tool_call_id for m in recorder.seen[-1] if m.role == "tool"] == ids


async def test_model_that_never_stops_calling_tools_hits_the_step_budget(
        model_host: tuple[Recorder, WorkerHost], settings: Settings, ledger: Ledger) -> None:
    recorder, host = model_host
    recorder.turns = [ModelTurn(tool_calls=[call("lookup", key="again")])]

    wid, r = await run_lookup(host, settings, max_steps=5)

    assert r.status == "failed"
    assert r.error == "step budget of 5 exhausted before an answer"
    assert r.answer is None
    assert r.steps == 5
    assert r.model_turns == 3 and len(r.tool_calls) == 2
    (row,) = (await ledger.trail(wid)).runs
    assert (row.status, row.steps) == ("failed", 5)
    assert "step budget" in row.error


async def test_budget_exhausted_mid_turn_answers_the_remaining_calls(
        model_host: tuple[Recorder, WorkerHost], settings: Settings) -> None:
    """Calls past the budget do not run, but the transcript stays well-formed."""
    recorder, host = model_host
    recorder.turns = [ModelTurn(tool_calls=[call("lookup", key=k) for k in "abc"])]

    _, r = await run_lookup(host, settings, max_steps=2)

    assert (r.status, r.steps) == ("failed", 2)
    assert [c.arguments for c in r.tool_calls] == [{"key": "a"}]


# ---------------------------------------------------------------------------- settings


def test_bad_port_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_TEMPORAL_PORT", "abc")

    with pytest.raises(SettingsError) as info:
        load_settings()

    assert "STEAD_TEMPORAL_PORT='abc'" in str(info.value)
    assert "integer" in str(info.value)


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_UI_PORT", "70000")
    monkeypatch.setenv("STEAD_LOG_LEVEL", "LOUD")

    with pytest.raises(SettingsError) as info:
        load_settings()

    assert "STEAD_UI_PORT='70000'" in str(info.value)
    assert "STEAD_LOG_LEVEL='LOUD'" in str(info.value)


def test_ecosystem_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example:5432/ledger")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")

    s = load_settings()

    assert s.ledger.database_url == "postgresql://u@db.example:5432/ledger"
    assert s.temporal.address == "temporal.example:7233"
    assert s.models.api_key is not None and s.models.api_key.get_secret_value() == "sk-from-env"
    assert s.models.use_openai


def test_stead_prefixed_name_wins_over_the_ecosystem_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://generic/db")
    monkeypatch.setenv("STEAD_DATABASE_URL", "postgresql://stead/db")

    assert load_settings().ledger.database_url == "postgresql://stead/db"


def test_non_positive_model_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_MODEL_TIMEOUT_SECONDS", "-1")

    with pytest.raises(SettingsError, match="STEAD_MODEL_TIMEOUT_SECONDS='-1'"):
        load_settings()


def test_unset_service_addresses_mean_embedded_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_URL", "TEMPORAL_ADDRESS", "STEAD_DATABASE_URL",
                "STEAD_TEMPORAL_ADDRESS"):
        monkeypatch.delenv(var, raising=False)

    s = load_settings()

    assert (s.ledger.database_url, s.temporal.address) == (None, None)
    assert (s.stack.temporal_port, s.stack.ui_port, s.temporal.task_queue) == (7233, 8233, "stead")
    assert timedelta(seconds=s.models.timeout_seconds) == timedelta(minutes=1)


@pytest.mark.parametrize("quota, says", [
    ({"runs_in_flight": 0}, "runs_in_flight"),
    ({"runs_in_flight": 2, "queue_timeout_seconds": 0}, "queue_timeout_seconds"),
    ({"usd_per_day": "lots"}, "usd_per_day"),
    ({"over_quota": "wait"}, "over_quota"),
    ({"runs_in_flights": 2}, "runs_in_flights"),
], ids=["zero cap", "zero queue timeout", "not a number", "unknown choice", "misspelt"])
def test_a_bad_tenant_quota_names_the_variable_and_the_field(
        monkeypatch: pytest.MonkeyPatch, quota: dict[str, object], says: str) -> None:
    monkeypatch.setenv("STEAD_TENANT_QUOTAS", json.dumps({"acme": quota}))

    with pytest.raises(SettingsError) as info:
        load_settings()

    assert "STEAD_TENANT_QUOTAS" in str(info.value) and says in str(info.value)
