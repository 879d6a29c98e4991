"""stead (full path and minimal) and plain temporalio as peer systems.

- **stead full**: ``WorkerHost`` unchanged, agents under ``bench_policy()`` (every rule of
  the reference policies evaluated on every run), telemetry on: OTel metrics and traces
  exported over OTLP/HTTP to a receiver in another process (``stead.testing.otlp_server``,
  a stand-in for a collector), plus the Temporal SDK's own metrics through the OTLP runtime.
  As stead runs by default: the read tools as local activities (``Execution.local_reads``),
  the model call an activity; runs start through the worker's client, so eagerly.
- **stead minimal**: the same worker with no policy (stead's built-in ``allow-all``: routing,
  the call gate and output validation still run, no rule fires) and telemetry off. The ledger
  stays on: it is where a tool call's idempotency key is claimed before the tool runs, so
  stead has no switch to run without it.
- **stead full, local execution**: stead full under the same policy plus its ``execution``
  section's ``local_model_calls``: the scripted model runs as a local activity too, so a whole
  run is one workflow task, as on the engine's floor.
- **plain temporalio**: ``PeerPlainWorkflow`` (``bench/peers/plain_workflow.py``) with the
  same planner and tool bodies as activities, the same data converter, sandbox passthrough,
  worker slots and retry/timeout defaults, and nothing else.
- **plain, local tools** (a what-if): the same with the tool calls as local activities, to
  size what running read tools as local activities would give stead.
- **the engine's floor**: the same workflow with the model calls as local activities too,
  started with eager start (``request_eager_start``: the server hands the first workflow
  task back in the start call, to the worker on the starting client), so a whole run is one
  workflow task. Nothing Temporal-based can be cheaper per run on this server.
- **pydantic-ai** and **openai-agents**: the agent frameworks that run on Temporal, each
  through its own plugin (``bench/peers/pydantic_ai_run.py``, ``openai_agents_run.py``).

All the workers live in the benchmark process on their own task queues of one embedded
stack; see :func:`temporal_side`.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Worker

from bench import approvals
from bench.peers.models import PeerModelInput, PeerRequest, PeerToolInput, RunOutcome
from bench.peers.plain_workflow import APPROVE, WORKFLOW, PeerPlainWorkflow
from bench.peers.workload import HITL, Workload, agent_name, stead_agents, workloads
from bench.runner import RUN_TIMEOUT, _distinct_ports, _stuck_reason, plain_worker_options
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import (
    ApprovalDecision,
    Message,
    ModelTurn,
    RunRequest,
    RunResult,
    RunState,
)
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, _wait_tcp
from stead.worker import WorkerHost

STEAD_FULL, STEAD_MIN, PLAIN, PLAIN_LOCAL = "stead", "stead-min", "plain", "plain-local"
STEAD_LOCAL, FLOOR = "stead-local", "floor"
PYDANTIC_AI, OPENAI_AGENTS = "pydantic-ai", "openai-agents"
"""The agent frameworks on Temporal (``pydantic_ai_run``, ``openai_agents_run``), imported
only when they run: their modules pull in the frameworks."""

Progress = Callable[[str], None]


@dataclass
class Parked:
    """A run waiting for its approval."""

    run_id: str
    handle: Any
    approval_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def _result(system: str, handle: WorkflowHandle[Any, Any]) -> Any:
    try:
        return await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(f"{system} run {handle.id} did not finish within "
                           f"{RUN_TIMEOUT:.0f}s: {await _stuck_reason(handle)}") from None


class SteadSystem:
    """stead's ``AgentWorkflow`` on a worker built from ``stead_agents(policy=...)``."""

    temporal = True

    def __init__(self, name: str, client: Client, settings: Settings, *, policy: bool) -> None:
        self.name = name
        self.client = client
        self.settings = settings
        self.policy = policy
        self.workloads = workloads()

    async def run(self, workload: str, run_id: str) -> RunOutcome:
        w = self.workloads[workload]
        handle = await start_run(
            self.client, RunRequest(agent=agent_name(workload, policy=self.policy),
                                    input=w.request), temporal=self.settings.temporal,
            workflow_id=run_id)
        return self._outcome(handle.id, await _result(self.name, handle))

    def _outcome(self, run_id: str, result: RunResult) -> RunOutcome:
        if result.status != "completed":
            raise RuntimeError(f"{self.name} run {run_id} ended {result.status}: "
                               f"{result.error or result.answer}")
        return RunOutcome(answer=result.answer or "", model_calls=result.model_turns,
                          tools_called=[t.tool for t in result.tool_calls])

    async def park(self, run_id: str, *, precise: bool = True) -> Parked:
        """Start an approval run; return once it waits. ``precise``: also until its history
        shows no workflow task in flight (``bench.approvals``); else only until the
        ``state`` query shows the pending approval, polled gently (1,000 runs at once)."""
        handle = await start_run(self.client, RunRequest(agent=agent_name(HITL, policy=False),
                                                         input=self.workloads[HITL].request),
                                 temporal=self.settings.temporal, workflow_id=run_id)
        if precise:
            pending = await approvals._parked(handle)
            return Parked(run_id=run_id, handle=handle, approval_id=pending.approval_id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(RPCError):  # a busy worker may answer a query late
                state = await handle.query("state", result_type=RunState,
                                           rpc_timeout=timedelta(seconds=10))
                if state.pending_approvals:
                    return Parked(run_id=run_id, handle=handle,
                                  approval_id=state.pending_approvals[0].approval_id)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} run {run_id}: no pending approval after 120 s")

    async def release(self, p: Parked) -> None:
        await p.handle.signal("approve", ApprovalDecision(approval_id=p.approval_id, by="bench"))

    async def finish(self, p: Parked) -> RunOutcome:
        return self._outcome(p.run_id, await _result(self.name, p.handle))


