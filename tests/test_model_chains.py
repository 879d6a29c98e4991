"""Per-agent models, fallback chains and the Responses API, in real runs: the real ``openai``
SDK against ``FakeOpenAIServer`` (which records every request and refuses what OpenAI refuses),
inside a worker on the dev server, with the ledger, audit trail, metrics and traces read back.

What these pin: each model's settings reach its requests (and a reasoning model gets what it
takes, never what it refuses), both OpenAI APIs carry a run end to end, a model that is down,
rate limited or too slow hands the turn to the next one, recorded everywhere, and a model
configuration that cannot work stops the worker at start, naming agent, model and field."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, ConfigDict, ValidationError

from stead.activities.model import ModelActivities
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import Tool, ToolContext, tool
from stead.client import start_run
from stead.contracts.models import (
    Message,
    ModelCallRow,
    ModelEndpoint,
    ModelTurn,
    ReasoningItem,
    RunRequest,
    RunResult,
    ToolSchema,
    Trail,
)
from stead.errors import SettingsError, SpecError
from stead.evals.replay import production_replayer
from stead.integrations.llm import ModelCallError, ScriptedModel, call
from stead.integrations.model_endpoints import ModelEndpoints
from stead.integrations.openai_params import chat_parameters, looks_like_reasoning
from stead.integrations.openai_responses import OpenAIResponsesModel
from stead.observability.telemetry import METER_NAME
from stead.observability.tracing import SteadTracing
from stead.settings import Settings, load_settings
from stead.stack.embedded import free_port
from stead.storage.ledger import Ledger
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.worker import WorkerHost

KEY_VAR = "STEAD_TEST_CHAIN_KEY"
KEY = "sk-chain-test-0123456789abcdef"
"""The key the fake servers require; long enough for the redactor to know it."""
CHAT, REASONER = "gpt-4o-mini", "gpt-5-mini"


class Echo(BaseModel):
    """Strict-mode friendly: closed, every field required."""

    model_config = ConfigDict(extra="forbid")
    text: str


def echo_tool(ran: list[str]) -> Tool[Echo, Echo]:
    @tool(name="echo")
    async def echo(args: Echo, ctx: ToolContext) -> Echo:
        """Repeat the text."""
        ran.append(args.text)
        return Echo(text=args.text)
    return echo


SCRIPT = [ModelTurn(tool_calls=[call("echo", call_id="call_echo", text="hello")]),
          ModelTurn(content="the tool said hello")]


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)


def endpoint(server: FakeOpenAIServer | str, model: str = CHAT, **kw: object) -> ModelEndpoint:
    """A model on a fake server (or at a URL), keyed by ``KEY_VAR``."""
    url = server if isinstance(server, str) else server.base_url
    return ModelEndpoint.model_validate({"model": model, "base_url": url,
                                         "api_key_env": KEY_VAR, **kw})


def down_url() -> str:
    """A base URL where nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


@dataclass
class Served:
    host: WorkerHost
    settings: Settings
    ran: list[str]
    servers: list[FakeOpenAIServer] = field(default_factory=list)

    async def run(self, text: str = "say hello") -> tuple[str, RunResult]:
        assert self.host.client is not None
        handle = await start_run(self.host.client, RunRequest(agent="chain", input=text),
                                 temporal=self.settings.temporal)
        return handle.id, await asyncio.wait_for(handle.result(), timeout=120)


