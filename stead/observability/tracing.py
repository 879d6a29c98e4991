"""OpenTelemetry traces of agent runs: one trace per run, GenAI semantic conventions.

    tracing = SteadTracing.from_settings(settings.telemetry)   # OTLP/HTTP, console, or off
    worker = build_worker(..., tracing=tracing)          # interceptor + activity spans
    client = await connect(settings, interceptors=tracing.interceptors)   # client spans
    ...
    tracing.shutdown()                                   # flushes what is buffered

Temporal's :class:`~temporalio.contrib.opentelemetry.TracingInterceptor` links the client's
``StartWorkflow`` span to the workflow's spans and each ``StartActivity`` to its
``RunActivity`` (stead leaves out the ``StartActivity`` of a local activity, which would only
repeat its ``RunActivity``). stead adds, following the OpenTelemetry GenAI conventions::

    StartWorkflow:AgentWorkflow                    client (``stead run``), when it is traced
    └── invoke_agent {agent}                       the whole run: start to final status
        ├── RunWorkflow / CompleteWorkflow / HandleSignal:approve ...
        ├── StartActivity:model.complete
        │   └── RunActivity:model.complete         (events: the decisions it writes)
        │       └── chat {model}                   provider, models, tokens, finish reasons
        ├── RunActivity:tool.{name}                a local activity: no StartActivity span
        │   └── execute_tool {name}                call id, idempotency key, attempt, outcome
        └── StartActivity:memory.recall
            └── RunActivity:memory.recall
                └── memory.recall                  backend, namespaces, hits
                    └── embeddings {model}

``invoke_agent`` has a real duration although a workflow may not hold a span open (its code
replays): its span id is derived from the workflow and run ids, so the workflow can parent
every span of the run on it from the first task, and the span itself is emitted once, by the
workflow task that completes the run, with the run's start time. A run started without a
traced client (the ``temporal`` CLI, a schedule) gets a trace id derived the same way, so its
spans still form one trace instead of one orphan per workflow task.

No duplicates on replay: spans made inside the workflow are skipped while it replays history
(after a worker restart or a cache eviction), and activity spans come from activity attempts,
which replay does not re-run.

Guardrail and approval decisions become ``stead.decision`` events on the span of the activity
that writes them to the ledger (policy id and version, kind, decision, risk score).

Content (prompts, completions, tool arguments and results, memory queries) is recorded only
when ``STEAD_CAPTURE_CONTENT=true``, each string redacted first; and every string attribute of
every exported span, Temporal's exception messages included, is redacted again on the way out.

Where traces go is a setting (``STEAD_TRACES_EXPORTER``): ``auto`` exports over OTLP/HTTP to
``<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`` when the endpoint is set and nowhere otherwise,
``otlp`` insists on it, ``console`` prints spans to stderr, ``none`` turns tracing off. Off
costs nothing: no interceptor is installed and the activity helpers return at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import opentelemetry.trace as otel
from opentelemetry.propagators.textmap import CarrierValT
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue
from temporalio import workflow
from temporalio.client import Client, OutboundInterceptor, QueryWorkflowInput
from temporalio.common import SearchAttributeKey
from temporalio.contrib.opentelemetry import (
    TracingInterceptor,
    TracingWorkflowInboundInterceptor,
)
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ExecuteWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from stead.client import WORKFLOW_TYPE, connect
from stead.contracts.models import (
    SYNTHETIC_KEY,
    DecisionRow,
    Message,
    ModelTurn,
    RunRef,
    RunRequest,
    RunResult,
)
from stead.integrations.llm import ModelCallError
from stead.observability.telemetry import otlp_endpoint
from stead.security.secrets import DEFAULT_REDACTOR
from stead.settings import Settings, TelemetrySettings

__all__ = [
    "NO_TRACING",
    "TRACER_NAME",
    "ChatSpan",
    "MemorySpan",
    "SteadTracing",
    "SteadTracingInterceptor",
    "ToolSpan",
    "configure_tracing",
    "provider_and_model",
    "traced_client",
    "traces_endpoint",
]

TRACER_NAME: Final = "stead"

Redact = Callable[[str], str]
Carrier = dict[str, CarrierValT]
Attributes = dict[str, AttributeValue]

_EXTERN: Final = "__stead_invoke_agent_span"
_AGENT_KEY: Final = SearchAttributeKey.for_keyword("SteadAgent")
"""The search attribute the workflow keeps on the agent actually running (after a hand-over)."""
_MAX_STATUS: Final = 1000


def provider_and_model(label: str) -> tuple[str, str]:
    """``openai:gpt-4o-mini`` -> (openai, gpt-4o-mini); ``openai:text-embedding-3-small:1536``
    -> (openai, text-embedding-3-small); offline models and embedders are stead's own."""
    kind, sep, rest = label.partition(":")
    if sep and kind == "openai" and rest:
        return "openai", rest.split(":")[0]
    return "stead", label


