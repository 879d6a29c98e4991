"""Temporal Worker Deployments: where runs go, and moving them to a new build.

    status = await describe_deployment(client, "stead")      # current, ramping, each version
    await set_ramping(client, "stead", "0.2.0", 10)           # 10 % of new runs to 0.2.0
    await end_ramp(client, "stead")                           # back to the current version
    await set_current(client, "stead", "0.2.0")               # every new run to 0.2.0
    await wait_drained(client, "stead", "0.1.0", timeout=600)  # its pinned runs have ended
    await wait_version(client, "stead", "0.3.0", timeout=60)  # its workers poll every queue

A worker declares a version (``STEAD_DEPLOYMENT_NAME`` + ``STEAD_BUILD_ID``,
``stead.worker.deployment_config``); a run is pinned to the version its first workflow task ran
on, and the deployment's routing (current version, ramping version and percentage) decides
where new runs and auto-upgrading runs go. These are the calls ``stead deploy`` and the
``temporal worker deployment`` commands make (gRPC ``DescribeWorkerDeployment``,
``SetWorkerDeploymentCurrentVersion``, ``SetWorkerDeploymentRampingVersion``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field
from temporalio.api.deployment.v1 import WorkerDeploymentInfo
from temporalio.api.enums.v1 import (
    RoutingConfigUpdateState,
    TaskQueueType,
    VersionDrainageStatus,
    WorkerDeploymentVersionStatus,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
    SetWorkerDeploymentRampingVersionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from stead.errors import DeploymentError, DeploymentNotFound

IDENTITY = "stead deploy"
"""Who changed the routing, as the deployment records it (``last_modifier_identity``)."""

VersionState = Literal["current", "ramping", "draining", "drained", "inactive", "created",
                       "unknown"]
_STATES: dict[int, VersionState] = {
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CURRENT: "current",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_RAMPING: "ramping",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINING: "draining",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINED: "drained",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_INACTIVE: "inactive",
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_CREATED: "created",
}
_DRAINAGE: dict[int, Literal["draining", "drained"]] = {
    VersionDrainageStatus.VERSION_DRAINAGE_STATUS_DRAINING: "draining",
    VersionDrainageStatus.VERSION_DRAINAGE_STATUS_DRAINED: "drained",
}


class VersionStatus(BaseModel):
    """One build of a deployment, as Temporal sees it."""

    model_config = ConfigDict(extra="forbid")

    build_id: str
    state: VersionState
    """``current``/``ramping``: takes new runs; ``draining``: no new runs, pinned runs still
    open; ``drained``: none open (its workers may stop); ``inactive``: was never current or
    ramping (or no longer is, and never had runs); ``created``: seen, never routed to."""
    drainage: Literal["draining", "drained"] | None = None
    """Drainage of a version that stopped taking new runs; None while it takes them. Temporal
    refreshes it periodically (``matching.wv.VersionDrainageStatusRefreshInterval``)."""
    drainage_checked_at: datetime | None = None
    pollers: int = 0
    """Workflow-task pollers of this build seen recently on the deployment's task queues."""
    created_at: datetime | None = None


