"""OpenTelemetry metrics recorded by a real worker: in memory, and over OTLP/HTTP on the wire.

The runs are ``tests/test_metrics.py``'s scenario (the ``mx`` agent: a flaky and a broken tool,
a denied and an approved transfer, a refused request, a crashing model, one eval run), so each
instrument's expected value follows from that table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from test_metrics import RESPONSE_MODEL, mx_agent, run_scenario

from stead.agents.refund import RefundWorld, refund_agent
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import DecideInput, DecideOutcome, RunRequest, RunState
from stead.errors import SettingsError
from stead.observability.telemetry import (
    METER_NAME,
    SteadMetrics,
    configure_metrics,
    metrics_endpoint,
    shutdown_metrics,
    temporal_runtime,
)
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.testing.otlp_server import FakeOTLPServer
from stead.worker import WorkerHost

Attrs = frozenset[tuple[str, str | bool | int | float]]


@dataclass(frozen=True)
class Point:
    value: float
    """Counters: the total; histograms: the sum."""
    count: int
    """Histograms: how many values (counters: 1)."""


def collected(reader: InMemoryMetricReader) -> dict[str, dict[Attrs, Point]]:
    """metric name -> attribute set -> its point, from the reader's current collection."""
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, dict[Attrs, Point]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == METER_NAME
            for m in sm.metrics:
                for p in m.data.data_points:
                    key: Attrs = frozenset((p.attributes or {}).items())
                    if isinstance(p, HistogramDataPoint):
                        out.setdefault(m.name, {})[key] = Point(p.sum, p.count)
                    else:
                        assert isinstance(p, NumberDataPoint)
                        out.setdefault(m.name, {})[key] = Point(float(p.value), 1)
    return out


def attrs(**kv: str) -> Attrs:
    return frozenset((k.replace("_", "."), v) for k, v in kv.items())


@pytest.fixture
def mx_settings(stack: EmbeddedStack) -> Settings:
    return stack.resolved_settings().replace(task_queue=f"test-{uuid.uuid4().hex[:10]}",
                                             memory_backend="off")


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    r = InMemoryMetricReader()
    yield r
    r.shutdown()


