"""Building and running one Temporal worker from settings.

    async with WorkerHost(settings, catalog) as host:   # connects, migrates, starts polling
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pkgutil
import signal
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType

from opentelemetry.metrics import MeterProvider, NoOpMeter
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError
from temporalio.worker import (
    Interceptor,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkerDeploymentConfig,
    WorkflowRunner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from stead.activities import defined
from stead.activities.admission import AdmissionActivities
from stead.activities.drift import DriftActivities
from stead.activities.evaluation import EvaluationActivities
from stead.activities.memory import MemoryActivities
from stead.activities.model import ModelActivities, check_reservation_ttl
from stead.activities.runs import RunActivities
from stead.activities.tools import ToolActivities
from stead.authoring.agent import AgentCatalog
from stead.errors import SettingsError
from stead.integrations.llm import ModelClient, OpenAIModel
from stead.integrations.mcp import McpTools
from stead.integrations.model_endpoints import ModelEndpoints
from stead.integrations.model_prices import check_budgets
from stead.observability.logs import RunLogContext
from stead.observability.telemetry import (
    METER_NAME,
    NO_METRICS,
    PendingApprovals,
    SteadMetrics,
    configure_metrics,
    connect_client,
    shutdown_metrics,
)
from stead.observability.tracing import NO_TRACING, SteadTracing
from stead.parking import ParkedEviction
from stead.security.secrets import Redactor, Secrets, install_log_redaction
from stead.settings import ModelSettings, Settings, TemporalSettings
from stead.storage.admission import Admissions
from stead.storage.blobs import BlobStore
from stead.storage.ledger import Ledger, migrate
from stead.storage.memory import Embedder, Memory, check_memory_settings, open_memory
from stead.workflows.registry import WORKFLOWS

log = logging.getLogger("stead.worker")


def _stead_modules() -> tuple[str, ...]:
    """stead's own packages and modules, the workflows' among them, but not the package
    itself (whose import would pull in all the others)."""
    import stead

    return tuple(f"stead.{m.name}" for m in pkgutil.iter_modules(stead.__path__))


# Modules the workflow sandbox may share with the host instead of re-importing per run:
# they are deterministic (no I/O at import or in the functions workflows call).
PASSTHROUGH = (*_stead_modules(), "pydantic", "pydantic_core", "jsonschema",
               "referencing", "rpds", "jsonschema_specifications", "attrs", "annotated_types")


def workflow_runner(sandbox: bool) -> WorkflowRunner:
    """How a worker (and a replayer configured like it) runs stead's workflows:
    ``STEAD_WORKFLOW_SANDBOX`` (``WorkerSettings.workflow_sandbox``) says whether in Temporal's
    sandbox, with stead's modules passed through, or directly."""
    if sandbox:
        return SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))
    return UnsandboxedWorkflowRunner()


def configured_model(models: ModelSettings) -> ModelClient | None:
    """The model server from settings, or None for the agents' offline models."""
    return named_model_factory(models)(f"openai:{models.model}")


def named_model_factory(models: ModelSettings) -> Callable[[str], ModelClient | None]:
    """Models that routing may pick by name (``openai:<model>``), when a key is configured."""
    def make(setting: str) -> ModelClient | None:
        kind, _, name = setting.partition(":")
        if kind != "openai" or not name or models.api_key is None:
            return None
        return OpenAIModel(model=name, api_key=models.api_key.get_secret_value(),
                           base_url=models.base_url, timeout=models.timeout_seconds)
    return make


class NamedModels:
    """``named_model_factory`` that keeps what it made, so the worker's host closes the
    routed models' connections when it stops (their clients live as long as the worker)."""

    def __init__(self, models: ModelSettings) -> None:
        self._make = named_model_factory(models)
        self._made: list[ModelClient] = []

    def __call__(self, setting: str) -> ModelClient | None:
        made = self._make(setting)
        if made is not None:
            self._made.append(made)
        return made

    async def close(self) -> None:
        made, self._made = self._made, []
        for m in made:
            close = getattr(m, "close", None)
            if close is not None:
                await close()


