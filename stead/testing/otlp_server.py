"""A minimal OTLP/HTTP receiver, so metric and trace export is tested over the wire, not
through a mock.

It accepts what a collector's ``otlphttp`` receiver accepts on ``POST /v1/metrics`` and
``POST /v1/traces``: protobuf or JSON ``Export*ServiceRequest`` bodies, gzip or deflate
encoded; and it can refuse metric exports on request, the way a collector under pressure does::

    async with FakeOTLPServer() as srv:       # point OTEL_EXPORTER_OTLP_ENDPOINT at srv.endpoint
        ...
        await srv.wait_for("stead.runs")
        [runs] = srv.latest("stead.runs", **{"stead.status": "completed"})
        assert runs.value == 1

Every data point of every export is kept as a :class:`MetricPoint` (cumulative sums repeat in
each export: :meth:`FakeOTLPServer.latest` returns the newest export's points), every span as
a :class:`ReceivedSpan` (``await srv.wait_for_spans("invoke_agent ops")``). Run it standalone
to see what a worker exports::

    python -m stead.testing.otlp_server --port 4318
    export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from stead.testing._http import LocalHTTPServer

__all__ = ["AttributeValue", "FakeOTLPServer", "MetricPoint", "PointKind", "ReceivedSpan",
           "SpanEvent"]

AttributeValue = str | bool | int | float | bytes | list["AttributeValue"] | None
PointKind = Literal["sum", "gauge", "histogram", "exponential_histogram", "summary"]


@dataclass(frozen=True)
class MetricPoint:
    """One data point of one export, flattened with its metric's and resource's context."""

    name: str
    kind: PointKind
    attributes: dict[str, AttributeValue]
    value: float | None = None
    """Sums and gauges."""
    count: int | None = None
    """Histograms and summaries: how many values."""
    sum: float | None = None
    """Histograms and summaries: their total."""
    unit: str = ""
    scope: str = ""
    """Instrumentation scope (the meter's name)."""
    resource: dict[str, AttributeValue] = field(default_factory=dict)
    export: int = 0
    """Index of the export request the point came in (0 is the first)."""


@dataclass(frozen=True)
class SpanEvent:
    """One event of a received span (e.g. ``stead.decision``, ``exception``)."""

    name: str
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span of one trace export, decoded from ``ExportTraceServiceRequest``."""

    name: str
    trace_id: str
    """32 hex digits, as trace viewers show it."""
    span_id: str
    """16 hex digits."""
    parent_span_id: str
    """16 hex digits; empty for a root span."""
    kind: str
    """``SERVER``, ``CLIENT``, ``INTERNAL``, ``PRODUCER``, ``CONSUMER`` (or ``UNSPECIFIED``)."""
    attributes: dict[str, AttributeValue]
    events: list[SpanEvent]
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str
    start_ns: int
    end_ns: int
    scope: str
    """Instrumentation scope (the tracer's name)."""
    resource: dict[str, AttributeValue] = field(default_factory=dict)
    export: int = 0
    """Index of the export request the span came in (0 is the first)."""


def _value(v: AnyValue) -> AttributeValue:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return str({kv.key: _value(kv.value) for kv in v.kvlist_value.values})
    if which is None:
        return None
    result: str | bool | int | float | bytes = getattr(v, which)
    return result


def _attrs(kvs: Sequence[KeyValue]) -> dict[str, AttributeValue]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _points(metric: Metric, *, scope: str, resource: dict[str, AttributeValue],
            export: int) -> list[MetricPoint]:
    def make(kind: PointKind, attrs: Sequence[KeyValue], *, value: float | None = None,
             count: int | None = None, total: float | None = None) -> MetricPoint:
        return MetricPoint(name=metric.name, kind=kind, attributes=_attrs(attrs), value=value,
                           count=count, sum=total, unit=metric.unit, scope=scope,
                           resource=resource, export=export)

    which = metric.WhichOneof("data")
    if which in ("sum", "gauge"):
        numbers = metric.sum.data_points if which == "sum" else metric.gauge.data_points
        return [make(which, p.attributes,
                     value=p.as_double if p.HasField("as_double") else p.as_int)
                for p in numbers]
    if which == "histogram":
        return [make("histogram", p.attributes, count=p.count, total=p.sum)
                for p in metric.histogram.data_points]
    if which == "exponential_histogram":
        return [make("exponential_histogram", p.attributes, count=p.count, total=p.sum)
                for p in metric.exponential_histogram.data_points]
    if which == "summary":
        return [make("summary", p.attributes, count=p.count, total=p.sum)
                for p in metric.summary.data_points]
    return []


def _span(span: Span, *, scope: str, resource: dict[str, AttributeValue],
          export: int) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=_attrs(span.attributes),
        events=[SpanEvent(e.name, _attrs(e.attributes)) for e in span.events],
        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        status_message=span.status.message, start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano, scope=scope, resource=resource, export=export)


class FakeOTLPServer(LocalHTTPServer):
    """Receives OTLP/HTTP exports on 127.0.0.1 and keeps them for assertions."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 access_log: bool = False) -> None:
        super().__init__(host=host, port=port, access_log=access_log)
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.refused = 0
        """Exports answered with an injected error status."""
        self._points: list[MetricPoint] = []
        self._spans: list[ReceivedSpan] = []
        self._refuse: list[int] = []
        self._arrived = asyncio.Condition()

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/metrics", self._metrics)
        app.router.add_post("/v1/traces", self._traces)
        return app

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (signal paths are appended)."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ what arrived

    def points(self, name: str | None = None) -> list[MetricPoint]:
        """Every point received (of metric ``name``), oldest export first."""
        return [p for p in self._points if name is None or p.name == name]

    def latest(self, name: str, **attributes: AttributeValue) -> list[MetricPoint]:
        """Points of ``name`` from the newest export that has it, whose attributes include
        ``attributes`` — for cumulative metrics, the current totals."""
        mine = self.points(name)
        if not mine:
            return []
        newest = max(p.export for p in mine)
        return [p for p in mine if p.export == newest
                and all(p.attributes.get(k) == v for k, v in attributes.items())]

    def metric_names(self) -> set[str]:
        return {p.name for p in self._points}

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """Every span received (named ``name``), in arrival order."""
        return [s for s in self._spans if name is None or s.name == name]

    def span_names(self) -> set[str]:
        return {s.name for s in self._spans}

    async def wait_for_spans(self, *names: str, timeout: float = 30.0) -> None:
        """Until a span of every name in ``names`` has arrived; ``TimeoutError`` says what
        did."""
        try:
            await self.wait_until(lambda srv: set(names) <= srv.span_names(), timeout=timeout,
                                  what=f"spans {', '.join(sorted(names))}")
        except TimeoutError as err:
            raise TimeoutError(f"{err}; spans received: {sorted(self.span_names())}") from None

    async def wait_for(self, *names: str, timeout: float = 30.0) -> None:
        """Until every metric in ``names`` has arrived; ``TimeoutError`` says what did."""
        await self.wait_until(lambda srv: set(names) <= srv.metric_names(), timeout=timeout,
                              what=f"metrics {', '.join(sorted(names))}")

    async def wait_until(self, predicate: Callable[[FakeOTLPServer], bool], *,
                         timeout: float = 30.0, what: str = "the expected metrics") -> None:
        """Until ``predicate(self)`` holds after an export; ``TimeoutError`` says what came."""
        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: predicate(self)),
                                       timeout)
            except TimeoutError:
                raise TimeoutError(f"{what}: not received in {timeout:g}s; received: "
                                   f"{sorted(self.metric_names())}") from None

    # ------------------------------------------------------------------ faults

    def refuse(self, *statuses: int) -> None:
        """Answer the next exports with these HTTP statuses (e.g. 503), one each."""
        self._refuse.extend(statuses)

    # ------------------------------------------------------------------ handlers

    async def _decode(self, request: web.Request, message: Message) -> bool:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if request.content_type == "application/json":
                json_format.Parse(body, message)
            else:
                message.ParseFromString(body)
        except (OSError, zlib.error, DecodeError, json_format.ParseError):
            return False
        return True

    def _reply(self, request: web.Request, response: Message) -> web.Response:
        if request.content_type == "application/json":
            return web.Response(text=json_format.MessageToJson(response),
                                content_type="application/json")
        return web.Response(body=response.SerializeToString(),
                            content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._refuse:
            self.refused += 1
            return web.Response(status=self._refuse.pop(0), text="refused (injected fault)")
        export = ExportMetricsServiceRequest()
        if not await self._decode(request, export):
            return web.Response(status=400, text="not an OTLP ExportMetricsServiceRequest")
        index = len(self.metric_requests)
        self.metric_requests.append(export)
        for rm in export.resource_metrics:
            resource = _attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self._points.extend(_points(metric, scope=sm.scope.name, resource=resource,
                                                export=index))
        async with self._arrived:
            self._arrived.notify_all()
        return self._reply(request, ExportMetricsServiceResponse())

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        if not await self._decode(request, export):
            return web.Response(status=400, text="not an OTLP ExportTraceServiceRequest")
        index = len(self.trace_requests)
        self.trace_requests.append(export)
        for rs in export.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                self._spans.extend(_span(s, scope=ss.scope.name, resource=resource, export=index)
                                   for s in ss.spans)
        async with self._arrived:
            self._arrived.notify_all()
        return self._reply(request, ExportTraceServiceResponse())


# ---------------------------------------------------------------------------- standalone


async def _serve(*, host: str, port: int) -> None:
    async with FakeOTLPServer(host=host, port=port) as srv:
        print(f"OTLP/HTTP receiver at {srv.endpoint}; Ctrl-C to stop", flush=True)
        print(f"  export OTEL_EXPORTER_OTLP_ENDPOINT={srv.endpoint}", flush=True)
        seen = seen_spans = 0
        while True:
            async with srv._arrived:
                await srv._arrived.wait()
            for p in srv.points()[seen:]:
                shown = p.value if p.value is not None else f"count={p.count} sum={p.sum}"
                print(f"{p.scope or '-'} {p.name} {p.attributes} {shown}", flush=True)
            seen = len(srv.points())
            for s in srv.spans()[seen_spans:]:
                print(f"span {s.trace_id}/{s.span_id} <- {s.parent_span_id or '-'} {s.name} "
                      f"{s.status} {s.attributes}", flush=True)
            seen_spans = len(srv.spans())


def main(argv: Sequence[str] | None = None) -> None:
    """Print every data point and span received until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m stead.testing.otlp_server",
                                     description="Minimal OTLP/HTTP metrics and traces "
                                                 "receiver.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(host=args.host, port=args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