@asynccontextmanager
async def fakes(n: int, *, reasoning_models: Sequence[str] = (),
                script: Sequence[ModelTurn] = SCRIPT) -> AsyncIterator[list[FakeOpenAIServer]]:
    """``n`` fake servers playing ``script`` (each picks up at the transcript's turn)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeOpenAIServer.from_model(
            ScriptedModel(list(script)), api_key=KEY, reasoning_models=reasoning_models))
            for _ in range(n)]


@asynccontextmanager
async def serve(settings: Settings, models: Sequence[ModelEndpoint], *,
                host_kw: dict[str, object] | None = None) -> AsyncIterator[Served]:
    ran: list[str] = []
    agent = Agent(name="chain", instructions="Use the echo tool, then answer.",
                  tools=[echo_tool(ran)], models=models,
                  offline_model=ScriptedModel([ModelTurn(content="offline model used")]))
    async with WorkerHost(settings, AgentCatalog([agent]), **(host_kw or {})) as host:  # type: ignore[arg-type]
        yield Served(host, settings, ran)


def calls(trail: Trail, step: int) -> list[tuple[str, int, int, str]]:
    """(endpoint, fallback, attempt, status) of the model calls of ``step``."""
    return [(m.endpoint, m.fallback, m.attempt, m.status)
            for m in trail.model_calls if m.step == step]


def payload_text(node: object) -> str:
    """Every payload of a history (as ``to_json_dict`` gives it), decoded, one per line."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and "metadata" in node:
            return base64.b64decode(node["data"]).decode(errors="replace") + "\n"
        return "".join(payload_text(v) for v in node.values())
    if isinstance(node, list):
        return "".join(payload_text(v) for v in node)
    return ""


def fallbacks(trail: Trail) -> list[tuple[int, str, dict[str, object]]]:
    return [(d.step, d.decision, d.data) for d in trail.decisions if d.kind == "model_fallback"]


# ---------------------------------------------------------------------------- both APIs


async def test_responses_api_carries_a_run_with_reasoning_items_handed_back(
        settings: Settings, ledger: Ledger) -> None:
    """A reasoning model on the Responses API: tools go out as strict function tools, the
    function call and its output travel as items, the model's reasoning comes back with the
    next request (stateless: ``store`` false, encrypted content included), settings it takes
    are sent and the temperature it refuses is not."""
    async with fakes(1, reasoning_models=[REASONER]) as (srv,):
        ep = endpoint(srv, REASONER, api="responses", reasoning_effort="low", temperature=0.2,
                      max_output_tokens=300, parallel_tool_calls=False, strict_tools=True)
        async with serve(settings, [ep]) as served:
            wid, r = await served.run()
        first, second = srv.response_requests
    assert (r.status, r.answer, r.model, r.models) == ("completed", "the tool said hello",
                                                       "openai:gpt-5-mini",
                                                       ["openai:gpt-5-mini"])
    assert r.model_fallbacks == 0 and served.ran == ["hello"] and srv.requests == []
    for body in (first, second):
        assert body["model"] == REASONER and body["store"] is False
        assert body["reasoning"] == {"effort": "low"} and "temperature" not in body
        assert body["include"] == ["reasoning.encrypted_content"]
        assert (body["max_output_tokens"], body["parallel_tool_calls"]) == (300, False)
        (echo,) = body["tools"]
        assert (echo["type"], echo["name"], echo["strict"]) == ("function", "echo", True)
    assert [i.get("role") or i["type"] for i in first["input"]] == ["system", "user"]
    kinds = [i.get("role") or i["type"] for i in second["input"]]
    assert kinds == ["system", "user", "reasoning", "function_call", "function_call_output"]
    reasoning, fn_call, output = second["input"][2:]
    assert reasoning["encrypted_content"].startswith("fake-sealed:")
    assert (fn_call["call_id"], fn_call["name"], json.loads(fn_call["arguments"])) == \
        ("call_echo", "echo", {"text": "hello"})
    assert output["call_id"] == "call_echo" and json.loads(output["output"])["ok"] is True
    trail = await ledger.trail(wid)
    assert calls(trail, 1) == [("openai:gpt-5-mini", 0, 1, "ok")]
    (answer,) = [m for m in trail.model_calls if m.step == 3]
    assert (answer.content, answer.model, answer.endpoint) == \
        ("the tool said hello", REASONER, "openai:gpt-5-mini")