class DeploymentStatus(BaseModel):
    """A Worker Deployment's routing and versions (``stead deploy status``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    current_build_id: str | None
    """Where new runs go; None: to unversioned workers."""
    ramping_build_id: str | None = None
    ramping_percent: float = 0.0
    """Share of new (and auto-upgrading) runs sent to ``ramping_build_id``, 0-100."""
    routing_settled: bool = True
    """The last routing change has reached every task queue (Temporal propagates it
    asynchronously); until then some new runs may still go to the previous build."""
    task_queues: list[str] = Field(default_factory=list)
    versions: list[VersionStatus] = Field(default_factory=list)

    def version(self, build_id: str) -> VersionStatus | None:
        return next((v for v in self.versions if v.build_id == build_id), None)


def _time(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def _refused(err: RPCError, deployment: str, build_id: str | None = None) -> DeploymentError:
    """Temporal's refusal as stead's error, saying what to check."""
    what = f"version {build_id!r} of Worker Deployment {deployment!r}" if build_id else \
        f"Worker Deployment {deployment!r}"
    if err.status == RPCStatusCode.NOT_FOUND or "not found" in err.message.lower():
        return DeploymentNotFound(
            f"no {what} on this Temporal namespace ({err.message}); a version exists once one "
            f"of its workers has polled (STEAD_DEPLOYMENT_NAME, STEAD_BUILD_ID); "
            f"`stead deploy status` lists the known ones")
    return DeploymentError(f"Temporal refused the change of {what}: {err.message}")


async def _info(client: Client, name: str) -> WorkerDeploymentInfo:
    try:
        resp = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name))
    except RPCError as e:
        raise _refused(e, name) from e
    return resp.worker_deployment_info


async def describe_deployment(client: Client, name: str, *,
                              pollers: bool = True) -> DeploymentStatus:
    """The deployment's routing and versions; ``DeploymentNotFound`` if Temporal has none
    of this name. ``pollers``: also count each build's pollers (one ``DescribeTaskQueue`` per
    task queue of the deployment)."""
    info = await _info(client, name)
    rc = info.routing_config
    versions = [VersionStatus(
        build_id=s.deployment_version.build_id, state=_STATES.get(s.status, "unknown"),
        drainage=_DRAINAGE.get(s.drainage_info.status),
        drainage_checked_at=_time(s.drainage_info.last_checked_time),
        created_at=_time(s.create_time)) for s in info.version_summaries]
    queues: set[str] = set()
    if pollers and versions:
        for v in versions:
            queues.update(await _task_queues(client, name, v.build_id))
        counts = await _poller_counts(client, name, sorted(queues))
        versions = [v.model_copy(update={"pollers": counts.get(v.build_id, 0)})
                    for v in versions]
    return DeploymentStatus(
        name=info.name,
        current_build_id=rc.current_deployment_version.build_id or None,
        ramping_build_id=rc.ramping_deployment_version.build_id or None,
        ramping_percent=rc.ramping_version_percentage,
        routing_settled=info.routing_config_update_state
        != RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_IN_PROGRESS,
        task_queues=sorted(queues),
        versions=sorted(versions, key=lambda v: v.created_at or datetime.min.replace(tzinfo=UTC)))


async def _task_queues(client: Client, name: str, build_id: str) -> list[str]:
    return sorted({q for q, kind in await _version_queues(client, name, build_id)
                   if kind == TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW})


async def _version_queues(client: Client, name: str, build_id: str) -> set[tuple[str, int]]:
    """(task queue, type) pairs the version's workers have polled."""
    from temporalio.api.deployment.v1 import WorkerDeploymentVersion

    try:
        resp = await client.workflow_service.describe_worker_deployment_version(
            DescribeWorkerDeploymentVersionRequest(
                namespace=client.namespace,
                deployment_version=WorkerDeploymentVersion(deployment_name=name,
                                                           build_id=build_id)))
    except RPCError as e:
        raise _refused(e, name, build_id) from e
    return {(q.name, q.type) for q in resp.version_task_queues}