def worker_interceptors(tracing: SteadTracing = NO_TRACING) -> list[Interceptor]:
    """What a worker intercepts with (the replayer uses the same list): spans when tracing is
    on — worker-side only, the host's client stays untraced so no span is made twice — and
    the run's tenant and agent on activity log lines."""
    return [*tracing.interceptors, RunLogContext()]


def deployment_config(temporal: TemporalSettings) -> WorkerDeploymentConfig | None:
    """The Worker Deployment version a worker declares (``STEAD_DEPLOYMENT_NAME``,
    ``STEAD_BUILD_ID``), its runs pinned by default: a run's every workflow task goes to
    workers of the build that started it, so its code never changes under it mid-run. Agents
    in ``STEAD_AUTO_UPGRADE_AGENTS`` are started with an auto-upgrade override instead
    (``stead.client.start_run``). None: no versioning."""
    if temporal.deployment_name is None:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(temporal.deployment_name, temporal.build_id),
        use_worker_versioning=True, default_versioning_behavior=VersioningBehavior.PINNED)


def check_auto_upgrade_agents(temporal: TemporalSettings, catalog: AgentCatalog) -> None:
    """``SettingsError`` when ``STEAD_AUTO_UPGRADE_AGENTS`` names an agent the catalog lacks
    (a typo would silently leave that agent pinned)."""
    unknown = sorted(set(temporal.auto_upgrade_agents) - set(catalog.names()))
    if unknown:
        raise SettingsError(
            f"invalid setting: STEAD_AUTO_UPGRADE_AGENTS names {', '.join(map(repr, unknown))},"
            f" not an agent of this worker (its agents: {', '.join(sorted(catalog.names()))})")


