"""OpenTelemetry metrics a worker exports, and the instruments activities record them with.

    provider = configure_metrics(settings.telemetry)  # OTLP/HTTP, console, or a no-op provider
    metrics = SteadMetrics(provider.get_meter("stead"))
    worker = build_worker(..., metrics=metrics)     # activities record where the work happens
    ...
    shutdown_metrics(provider)                      # pushes what is left

Where metrics go is a setting (``STEAD_METRICS_EXPORTER``): ``auto`` exports over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and nowhere otherwise, ``otlp`` insists on it,
``console`` prints them (a quick look without a collector), ``none`` turns them off. Off costs
nothing: the instruments are the API's no-ops. When OTLP is on, the worker's Temporal client
also gets a :func:`temporal_runtime` that exports the Temporal SDK's own metrics (task
latencies, poll counts, slots) to the same endpoint.

Instruments (durations in seconds, per the OpenTelemetry conventions):

=============================  =========  =============================================
``stead.runs``                 counter    finished runs, by ``stead.agent``,
``stead.status``
                                          (and ``stead.synthetic`` for eval/replay runs)
``stead.run.duration``         histogram  start to finish of a run
``stead.tool.duration``        histogram  one tool attempt, by ``stead.tool``, ``stead.outcome``
``stead.tool.failures``        counter    failed tool attempts, by tool and ``error.type``
``stead.tool.retries``         counter    tool attempts beyond the first, by tool
``stead.model.duration``       histogram  one model call attempt, by model and status
``gen_ai.client.token.usage``  histogram  tokens per call (GenAI semantic conventions)
``stead.approval.wait``        histogram  approval requested to decided, by outcome
``stead.guardrail.decisions``  counter    guardrail decisions, by ``stead.kind``, ``stead.decision``
=============================  =========  =============================================

Tenants with spending windows (``STEAD_TENANT_QUOTAS``) add two counters, recorded by the model
activity: ``stead.tenant.spend`` (USD, the settled cost of their model calls, by
``stead.tenant``) and ``stead.tenant.budget_refusals`` (calls refused because they would pass a
window's cap, by ``stead.tenant`` and ``stead.window``: day or month).

Run-level figures (runs, run duration, approval waits, guardrail decisions) are recorded by the
``run.finish`` activity from the run's ledger rows: the workflow decides them but must not do
I/O, and a run's decisions reach the ledger in batches that retried activities resend, so the
finished run is the one place each is counted exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    NoOpMeter,
    NoOpMeterProvider,
    Observation,
)
from temporalio.client import Client
from temporalio.runtime import OpenTelemetryConfig, Runtime, TelemetryConfig

from stead.client import connect
from stead.contracts.models import SYNTHETIC_KEY
from stead.errors import SettingsError
from stead.settings import Settings, TelemetrySettings
from stead.storage.ledger import FinishedRun

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = [
    "GUARDRAIL_KINDS",
    "METER_NAME",
    "NO_METRICS",
    "PendingApprovals",
    "SteadMetrics",
    "configure_metrics",
    "connect_client",
    "metrics_endpoint",
    "otlp_endpoint",
    "shutdown_metrics",
    "temporal_runtime",
]

log = logging.getLogger("stead.telemetry")

METER_NAME: Final = "stead"

GUARDRAIL_KINDS: Final = ("route", "gate", "call_rejected", "output_rejected", "approval_edit")
"""Decision kinds that are guardrail verdicts (the rest are approvals, fallbacks, failures)."""

# Bucket boundaries in seconds (the SDK's defaults are shaped for milliseconds).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0)
_RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                1800.0, 3600.0)
_WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                 14400.0, 43200.0, 86400.0)
# From the GenAI semantic conventions for gen_ai.client.token.usage.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)


class SteadMetrics:
    """stead's instruments, made once from one Meter and shared by the activity classes.

    ``SteadMetrics(NoOpMeter("stead"))`` (:data:`NO_METRICS`) records nothing and costs
    nothing; :attr:`enabled` lets callers skip work done only to measure (a ledger read)."""

    def __init__(self, meter: Meter) -> None:
        self.enabled = not isinstance(meter, NoOpMeter)
        self.runs = meter.create_counter(
            "stead.runs", unit="{run}", description="Runs finished, by agent and final status")
        self.run_duration = meter.create_histogram(
            "stead.run.duration", unit="s", description="Wall time of a run, start to finish",
            explicit_bucket_boundaries_advisory=_RUN_BUCKETS)
        self.tool_duration = meter.create_histogram(
            "stead.tool.duration", unit="s", description="Duration of one tool attempt",
            explicit_bucket_boundaries_advisory=_CALL_BUCKETS)
        self.tool_failures = meter.create_counter(
            "stead.tool.failures", unit="{attempt}", description="Tool attempts that failed")
        self.tool_retries = meter.create_counter(
            "stead.tool.retries", unit="{attempt}",
            description="Tool attempts beyond the first of their call")
        self.model_duration = meter.create_histogram(
            "stead.model.duration", unit="s", description="Duration of one model call attempt",
            explicit_bucket_boundaries_advisory=_CALL_BUCKETS)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
        self.approval_wait = meter.create_histogram(
            "stead.approval.wait", unit="s",
            description="Time from an approval request to its decision (or expiry)",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS)
        self.guardrail_decisions = meter.create_counter(
            "stead.guardrail.decisions", unit="{decision}",
            description="Guardrail verdicts: routing, gate, schema checks, output validation")
        self.tenant_spend_usd = meter.create_counter(
            "stead.tenant.spend", unit="USD",
            description="Settled cost of model calls, by tenant (its spending windows)")
        self.parked_evictions = meter.create_counter(
            "stead.worker.parked_evictions", unit="{run}",
            description="Runs the worker evicted from its cache while they waited on a person")
        self.tenant_refusals = meter.create_counter(
            "stead.tenant.budget_refusals", unit="{call}",
            description="Model calls refused because they would pass a tenant's spending window")
        self.admissions = meter.create_counter(
            "stead.admission.decisions", unit="{decision}",
            description="Admission answers per tenant: admitted, queued (each ask), refused")
        self.admission_queue = meter.create_up_down_counter(
            "stead.admission.queued", unit="{run}",
            description="Runs waiting for their tenant's admission (summed over workers)")

    # --------------------------------------------------------------- per call (activities)

    def tool_attempt(self, *, tool: str, outcome: str, seconds: float, attempt: int,
                     error_type: str | None = None) -> None:
        """One tool attempt finished (``outcome``: ok, error, replayed, reconciled)."""
        self.tool_duration.record(seconds, {"stead.tool": tool, "stead.outcome": outcome})
        if attempt > 1:
            self.tool_retries.add(1, {"stead.tool": tool})
        if outcome == "error":
            self.tool_failures.add(1, {"stead.tool": tool, "error.type": error_type or "_OTHER"})

    def model_call(self, *, model: str, response_model: str | None, status: str,
                   seconds: float, input_tokens: int, output_tokens: int,
                   endpoint: str = "", fallback: int = 0) -> None:
        """One model call attempt finished; ``model`` is the client label
        (``openai:gpt-4o-mini``, ``scripted:ops``). A model of an agent's chain adds its name
        (``stead.model.endpoint``) and place (``stead.model.fallback``, 0 the first choice)."""
        provider, request_model = _provider_and_model(model)
        chain: dict[str, str | int] = ({"stead.model.endpoint": endpoint,
                                        "stead.model.fallback": fallback} if endpoint else {})
        self.model_duration.record(seconds, {"gen_ai.request.model": request_model,
                                             "gen_ai.provider.name": provider,
                                             "stead.status": status, **chain})
        if status != "ok":
            return
        attrs: dict[str, str | int] = {"gen_ai.operation.name": "chat",
                                       "gen_ai.provider.name": provider,
                                       "gen_ai.request.model": request_model, **chain}
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        self.token_usage.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
        self.token_usage.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})

    def tenant_spend(self, *, tenant: str, usd: float) -> None:
        """A model call of ``tenant`` settled at ``usd`` (recorded only for tenants with
        spending windows: the others are never reserved nor settled)."""
        self.tenant_spend_usd.add(usd, {"stead.tenant": tenant})

    def tenant_budget_refusal(self, *, tenant: str, window: str) -> None:
        """A model call of ``tenant`` was refused: it would pass its ``window`` cap."""
        self.tenant_refusals.add(1, {"stead.tenant": tenant, "stead.window": window})
    def admission(self, *, tenant: str, verdict: str, was_queued: bool) -> None:
        """A run asked for admission (``run.admit``); ``was_queued``: it waited before."""
        self.admissions.add(1, {"stead.tenant": tenant, "stead.verdict": verdict})
        if verdict == "queued" and not was_queued:
            self.admission_queue.add(1, {"stead.tenant": tenant})
        elif verdict != "queued" and was_queued:
            self.admission_queue.add(-1, {"stead.tenant": tenant})

    def admission_left_queue(self, *, tenant: str) -> None:
        """A queued run left the queue without being admitted (cancelled)."""
        self.admission_queue.add(-1, {"stead.tenant": tenant})

    # --------------------------------------------------------------- per run (run.finish)

    COUNTED: Final = (*GUARDRAIL_KINDS, "approval_requested", "approval_decided")
    """The decision kinds :meth:`finished_run` counts: the ``counting`` of ``run.finish``'s
    ``Ledger.finish_run``."""

    @property
    def counting(self) -> Sequence[str] | None:
        """What ``run.finish`` asks ``Ledger.finish_run`` to read back: None when off."""
        return self.COUNTED if self.enabled else None

    def finished_run(self, run: FinishedRun | None, *, status: str) -> None:
        """Count a finished run, its duration, approval waits and guardrail verdicts, from
        what ``Ledger.finish_run`` read back (all its rows written by then). A failure is
        logged, never raised: measuring must not fail a run."""
        if not self.enabled or run is None:
            return
        try:
            self._count(run, status)
        except Exception:
            log.warning("run metrics of a %s run of %s not recorded", status, run.agent,
                        exc_info=True)

    def _count(self, run: FinishedRun, status: str) -> None:
        agent = run.agent
        attrs = {"stead.agent": agent, "stead.status": status}
        if run.synthetic:  # eval / counterfactual runs: dashboards can leave them out
            attrs[SYNTHETIC_KEY] = run.synthetic
        self.runs.add(1, attrs)
        if run.seconds is not None:
            self.run_duration.record(run.seconds, attrs)
        requested: dict[str | None, datetime] = {}
        for d in run.decisions:
            if d.kind == "approval_requested":
                requested[d.approval_id] = d.at
            elif d.kind == "approval_decided":
                asked = requested.get(d.approval_id)
                if asked is not None:
                    self.approval_wait.record((d.at - asked).total_seconds(),
                                              {"stead.agent": agent,
                                               "stead.outcome": d.decision})
            else:
                self.guardrail_decisions.add(1, {"stead.agent": agent, "stead.kind": d.kind,
                                                 "stead.decision": d.decision})


NO_METRICS: Final = SteadMetrics(NoOpMeter(METER_NAME))


class PendingApprovals:
    """``stead.approvals.pending``: runs of each agent waiting for a person right now.

    Counted from Temporal's visibility (the ``SteadAwaitingApproval`` search attribute the
    workflow keeps), not from worker memory, so every worker reports the same cluster-wide
    figure: aggregate it with max or last, not sum. :meth:`refresh` runs on the worker's loop
    (``WorkerHost`` every export interval); the gauge's callback only reads the last counts.
    """

    def __init__(self, meter: Meter, client: Client, agents: Sequence[str]) -> None:
        self._client = client
        self._agents = list(agents)
        self.counts: dict[str, int] = {}
        meter.create_observable_gauge(
            "stead.approvals.pending", callbacks=[self._observe], unit="{run}",
            description="Runs waiting for an approval decision, by agent")

    async def refresh(self) -> None:
        counts = {}
        for agent in self._agents:
            query = (f"SteadAgent = '{agent}' AND SteadAwaitingApproval = true "
                     f"AND ExecutionStatus = 'Running'")
            counts[agent] = (await self._client.count_workflows(query)).count
        self.counts = counts

    async def run(self, every: float) -> None:
        """Refresh every ``every`` seconds until cancelled; a failed count keeps the last."""
        while True:
            try:
                await self.refresh()
            except Exception as err:  # visibility hiccups must not stop the worker
                log.warning("counting runs awaiting approval failed: %s", err)
            await asyncio.sleep(every)

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"stead.agent": agent}) for agent, n in self.counts.items()]
"""The default of every activity class: telemetry off, nothing recorded."""


def _provider_and_model(label: str) -> tuple[str, str]:
    """``openai:gpt-4o-mini`` -> (openai, gpt-4o-mini); offline models are stead's own."""
    kind, sep, name = label.partition(":")
    if sep and kind == "openai" and name:
        return "openai", name
    return "stead", label


