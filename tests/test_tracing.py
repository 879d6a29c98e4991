"""Traces of real runs through a real worker: span tree, GenAI attributes, decision events,
content capture and redaction, no duplicates after a worker restart, OTLP/HTTP on the wire.

The ``tr`` agent (below) looks a key up (a read the gate allows) or pays an amount (a transfer
the gate sends to a human), then answers. Its request and tool result carry seeded secrets and
personal data, which must never leave the process in a span.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest
from _cli import cli_env, stead
from _waits import wait_pending
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode
from pydantic import BaseModel
from temporalio.client import Client, WorkflowFailureError

from stead import errors
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import (
    ApprovalDecision,
    MemoryPlan,
    Message,
    ModelTurn,
    RetrySpec,
    RunRequest,
    RunResult,
    RunState,
    ToolSchema,
    Usage,
)
from stead.contracts.policy import parse_policy
from stead.errors import SettingsError
from stead.integrations.llm import FunctionModel, ModelCallError, assistant_turns, call
from stead.observability.tracing import (
    NO_TRACING,
    SteadTracing,
    configure_tracing,
    traces_endpoint,
)
from stead.settings import Settings, load_settings
from stead.storage.ledger import Ledger
from stead.storage.memory.embedders import HashingEmbedder
from stead.testing.otlp_server import FakeOTLPServer
from stead.worker import WorkerHost

API_KEY = "sk-live4f9a8b7c6d5e4f3a2b1c0d9e8f"
"""An OpenAI-shaped key the user pastes into the request."""
EMAIL = "ana.lopez@example.com"
DB_PASSWORD = "password=Zq8!vLr2pT"
"""A credential the tool's result leaks."""
SEEDS = (API_KEY, EMAIL, "Zq8!vLr2pT")
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"

TR_POLICY = parse_policy("""
id: tr-test
version: 3
thresholds: {approve_at: 0.5, deny_at: 0.9}
approvals:
  chain: [oncall]
  timeout_seconds: 600
""", source="tr-test.yaml")
"""A lookup scores 0.05 (allowed); a transfer 0.65 (asks a human)."""


class Key(BaseModel):
    key: str


class Value(BaseModel):
    value: str


class Amount(BaseModel):
    amount: int


class Receipt(BaseModel):
    transfer_id: str


def tr_agent() -> Agent:
    @tool
    async def lookup(args: Key, ctx: ToolContext) -> Value:
        """Read a customer's record."""
        return Value(value=f"record of {args.key}: {DB_PASSWORD}")

    @tool(side_effect="irreversible", risk="high", idempotent=False)
    async def transfer(args: Amount, ctx: ToolContext) -> Receipt:
        """Move money. Irreversible."""
        return Receipt(transfer_id=f"T-{args.amount}")

    usage = Usage(input_tokens=120, output_tokens=12)

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = next(m.content or "" for m in messages if m.role == "user")
        if assistant_turns(messages) == 0:
            pay = re.search(r"pay (\d+)", request)
            if pay:
                return ModelTurn(tool_calls=[call("transfer", amount=int(pay[1]))],
                                 model=RESPONSE_MODEL, usage=usage, finish_reason="tool_calls")
            return ModelTurn(tool_calls=[call("lookup", key=EMAIL)], model=RESPONSE_MODEL,
                             usage=usage, finish_reason="tool_calls")
        return ModelTurn(content=f"Done for {EMAIL}.", model=RESPONSE_MODEL, usage=usage)

    return Agent(name="tr", instructions=f"Help the user. Escalation contact: {EMAIL}",
                 tools=[lookup, transfer], offline_model=FunctionModel(plan, name="scripted:tr"),
                 max_steps=6, policy=TR_POLICY)