def build_worker(client: Client, settings: Settings, catalog: AgentCatalog, ledger: Ledger, *,
                 model: ModelClient | None = None, task_queue: str | None = None,
                 memory: Memory | None = None, metrics: SteadMetrics = NO_METRICS,
                 tracing: SteadTracing = NO_TRACING, mcp: McpTools | None = None,
                 endpoints: ModelEndpoints | None = None,
                 named_models: Callable[[str], ModelClient | None] | None = None) -> Worker:
    """``mcp``: the MCP servers' sessions (``WorkerHost`` owns and closes them); None builds
    them from the catalog and settings, left open until the process ends. ``endpoints``:
    the agents' model chains; None: checked and built here, unless ``model`` is given, which
    then serves every agent (chains are neither checked nor pinned). ``named_models``: the
    models routing may pick by name (``NamedModels``, which its owner closes); None: made
    here, never closed (a worker that lives as long as its process)."""
    # Tool credentials from settings; everything the activities write to the ledger, and every
    # log record of this process, is redacted with what the settings know to be secret.
    secrets = Secrets.from_settings(settings.security)
    if mcp is None:
        mcp = McpTools.from_catalog(catalog, settings.integrations, secrets=secrets)
    if endpoints is None and model is None:
        endpoints = ModelEndpoints.from_catalog(catalog, settings, secrets=secrets)
    # A budget that cannot work (a cheaper model outside the chain, max_usd on an unpriced
    # model) stops the worker here. A model given by the caller serves every agent (evals,
    # counterfactuals): then the declared chains are checked, not prices.
    check_budgets(catalog, {a: endpoints.chain(a) for a in catalog.names()} if endpoints
                  else {a.name: list(a.models) for a in catalog.agents()},
                  prices=settings.models.prices, priced=endpoints is not None,
                  single_model=model.name if model is not None
                  and model.name.startswith("openai:") else None)
    # Model keys read from variables of the agents' own choosing are redacted too.
    ledger = ledger.redacting(Redactor.from_settings(
        settings, secrets=secrets, also=endpoints.key_values() if endpoints else ()))
    install_log_redaction(ledger.redactor)
    runs = RunActivities(catalog, ledger, model_label=model.name if model else None,
                         model_timeout=settings.models.timeout_seconds,
                         model_max_attempts=settings.models.max_attempts,
                         memory=memory is not None, metrics=metrics, tracing=tracing,
                         mcp=mcp, endpoints=endpoints, quotas=settings.tenants.quotas,
                         prices=settings.models.prices)
    owners: list[object] = [runs, AdmissionActivities(
        Admissions(ledger.pool, retry_seconds=ledger.retry_seconds), client,
        quotas=settings.tenants.quotas,
        recheck_seconds=settings.tenants.admission_recheck_seconds,
        recheck_max_seconds=settings.tenants.admission_recheck_max_seconds, metrics=metrics)]
    if memory is not None:
        owners.append(MemoryActivities(memory.store, memory.embedder, ledger,
                                       backend=memory.backend, tracing=tracing))
    blobs = BlobStore(ledger.pool, retry_seconds=ledger.retry_seconds)
    check_reservation_ttl(settings, [ep for agent in catalog.names()
                                     for ep in (endpoints.chain(agent) if endpoints else [])])
    models = ModelActivities(catalog, ledger, model=model,
                             named_models=named_models or named_model_factory(settings.models),
                             metrics=metrics,
                             tracing=tracing, max_payload_bytes=settings.worker.max_payload_bytes,
                             blobs=blobs, endpoints=endpoints, stream=settings.models.stream,
                             quotas=settings.tenants.quotas, prices=settings.models.prices,
                             reservation_ttl_seconds=settings.tenants.reservation_ttl_seconds)
    tools = ToolActivities(catalog, ledger, metrics=metrics, secrets=secrets, tracing=tracing,
                           max_payload_bytes=settings.worker.max_payload_bytes, dynamic=mcp,
                           blobs=blobs, blob_threshold_bytes=settings.ledger.blob_threshold_bytes)
    owners += [models, DriftActivities(ledger, embedder=memory.embedder
                                       if memory is not None else None),
               EvaluationActivities(catalog, ledger, judge_model_for=models.judge_for,
                                    sample=settings.evals.sample,
                                    judge_timeout=settings.models.timeout_seconds)]
    return Worker(
        client,
        task_queue=task_queue or settings.temporal.task_queue,
        workflows=list(WORKFLOWS),
        activities=[*defined(*owners), *tools.activities()],
        max_concurrent_activities=settings.worker.max_concurrent_activities,
        max_concurrent_local_activities=settings.worker.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker.max_concurrent_workflow_tasks,
        max_cached_workflows=settings.worker.max_cached_workflows,
        sticky_queue_schedule_to_start_timeout=timedelta(
            seconds=settings.worker.sticky_schedule_to_start_seconds),
        graceful_shutdown_timeout=timedelta(seconds=30),
        deployment_config=deployment_config(settings.temporal),
        interceptors=worker_interceptors(tracing),
        workflow_runner=workflow_runner(settings.worker.workflow_sandbox),
    )