async def wait_version(client: Client, name: str, build_id: str, *, timeout: float,
                       every: float = 0.2) -> DeploymentStatus:
    """Wait until ``build_id`` is known to the deployment and its workers poll every task
    queue (workflow and activity) the current version's do — what Temporal requires before
    it routes runs to it; ``TimeoutError`` otherwise. A new build's workflow pollers often
    register a moment before its activity pollers, and a promote in between is refused
    ("missing active task queues")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = await describe_deployment(client, name, pollers=False)
            if status.version(build_id) is not None:
                mine = await _version_queues(client, name, build_id)
                current = status.current_build_id
                needed = (await _version_queues(client, name, current)
                          if current and current != build_id else set())
                if mine and needed <= mine:
                    return status
        except DeploymentNotFound:
            pass  # no worker of the deployment has polled yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"version {build_id!r} of Worker Deployment {name!r} does not "
                               f"poll the current version's task queues after {timeout:g} s")
        await asyncio.sleep(every)


async def _poller_counts(client: Client, name: str, queues: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in queues:
        resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=q),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        for p in resp.pollers:
            d = p.deployment_options
            if d.deployment_name == name and d.build_id:
                counts[d.build_id] = counts.get(d.build_id, 0) + 1
    return counts


async def set_current(client: Client, name: str, build_id: str, *,
                      allow_no_pollers: bool = False, ignore_missing_task_queues: bool = False,
                      settle_timeout: float = 30.0) -> DeploymentStatus:
    """Make ``build_id`` the deployment's current version: every new run (and every
    auto-upgrading one at its next workflow task) goes to it; runs pinned to another build
    stay there. Waits up to ``settle_timeout`` s for the change to reach every task queue.
    ``allow_no_pollers``/``ignore_missing_task_queues``: Temporal's protections, as in
    ``temporal worker deployment set-current-version``."""
    await _known_version(client, name, build_id)
    try:
        await client.workflow_service.set_worker_deployment_current_version(
            SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace, deployment_name=name, build_id=build_id,
                identity=IDENTITY, allow_no_pollers=allow_no_pollers,
                ignore_missing_task_queues=ignore_missing_task_queues))
    except RPCError as e:
        raise _refused(e, name, build_id) from e
    return await _settled(client, name, settle_timeout)


async def set_ramping(client: Client, name: str, build_id: str, percent: float, *,
                      allow_no_pollers: bool = False, ignore_missing_task_queues: bool = False,
                      settle_timeout: float = 30.0) -> DeploymentStatus:
    """Send ``percent`` (0-100) of new runs to ``build_id``, the rest to the current version
    (a ramp to 100 is still a ramp: :func:`set_current` ends it)."""
    if not 0 <= percent <= 100:
        raise DeploymentError(f"ramp percentage must be between 0 and 100, not {percent:g}")
    await _known_version(client, name, build_id)
    try:
        await client.workflow_service.set_worker_deployment_ramping_version(
            SetWorkerDeploymentRampingVersionRequest(
                namespace=client.namespace, deployment_name=name, build_id=build_id,
                percentage=percent, identity=IDENTITY, allow_no_pollers=allow_no_pollers,
                ignore_missing_task_queues=ignore_missing_task_queues))
    except RPCError as e:
        raise _refused(e, name, build_id) from e
    return await _settled(client, name, settle_timeout)


async def end_ramp(client: Client, name: str, *, settle_timeout: float = 30.0
                   ) -> DeploymentStatus:
    """End the deployment's ramp: every new run goes to the current version again (the build
    that was ramping keeps the runs pinned to it and drains). Nothing ramping: no change."""
    await _info(client, name)  # DeploymentNotFound for an unknown deployment
    try:
        await client.workflow_service.set_worker_deployment_ramping_version(
            SetWorkerDeploymentRampingVersionRequest(
                namespace=client.namespace, deployment_name=name, build_id="",
                percentage=0, identity=IDENTITY))
    except RPCError as e:
        raise _refused(e, name) from e
    return await _settled(client, name, settle_timeout)


async def _known_version(client: Client, name: str, build_id: str) -> None:
    """``DeploymentNotFound`` naming the known builds, before Temporal's terser refusal."""
    info = await _info(client, name)
    known = [s.deployment_version.build_id for s in info.version_summaries]
    if build_id not in known:
        raise DeploymentNotFound(
            f"Worker Deployment {name!r} has no version {build_id!r} (known: "
            f"{', '.join(map(repr, known)) or 'none'}); a version exists once one of its "
            f"workers has polled (STEAD_BUILD_ID={build_id} STEAD_DEPLOYMENT_NAME={name})")


async def _settled(client: Client, name: str, timeout: float) -> DeploymentStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = await describe_deployment(client, name, pollers=False)
        if status.routing_settled or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def wait_drained(client: Client, name: str, build_id: str, *, timeout: float,
                       every: float = 1.0) -> VersionStatus:
    """Wait until ``build_id`` is drained (no longer routed to, no open run pinned to it);
    ``TimeoutError`` with its last state. Temporal checks drainage periodically
    (``matching.wv.VersionDrainageStatusRefreshInterval``, after a visibility grace period),
    so "drained" comes a while after its last run ended."""
    deadline = time.monotonic() + timeout
    while True:
        status = await describe_deployment(client, name, pollers=False)
        v = status.version(build_id)
        if v is None:
            raise DeploymentNotFound(f"Worker Deployment {name!r} has no version {build_id!r}")
        if v.state == "drained" or v.drainage == "drained":
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"version {build_id!r} of {name!r} not drained after "
                               f"{timeout:g} s: {v.state}, drainage {v.drainage}")
        await asyncio.sleep(every)