class SignalApprovals:
    """A Temporal system whose workflow waits for the ``approve`` signal before an approved
    tool and answers the ``waiting`` query while it does (``PeerPlainWorkflow``, the agent
    frameworks' workflows): running, parking, releasing and finishing its runs. The subclass
    starts them (``_start``)."""

    name: str

    async def _start(self, workload: str, run_id: str, *,
                     approval: bool) -> WorkflowHandle[Any, RunOutcome]:
        raise NotImplementedError

    async def run(self, workload: str, run_id: str) -> RunOutcome:
        handle = await self._start(workload, run_id, approval=False)
        out: RunOutcome = await _result(self.name, handle)
        return out

    async def park(self, run_id: str, *, precise: bool = True) -> Parked:
        """Start an approval run; return once its ``waiting`` query says so (polled every
        10 ms, or every 100 ms when not ``precise``)."""
        handle = await self._start(HITL, run_id, approval=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(RPCError):  # a busy worker may answer a query late
                if await handle.query("waiting", result_type=bool,
                                      rpc_timeout=timedelta(seconds=10)):
                    return Parked(run_id=run_id, handle=handle)
            await asyncio.sleep(0.01 if precise else 0.1)
        raise RuntimeError(f"{self.name} run {run_id} never waited for its approval")

    async def release(self, p: Parked) -> None:
        await p.handle.signal(APPROVE)

    async def finish(self, p: Parked) -> RunOutcome:
        out: RunOutcome = await _result(self.name, p.handle)
        return out


class PlainSystem(SignalApprovals):
    """``PeerPlainWorkflow`` on a plain temporalio worker (``system``: ``plain``,
    ``plain-local`` or ``floor``). The floor's runs are started eagerly, so ``client`` must
    be the client its worker runs on."""

    temporal = True

    def __init__(self, client: Client, task_queue: str, *, system: str = PLAIN) -> None:
        if system not in (PLAIN, PLAIN_LOCAL, FLOOR):
            raise ValueError(f"not a plain temporalio system: {system!r}")
        self.name = system
        self.client = client
        self.task_queue = task_queue
        self.local_tools = system in (PLAIN_LOCAL, FLOOR)
        self.local_model = self.eager = system == FLOOR
        self.started = self.started_eagerly = 0
        """Runs started, and of those the ones the server started eagerly (the floor asks
        for every run; a server without a free slot on the worker may decline)."""
        self.workloads = workloads()

    async def _start(self, workload: str, run_id: str, *,
                     approval: bool) -> WorkflowHandle[Any, RunOutcome]:
        w = self.workloads[workload]
        handle = await self.client.start_workflow(
            WORKFLOW, PeerRequest(workload=workload, messages=w.first_messages(),
                                  approval=approval, local_tools=self.local_tools,
                                  local_model=self.local_model),
            id=run_id, task_queue=self.task_queue, result_type=RunOutcome,
            request_eager_start=self.eager)
        self.started += 1
        # The SDK's own record of whether the start response carried the first task.
        self.started_eagerly += bool(getattr(handle, "__temporal_eagerly_started", False))
        return handle

    def notes(self) -> list[str]:
        if not self.eager:
            return []
        return [f"{self.started_eagerly} of {self.started} runs started eagerly"]


class PeerActivities:
    """The plain peer's activities: the shared planner and tool bodies, nothing else."""

    def __init__(self) -> None:
        self.workloads: dict[str, Workload] = workloads()

    @activity.defn(name="peers.model")
    async def model(self, inp: PeerModelInput) -> ModelTurn:
        return await self.workloads[inp.workload].think(inp.messages)

    @activity.defn(name="peers.tool")
    async def tool(self, inp: PeerToolInput) -> Message:
        return await self.workloads[inp.workload].act(inp.call, run_id=inp.run_id,
                                                      step=inp.step)


@contextlib.asynccontextmanager
async def plain_worker(settings: Settings, task_queue: str) -> AsyncIterator[Client]:
    """A plain temporalio worker configured like stead's, except for what stead adds."""
    assert settings.temporal.address is not None
    client = await Client.connect(settings.temporal.address,
                                  namespace=settings.temporal.namespace,
                                  data_converter=pydantic_data_converter)
    acts = PeerActivities()
    worker = Worker(
        client, task_queue=task_queue, workflows=[PeerPlainWorkflow],
        activities=[acts.model, acts.tool], **plain_worker_options(settings.worker))
    async with worker:
        yield client


@contextlib.asynccontextmanager
async def otlp_receiver(port: int) -> AsyncIterator[str]:
    """``stead.testing.otlp_server`` in its own process (a collector's stand-in): what the
    worker exports crosses a real socket, and decoding it is not charged to the worker."""
    proc = subprocess.Popen([sys.executable, "-m", "stead.testing.otlp_server", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        await _wait_tcp("127.0.0.1", port, proc, "OTLP receiver", Path("/dev/null"), 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def system_settings(base: Settings, system: str, *, otlp: str | None,
                    cached_workflows: int | None = None,
                    evict_parked_after: float | None = None) -> Settings:
    """The settings one system's worker runs with (its own task queue). ``cached_workflows``
    sizes the cache of a measurement that wants its runs kept there, so stead's eviction of
    parked runs is then off, unless ``evict_parked_after`` sets it."""
    update: dict[str, Any] = {"task_queue": f"peers-{system}-{uuid.uuid4().hex[:8]}",
                              "memory_backend": "off", "otel_exporter_otlp_endpoint": None,
                              "metrics_exporter": "none", "traces_exporter": "none"}
    if system in (STEAD_FULL, STEAD_LOCAL):
        if otlp is None:
            raise ValueError("stead full path needs an OTLP endpoint for its telemetry")
        update |= {"otel_exporter_otlp_endpoint": otlp, "metrics_exporter": "otlp",
                   "traces_exporter": "otlp"}
    if cached_workflows is not None:
        update["max_cached_workflows"] = cached_workflows
        update["evict_parked_after_seconds"] = 0.0
    if evict_parked_after is not None:
        update["evict_parked_after_seconds"] = evict_parked_after
    return base.replace(**update)


@contextlib.asynccontextmanager
async def temporal_system(base: Settings, system: str, *, otlp: str | None,
                          cached_workflows: int | None = None) -> AsyncIterator[Any]:
    """One Temporal-based system with its worker polling (``base``: resolved settings)."""
    settings = system_settings(base, system, otlp=otlp, cached_workflows=cached_workflows)
    if system in (PLAIN, PLAIN_LOCAL, FLOOR):
        async with plain_worker(settings, settings.temporal.task_queue) as client:
            yield PlainSystem(client, settings.temporal.task_queue, system=system)
        return
    if system == PYDANTIC_AI:
        from bench.peers.pydantic_ai_run import PydanticAISystem, pydantic_ai_worker

        async with pydantic_ai_worker(settings, settings.temporal.task_queue) as client:
            yield PydanticAISystem(client, settings.temporal.task_queue)
        return
    if system == OPENAI_AGENTS:
        from bench.peers.openai_agents_run import OpenAIAgentsSystem, openai_agents_worker

        async with openai_agents_worker(settings, settings.temporal.task_queue) as client:
            yield OpenAIAgentsSystem(client, settings.temporal.task_queue)
        return
    policy = system in (STEAD_FULL, STEAD_LOCAL)
    async with WorkerHost(settings, AgentCatalog(stead_agents(policy=policy,
                                                              local=system == STEAD_LOCAL)),
                          task_queue=settings.temporal.task_queue) as host:
        # Runs start through the worker's own client, as the plain peers' do: a start can
        # then be eager (``stead.client.start_run``).
        assert host.client is not None
        yield SteadSystem(system, host.client, settings, policy=policy)


@dataclass
class TemporalSide:
    stack: EmbeddedStack
    settings: Settings
    """Resolved settings of the embedded stack."""
    otlp: str
    systems: dict[str, Any]


TEMPORAL_SYSTEMS = (STEAD_FULL, STEAD_LOCAL, STEAD_MIN, PLAIN, PLAIN_LOCAL, FLOOR, PYDANTIC_AI,
                    OPENAI_AGENTS)
"""Every system that runs on the embedded Temporal server, in report order."""


@contextlib.asynccontextmanager
async def temporal_side(*, systems: Sequence[str] = TEMPORAL_SYSTEMS,
                        progress: Progress = print) -> AsyncIterator[TemporalSide]:
    """One embedded stack (Temporal dev server + PostgreSQL) on free ports in a temporary
    directory, the OTLP receiver, and the workers of the Temporal-based ``systems`` (others
    in it are ignored), each on its own task queue of that one server."""
    with tempfile.TemporaryDirectory(prefix="stead-peers-") as tmp:
        tport, uport, pport, oport = _distinct_ports(4)
        settings = Settings(data_dir=Path(tmp), temporal_port=tport, ui_port=uport,
                            postgres_port=pport, temporal_address=None, database_url=None,
                            openai_api_key=None)
        progress(f"starting embedded stack in {tmp} (Temporal :{tport}, PostgreSQL :{pport}, "
                 f"OTLP receiver :{oport})")
        async with (EmbeddedStack(settings, ui=False) as stack, otlp_receiver(oport) as otlp,
                    contextlib.AsyncExitStack() as workers):
            resolved = stack.resolved_settings()
            running: dict[str, Any] = {}
            for name in TEMPORAL_SYSTEMS:
                if name in systems:
                    running[name] = await workers.enter_async_context(temporal_system(
                        resolved, name, otlp=otlp if name in (STEAD_FULL, STEAD_LOCAL) else None))
            yield TemporalSide(stack=stack, settings=resolved, otlp=otlp, systems=running)