async def test_a_real_worker_records_every_instrument(
        mx_settings: Settings, ledger: Ledger, reader: InMemoryMetricReader) -> None:
    provider = SdkMeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    tenant = f"otel-{uuid.uuid4().hex[:10]}"
    async with WorkerHost(mx_settings, AgentCatalog([mx_agent()]),
                          meter_provider=provider) as host:
        assert host.client is not None
        await run_scenario(host.client, mx_settings, tenant)
    assert host.meter_provider is provider  # the caller's provider is the caller's to stop
    got = collected(reader)

    runs = {k: p.value for k, p in got["stead.runs"].items()}
    assert runs == {
        attrs(stead_agent="mx", stead_status="completed"): 3,
        attrs(stead_agent="mx", stead_status="completed", stead_synthetic="eval"): 1,
        attrs(stead_agent="mx", stead_status="denied"): 1,
        attrs(stead_agent="mx", stead_status="refused"): 1,
        attrs(stead_agent="mx", stead_status="failed"): 1}
    assert sum(p.count for p in got["stead.run.duration"].values()) == 7

    tool = {k: p.count for k, p in got["stead.tool.duration"].items()}
    assert tool == {attrs(stead_tool="lookup", stead_outcome="ok"): 2,
                    attrs(stead_tool="flaky", stead_outcome="error"): 1,
                    attrs(stead_tool="flaky", stead_outcome="ok"): 1,
                    attrs(stead_tool="broken", stead_outcome="error"): 2,
                    attrs(stead_tool="transfer", stead_outcome="ok"): 1}
    assert {k: p.value for k, p in got["stead.tool.failures"].items()} == {
        attrs(stead_tool="flaky", error_type="RuntimeError"): 1,
        attrs(stead_tool="broken", error_type="ValueError"): 2}
    assert {k: p.value for k, p in got["stead.tool.retries"].items()} == {
        attrs(stead_tool="flaky"): 1, attrs(stead_tool="broken"): 1}

    model = {k: p.count for k, p in got["stead.model.duration"].items()}
    assert model == {
        frozenset({("gen_ai.request.model", "scripted:mx"), ("gen_ai.provider.name", "stead"),
                   ("stead.status", "ok")}): 10,
        frozenset({("gen_ai.request.model", "scripted:mx"), ("gen_ai.provider.name", "stead"),
                   ("stead.status", "error")}): 1}
    common = {("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "stead"),
              ("gen_ai.request.model", "scripted:mx"), ("gen_ai.response.model", RESPONSE_MODEL)}
    tokens = got["gen_ai.client.token.usage"]
    assert tokens == {frozenset({*common, ("gen_ai.token.type", "input")}): Point(1000, 10),
                      frozenset({*common, ("gen_ai.token.type", "output")}): Point(100, 10)}

    [(key, wait)] = got["stead.approval.wait"].items()
    assert key == attrs(stead_agent="mx", stead_outcome="approved")
    rows = await ledger.pool.fetch(
        "select d.created_at from stead_decisions d join stead_runs r using (workflow_id, run_id)"
        " where r.tenant = $1 and d.kind in ('approval_requested', 'approval_decided')"
        " order by d.seq", tenant)
    assert wait.count == 1
    assert wait.value == pytest.approx((rows[1]["created_at"] - rows[0]["created_at"])
                                       .total_seconds())

    guards = {(dict(k)["stead.kind"], dict(k)["stead.decision"]): p.value
              for k, p in got["stead.guardrail.decisions"].items()}
    assert guards == {("gate", "allow"): 4, ("gate", "ask"): 1, ("gate", "deny"): 1,
                      ("route", "allow"): 6, ("route", "refuse"): 1}
    provider.shutdown()


async def test_metrics_reach_an_otlp_receiver_over_http(mx_settings: Settings) -> None:
    """End to end: the worker's own provider exports protobuf over OTLP/HTTP, and the Temporal
    SDK's runtime metrics go to the same endpoint."""
    async with FakeOTLPServer() as srv:
        settings = mx_settings.replace(
            otel_exporter_otlp_endpoint=srv.endpoint,
            metrics_export_interval_seconds=0.5)
        async with WorkerHost(settings, AgentCatalog([mx_agent()])) as host:
            assert host.client is not None
            await run_scenario(host.client, settings, f"otlp-{uuid.uuid4().hex[:10]}")
            await srv.wait_until(
                lambda s: any(n.startswith("temporal_") for n in s.metric_names()),
                what="Temporal SDK metrics")
        # Stopping the host shut its provider down, which pushed the final figures.
        assert host.meter_provider is None

    assert {"stead.runs", "stead.run.duration", "stead.tool.duration", "stead.tool.failures",
            "stead.tool.retries", "stead.model.duration", "gen_ai.client.token.usage",
            "stead.approval.wait", "stead.guardrail.decisions"} <= srv.metric_names()
    completed = srv.latest("stead.runs", **{"stead.agent": "mx", "stead.status": "completed"})
    assert {p.attributes.get("stead.synthetic"): p.value for p in completed} == {None: 3,
                                                                                 "eval": 1}
    assert {(p.kind, p.scope, p.resource["service.name"]) for p in completed} == {
        ("sum", "stead", "stead-worker")}
    [retries] = srv.latest("stead.tool.retries", **{"stead.tool": "broken"})
    assert retries.value == 1
    [wait] = srv.latest("stead.approval.wait")
    assert (wait.kind, wait.count, wait.unit) == ("histogram", 1, "s")
    inputs = srv.latest("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"})
    assert [(p.count, p.sum) for p in inputs] == [(10, 1000)]
    assert srv.refused == 0