async def test_chat_completions_get_the_declared_settings(settings: Settings) -> None:
    """A chat model on an OpenAI-compatible server: temperature, the output limit under the
    name such servers read (``max_tokens``), parallel tool calls and strict tools."""
    async with fakes(1) as (srv,):
        ep = endpoint(srv, temperature=0.3, max_output_tokens=256, parallel_tool_calls=False,
                      strict_tools=True)
        async with serve(settings, [ep]) as served:
            _, r = await served.run()
    assert (r.status, r.answer, r.models) == ("completed", "the tool said hello",
                                              ["openai:gpt-4o-mini"])
    for body in srv.requests:
        assert (body["temperature"], body["max_tokens"], body["parallel_tool_calls"]) == \
            (0.3, 256, False)
        assert "max_completion_tokens" not in body and "reasoning_effort" not in body
        assert body["tools"][0]["function"]["strict"] is True


async def test_a_reasoning_model_on_chat_completions_gets_effort_and_no_temperature(
        settings: Settings) -> None:
    """The fake answers 400 to ``temperature`` or ``max_tokens`` for a reasoning model, as
    OpenAI does: the run completing says stead sent neither."""
    async with fakes(1, reasoning_models=["o4-mini"]) as (srv,):
        ep = endpoint(srv, "o4-mini", reasoning_effort="high", temperature=0.7,
                      max_output_tokens=500)
        async with serve(settings, [ep]) as served:
            _, r = await served.run()
    assert r.status == "completed"
    for body in srv.requests:
        assert (body["reasoning_effort"], body["max_completion_tokens"]) == ("high", 500)
        assert "temperature" not in body and "max_tokens" not in body


def test_reasoning_models_are_known_by_name_and_openai_gets_the_new_limit_name() -> None:
    assert [looks_like_reasoning(m) for m in (
        "o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5.1", "openai/gpt-5-mini", "gpt-oss-20b",
        "gpt-5-chat-latest", "gpt-4o-mini", "gpt-4.1", "qwen2.5-7b")] == \
        [True] * 7 + [False] * 4
    openai_chat = ModelEndpoint(model=CHAT, max_output_tokens=9, temperature=0.1,
                                base_url="https://api.openai.com/v1")
    assert chat_parameters(openai_chat, []) == {"max_completion_tokens": 9, "temperature": 0.1}
    # Without tools OpenAI refuses parallel_tool_calls: it is left out.
    assert chat_parameters(ModelEndpoint(model=CHAT, parallel_tool_calls=True), []) == {}