class WorkerHost:
    """Owns a worker and what it needs (client, ledger pool); ``run()`` until stopped."""

    def __init__(self, settings: Settings, catalog: AgentCatalog, *,
                 model: ModelClient | None = None, task_queue: str | None = None,
                 embedder: Embedder | None = None,
                 meter_provider: MeterProvider | None = None,
                 tracing: SteadTracing | None = None) -> None:
        """``model``: serves every agent, their own models (``Agent.models``) included (evals
        and counterfactuals pass their scripted or recorded model); None: the agents' models,
        else the configured one (``OPENAI_*``), else their offline models.
        ``meter_provider``: where the activities' metrics go; None builds one from settings
        (``configure_metrics``) that the host also shuts down. ``tracing`` likewise
        (``SteadTracing.from_settings``)."""
        if settings.temporal.address is None or settings.ledger.database_url is None:
            raise ValueError("WorkerHost needs resolved settings (temporal_address and "
                             "database_url set); use EmbeddedStack.resolved_settings()")
        self.settings = settings
        self.catalog = catalog
        self.model = model if model is not None else configured_model(settings.models)
        self._model_given = model is not None
        self.task_queue = task_queue or settings.temporal.task_queue
        self.embedder = embedder
        self.meter_provider = meter_provider
        self._owns_meter_provider = meter_provider is None
        self.tracing = tracing
        self._owns_tracing = tracing is None
        self.client: Client | None = None
        self.ledger: Ledger | None = None
        self.memory: Memory | None = None
        self.worker: Worker | None = None
        self.mcp: McpTools | None = None
        self.endpoints: ModelEndpoints | None = None
        self.named_models = NamedModels(settings.models)
        self._task: asyncio.Task[None] | None = None
        self.pending_approvals: PendingApprovals | None = None
        self._gauges: asyncio.Task[None] | None = None
        self.parked_eviction: ParkedEviction | None = None
        self._eviction: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        db = s.ledger
        assert db.database_url is not None and db.migration_database_url is not None
        # Declaration problems (unknown agents, missing secrets, an embedder without its key,
        # a bad model chain) fail before anything starts.
        check_memory_settings(s, embedder=self.embedder is None)
        check_auto_upgrade_agents(s.temporal, self.catalog)
        secrets = Secrets.from_settings(s.security)
        self.mcp = McpTools.from_catalog(self.catalog, s.integrations, secrets=secrets)
        if not self._model_given:
            self.endpoints = ModelEndpoints.from_catalog(self.catalog, s, secrets=secrets)
        await migrate(db.migration_database_url)  # as the owner; the pool below as the worker
        self.client = await connect_client(s)
        self.ledger = await Ledger.connect(db.database_url, min_size=db.pool_min,
                                           max_size=db.pool_max, retry_seconds=db.retry_seconds,
                                           command_timeout=db.command_timeout_seconds,
                                           connect_timeout=db.connect_timeout_seconds)
        try:
            self.memory = await open_memory(s, pool=self.ledger.pool, embedder=self.embedder)
            if self.meter_provider is None:
                self.meter_provider = configure_metrics(s.telemetry)
            if self.tracing is None:
                self.tracing = SteadTracing.from_settings(s.telemetry,
                                                         redact=Redactor.from_settings(s).text)
            metrics = SteadMetrics(self.meter_provider.get_meter(METER_NAME))
            self.worker = build_worker(self.client, s, self.catalog, self.ledger,
                                       model=self.model, task_queue=self.task_queue,
                                       memory=self.memory, metrics=metrics,
                                       tracing=self.tracing, mcp=self.mcp,
                                       endpoints=self.endpoints,
                                       named_models=self.named_models)
            after = s.worker.evict_parked_after_seconds
            if after > 0 and s.worker.max_cached_workflows > 0:
                self.parked_eviction = ParkedEviction(
                    self.worker, self.task_queue, after=after,
                    on_evict=metrics.parked_evictions.add)
        except BaseException:
            await self.ledger.close()  # do not leave a pool reconnecting behind us
            self.ledger = None
            raise
        self._task = asyncio.create_task(self.worker.run())
        if self.parked_eviction is not None:
            self._eviction = asyncio.create_task(self.parked_eviction.run())
        meter = self.meter_provider.get_meter(METER_NAME)
        if not isinstance(meter, NoOpMeter):
            self.pending_approvals = PendingApprovals(meter, self.client, self.catalog.names())
            self._gauges = asyncio.create_task(
                self.pending_approvals.run(s.telemetry.metrics_export_interval_seconds))

    async def stop(self) -> None:
        for task in (self._gauges, self._eviction):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._gauges = self._eviction = None
        if self.worker is not None and self._task is not None:
            await self.worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.mcp is not None:
            await self.mcp.close()  # after the worker: no call is still using a session
        if self.endpoints is not None:
            await self.endpoints.close()
        await self.named_models.close()
        if self.memory is not None:
            await self.memory.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self._owns_meter_provider and self.meter_provider is not None:
            # The last export is a blocking HTTP call: keep it off the event loop.
            await asyncio.to_thread(shutdown_metrics, self.meter_provider)
            self.meter_provider = None
        if self._owns_tracing and self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes: a blocking export
            self.tracing = None
        close = getattr(self.model, "close", None)
        if close is not None:
            await close()

    async def keep_evaluation_schedule(self) -> None:
        """Create the task queue's online-evaluation schedule when an agent declares
        evaluators and none exists (``stead.evals.online.ensure_schedule``); what a
        long-running worker process does at start, not every host (tests, benchmarks). A
        schedule that cannot be made is logged: the runs do not depend on it."""
        from stead.evals.online import ensure_schedule

        assert self.client is not None, "start() first"
        try:
            done = await ensure_schedule(self.client, self.settings.replace(
                task_queue=self.task_queue), self.catalog)
        except Exception:
            log.exception("could not create the online evaluation schedule; runs are not "
                          "evaluated until it exists (`stead grade --schedule 1m`)")
            return
        if done is not None:
            log.info("online evaluation schedule: %s", done)

    async def report_deployment_routing(self, *, within: float = 15.0) -> str | None:
        """Log where the Worker Deployment routes new runs relative to this build (and return
        the line): what a long-running versioned worker says at start, since a deployment
        whose current version was never set sends new runs to unversioned workers, and with
        none they wait — the first build needs ``stead deploy promote``. None: not versioned,
        or the deployment could not be read (logged)."""
        from stead.deployments import DeploymentStatus, describe_deployment
        from stead.errors import DeploymentNotFound, SteadError

        t = self.settings.temporal
        if t.deployment_name is None:
            return None
        assert self.client is not None, "start() first"
        me = f"{t.deployment_name}.{t.build_id}"
        deadline = asyncio.get_running_loop().time() + within
        status: DeploymentStatus | None = None
        while status is None or status.version(t.build_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("Worker Deployment version %s is not registered with Temporal "
                            "after %.0f s of polling (`stead deploy status`)", me, within)
                return None
            try:
                status = await describe_deployment(self.client, t.deployment_name,
                                                   pollers=False)
            except DeploymentNotFound:
                status = None  # the first poll has not registered it yet
            except (SteadError, RPCError) as e:
                log.warning("could not read Worker Deployment %s: %s", t.deployment_name, e)
                return None
            await asyncio.sleep(0.5)
        promote = f"`stead deploy promote {t.build_id}`"
        if status.current_build_id == t.build_id:
            line, level = f"{me} is the current version: it takes new runs", logging.INFO
        elif status.ramping_build_id == t.build_id:
            line, level = (f"{me} is ramping: it takes {status.ramping_percent:g}% of new "
                           f"runs ({promote} for all)"), logging.INFO
        elif status.current_build_id is None:
            line, level = (f"Worker Deployment {t.deployment_name} has no current version: "
                           f"new runs go to unversioned workers, or wait if none polls; make "
                           f"this build current with {promote}"), logging.WARNING
        else:
            line, level = (f"{me} takes no new runs: the current version is "
                           f"{status.current_build_id} ({promote} to move new runs here; runs "
                           f"pinned to {t.build_id} run here)"), logging.INFO
        log.log(level, "%s", line)
        return line

    async def __aenter__(self) -> WorkerHost:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


async def run_until_signal(host: WorkerHost) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight activities gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with host:
        t = host.settings.temporal
        log.info("worker polling task queue %r%s", host.task_queue,
                 f" as {t.deployment_name}.{t.build_id} (Worker Deployment version)"
                 if t.versioned else "")
        await host.keep_evaluation_schedule()
        await host.report_deployment_routing()
        await stop.wait()
        log.info("stopping: finishing in-flight activities")