def in_memory(settings: Settings) -> tuple[SteadTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return SteadTracing.from_settings(settings.telemetry, exporters=[exporter]), exporter


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {sorted(s.name for s in spans)}"
    return found[0]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    [parent] = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


def everything(spans: Sequence[ReadableSpan]) -> str:
    """Every span as JSON (names, attributes, events, status): where a leak would show."""
    return "\n".join(s.to_json() for s in spans)


def of_run(spans: Sequence[ReadableSpan], workflow_id: str) -> list[ReadableSpan]:
    """The spans of one run: those in the trace of its ``invoke_agent`` span."""
    roots = [s for s in spans if s.name.startswith("invoke_agent")
             and (s.attributes or {}).get("temporalWorkflowID") == workflow_id]
    assert len(roots) == 1, f"{len(roots)} invoke_agent spans for run {workflow_id}"
    [root] = roots
    return [s for s in spans if s.context.trace_id == root.context.trace_id]




def request(text: str) -> RunRequest:
    return RunRequest(agent="tr", input=text, tenant="acme")


# ---------------------------------------------------------------------------- span tree


async def test_run_trace_links_client_workflow_activities_and_genai_spans(
        settings: Settings, ledger: Ledger) -> None:
    """A traced client's StartWorkflow is the parent of the run's invoke_agent span, which
    parents the workflow's spans; each activity's span parents its chat / execute_tool span,
    with the GenAI attributes and the gate's decision as an event. A local activity (the
    bookkeeping, the read tool) has its RunActivity right under the run, with no
    StartActivity. No content by default, and none of the seeded secrets anywhere."""
    tracing, exporter = in_memory(settings)
    async with WorkerHost(settings, AgentCatalog([tr_agent()]), tracing=tracing):
        client = await connect(settings, interceptors=tracing.interceptors)
        h = await start_run(client, request(f"look up {EMAIL}, my key is {API_KEY}"),
                            temporal=settings.temporal)
        result = await h.result()
    assert result.status == "completed"
    spans = of_run(exporter.get_finished_spans(), h.id)
    names = Counter(s.name for s in spans)
    assert names == Counter({
        "StartWorkflow:AgentWorkflow": 1, "invoke_agent tr": 1, "RunWorkflow:AgentWorkflow": 1,
        "RunActivity:run.start": 1,
        "StartActivity:model.complete": 2, "RunActivity:model.complete": 2,
        "chat scripted:tr": 2, "RunActivity:tool.lookup": 1,
        "execute_tool lookup": 1, "RunActivity:run.finish": 1,
        "CompleteWorkflow:AgentWorkflow": 1}), names

    client_span = one(spans, "StartWorkflow:AgentWorkflow")
    assert client_span.parent is None
    run = one(spans, "invoke_agent tr")
    assert parent_of(run, spans) is client_span
    for name in ("RunWorkflow:AgentWorkflow", "CompleteWorkflow:AgentWorkflow",
                 "RunActivity:run.start", "RunActivity:tool.lookup", "RunActivity:run.finish"):
        assert parent_of(one(spans, name), spans) is run, name
    for chat in named(spans, "chat scripted:tr"):
        activity_span = parent_of(chat, spans)
        assert activity_span.name == "RunActivity:model.complete"
        assert parent_of(activity_span, spans).name == "StartActivity:model.complete"
        assert parent_of(parent_of(activity_span, spans), spans) is run
    tool_span = one(spans, "execute_tool lookup")
    assert parent_of(tool_span, spans) is one(spans, "RunActivity:tool.lookup")

    # invoke_agent covers the run, from its start to its final status.
    assert run.start_time is not None and run.end_time is not None
    assert run.start_time <= min(s.start_time or 0 for s in spans if s is not client_span)
    assert run.end_time >= max(s.end_time or 0 for s in named(spans, "chat scripted:tr"))
    attrs = dict(run.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "tr"
    assert attrs["temporalWorkflowID"] == h.id
    assert attrs["temporalRunID"] == h.result_run_id
    assert attrs["stead.tenant"] == "acme"
    assert attrs["stead.run.status"] == "completed"
    assert attrs["stead.run.steps"] == result.steps

    first = named(spans, "chat scripted:tr")[0]
    chat = dict(first.attributes or {})
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == "stead"
    assert chat["gen_ai.request.model"] == "scripted:tr"
    assert chat["gen_ai.response.model"] == RESPONSE_MODEL
    assert chat["gen_ai.usage.input_tokens"] == 120
    assert chat["gen_ai.usage.output_tokens"] == 12
    assert tuple(chat["gen_ai.response.finish_reasons"]) in {("tool_calls",), ("stop",)}
    assert chat["gen_ai.conversation.id"] == h.id

    tool_attrs = dict(tool_span.attributes or {})
    trail = await ledger.trail(h.id)
    [attempt] = trail.tool_attempts
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "lookup"
    assert tool_attrs["gen_ai.tool.call.id"] == result.tool_calls[0].call_id
    assert tool_attrs["stead.tool.idempotency_key"] == attempt.idempotency_key
    assert tool_attrs["stead.tool.attempt"] == 1
    assert tool_attrs["stead.tool.outcome"] == "ok"

    # A decision is an event on the span of the activity that writes it: a read tool's gate
    # verdict and routing's travel with the run's finish (a tool with a side effect carries
    # them itself: see the approval test below).
    assert not [e for e in tool_span.events if e.name == "stead.decision"]
    finish = one(spans, "RunActivity:run.finish")
    [gate] = [e for e in finish.events if e.name == "stead.decision"
              and (e.attributes or {}).get("stead.decision.kind") == "gate"]
    gate_attrs = dict(gate.attributes or {})
    assert gate_attrs["stead.decision.kind"] == "gate"
    assert gate_attrs["stead.decision"] == "allow"
    assert gate_attrs["stead.policy.id"] == "tr-test"
    assert gate_attrs["stead.policy.version"] == 3
    assert gate_attrs["stead.risk.score"] == pytest.approx(0.05)
    assert gate_attrs["gen_ai.tool.name"] == "lookup"
    route_events = [e for s in spans for e in s.events
                    if (e.attributes or {}).get("stead.decision.kind") == "route"]
    assert [e for e in finish.events if e in route_events] == route_events != []

    text = everything(spans)
    for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
                "stead.decision.reason"):
        assert key not in text, f"{key} recorded without STEAD_CAPTURE_CONTENT"
    for seed in SEEDS:
        assert seed not in text


async def test_content_is_captured_redacted_only_when_opted_in(settings: Settings) -> None:
    """With STEAD_CAPTURE_CONTENT the prompt, completion, tool arguments and result are on the
    spans in the GenAI message shape, with the seeded secrets and PII redacted."""
    settings = settings.replace(capture_content=True)
    tracing, exporter = in_memory(settings)
    assert tracing.capture_content
    async with WorkerHost(settings, AgentCatalog([tr_agent()]), tracing=tracing) as host:
        assert host.client is not None
        h = await start_run(host.client, request(f"look up {EMAIL}, my key is {API_KEY}"),
                            temporal=settings.temporal)
        assert (await h.result()).status == "completed"
    spans = of_run(exporter.get_finished_spans(), h.id)
    text = everything(spans)
    for seed in SEEDS:
        assert seed not in text

    first, second = named(spans, "chat scripted:tr")
    a = dict(first.attributes or {})
    assert json.loads(str(a["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "Help the user. Escalation contact: [REDACTED:email]"}]
    assert json.loads(str(a["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content":
                                    "look up [REDACTED:email], my key is [REDACTED:openai_key]"}]}]
    [out] = json.loads(str(a["gen_ai.output.messages"]))
    assert out["role"] == "assistant" and out["finish_reason"] == "tool_calls"
    [call_part] = out["parts"]
    assert call_part["type"] == "tool_call" and call_part["name"] == "lookup"
    assert call_part["arguments"] == {"key": "[REDACTED:email]"}
    # The second call sees the tool's answer, redacted, as a tool_call_response part.
    history = json.loads(str(dict(second.attributes or {})["gen_ai.input.messages"]))
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert "[REDACTED:credential]" in history[2]["parts"][0]["response"]
    [answer] = json.loads(str(dict(second.attributes or {})["gen_ai.output.messages"]))
    assert answer["parts"] == [{"type": "text", "content": "Done for [REDACTED:email]."}]

    tool_attrs = dict(one(spans, "execute_tool lookup").attributes or {})
    assert json.loads(str(tool_attrs["gen_ai.tool.call.arguments"])) == {
        "key": "[REDACTED:email]"}
    assert json.loads(str(tool_attrs["gen_ai.tool.call.result"])) == {
        "value": "record of [REDACTED:email]: password=[REDACTED:credential]"}
    run = dict(one(spans, "invoke_agent tr").attributes or {})
    assert "[REDACTED:openai_key]" in str(run["gen_ai.input.messages"])
    assert "Done for [REDACTED:email]." in str(run["gen_ai.output.messages"])


async def test_failures_are_error_spans_with_redacted_messages(settings: Settings) -> None:
    """A tool whose error quotes a credential and a model call that fails are error spans
    with an error.type; the run's span says failed; a run of an unknown agent (the workflow
    fails) still gets its invoke_agent span. The secret is in no span, Temporal's own
    exception events included."""
    @tool(retry=RetrySpec(max_attempts=1))
    async def vault(args: Key, ctx: ToolContext) -> Value:
        """Read a secret from a vault that refuses us."""
        raise PermissionError(f"vault refused login with {DB_PASSWORD}")

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if assistant_turns(messages) == 0:
            return ModelTurn(tool_calls=[call("vault", key="k")], model=RESPONSE_MODEL)
        raise ModelCallError("model is down", kind="ModelUnavailable", retryable=False)

    broken = Agent(name="trf", instructions="Use the vault.", tools=[vault],
                   offline_model=FunctionModel(plan, name="scripted:trf"), policy=TR_POLICY)
    tracing, exporter = in_memory(settings)
    async with WorkerHost(settings, AgentCatalog([broken]), tracing=tracing) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="trf", input="open the vault"),
                            temporal=settings.temporal)
        result = await h.result()
        unknown = await start_run(host.client, RunRequest(agent="nobody", input="hello"),
                                  temporal=settings.temporal)
        with pytest.raises(WorkflowFailureError):
            await unknown.result()
    assert result.status == "failed"
    spans = of_run(exporter.get_finished_spans(), h.id)
    tool_span = one(spans, "execute_tool vault")
    assert tool_span.status.status_code is StatusCode.ERROR
    assert dict(tool_span.attributes or {})["error.type"] == "PermissionError"
    assert dict(tool_span.attributes or {})["stead.tool.outcome"] == "error"
    [exc] = [e for e in tool_span.events if e.name == "exception"]
    assert "[REDACTED:credential]" in str(dict(exc.attributes or {})["exception.message"])
    failed_chat = named(spans, "chat scripted:trf")[-1]
    assert failed_chat.status.status_code is StatusCode.ERROR
    assert dict(failed_chat.attributes or {})["error.type"] == "ModelUnavailable"
    run = one(spans, "invoke_agent trf")
    assert run.status.status_code is StatusCode.ERROR
    assert dict(run.attributes or {})["stead.run.status"] == "failed"
    # Temporal's RunActivity span recorded the raw exception; export redacted it.
    sdk_events = [e for e in one(spans, "RunActivity:tool.vault").events
                  if e.name == "exception"]
    assert sdk_events and all("Zq8!vLr2pT" not in str(e.attributes) for e in sdk_events)
    assert "Zq8!vLr2pT" not in everything(exporter.get_finished_spans())

    nobody = one(of_run(exporter.get_finished_spans(), unknown.id), "invoke_agent nobody")
    assert nobody.status.status_code is StatusCode.ERROR
    assert dict(nobody.attributes or {})["stead.run.status"] == "failed"
    assert dict(nobody.attributes or {})["error.type"] == errors.UNKNOWN_AGENT


# ---------------------------------------------------------------------------- replay


async def test_no_duplicate_spans_when_a_new_worker_replays_the_run(
        settings: Settings, ledger: Ledger) -> None:
    """A run waits for approval on worker A, which stops; worker B (no workflow cache, so it
    replays the whole history on every task) takes over when the approval arrives. Every
    span is emitted exactly once: as many chat / execute_tool spans as the ledger has model
    calls and tool attempts, one invoke_agent, one RunWorkflow."""
    tracing, exporter = in_memory(settings)
    agents = AgentCatalog([tr_agent()])
    first = settings.replace(sticky_schedule_to_start_seconds=1.0)
    async with WorkerHost(first, agents, tracing=tracing) as host:
        assert host.client is not None
        client: Client = host.client
        h = await start_run(client, request("pay 500"), temporal=settings.temporal)
        approval = (await wait_pending(h)).approval_id
    before = Counter(s.name for s in exporter.get_finished_spans())
    assert before["invoke_agent tr"] == 0  # the run is not over
    no_cache = settings.replace(max_cached_workflows=0)
    async with WorkerHost(no_cache, agents, tracing=tracing) as host:
        assert host.client is not None
        h2 = host.client.get_workflow_handle(h.id, result_type=RunResult)
        await h2.signal("approve", ApprovalDecision(approval_id=approval, by="alice"))
        result = await asyncio.wait_for(h2.result(), 60)
        # A query on the finished run replays its whole history once more on worker B.
        state = await h2.query("state", result_type=RunState)
    assert result.status == state.status == "completed"
    assert result.approvals == 1

    spans = of_run(exporter.get_finished_spans(), h.id)
    names = Counter(s.name for s in spans)
    trail = await ledger.trail(h.id)
    assert names["chat scripted:tr"] == len(trail.model_calls) == 2
    assert names["execute_tool transfer"] == len(trail.tool_attempts) == 1
    for name in ("invoke_agent tr", "RunWorkflow:AgentWorkflow",
                 "CompleteWorkflow:AgentWorkflow", "RunActivity:run.start",
                 "StartActivity:tool.transfer", "RunActivity:run.finish"):
        assert names[name] == 1, (name, names)
    assert names["StartActivity:model.complete"] == 2
    assert names["RunActivity:run.decisions"] == 1  # flushed before the wait, once
    # Local activities (the bookkeeping) have no StartActivity span, replayed or not.
    assert not [n for n in names if n.startswith("StartActivity:run.")], names
    # Every span of the run is in its one trace, under invoke_agent (started untraced).
    run = one(spans, "invoke_agent tr")
    assert run.parent is None
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    # Each decision is one event, on the span of the activity that wrote it: as the ledger.
    events = Counter((str(a["stead.decision.kind"]), str(a["stead.decision"]))
                     for s in spans for e in s.events if e.name == "stead.decision"
                     for a in [dict(e.attributes or {})])
    assert events == Counter((d.kind, d.decision) for d in trail.decisions)
    assert events[("approval_decided", "approved")] == 1


# ---------------------------------------------------------------------------- OTLP


async def test_traces_reach_an_otlp_http_receiver(settings: Settings) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set the worker batches spans to <endpoint>/v1/traces
    as protobuf; the receiver decodes ExportTraceServiceRequest and finds the run's tree."""
    async with FakeOTLPServer() as srv:
        s = settings.replace(
            otel_exporter_otlp_endpoint=srv.endpoint,
            metrics_exporter="none")
        async with WorkerHost(s, AgentCatalog([tr_agent()])) as host:  # tracing from settings
            assert host.tracing is not None and host.tracing.enabled
            assert host.client is not None
            h = await start_run(host.client, request(f"look up {EMAIL} with {API_KEY}"),
                                temporal=s.temporal)
            assert (await h.result()).status == "completed"
        # stop() flushed the batch: everything is there without waiting for a timer.
        await srv.wait_for_spans("invoke_agent tr", "chat scripted:tr", "execute_tool lookup",
                                 timeout=10)
    assert srv.trace_requests, "no ExportTraceServiceRequest received"
    [run] = [x for x in srv.spans("invoke_agent tr")
             if x.attributes.get("temporalWorkflowID") == h.id]
    trace = [x for x in srv.spans() if x.trace_id == run.trace_id]
    by_id = {x.span_id: x for x in trace}
    tool_span = next(x for x in trace if x.name == "execute_tool lookup")
    assert by_id[tool_span.parent_span_id].name == "RunActivity:tool.lookup"
    activity_span = by_id[tool_span.parent_span_id]
    assert activity_span.parent_span_id == run.span_id  # a local activity: no StartActivity
    assert run.kind == "INTERNAL" and run.status == "UNSET"
    assert run.attributes["gen_ai.agent.name"] == "tr"
    assert run.resource["service.name"] == "stead-worker"
    assert run.scope == "stead"
    chat = next(x for x in trace if x.name == "chat scripted:tr")
    assert chat.kind == "CLIENT"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 120
    # The decisions travel with the run's finish (a read tool carries none): as span events.
    finish = next(x for x in trace if x.name == "RunActivity:run.finish")
    assert any(e.name == "stead.decision" for e in finish.events)
    assert not any(seed in repr(trace) for seed in SEEDS)


# ---------------------------------------------------------------------------- settings


def test_exporter_choice_from_settings() -> None:
    """auto without an endpoint, or none, is a no-op provider and no interceptor; otlp needs
    an endpoint; the endpoint must be an http(s) URL; console prints."""
    base = Settings()
    assert isinstance(configure_tracing(base.telemetry), NoOpTracerProvider)
    assert NO_TRACING.interceptors == [] and not NO_TRACING.enabled
    off = SteadTracing.from_settings(base.replace(
        traces_exporter="none",
        otel_exporter_otlp_endpoint="http://127.0.0.1:4318").telemetry)
    assert not off.enabled and off.interceptors == []
    assert traces_endpoint(base.replace(
        otel_exporter_otlp_endpoint="http://collector:4318/").telemetry) == \
        "http://collector:4318/v1/traces"
    with pytest.raises(SettingsError, match="STEAD_TRACES_EXPORTER=otlp needs"):
        configure_tracing(base.replace(traces_exporter="otlp").telemetry)
    with pytest.raises(SettingsError, match="expected an http"):
        configure_tracing(base.replace(otel_exporter_otlp_endpoint="collector").telemetry)
    console = SteadTracing.from_settings(base.replace(traces_exporter="console").telemetry)
    assert console.enabled and len(console.interceptors) == 1
    console.shutdown()


def test_bad_trace_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_TRACES_EXPORTER", "jaeger")
    with pytest.raises(SettingsError, match="STEAD_TRACES_EXPORTER"):
        load_settings()
    monkeypatch.setenv("STEAD_TRACES_EXPORTER", "auto")
    monkeypatch.setenv("STEAD_CAPTURE_CONTENT", "maybe")
    with pytest.raises(SettingsError, match="STEAD_CAPTURE_CONTENT"):
        load_settings()


def test_tracing_refuses_a_provider_without_run_span_ids() -> None:
    """invoke_agent spans need the id generator configure_tracing installs."""
    from opentelemetry.sdk.trace import TracerProvider

    with pytest.raises(ValueError, match="configure_tracing"):
        SteadTracing(TracerProvider(shutdown_on_exit=False))



# ---------------------------------------------------------------------------- memory


async def test_memory_recall_and_write_spans(settings: Settings) -> None:
    """A run that remembers its answer has a memory.write span; the next run of the tenant
    recalls it: a memory.recall span with the hit count, each over an embeddings span."""
    agent = tr_agent()
    agent = Agent(name="tr", instructions=agent.instructions, tools=agent.tools,
                  offline_model=agent.offline_model, max_steps=6, policy=TR_POLICY,
                  memory=MemoryPlan(recall_top_k=3, min_score=-1.0))
    s = settings.replace(memory_backend="pgvector")
    tracing, exporter = in_memory(s)
    tenant = f"mem-{uuid.uuid4().hex[:8]}"
    async with WorkerHost(s, AgentCatalog([agent]), tracing=tracing,
                          embedder=HashingEmbedder(384)) as host:
        assert host.client is not None
        ids = []
        for _ in range(2):
            h = await start_run(host.client, RunRequest(agent="tr", input="look up the record",
                                                        tenant=tenant), temporal=s.temporal)
            assert (await h.result()).status == "completed"
            ids.append(h.id)
    first, second = (of_run(exporter.get_finished_spans(), i) for i in ids)
    write = one(first, "memory.write")
    assert parent_of(write, first).name == "RunActivity:memory.write"
    assert dict(write.attributes or {})["stead.memory.items"] == 1
    recall = one(second, "memory.recall")
    attrs = dict(recall.attributes or {})
    assert attrs["stead.memory.backend"] == "pgvector"
    assert attrs["stead.memory.embedder"] == "hashing:384"
    assert attrs["stead.memory.items"] >= 1
    assert attrs["stead.tenant"] == tenant
    embeds = named(second, "embeddings hashing:384")  # the recall's, and the write's
    assert sorted(parent_of(e, second).name for e in embeds) == ["memory.recall",
                                                                  "memory.write"]
    assert all(dict(e.attributes or {})["gen_ai.operation.name"] == "embeddings"
               for e in embeds)
    assert "stead.memory.texts" not in everything(first + second)


# ---------------------------------------------------------------------------- stead run


async def test_stead_run_traces_its_client_into_the_workers_trace(settings: Settings) -> None:
    """``stead run`` (another process) exports its StartWorkflow span over OTLP; the worker's
    invoke_agent span is its child in the same trace. The CLI's state polling makes no
    spans."""
    tracing, exporter = in_memory(settings)
    async with FakeOTLPServer() as srv:
        async with WorkerHost(settings, AgentCatalog([tr_agent()]), tracing=tracing):
            done = await stead("run", "tr", "look up the record", "--tenant", "acme", "--json",
                               env=cli_env(settings, OTEL_EXPORTER_OTLP_ENDPOINT=srv.endpoint,
                                           STEAD_TRACES_EXPORTER="otlp",
                                           STEAD_METRICS_EXPORTER="none"))
        assert done.code == 0, done.err
        # Exported when the CLI process exited (the provider flushes at exit).
        await srv.wait_for_spans("StartWorkflow:AgentWorkflow", timeout=10)
    workflow_id = done.json()["workflow_id"]
    [start] = srv.spans("StartWorkflow:AgentWorkflow")
    assert start.resource["service.name"] == "stead-cli"
    assert start.attributes["temporalWorkflowID"] == workflow_id
    assert srv.span_names() == {"StartWorkflow:AgentWorkflow"}  # no QueryWorkflow:state
    run = one(exporter.get_finished_spans(), "invoke_agent tr")
    assert run.parent is not None
    assert f"{run.parent.span_id:016x}" == start.span_id
    assert f"{run.context.trace_id:032x}" == start.trace_id