# ---------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("failure", ["down", "server_error", "rate_limited", "timeout"])
async def test_the_next_model_answers_when_the_first_fails_and_every_record_says_so(
        settings: Settings, ledger: Ledger, failure: str) -> None:
    """Down (connection refused), 5xx or 429 through all of the first model's attempts, or a
    call slower than its timeout: the turn goes to the next model, with its own attempts.
    The ledger rows, the audit trail, the run's result, the metrics and the spans name the
    model that answered."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracing = SteadTracing.from_settings(settings.telemetry, exporters=[exporter])
    async with fakes(2) as (first, second):
        url: FakeOpenAIServer | str = down_url() if failure == "down" else first
        primary = endpoint(url, name="primary", max_attempts=2, timeout_seconds=1.5)
        if failure == "server_error":
            first.inject(Fault("server_error", status=503), Fault("server_error"))
        elif failure == "rate_limited":
            first.inject(*[Fault("rate_limit", retry_after_ms=100)] * 2)
        elif failure == "timeout":
            primary = primary.model_copy(update={"max_attempts": 1})
            first.inject(Fault("timeout", delay=30))
        secondary = endpoint(second, "gpt-4.1-mini", name="secondary", api="responses")
        provider = SdkMeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        async with serve(settings, [primary, secondary],
                         host_kw={"meter_provider": provider, "tracing": tracing}) as served:
            wid, r = await served.run()
        tried = 2 if failure != "timeout" else 1
        if failure != "down":
            # The first model was asked its attempts' worth for turn 1, then answered turn 2.
            assert len(first.requests) == tried + 1 and first.pending_faults() == 0
        assert len(second.response_requests) == (2 if failure == "down" else 1)
    assert (r.status, r.answer, served.ran) == ("completed", "the tool said hello", ["hello"])
    trail = await ledger.trail(wid)
    failed = [("primary", 0, a, "error") for a in range(1, tried + 1)]
    assert calls(trail, 1) == [*failed, ("secondary", 1, 1, "ok")]
    why = {"down": "ModelUnavailable", "server_error": "ModelServerError",
           "rate_limited": "RateLimited", "timeout": "ModelTimeout"}[failure]
    handovers = [(1, "secondary", {"from": "primary", "to": "secondary", "fallback": 1,
                                   "error": why})]
    if failure == "down":  # still down for the answer's turn
        assert calls(trail, 3) == [*failed, ("secondary", 1, 1, "ok")]
        assert (r.model, r.models, r.model_fallbacks) == ("secondary", ["secondary"], 2)
        handovers.append((3, *handovers[0][1:]))  # type: ignore[arg-type]
    else:
        assert calls(trail, 3) == [("primary", 0, 1, "ok")]
        assert (r.model, r.models, r.model_fallbacks) == ("primary", ["secondary", "primary"],
                                                          1)
    assert fallbacks(trail) == handovers
    (run,) = trail.runs
    assert run.result is not None and run.result["models"] == r.models

    points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == METER_NAME
            for m in sm.metrics:
                if m.name == "stead.model.duration":
                    for p in m.data.data_points:
                        a = dict(p.attributes or {})
                        points[(a["stead.model.endpoint"], a["stead.model.fallback"],
                                a["stead.status"])] = p.count  # type: ignore[attr-defined]
    assert points[("secondary", 1, "ok")] == (2 if failure == "down" else 1)
    assert points[("primary", 0, "error")] == tried * (2 if failure == "down" else 1)
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    answered = {(s.attributes or {}).get("stead.model.endpoint"):
                (s.attributes or {}).get("stead.model.fallback") for s in spans}
    assert answered["secondary"] == 1 and answered["primary"] == 0
    assert any(s.name == "chat gpt-4.1-mini" for s in spans)


async def test_a_rejected_request_stays_with_its_model_and_fails_the_run(
        settings: Settings, ledger: Ledger) -> None:
    """400 means the request is wrong, not the server: the next model would get the same
    request, so it is not asked."""
    async with fakes(2) as (first, second):
        first.inject(Fault("client_error", status=400, message="context too long"))
        async with serve(settings, [endpoint(first, name="primary"),
                                    endpoint(second, name="secondary")]) as served:
            wid, r = await served.run()
        assert second.requests == [] and len(first.requests) == 1
    assert r.status == "failed" and r.error is not None and "context too long" in r.error
    trail = await ledger.trail(wid)
    assert calls(trail, 1) == [("primary", 0, 1, "error")] and fallbacks(trail) == []


async def test_the_last_models_failure_fails_the_run_after_every_handover(
        settings: Settings, ledger: Ledger) -> None:
    async with fakes(1) as (second,):
        second.inject(Fault("server_error"))
        chain = [endpoint(down_url(), name="a", max_attempts=1),
                 endpoint(second, name="b", max_attempts=1)]
        async with serve(settings, chain) as served:
            wid, r = await served.run()
    assert r.status == "failed" and r.error is not None
    assert r.error.startswith("model call failed: model server error 500")
    trail = await ledger.trail(wid)
    assert calls(trail, 1) == [("a", 0, 1, "error"), ("b", 1, 1, "error")]
    assert [(s, d) for s, d, _ in fallbacks(trail)] == [(1, "b")]


async def test_a_run_with_a_fallback_replays_and_its_history_holds_no_key(
        settings: Settings) -> None:
    """The chain is pinned in the run's plan (key by reference only), so a replay walks it
    as the run did."""
    async with fakes(1) as (second,):
        chain = [endpoint(down_url(), name="primary", max_attempts=1),
                 endpoint(second, name="secondary")]
        async with serve(settings, chain) as served:
            wid, r = await served.run()
            assert served.host.client is not None
            history = await served.host.client.get_workflow_handle(wid).fetch_history()
    assert r.status == "completed" and r.model_fallbacks == 2
    text = payload_text(history.to_json_dict())
    assert KEY_VAR in text and '"name":"secondary"' in text.replace(" ", "")
    assert KEY not in text and KEY not in json.dumps(history.to_json_dict())
    await production_replayer().replay_workflow(history)


async def test_agent_models_from_the_environment_replace_the_declared_ones(
        settings: Settings, ledger: Ledger) -> None:
    async with fakes(2) as (declared, configured):
        env = settings.replace(agent_models={"chain": [endpoint(configured, name="from-env")]})
        async with serve(env, [endpoint(declared, name="declared")]) as served:
            wid, r = await served.run()
        assert declared.requests == [] and len(configured.requests) == 2
    assert r.models == ["from-env"]
    assert {m.endpoint for m in (await ledger.trail(wid)).model_calls} == {"from-env"}


async def test_the_workers_openai_key_and_base_url_serve_a_model_that_names_neither(
        settings: Settings) -> None:
    async with fakes(1) as (srv,):
        s = settings.replace(openai_api_key=KEY, openai_base_url=srv.base_url)
        async with serve(s, [ModelEndpoint(model=CHAT, temperature=0.5)]) as served:
            _, r = await served.run()
        assert [b["temperature"] for b in srv.requests] == [0.5, 0.5]
    assert r.status == "completed" and r.models == ["openai:gpt-4o-mini"]


# ---------------------------------------------------------------------------- bad answers


@pytest.mark.parametrize("fault", [Fault("bad_tool_arguments", arguments='{"text": "hel'),
                                   Fault("unknown_tool", tool_name="delete_everything")],
                         ids=["malformed-arguments", "unknown-tool"])
async def test_a_bad_tool_call_from_the_responses_api_is_rejected_and_never_run(
        settings: Settings, fault: Fault) -> None:
    async with fakes(1) as (srv,):
        srv.inject(fault, endpoint="responses")
        async with serve(settings, [endpoint(srv, api="responses")]) as served:
            _, r = await served.run()
        second = srv.response_requests[1]["input"]
    assert (r.status, r.answer, r.rejected_calls) == ("completed", "the tool said hello", 1)
    assert served.ran == []  # the bad call never ran (the fault took the script's call turn)
    (bad_call,) = [i for i in second if i.get("type") == "function_call"]
    (reply,) = [i for i in second if i.get("type") == "function_call_output"]
    assert reply["call_id"] == bad_call["call_id"]
    error = json.loads(reply["output"])["error"]
    assert error["type"] == ("malformed_arguments" if fault.kind == "bad_tool_arguments"
                             else "unknown_tool")


# ---------------------------------------------------------------------------- bad config


def check(models: Sequence[ModelEndpoint], settings: Settings | None = None, *,
          environ: dict[str, str] | None = None, tools: Sequence[Tool[Echo, Echo]] = ()
          ) -> str:
    agent = Agent(name="chain", instructions="x", tools=list(tools) or [echo_tool([])],
                  models=models, offline_model=ScriptedModel([ModelTurn(content="x")]))
    with pytest.raises(SpecError) as info:
        ModelEndpoints.from_catalog(AgentCatalog([agent]), settings or Settings(),
                                    environ={KEY_VAR: KEY} if environ is None else environ)
    return str(info.value)


class Loose(BaseModel):
    text: str
    limit: int = 20


@tool(name="loose")
async def loose(args: Loose, ctx: ToolContext) -> Echo:
    """Not strict: open object, an optional field."""
    return Echo(text=args.text)


def test_bad_model_configuration_is_refused_naming_agent_model_and_field() -> None:
    said = check([ModelEndpoint(model=CHAT, name="a", base_url="ftp://x", api_key_env=KEY_VAR),
                  ModelEndpoint(model=CHAT, name="b", api_key_env="NOT_SET_ANYWHERE",
                                base_url="http://h/v1"),
                  ModelEndpoint(model=CHAT, name="c", base_url="http://h/v1",
                                reasoning_effort="low", api_key_env=KEY_VAR),
                  ModelEndpoint(model=CHAT, name="c", base_url="http://h/v1",
                                api_key_env=KEY_VAR, api_key_secret="s"),
                  ModelEndpoint(model=CHAT, name="e", base_url="http://h/v1",
                                api_key_secret="model_key"),
                  ModelEndpoint(model=CHAT, name="f", base_url="http://h/v1")])
    assert said.startswith("invalid model configuration:")
    for line in [
        "agent 'chain', models[0] (a): base_url 'ftp://x' is not an http(s) URL",
        "agent 'chain', models[1] (b): api_key_env: environment variable NOT_SET_ANYWHERE is "
        "not set",
        "agent 'chain', models[2] (c): reasoning_effort: 'gpt-4o-mini' is not a reasoning "
        "model",
        "agent 'chain', models[3] (c): declare api_key_env or api_key_secret, not both",
        "agent 'chain', models[4] (e): api_key_secret: no secret 'model_key' "
        "(set STEAD_SECRET_MODEL_KEY)",
        "agent 'chain', models[5] (f): no API key: set OPENAI_API_KEY",
        "agent 'chain': two models of the chain are named 'c'",
    ]:
        assert line in said, (line, said)


def test_strict_tools_need_strict_schemas_on_every_agent_tool() -> None:
    said = check([endpoint("http://h/v1", strict_tools=True)], tools=[loose])  # type: ignore[list-item]
    assert "strict_tools: tool 'loose': parameters: an object must set additionalProperties " \
           "to false" in said
    assert "strict_tools: tool 'loose': parameters: every property must be required" in said
    assert "limit" in said


def test_agent_models_for_an_agent_the_worker_does_not_serve_are_refused() -> None:
    said = check([], Settings(agent_models={"nope": [endpoint("http://h/v1")]}))
    assert "STEAD_AGENT_MODELS names agent 'nope', which this worker does not serve " \
           "(it serves: chain)" in said


def test_settings_out_of_range_are_refused_by_the_declaration_and_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="temperature"):
        ModelEndpoint(model=CHAT, temperature=3)
    monkeypatch.setenv("STEAD_AGENT_MODELS", '{"ops": [{"model": "m", "max_attempts": 0}]}')
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "STEAD_AGENT_MODELS at ops.0.max_attempts=0" in str(info.value)


async def test_a_worker_with_bad_model_configuration_does_not_start(
        settings: Settings) -> None:
    with pytest.raises(SpecError, match=r"models\[0\].*environment variable NOPE_KEY"):
        async with serve(settings, [ModelEndpoint(model=CHAT, api_key_env="NOPE_KEY")]):
            raise AssertionError("started")


def test_model_call_rows_name_the_chain_model() -> None:
    """``stead audit --json`` rows carry the chain columns (older rows: empty and 0)."""
    assert {"endpoint", "fallback"} <= set(ModelCallRow.model_fields)


async def test_a_model_given_to_the_worker_serves_agents_with_chains_too(
        settings: Settings) -> None:
    """Evals and counterfactuals hand the worker their scripted or recorded model: it answers
    for every agent, and the agents' own models (here with a key nobody set) are neither
    checked nor called."""
    ran: list[str] = []
    agent = Agent(name="chain", instructions="x", tools=[echo_tool(ran)],
                  models=[ModelEndpoint(model=CHAT, api_key_env="NOPE_KEY")],
                  offline_model=ScriptedModel([ModelTurn(content="offline")]))
    async with WorkerHost(settings, AgentCatalog([agent]),
                          model=ScriptedModel(SCRIPT, name="scripted:given")) as host:
        served = Served(host, settings, ran)
        _, r = await served.run()
    assert (r.status, r.answer, r.model, r.models) == (
        "completed", "the tool said hello", "scripted:given", ["scripted:given"])


# ---------------------------------------------------------------------------- the Responses client


async def responses_failure(srv: FakeOpenAIServer, messages: Sequence[Message],
                            tools: Sequence[ToolSchema] = (), **kw: object) -> ModelCallError:
    model = OpenAIResponsesModel(model=REASONER, api_key=KEY, base_url=srv.base_url,
                                 endpoint=endpoint(srv, REASONER, api="responses", **kw))
    try:
        with pytest.raises(ModelCallError) as info:
            await model.complete(messages, tools)
    finally:
        await model.close()
    return info.value


USER = [Message(role="user", content="hi")]


@pytest.mark.parametrize(("fault", "kind", "retryable"), [
    (Fault("rate_limit", retry_after=2), "RateLimited", True),
    (Fault("server_error", status=502), "ModelServerError", True),
    (Fault("malformed_json"), "ModelResponseInvalid", True),
    (Fault("malformed_json", body="<html>bad gateway</html>", content_type="text/html"),
     "ModelResponseInvalid", True),
    (Fault("client_error", status=401), "ModelRequestRejected", False),
], ids=["429", "502", "truncated", "html", "401"])
async def test_responses_api_failures_map_like_chat_completions(
        fault: Fault, kind: str, retryable: bool) -> None:
    async with fakes(1) as (srv,):
        srv.inject(fault, endpoint="responses")
        err = await responses_failure(srv, USER)
    assert (err.kind, err.retryable) == (kind, retryable)
    if fault.kind == "rate_limit":
        assert err.retry_after is not None and err.retry_after.total_seconds() == 2


async def test_the_fake_refuses_what_openai_refuses_on_the_responses_api() -> None:
    """Reasoning handed back without its encrypted content (nothing is stored with
    ``store: false``), or content it never issued; a strict tool with an open schema."""
    lost = [*USER, Message(role="assistant", content="ok",
                           reasoning=[ReasoningItem(id="rs_1")]),
            Message(role="user", content="again")]
    forged = [*USER, Message(role="assistant", content="ok", reasoning=[
        ReasoningItem(id="rs_1", encrypted_content="made-up")]), Message(role="user", content="x")]
    open_schema = ToolSchema(name="loose", description="", parameters=loose.plan().parameters)
    async with fakes(1, reasoning_models=[REASONER]) as (srv,):
        said = [str(await responses_failure(srv, m)) for m in (lost, forged)]
        raw = openai.AsyncOpenAI(api_key=KEY, base_url=srv.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="additionalProperties"):
            await raw.responses.create(model=REASONER, input="hi", tools=[{
                "type": "function", "name": "loose", "parameters": open_schema.parameters,
                "strict": True}])
        await raw.close()
        # stead asked for strict tools sends this one (an MCP tool, say) non-strict instead.
        fine = OpenAIResponsesModel(model=REASONER, api_key=KEY, base_url=srv.base_url,
                                    endpoint=endpoint(srv, REASONER, api="responses",
                                                      strict_tools=True))
        turn = await fine.complete(USER, [open_schema])
        await fine.close()
        assert srv.response_requests[-1]["tools"][0]["strict"] is False
    assert "Items are not persisted when `store` is set to false" in said[0]
    assert "could not be verified" in said[1]
    assert turn.reasoning and turn.reasoning[0].encrypted_content
    assert turn.usage.reasoning_tokens > 0


async def test_online_evaluation_judges_with_the_first_model_of_the_agents_chain(
        ledger: Ledger) -> None:
    """A judge evaluator grades an agent's runs with the model the agent declares first; an
    agent without a chain is judged by its offline model, as its runs are served."""
    offline = ScriptedModel([ModelTurn(content="x")], name="scripted:plain")
    echo = echo_tool([])
    chained = Agent(name="chain", instructions="x", tools=[echo],
                    models=[endpoint("http://127.0.0.1:9/v1", name="judge-first"),
                            endpoint("http://127.0.0.1:9/v1", name="second", model=REASONER)],
                    offline_model=ScriptedModel([ModelTurn(content="x")]))
    plain = Agent(name="plain", instructions="x", tools=[echo], offline_model=offline)
    catalog = AgentCatalog([chained, plain])
    endpoints = ModelEndpoints.from_catalog(catalog, Settings(), environ={KEY_VAR: KEY})
    models = ModelActivities(catalog, ledger, endpoints=endpoints)
    try:
        assert models.judge_for("chain").name == f"openai:{CHAT}"
        assert models.judge_for("plain") is offline
    finally:
        await endpoints.close()