# ------------------------------------------------------------------------- run span ids


def _run_span_ids(workflow_id: str, run_id: str) -> tuple[int, int]:
    """(trace id, span id) of a run's ``invoke_agent`` span: the same in every workflow task
    and on every worker, so children can name their parent before it is emitted."""
    digest = hashlib.sha256(f"stead-invoke-agent\0{workflow_id}\0{run_id}".encode()).digest()
    return (int.from_bytes(digest[:16], "big") or 1), (int.from_bytes(digest[16:24], "big") or 1)


_PINNED: ContextVar[tuple[int, int] | None] = ContextVar("stead_pinned_span_ids", default=None)


class _RunSpanIds(IdGenerator):
    """Random ids, except while a run's ``invoke_agent`` span is made: then the run's own."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        pinned = _PINNED.get()
        return pinned[1] if pinned else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        pinned = _PINNED.get()
        return pinned[0] if pinned else self._random.generate_trace_id()


# ------------------------------------------------------------------------- providers


def traces_endpoint(telemetry: TelemetrySettings) -> str | None:
    """The OTLP/HTTP traces URL, when traces go over OTLP (``None`` otherwise)."""
    return otlp_endpoint(telemetry, signal="traces", mode=telemetry.traces_exporter,
                         variable="STEAD_TRACES_EXPORTER")


def configure_tracing(telemetry: TelemetrySettings, *, exporters: Sequence[SpanExporter] = (),
                      redact: Redact = DEFAULT_REDACTOR.text,
                      service_name: str = "stead-worker") -> TracerProvider:
    """A TracerProvider exporting where settings say, plus to ``exporters`` (e.g. the SDK's
    ``InMemorySpanExporter``, fed synchronously). Every exporter sees spans with their string
    attributes passed through ``redact``. Nothing configured: a no-op provider. The caller
    owns it: :meth:`SteadTracing.shutdown` exports what is buffered."""
    url = traces_endpoint(telemetry)
    mode = telemetry.traces_exporter
    if url is None and mode != "console" and not exporters:
        return NoOpTracerProvider()

    # Resource.create also reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES.
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}),
                                 id_generator=_RunSpanIds(), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(_RedactingExporter(exporter, redact)))
    if url is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Batched: workflow tasks end spans too, and must never wait for the network.
        provider.add_span_processor(BatchSpanProcessor(
            _RedactingExporter(OTLPSpanExporter(endpoint=url), redact)))
    elif mode == "console":
        # stderr: stdout belongs to the command's own output (``stead run --json``).
        provider.add_span_processor(SimpleSpanProcessor(
            _RedactingExporter(ConsoleSpanExporter(out=sys.stderr), redact)))
    return provider


class _RedactingExporter(SpanExporter):
    """Feeds ``inner`` spans whose string attributes, event attributes and status description
    went through ``redact``: what leaves the process is scrubbed, whoever made the span
    (Temporal's interceptor records exception messages as they are)."""

    def __init__(self, inner: SpanExporter, redact: Redact) -> None:
        self.inner = inner
        self._redact = redact

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([self._scrubbed(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def _value(self, v: AttributeValue) -> AttributeValue:
        if isinstance(v, str):
            return self._redact(v)
        if isinstance(v, Sequence) and v and all(isinstance(x, str) for x in v):
            return [self._redact(str(x)) for x in v]
        return v

    def _attrs(self, attrs: Mapping[str, AttributeValue] | None) -> Attributes:
        return {k: self._value(v) for k, v in (attrs or {}).items()}

    def _scrubbed(self, s: ReadableSpan) -> ReadableSpan:
        attrs = self._attrs(s.attributes)
        events = [Event(e.name, self._attrs(e.attributes), e.timestamp) for e in s.events]
        desc = s.status.description
        status = Status(s.status.status_code, self._redact(desc)) if desc else s.status
        if (attrs == dict(s.attributes or {}) and status.description == desc
                and all(a.attributes == dict(b.attributes or {})
                        for a, b in zip(events, s.events, strict=True))):
            return s  # nothing to hide: export the span as it is
        return ReadableSpan(
            name=s.name, context=s.context, parent=s.parent, resource=s.resource,
            attributes=attrs, events=events, links=s.links, kind=s.kind, status=status,
            start_time=s.start_time, end_time=s.end_time,
            instrumentation_scope=s.instrumentation_scope)


# ------------------------------------------------------------------------- the tracing object


class SteadTracing:
    """stead's tracer, made once per process from one provider and shared by the worker's
    interceptor and activity classes (like :class:`stead.observability.telemetry.SteadMetrics`).

    ``SteadTracing(NoOpTracerProvider())`` (:data:`NO_TRACING`) records nothing and costs
    nothing; :attr:`enabled` says whether spans are made at all."""

    def __init__(self, provider: TracerProvider, *, capture_content: bool = False,
                 redact: Redact = DEFAULT_REDACTOR.text) -> None:
        self.provider = provider
        self.enabled = not isinstance(provider, NoOpTracerProvider)
        if isinstance(provider, SdkTracerProvider) and \
                not isinstance(provider.id_generator, _RunSpanIds):
            raise ValueError("SteadTracing needs a provider made by stead.tracing."
                             "configure_tracing (run spans need its id generator)")
        self.capture_content = capture_content
        """Record prompts, completions, tool arguments/results and memory texts (redacted)."""
        self.redact = redact
        self.tracer = provider.get_tracer(TRACER_NAME)
        self.interceptor = SteadTracingInterceptor(self) if self.enabled else None

    @classmethod
    def from_settings(cls, telemetry: TelemetrySettings, *, exporters: Sequence[SpanExporter] = (),
                      redact: Redact = DEFAULT_REDACTOR.text,
                      service_name: str = "stead-worker") -> SteadTracing:
        """:func:`configure_tracing` with ``STEAD_CAPTURE_CONTENT``; the caller owns it."""
        return cls(configure_tracing(telemetry, exporters=exporters, redact=redact,
                                     service_name=service_name),
                   capture_content=telemetry.capture_content, redact=redact)

    @property
    def interceptors(self) -> list[SteadTracingInterceptor]:
        """For ``Client.connect(interceptors=...)`` or ``Worker(interceptors=...)`` — one of
        the two, never both (spans would be made twice). Empty when tracing is off."""
        return [self.interceptor] if self.interceptor is not None else []

    def shutdown(self) -> None:
        """Export what is buffered and stop the processors (no-op providers: nothing)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # --------------------------------------------------------------- spans (activities)

    @contextmanager
    def _span(self, name: str, kind: SpanKind, attributes: Attributes) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, kind=kind, attributes=attributes,
                                               record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as err:  # cancelled (timed-out) attempts fail too
                self._failed(span, err)
                raise

    def _failed(self, span: Span, err: BaseException) -> None:
        kind = _error_type(err)
        message = self.redact(str(err))
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"[:_MAX_STATUS]))
        span.add_event("exception", {"exception.type": type(err).__qualname__,
                                     "exception.message": message})

    def _content(self, value: object) -> str:
        """JSON of ``value`` with every string in it redacted (before encoding, so escapes
        cannot hide a secret from the patterns)."""
        return json.dumps(_walk(value, self.redact), ensure_ascii=False, default=str,
                          separators=(",", ":"))

    @contextmanager
    def chat(self, *, model: str, ref: RunRef, messages: Sequence[Message],
             endpoint: str | None = None, fallback: int = 0) -> Iterator[ChatSpan]:
        """``chat {model}`` around one model call; ``model`` is the client label
        (``openai:gpt-4o-mini``, ``scripted:ops``). Set the response on the yielded span.
        ``endpoint``, ``fallback``: the model's name and place in the agent's chain."""
        if not self.enabled:
            yield _NO_CHAT
            return
        provider, request_model = provider_and_model(model)
        attrs: Attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                             "gen_ai.request.model": request_model, **_run_attributes(ref)}
        if endpoint is not None:
            attrs["stead.model.endpoint"] = endpoint
            attrs["stead.model.fallback"] = fallback
        if self.capture_content:
            system = [m.content for m in messages if m.role == "system" and m.content]
            if system:
                attrs["gen_ai.system_instructions"] = self._content(
                    [{"type": "text", "content": s} for s in system])
            attrs["gen_ai.input.messages"] = self._content(
                [_message(m) for m in messages if m.role != "system"])
        with self._span(f"chat {request_model}", SpanKind.CLIENT, attrs) as span:
            yield ChatSpan(span, self)

    @contextmanager
    def execute_tool(self, tool: str, *, call_id: str, idempotency_key: str, attempt: int,
                     arguments: Mapping[str, object], ref: RunRef,
                     requested_tool: str | None = None) -> Iterator[ToolSpan]:
        """``execute_tool {tool}`` around one attempt of a tool activity; a failure sets
        outcome ``error``, otherwise call :meth:`ToolSpan.finish`."""
        if not self.enabled:
            yield _NO_TOOL
            return
        attrs: Attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                             "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function",
                             "stead.tool.idempotency_key": idempotency_key,
                             "stead.tool.attempt": attempt, **_run_attributes(ref)}
        if requested_tool and requested_tool != tool:
            attrs["stead.tool.fallback_for"] = requested_tool
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = self._content(arguments)
        with self._span(f"execute_tool {tool}", SpanKind.INTERNAL, attrs) as span:
            try:
                yield ToolSpan(span, self)
            except BaseException:
                span.set_attribute("stead.tool.outcome", "error")
                raise

    @contextmanager
    def memory(self, op: Literal["recall", "write"], *, ref: RunRef, backend: str,
               embedder: str, namespaces: Sequence[str],
               texts: Sequence[str] = ()) -> Iterator[MemorySpan]:
        """``memory.recall`` / ``memory.write`` around one memory activity attempt;
        ``texts`` (the query, or the notes) are content."""
        if not self.enabled:
            yield _NO_MEMORY
            return
        attrs: Attributes = {"stead.memory.operation": op, "stead.memory.backend": backend,
                             "stead.memory.embedder": embedder,
                             "stead.memory.namespaces": list(namespaces), **_run_attributes(ref)}
        if self.capture_content and texts:
            attrs["stead.memory.texts"] = self._content(list(texts))
        with self._span(f"memory.{op}", SpanKind.INTERNAL, attrs) as span:
            yield MemorySpan(span)

    @contextmanager
    def embeddings(self, *, embedder: str, inputs: int) -> Iterator[None]:
        """``embeddings {model}`` around one embedding request of ``inputs`` texts."""
        if not self.enabled:
            yield
            return
        provider, model = provider_and_model(embedder)
        with self._span(f"embeddings {model}", SpanKind.CLIENT, {
                "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": provider,
                "gen_ai.request.model": model, "stead.embeddings.inputs": inputs}):
            yield

    def decisions(self, rows: Sequence[DecisionRow]) -> None:
        """One ``stead.decision`` event per decision row, on the current span (the span of
        the activity that just wrote them to the ledger)."""
        if not self.enabled or not rows:
            return
        span = otel.get_current_span()
        if not span.is_recording():
            return
        for r in rows:
            policy_id, _, version = r.policy.rpartition("@")
            attrs: Attributes = {"stead.decision.kind": r.kind, "stead.decision": r.decision,
                                 "stead.decision.seq": r.seq, "stead.step": r.step,
                                 "stead.decision.actor": r.actor,
                                 "stead.policy.id": policy_id or r.policy}
            if version.isdigit():
                attrs["stead.policy.version"] = int(version)
            risk = r.data.get("risk")
            if isinstance(risk, int | float) and not isinstance(risk, bool):
                attrs["stead.risk.score"] = float(risk)
            tool = r.data.get("tool")
            if isinstance(tool, str):
                attrs["gen_ai.tool.name"] = tool
            if self.capture_content and r.reason:
                attrs["stead.decision.reason"] = self.redact(r.reason)
            span.add_event("stead.decision", attrs)


NO_TRACING: Final = SteadTracing(NoOpTracerProvider())
"""The default of every activity class: tracing off, nothing recorded."""


class ChatSpan:
    """The ``chat`` span of one model call."""

    def __init__(self, span: Span, tracing: SteadTracing | None) -> None:
        self.span = span
        self._tracing = tracing

    def response(self, turn: ModelTurn) -> None:
        """Record what the model answered: models, tokens, finish reason (and content)."""
        if self._tracing is None:
            return
        attrs: Attributes = {"gen_ai.usage.input_tokens": turn.usage.input_tokens,
                             "gen_ai.usage.output_tokens": turn.usage.output_tokens,
                             "gen_ai.response.finish_reasons": [turn.finish_reason]}
        if turn.model:
            attrs["gen_ai.response.model"] = turn.model
        if turn.tool_calls:
            attrs["stead.response.tool_calls"] = len(turn.tool_calls)
        if self._tracing.capture_content:
            out = _message(Message(role="assistant", content=turn.content,
                                   tool_calls=turn.tool_calls))
            attrs["gen_ai.output.messages"] = self._tracing._content(
                [{**out, "finish_reason": turn.finish_reason}])
        self.span.set_attributes(attrs)


class ToolSpan:
    """The ``execute_tool`` span of one tool attempt."""

    def __init__(self, span: Span, tracing: SteadTracing | None) -> None:
        self.span = span
        self._tracing = tracing

    def finish(self, outcome: str, result: Mapping[str, object] | None = None) -> None:
        """``outcome``: ok, replayed (the ledger already had the result), reconciled."""
        if self._tracing is None:
            return
        self.span.set_attribute("stead.tool.outcome", outcome)
        if self._tracing.capture_content and result is not None:
            self.span.set_attribute("gen_ai.tool.call.result", self._tracing._content(result))


class MemorySpan:
    """The span of one memory recall or write."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def items(self, ids: Sequence[str], scores: Sequence[float] = ()) -> None:
        """What was recalled (with scores) or written."""
        if self.span is None:
            return
        self.span.set_attribute("stead.memory.items", len(ids))
        if scores:
            self.span.set_attribute("stead.memory.top_score", max(scores))


_NO_CHAT: Final = ChatSpan(otel.INVALID_SPAN, None)
_NO_TOOL: Final = ToolSpan(otel.INVALID_SPAN, None)
_NO_MEMORY: Final = MemorySpan(None)


def _run_attributes(ref: RunRef) -> Attributes:
    return {"gen_ai.agent.name": ref.agent, "gen_ai.conversation.id": ref.workflow_id,
            "stead.tenant": ref.tenant, "stead.step": ref.step}


def _message(m: Message) -> dict[str, object]:
    """A chat message in the GenAI conventions' shape (role and typed parts)."""
    parts: list[dict[str, object]] = []
    if m.role == "tool":
        parts.append({"type": "tool_call_response", "id": m.tool_call_id,
                      "response": m.content})
    elif m.content:
        parts.append({"type": "text", "content": m.content})
    for c in m.tool_calls:
        try:
            args: object = json.loads(c.arguments)
        except ValueError:
            args = c.arguments
        parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": args})
    return {"role": m.role, "parts": parts}


def _walk(value: object, redact: Redact) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _walk(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, redact) for v in value]
    return value


def _error_type(err: BaseException) -> str:
    if isinstance(err, ApplicationError) and err.type:
        return err.type
    if isinstance(err, ModelCallError):
        return err.kind
    return type(err).__qualname__


# ------------------------------------------------------------------------- interceptors


@dataclass(frozen=True)
class _InvokeAgentParams:
    """What the workflow hands out of the sandbox to emit its run's ``invoke_agent`` span."""

    parent: Carrier
    """The client's context (``StartWorkflow``), empty when the run was started untraced."""
    trace_id: int
    span_id: int
    agent: str
    requested_agent: str
    tenant: str
    workflow_id: str
    run_id: str
    start_ns: int
    end_ns: int
    status: str
    steps: int | None
    model: str | None
    policy: str | None
    synthetic: str | None
    error_type: str | None
    error: str | None
    input: str
    answer: str | None


class SteadTracingInterceptor(TracingInterceptor):
    """Temporal's tracing interceptor, plus each agent run's ``invoke_agent`` span as the
    parent of everything the run does, and without a span per ``state`` query (clients poll
    it; one span each would bury the run in noise)."""

    def __init__(self, tracing: SteadTracing) -> None:
        super().__init__(tracing.tracer)
        self._tracing = tracing

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _UntracedQueries(super().intercept_client(next), next)

    def workflow_interceptor_class(
            self, input: WorkflowInterceptorClassInput,
    ) -> type[TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)
        input.unsafe_extern_functions[_EXTERN] = self._invoke_agent_span
        return _RunWorkflowInterceptor

    def _invoke_agent_span(self, p: _InvokeAgentParams) -> None:
        """Runs outside the sandbox, once per run (never while replaying)."""
        tracing = self._tracing
        provider, model = provider_and_model(p.model) if p.model else (None, None)
        attrs: Attributes = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": p.agent,
            "gen_ai.conversation.id": p.workflow_id, "temporalWorkflowID": p.workflow_id,
            "temporalRunID": p.run_id, "stead.tenant": p.tenant, "stead.run.status": p.status}
        if p.requested_agent != p.agent:
            attrs["stead.agent.requested"] = p.requested_agent
        if provider and model:
            attrs["gen_ai.provider.name"] = provider
            attrs["gen_ai.request.model"] = model
        if p.steps is not None:
            attrs["stead.run.steps"] = p.steps
        if p.policy:
            attrs["stead.policy"] = p.policy
        if p.synthetic:
            attrs[SYNTHETIC_KEY] = p.synthetic
        if tracing.capture_content:
            attrs["gen_ai.input.messages"] = tracing._content(
                [{"role": "user", "parts": [{"type": "text", "content": p.input}]}])
            if p.answer is not None:
                attrs["gen_ai.output.messages"] = tracing._content(
                    [{"role": "assistant", "parts": [{"type": "text", "content": p.answer}]}])
        parent = self.text_map_propagator.extract(p.parent)
        token = _PINNED.set((p.trace_id, p.span_id))
        try:
            span = self.tracer.start_span(f"invoke_agent {p.agent}", parent,
                                          kind=SpanKind.INTERNAL, attributes=attrs,
                                          start_time=p.start_ns)
        finally:
            _PINNED.reset(token)
        if p.error_type is not None:
            message = tracing.redact(p.error or "")
            span.set_attribute("error.type", p.error_type)
            span.set_status(Status(StatusCode.ERROR,
                                   f"{p.error_type}: {message}"[:_MAX_STATUS]))
            span.add_event("exception", {"exception.type": p.error_type,
                                         "exception.message": message}, timestamp=p.end_ns)
        span.end(end_time=p.end_ns)


class _UntracedQueries(OutboundInterceptor):
    """Traced client calls, except queries, which go straight to the untraced chain."""

    def __init__(self, traced: OutboundInterceptor, plain: OutboundInterceptor) -> None:
        super().__init__(traced)
        self._plain = plain

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        return await self._plain.query_workflow(input)


class _RunWorkflowInterceptor(TracingWorkflowInboundInterceptor):
    """Inside the sandbox: an agent run's spans hang off its ``invoke_agent`` span, whose ids
    are derived from the run; the span itself is emitted when the run ends. A local activity
    gets no ``StartActivity`` span: its attempts run in this worker, with no trip through the
    server, so that span would only repeat its ``RunActivity`` (and cost a span per call)."""

    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        self._client_carrier: Carrier = {}
        self._run_ids: tuple[int, int] | None = None

    def _completed_span(self, span_name: str, *, add_to_outbound: Any = None,
                        **kwargs: Any) -> None:
        if isinstance(add_to_outbound, StartLocalActivityInput):
            # The workflow's context still goes along: RunActivity hangs off invoke_agent.
            add_to_outbound.headers = self._context_to_headers(add_to_outbound.headers)
            return
        super()._completed_span(span_name, add_to_outbound=add_to_outbound, **kwargs)

    def _load_workflow_context_carrier(self) -> Carrier | None:
        if self._workflow_context_carrier:
            return self._workflow_context_carrier
        info = workflow.info()
        if info.workflow_type != WORKFLOW_TYPE:
            return super()._load_workflow_context_carrier()
        header = info.headers.get(self.header_key)
        if header:
            self._client_carrier = self.payload_converter.from_payloads([header])[0] or {}
        context = self.text_map_propagator.extract(self._client_carrier)
        parent = otel.get_current_span(context).get_span_context()
        trace_id, span_id = _run_span_ids(info.workflow_id, info.run_id)
        if parent.is_valid:
            trace_id = parent.trace_id
        self._run_ids = (trace_id, span_id)
        run = SpanContext(trace_id, span_id, is_remote=True,
                          trace_flags=parent.trace_flags if parent.is_valid
                          else TraceFlags(TraceFlags.SAMPLED),
                          trace_state=parent.trace_state if parent.is_valid else None)
        carrier: Carrier = {}
        self.text_map_propagator.inject(carrier, otel.set_span_in_context(NonRecordingSpan(run),
                                                                          context))
        self._workflow_context_carrier = carrier
        return carrier

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        request = input.args[0] if input.args else None
        if workflow.info().workflow_type != WORKFLOW_TYPE or \
                not isinstance(request, RunRequest):
            return await super().execute_workflow(input)
        self._load_workflow_context_carrier()
        try:
            result = await super().execute_workflow(input)
        except asyncio.CancelledError as err:
            self._emit(request, "cancelled", error=err)
            raise
        except workflow.ContinueAsNewError:
            self._emit(request, "continued_as_new")
            raise
        except Exception as err:  # (not GeneratorExit: a coroutine closed at eviction)
            if workflow.is_failure_exception(err):  # else a task failure: the run goes on
                self._emit(request, "failed", error=err)
            raise
        self._emit(request, result.status if isinstance(result, RunResult) else "completed",
                   result=result if isinstance(result, RunResult) else None)
        return result

    def _emit(self, request: RunRequest, status: str, *, result: RunResult | None = None,
              error: BaseException | None = None) -> None:
        if not workflow.in_workflow() or workflow.unsafe.is_replaying() or \
                self._run_ids is None:
            return  # replaying (or evicted): this run's span was emitted, or will be
        info = workflow.info()
        start = info.workflow_start_time
        failed = error is not None or status == "failed"
        error_type = _error_type(error) if error is not None else \
            "RunFailed" if failed else None
        extern = workflow.extern_functions()[_EXTERN]
        extern(_InvokeAgentParams(
            parent=self._client_carrier, trace_id=self._run_ids[0], span_id=self._run_ids[1],
            agent=info.typed_search_attributes.get(_AGENT_KEY) or request.agent,
            requested_agent=request.agent, tenant=request.tenant,
            workflow_id=info.workflow_id, run_id=info.run_id,
            start_ns=_ns(start), end_ns=workflow.time_ns(), status=status,
            steps=result.steps if result else None, model=result.model if result else None,
            policy=result.policy if result else None,
            synthetic=str(request.metadata[SYNTHETIC_KEY])
            if SYNTHETIC_KEY in request.metadata else None,
            error_type=error_type,
            error=str(error) if error is not None else (result.error if result else None),
            input=request.input, answer=result.answer if result else None))


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000



@asynccontextmanager
async def traced_client(settings: Settings, *,
                        service_name: str = "stead-cli") -> AsyncIterator[Client]:
    """A client for a short-lived process (``stead run``): connected like
    :func:`stead.client.connect`, with client spans when tracing is on, flushed on leaving
    (the CLI ends with ``os._exit``, so exit hooks would not run)."""
    tracing = SteadTracing.from_settings(settings.telemetry, service_name=service_name)
    try:
        yield await connect(settings, interceptors=tracing.interceptors)
    finally:
        await asyncio.to_thread(tracing.shutdown)  # the last export is a blocking call