# ------------------------------------------------------------------------- providers


def otlp_endpoint(telemetry: TelemetrySettings, *, signal: str, mode: str,
                  variable: str) -> str | None:
    """The OTLP/HTTP URL of one signal (``metrics``, ``traces``) when its exporter setting
    ``variable`` (value ``mode``) sends it over OTLP; ``None`` otherwise."""
    endpoint = telemetry.otlp_endpoint
    if mode == "otlp" and not endpoint:
        raise SettingsError(f"{variable}=otlp needs OTEL_EXPORTER_OTLP_ENDPOINT "
                            f"(e.g. http://localhost:4318)")
    if mode not in ("otlp", "auto") or not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r}: expected an http(s) URL "
                            f"of an OTLP/HTTP receiver, e.g. http://localhost:4318")
    # The standard variable names the base URL; the signal path is appended (OTLP spec).
    return f"{endpoint.rstrip('/')}/v1/{signal}"


def metrics_endpoint(telemetry: TelemetrySettings) -> str | None:
    """The OTLP/HTTP metrics URL, when metrics go over OTLP (``None`` otherwise)."""
    return otlp_endpoint(telemetry, signal="metrics", mode=telemetry.metrics_exporter,
                         variable="STEAD_METRICS_EXPORTER")


def configure_metrics(telemetry: TelemetrySettings, *,
                      readers: Sequence[MetricReader] = ()) -> MeterProvider:
    """A MeterProvider exporting where settings say; extra ``readers`` (e.g. the SDK's
    ``InMemoryMetricReader``) are attached too. Nothing configured and no readers: a no-op
    provider. The caller owns it: :func:`shutdown_metrics` pushes the last points."""
    url = metrics_endpoint(telemetry)
    mode = telemetry.metrics_exporter
    if url is None and mode != "console" and not readers:
        return NoOpMeterProvider()

    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    all_readers: list[MetricReader] = list(readers)
    exporter: MetricExporter | None = None
    if url is not None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=url)
    elif mode == "console":
        exporter = ConsoleMetricExporter()
    if exporter is not None:
        all_readers.append(PeriodicExportingMetricReader(
            exporter, export_interval_millis=telemetry.metrics_export_interval_seconds * 1000))
    # Resource.create also reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES.
    resource = Resource.create({"service.name": "stead-worker"})
    # shutdown_on_exit=False: the owner shuts it down (WorkerHost.stop), once.
    return SdkMeterProvider(metric_readers=all_readers, resource=resource,
                            shutdown_on_exit=False)


def shutdown_metrics(provider: MeterProvider) -> None:
    """Export what is left and stop the provider's readers (no-op providers: nothing)."""
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


# ------------------------------------------------------------------------- Temporal SDK


def temporal_runtime(telemetry: TelemetrySettings) -> Runtime | None:
    """A Temporal runtime exporting the SDK's own metrics over OTLP/HTTP, when metrics go
    over OTLP; ``None`` means the default runtime (no SDK metrics exported)."""
    url = metrics_endpoint(telemetry)
    if url is None:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=OpenTelemetryConfig(
        url=url, http=True, durations_as_seconds=True,
        metric_periodicity=timedelta(seconds=telemetry.metrics_export_interval_seconds))))


async def connect_client(settings: Settings) -> Client:
    """Connect like :func:`stead.client.connect`, on :func:`temporal_runtime` when there is
    one, so the worker's polls and tasks show up next to stead's own metrics."""
    return await connect(settings, runtime=temporal_runtime(settings.telemetry))
