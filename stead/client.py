"""Connecting to Temporal and starting runs.

    client = await connect(settings)
    handle = await start_run(client, RunRequest(agent="ops", input="..."),
                             temporal=settings.temporal)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

from temporalio.client import (
    Client,
    Interceptor,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)
from temporalio.common import AutoUpgradeVersioningOverride, VersioningOverride
from temporalio.runtime import Runtime
from temporalio.service import KeepAliveConfig, RPCError

from stead.contracts.models import RunRequest, RunResult
from stead.contracts.search_attributes import run_attributes
from stead.errors import StackError
from stead.security.codec import data_converter
from stead.security.tls import explain_connect_error, temporal_auth
from stead.settings import Settings, TemporalSettings

WORKFLOW_TYPE = "AgentWorkflow"
"""Workflow type of an agent run (``AgentWorkflow``'s name; its parents and starters use it)."""


async def connect(settings: Settings, address: str | None = None, *,
                  runtime: Runtime | None = None,
                  interceptors: Sequence[Interceptor] = ()) -> Client:
    """Connect with stead's data converter; a clear ``StackError`` when nothing answers.

    ``runtime``: a Temporal runtime with telemetry
    (``stead.observability.telemetry.temporal_runtime``).
    ``interceptors``: e.g. ``SteadTracing.interceptors`` for client spans (``stead run``).
    """
    target = address or settings.temporal.address or f"127.0.0.1:{settings.stack.temporal_port}"
    auth = temporal_auth(settings.temporal)  # SettingsError before any network traffic
    try:
        return await Client.connect(target, namespace=settings.temporal.namespace,
                                    data_converter=data_converter(settings.codec), runtime=runtime,
                                    tls=auth.tls, api_key=auth.api_key,
                                    interceptors=interceptors,
                                    keep_alive_config=keepalive(settings.temporal))
    except (RuntimeError, RPCError) as err:
        hint = explain_connect_error(str(err), auth)
        raise StackError(
            f"cannot reach Temporal at {target} ({auth.describe()}): {err}. "
            + (f"Likely cause: {hint}." if hint else
               "Is the stack running (`stead up`), or is TEMPORAL_ADDRESS right?")) from err


def keepalive(temporal: TemporalSettings) -> KeepAliveConfig:
    """The HTTP/2 pings that notice a half-dead connection to Temporal (settings, seconds)."""
    return KeepAliveConfig(interval_millis=round(temporal.keepalive_interval_seconds * 1000),
                           timeout_millis=round(temporal.keepalive_timeout_seconds * 1000))


def new_run_id(agent: str, tenant: str = "default") -> str:
    return f"{tenant}-{agent}-{uuid.uuid4().hex[:12]}"


async def start_run(client: Client, request: RunRequest, *, temporal: TemporalSettings,
                    workflow_id: str | None = None) -> WorkflowHandle[object, RunResult]:
    """Start a run of ``request.agent`` on ``temporal.task_queue``.

    Without versioning the start asks for eager execution: when ``client`` also serves a
    worker on that task queue with a free slot (the HTTP API and a worker in one process, a
    test, a benchmark), the server hands the run's first workflow task back in the start's own
    response instead of through the task queue. Otherwise the run starts as usual.

    With a Worker Deployment (``STEAD_DEPLOYMENT_NAME``) the run is pinned to the build the
    deployment's routing gives it, or auto-upgrades if its agent is in
    ``STEAD_AUTO_UPGRADE_AGENTS`` (:func:`versioning_override`)."""
    attrs = run_attributes(request.agent, request.tenant)
    summary = f"{request.agent}: {request.input[:120]}"
    return await client.start_workflow(
        WORKFLOW_TYPE, request, id=workflow_id or new_run_id(request.agent, request.tenant),
        task_queue=temporal.task_queue, result_type=RunResult, search_attributes=attrs,
        static_summary=summary, versioning_override=versioning_override(request.agent, temporal),
        # Eager start hands the first workflow task to whichever worker shares this client,
        # past the deployment's routing: a process still serving build A would begin new
        # runs on A after B was promoted (and a run's first task decides where it is pinned).
        request_eager_start=not temporal.versioned)


def versioning_override(agent: str, temporal: TemporalSettings) -> VersioningOverride | None:
    """Auto-upgrade for an agent in ``STEAD_AUTO_UPGRADE_AGENTS`` of a versioned deployment:
    its runs move to the deployment's current build at their next workflow task; None: the
    worker's default (pinned to the build that started the run), or no versioning at all."""
    if temporal.versioned and agent in temporal.auto_upgrade_agents:
        return AutoUpgradeVersioningOverride()
    return None


async def put_interval_schedule(client: Client, schedule_id: str,
                                action: ScheduleActionStartWorkflow, *, every: timedelta,
                                if_exists: Literal["replace", "keep_state", "leave"],
                                ) -> Literal["created", "updated", "exists"]:
    """Create a Temporal Schedule that starts ``action`` every ``every``, a run still going
    when the next is due making it skip. An existing schedule is given this spec and action
    (``replace``), the same but staying paused if it was (``keep_state``), or left as it is
    (``leave``, "exists")."""
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
    policy = SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP)
    try:
        await client.create_schedule(schedule_id, Schedule(action=action, spec=spec,
                                                           policy=policy))
        return "created"
    except ScheduleAlreadyRunningError:
        if if_exists == "leave":
            return "exists"

    def change(given: ScheduleUpdateInput) -> ScheduleUpdate:
        new = Schedule(action=action, spec=spec, policy=policy)
        if if_exists == "keep_state":
            new.state = given.description.schedule.state
        return ScheduleUpdate(schedule=new)

    await client.get_schedule_handle(schedule_id).update(change)
    return "updated"