async def test_exports_go_on_after_the_receiver_rejects_one() -> None:
    """A rejected export (400: the exporter does not retry it) loses that push only; the next
    one carries the cumulative totals."""
    async with FakeOTLPServer() as srv:
        settings = Settings(otel_exporter_otlp_endpoint=srv.endpoint,
                            metrics_export_interval_seconds=0.2)
        provider = configure_metrics(settings.telemetry)
        metrics = SteadMetrics(provider.get_meter(METER_NAME))
        srv.refuse(400)
        metrics.tool_attempt(tool="t", outcome="ok", seconds=0.01, attempt=1)
        await srv.wait_for("stead.tool.duration")
        # Off the loop: the last export goes to this loop's server.
        await asyncio.to_thread(shutdown_metrics, provider)
    assert srv.refused == 1
    assert srv.latest("stead.tool.duration")[0].count == 1


# ---------------------------------------------------------------------------- settings


def test_no_exporter_configured_means_no_op_instruments() -> None:
    settings = Settings()
    provider = configure_metrics(settings.telemetry)
    assert isinstance(provider, NoOpMeterProvider)
    assert not SteadMetrics(provider.get_meter(METER_NAME)).enabled
    assert temporal_runtime(settings.telemetry) is None
    off = Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318", metrics_exporter="none")
    assert isinstance(configure_metrics(off.telemetry), NoOpMeterProvider)
    assert temporal_runtime(off.telemetry) is None


def test_exporter_choice_from_settings() -> None:
    auto = Settings(otel_exporter_otlp_endpoint="http://collector:4318/")
    assert metrics_endpoint(auto.telemetry) == "http://collector:4318/v1/metrics"
    console = configure_metrics(Settings(metrics_exporter="console").telemetry)
    assert isinstance(console, SdkMeterProvider)
    assert SteadMetrics(console.get_meter(METER_NAME)).enabled
    console.shutdown()
    with pytest.raises(SettingsError, match="needs OTEL_EXPORTER_OTLP_ENDPOINT"):
        configure_metrics(Settings(metrics_exporter="otlp").telemetry)
    with pytest.raises(SettingsError, match="expected an http"):
        configure_metrics(Settings(otel_exporter_otlp_endpoint="collector:4318").telemetry)


async def test_pending_approvals_gauge_follows_runs_waiting_for_a_person(
        mx_settings: Settings, reader: InMemoryMetricReader, tmp_path: Path) -> None:
    # An agent name of this test's own: the gauge counts cluster-wide, per agent.
    name = f"refund-{uuid.uuid4().hex[:6]}"
    agent = dataclasses.replace(refund_agent(RefundWorld(tmp_path / "w.sqlite")), name=name)
    provider = SdkMeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    gauge = "stead.approvals.pending"
    key = attrs(stead_agent=name)

    async def settles_at(host: WorkerHost, n: int) -> None:
        assert host.pending_approvals is not None
        for _ in range(100):  # visibility is eventually consistent
            await host.pending_approvals.refresh()
            if host.pending_approvals.counts.get(name) == n:
                break
            await asyncio.sleep(0.1)
        assert collected(reader)[gauge][key].value == n

    async with WorkerHost(mx_settings, AgentCatalog([agent]), meter_provider=provider) as host:
        assert host.client is not None
        await settles_at(host, 0)
        handle = await start_run(host.client, RunRequest(
            agent=name, input="Refund €300 on ORD-1005, headphones stopped working"),
            temporal=mx_settings.temporal)
        for _ in range(100):
            state = await handle.query("state", result_type=RunState)
            if state.pending_approvals:
                break
            await asyncio.sleep(0.1)
        await settles_at(host, 1)

        approval = state.pending_approvals[0].approval_id
        await handle.execute_update("decide", DecideInput(
            approval_id=approval, by="lead", approved=True), result_type=DecideOutcome)
        assert (await handle.result()).status == "completed"
        await settles_at(host, 0)
    provider.shutdown()
