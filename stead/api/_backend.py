"""What the HTTP API does, apart from HTTP: Temporal and ledger calls scoped to one tenant.

    backend = Backend(settings)              # connects lazily: the API starts without a stack
    view = await backend.run("acme", "acme-refund-1a2b3c")   # ApiError(404) for other tenants

Temporal is the source of truth for what exists and what it is doing (visibility, describe,
the ``state`` query, results); the ledger adds outcomes of closed runs cheaply, the audit trail
and metrics. A run belongs to the tenant its ``SteadTenant`` search attribute names; any other
run is "not found", in the same words as a run that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar, get_args

import asyncpg
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from stead.api._auth import Principal
from stead.api._errors import ApiError, temporal_error
from stead.api._models import (
    RESERVED_METADATA_PREFIX,
    ApprovalView,
    AuditTrail,
    BudgetWindow,
    DecideBody,
    RaiseBudgetBody,
    RunSummary,
    RunView,
    StartedRun,
    StartRunBody,
    TenantBudget,
)
from stead.contracts.admission import TenantUsage
from stead.contracts.budget import Budget, RaiseBudget
from stead.contracts.models import (
    DecideInput,
    DecideOutcome,
    RunRequest,
    RunResult,
    RunState,
    RunStatus,
)
from stead.contracts.quota import quota_for
from stead.errors import LedgerError
from stead.evals.metrics import MetricsFilter, MetricsReport, compute_metrics
from stead.settings import Settings
from stead.storage.admission import Admissions, with_caps
from stead.storage.ledger import Ledger
from stead.streaming import StreamListener

if TYPE_CHECKING:
    from stead.activities.admission import AdmissionActivities

T = TypeVar("T")
log = logging.getLogger("stead.api")

_AGENT = SearchAttributeKey.for_keyword("SteadAgent")
_TENANT = SearchAttributeKey.for_keyword("SteadTenant")
_AWAITING = SearchAttributeKey.for_bool("SteadAwaitingApproval")
_RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))

API_SUB_KEY = RESERVED_METADATA_PREFIX + "api.sub"
"""Metadata key naming the token subject that started a run through the API."""
QUERY_TIMEOUT = timedelta(seconds=3)
"""How long a ``state`` query may wait for a worker before the API answers without it."""
UPDATE_TIMEOUT_SECONDS = 30.0
"""How long a decision may wait for the run's worker to accept it."""
MAX_SCANNED = 1000
"""Most executions one filtered listing looks at (status filters apply after visibility)."""
RECENT_STEPS = 5


class Backend:
    """The API's connections (made on first use, remade after a failed attempt) and its
    tenant-scoped operations."""

    def __init__(self, settings: Settings, *, client: Client | None = None,
                 agents: Collection[str] | None = None) -> None:
        self.settings = settings
        self.agents = frozenset(agents) if agents is not None else None
        """Agents a run may be started for; None: any (the worker refuses unknown ones)."""
        self._client = client
        self._ledger: Ledger | None = None
        self._listener: StreamListener | None = None
        self._lock = asyncio.Lock()
        self._sweeps: AdmissionActivities | None = None  # frees closed runs' slots
        # Facts about closed runs never change: remember them (bounded).
        self._inputs: _Lru[str] = _Lru(4096)
        self._closed: _Lru[RunStatus] = _Lru(4096)

    async def temporal(self) -> Client:
        if self._client is None:
            from stead.client import connect

            async with self._lock:
                if self._client is None:
                    self._client = await connect(self.settings)  # StackError: a 503
        return self._client

    async def ledger(self) -> Ledger:
        if self._ledger is None:
            if self.settings.ledger.database_url is None:
                raise LedgerError("no ledger database is configured (set DATABASE_URL, or run "
                                  "the API with `stead up`)")
            async with self._lock:
                if self._ledger is None:
                    self._ledger = await Ledger.connect(self.settings.ledger.database_url,
                                                        min_size=0, max_size=4, retry_seconds=0)
        return self._ledger

    async def stream_listener(self) -> StreamListener | None:
        """The process's one LISTEN connection for token streams (made on first use); None
        while it cannot connect: readers then poll, and the next call tries again."""
        if self._listener is None:
            dsn = self.settings.ledger.database_url
            if dsn is None:
                return None
            async with self._lock:
                if self._listener is None:
                    listener = StreamListener(dsn)
                    try:
                        await listener.start()
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                        log.warning("token streams poll: cannot LISTEN (%s: %s)",
                                    type(e).__name__, e)
                        return None
                    self._listener = listener
        return self._listener

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    # ------------------------------------------------------------------------ runs

    async def start(self, principal: Principal, body: StartRunBody) -> StartedRun:
        from stead.client import start_run

        if self.agents is not None and body.agent not in self.agents:
            raise ApiError(422, f"unknown agent {body.agent!r}; known: "
                                f"{', '.join(sorted(self.agents)) or 'none'}")
        request = RunRequest(agent=body.agent, input=body.input, tenant=principal.tenant,
                             user=body.user or principal.sub, max_steps=body.max_steps,
                             metadata={**body.metadata, API_SUB_KEY: principal.sub},
                             budget=body.budget)
        await self._refuse_over_quota(principal.tenant)
        client = await self.temporal()
        try:
            handle = await start_run(client, request, temporal=self.settings.temporal)
        except RPCError as e:
            raise temporal_error(e, "starting the run") from None
        return StartedRun(workflow_id=handle.id, run_id=handle.result_run_id)

    async def _refuse_over_quota(self, tenant: str) -> None:
        """A 429 with ``Retry-After`` before any run exists, for a tenant over its caps whose
        quota refuses (``over_quota: refuse``). A run started in a race for the last slot
        still ends ``refused`` by itself: the run's own admission is the one that counts."""
        quota = quota_for(self.settings.tenants.quotas, tenant)
        if quota is None or not quota.limits_admission or quota.over_quota != "refuse":
            return
        ledger = await self.ledger()
        recheck = self.settings.tenants.admission_recheck_seconds
        admissions = Admissions(ledger.pool, retry_seconds=ledger.retry_seconds)
        verdict = await _no_tables(lambda: admissions.peek(tenant, quota,
                                                           recheck_seconds=recheck))
        if verdict.verdict == "admitted":
            return
        sweeper = await self._sweeper(admissions)
        if verdict.limit == "runs_in_flight" and await sweeper.free_closed_slots(tenant):
            # Closed runs (terminated, say) held the slots: look again.
            verdict = await admissions.peek(tenant, quota, recheck_seconds=recheck)
            if verdict.verdict == "admitted":
                return
        retry = verdict.retry_after if verdict.retry_after is not None else recheck
        raise ApiError(429, f"tenant {tenant!r} is over its quota and refuses new runs: "
                            f"{verdict.reason}", headers={"Retry-After": str(math.ceil(retry))})

    async def _sweeper(self, admissions: Admissions) -> AdmissionActivities:
        """Frees closed runs' slots for the 429 check, rate-limited per tenant (one per API)."""
        from stead.activities.admission import AdmissionActivities

        if self._sweeps is None:
            self._sweeps = AdmissionActivities(
                admissions, await self.temporal(), quotas=self.settings.tenants.quotas,
                recheck_seconds=self.settings.tenants.admission_recheck_seconds)
        return self._sweeps

    async def quota(self, tenant: str) -> TenantUsage:
        """The tenant's admission figures and caps (zero without a quota)."""
        quota = quota_for(self.settings.tenants.quotas, tenant)
        ledger = await self.ledger()
        admissions = Admissions(ledger.pool, retry_seconds=ledger.retry_seconds)
        (usage,) = await _no_tables(lambda: admissions.usage([tenant]))
        return with_caps(usage, quota)

    async def runs(self, tenant: str, *, agent: str | None = None,
                   status: RunStatus | None = None, limit: int = 20) -> list[RunSummary]:
        """The tenant's runs, open ones first, then the most recently closed."""
        query = f"WorkflowType = 'AgentWorkflow' AND SteadTenant = '{tenant}'"
        if agent is not None:
            query += f" AND SteadAgent = '{agent}'"
        if status in ("running", "queued"):
            query += " AND ExecutionStatus = 'Running'"
        elif status == "failed":
            query += " AND ExecutionStatus != 'Running'"
        elif status is not None:  # an outcome the run returned
            query += " AND ExecutionStatus = 'Completed'"
        client = await self.temporal()
        found: list[RunSummary] = []
        batch: list[WorkflowExecution] = []
        scanned = 0

        async def flush() -> None:
            for s in await self._summaries(tenant, batch):
                if (status is None or s.status == status) and len(found) < limit:
                    found.append(s)
            batch.clear()

        try:
            async for wf in client.list_workflows(query, page_size=min(100, limit * 2)):
                batch.append(wf)
                scanned += 1
                if len(batch) >= limit - len(found):
                    await flush()
                if len(found) >= limit or scanned >= MAX_SCANNED:
                    break
            await flush()
        except RPCError as e:
            raise temporal_error(e, "the run list") from None
        return found

    async def _summaries(self, tenant: str, wfs: list[WorkflowExecution]) -> list[RunSummary]:
        statuses = await self._statuses(tenant, wfs)
        return [RunSummary(
            workflow_id=wf.id, run_id=wf.run_id, agent=wf.typed_search_attributes.get(_AGENT)
            or "", tenant=tenant, status=statuses[wf.run_id],
            temporal_status=_status_name(wf.status),
            awaiting_approval=bool(wf.typed_search_attributes.get(_AWAITING)),
            started_at=wf.start_time, closed_at=wf.close_time) for wf in wfs]

    async def _statuses(self, tenant: str,
                        wfs: list[WorkflowExecution]) -> dict[str, RunStatus]:
        """Each execution's outcome: running, failed (Temporal ended it), or what its
        ``RunResult`` says — from the ledger in one read, else from Temporal per run."""
        out: dict[str, RunStatus] = {}
        completed: list[WorkflowExecution] = []
        for wf in wfs:
            known = self._closed.get(wf.run_id)
            if wf.status == WorkflowExecutionStatus.RUNNING:
                out[wf.run_id] = "running"
            elif known is not None:
                out[wf.run_id] = known
            elif wf.status == WorkflowExecutionStatus.COMPLETED:
                completed.append(wf)
            else:
                out[wf.run_id] = self._closed.put(wf.run_id, "failed")
        await self._mark_queued(tenant, wfs, out)
        if not completed:
            return out
        recorded: dict[str, str] = {}
        try:
            ledger = await self.ledger()
            rows = await ledger.pool.fetch(
                "select run_id, status from stead_runs where tenant=$1 and run_id = any($2)",
                tenant, [wf.run_id for wf in completed])
            recorded = {r["run_id"]: r["status"] for r in rows}
        except (LedgerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # Temporal has every result too, only slower to read
        client = await self.temporal()
        for wf in completed:
            value = recorded.get(wf.run_id)
            if value in _RUN_STATUSES and value != "running":
                out[wf.run_id] = self._closed.put(wf.run_id, value)  # type: ignore[arg-type]
                continue
            handle = client.get_workflow_handle(wf.id, run_id=wf.run_id, result_type=RunResult)
            try:
                result = await handle.result(follow_runs=False)
            except WorkflowFailureError:
                out[wf.run_id] = self._closed.put(wf.run_id, "failed")
            else:
                out[wf.run_id] = self._closed.put(wf.run_id, result.status)
        return out

    async def _mark_queued(self, tenant: str, wfs: list[WorkflowExecution],
                           out: dict[str, RunStatus]) -> None:
        """Running runs that wait for their tenant's admission are ``queued`` (one read, only
        for a tenant whose quota caps runs in flight or starts per minute)."""
        quota = quota_for(self.settings.tenants.quotas, tenant)
        running = [wf for wf in wfs if out.get(wf.run_id) == "running"]
        if quota is None or not quota.limits_admission or not running:
            return
        try:
            ledger = await self.ledger()
            rows = await ledger.pool.fetch(
                "select workflow_id from stead_admissions where tenant = $1 and "
                "state = 'queued' and workflow_id = any($2)", tenant, [wf.id for wf in running])
        except (LedgerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return  # they show as running
        queued = {r["workflow_id"] for r in rows}
        for wf in running:
            if wf.id in queued:
                out[wf.run_id] = "queued"

    async def _owned(self, tenant: str, workflow_id: str,
                     ) -> tuple[WorkflowHandle[object, RunResult], WorkflowExecutionDescription]:
        """The run's handle and description, or ApiError(404) whether it is missing or
        another tenant's."""
        client = await self.temporal()
        handle = client.get_workflow_handle(workflow_id, result_type=RunResult)
        missing = ApiError(404, f"no run {workflow_id!r}")
        try:
            desc = await handle.describe()
        except RPCError as e:
            if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise missing from None
            raise temporal_error(e, f"run {workflow_id!r}") from None
        if desc.typed_search_attributes.get(_TENANT) != tenant:
            raise missing
        return handle, desc

    async def owned_run_id(self, tenant: str, workflow_id: str) -> str:
        """The run id of the tenant's latest run of ``workflow_id``; ApiError(404) else."""
        _, desc = await self._owned(tenant, workflow_id)
        return desc.run_id

    async def run(self, tenant: str, workflow_id: str) -> RunView:
        handle, desc = await self._owned(tenant, workflow_id)
        state: RunState | None = None
        result: RunResult | None = None
        error: str | None = None
        status: RunStatus
        if desc.status == WorkflowExecutionStatus.RUNNING:
            status = "running"
            try:
                state = await handle.query("state", result_type=RunState,
                                           rpc_timeout=QUERY_TIMEOUT)
                # Finished but not yet closed (its last activity runs): the run's own word.
                status, result = state.status, state.result
            except (RPCError, WorkflowQueryFailedError) as e:
                error = f"no worker answered the state query: {e}"
        else:
            try:
                result = await handle.result(follow_runs=False)
                status = result.status
            except WorkflowFailureError as e:
                status = "failed"
                error = str(getattr(e.cause, "message", None) or e.cause or e)
            except RPCError as e:
                raise temporal_error(e, f"run {workflow_id!r}") from None
        return RunView(workflow_id=workflow_id, run_id=desc.run_id,
                       agent=desc.typed_search_attributes.get(_AGENT) or "", tenant=tenant,
                       status=status, temporal_status=_status_name(desc.status), state=state,
                       result=result, error=error, started_at=desc.start_time,
                       closed_at=desc.close_time)

    # ------------------------------------------------------------------------ approvals

    async def approvals(self, tenant: str) -> list[ApprovalView]:
        """Approvals the tenant's open runs wait for, soonest deadline first."""
        client = await self.temporal()
        query = ("WorkflowType = 'AgentWorkflow' AND SteadAwaitingApproval = true AND "
                 f"ExecutionStatus = 'Running' AND SteadTenant = '{tenant}'")
        try:
            waiting = [wf async for wf in client.list_workflows(query, limit=MAX_SCANNED)]
        except RPCError as e:
            raise temporal_error(e, "the approval list") from None
        gate = asyncio.Semaphore(8)

        async def one(wf: WorkflowExecution) -> list[ApprovalView]:
            async with gate:
                handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
                try:
                    state = await handle.query("state", result_type=RunState,
                                               rpc_timeout=QUERY_TIMEOUT)
                    text = await self._input(handle, wf.run_id)
                except (RPCError, WorkflowQueryFailedError):
                    return []  # ended meanwhile, or no worker now: listed again when back
            if state.tenant != tenant:
                return []  # the run's own word, should a search attribute ever disagree
            steps = state.history[-RECENT_STEPS:]
            return [ApprovalView(**p.model_dump(), workflow_id=wf.id, agent=state.agent,
                                 tenant=state.tenant, input=text, recent_steps=steps)
                    for p in state.pending_approvals]

        rows = [a for group in await asyncio.gather(*(one(wf) for wf in waiting))
                for a in group]
        far = datetime.max.replace(tzinfo=UTC)
        return sorted(rows, key=lambda a: (a.deadline or far, a.workflow_id, a.approval_id))

    async def _input(self, handle: WorkflowHandle[object, object], run_id: str) -> str:
        """The run's request text, from its first history event (the source of truth)."""
        known = self._inputs.get(run_id)
        if known is not None:
            return known
        async for event in handle.fetch_history_events(page_size=1):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            client = await self.temporal()
            [request] = await client.data_converter.decode(list(payloads), [RunRequest])
            return self._inputs.put(run_id, request.input)
        return ""

    async def decide(self, principal: Principal, workflow_id: str, approval_id: str,
                     body: DecideBody) -> DecideOutcome:
        """The ``decide`` update, exactly as ``stead approve``/``reject`` send it."""
        if body.arguments is not None and not body.approved:
            raise ApiError(422, "edited arguments only make sense with an approval")
        handle, desc = await self._owned(principal.tenant, workflow_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ApiError(409, f"run {workflow_id!r} has ended "
                                f"({_status_name(desc.status)}); nothing is left to decide")
        payload = DecideInput(approval_id=approval_id, by=principal.sub,
                              role=principal.approval_role, note=body.note,
                              arguments=body.arguments, approved=body.approved)
        return await _update(
            handle, "decide", payload, DecideOutcome, what="the decision",
            refused=lambda why: ApiError(_refusal_status(why), f"decision refused: {why}"),
            ended=ApiError(409, f"run {workflow_id!r} has ended; nothing is left to decide"))

    async def raise_budget(self, principal: Principal, workflow_id: str,
                           body: RaiseBudgetBody) -> Budget:
        """The ``raise_budget`` update, exactly as ``stead raise-budget`` sends it; the new
        limit. A raise the run refuses (not above its limit, a limit it does not have) and a
        run that has ended are 409s in the run's own words."""
        handle, desc = await self._owned(principal.tenant, workflow_id)
        ended = ApiError(409, f"run {workflow_id!r} has ended "
                              f"({_status_name(desc.status)}); its budget can no longer be "
                              f"raised")
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ended
        payload = RaiseBudget(max_usd=body.max_usd, max_tokens=body.max_tokens,
                              max_model_calls=body.max_model_calls, by=principal.sub,
                              reason=body.reason)
        return await _update(handle, "raise_budget", payload, Budget, what="the budget raise",
                             refused=lambda why: ApiError(409, f"raise refused: {why}"),
                             ended=ended)

    # ------------------------------------------------------------------------ ledger reads

    async def audit(self, tenant: str, workflow_id: str) -> AuditTrail:
        ledger = await self.ledger()
        trail = await _no_tables(lambda: ledger.trail(workflow_id, tenant=tenant))
        if not trail.runs:
            raise ApiError(404, f"the ledger has no run {workflow_id!r}")
        problems = await _no_tables(lambda: ledger.verify_chain(workflow_id, tenant=tenant))
        return AuditTrail.model_validate({
            "workflow_id": workflow_id, "chain_ok": not problems, "chain_problems": problems,
            **trail.model_dump()})

    async def metrics(self, flt: MetricsFilter) -> MetricsReport:
        ledger = await self.ledger()
        return await _no_tables(lambda: compute_metrics(ledger, flt,
                                                        prices=self.settings.models.prices))


    async def budget(self, tenant: str) -> TenantBudget:
        ledger = await self.ledger()
        rows = await _no_tables(lambda: ledger.spend_usage(self.settings.tenants.quotas,
                                                           tenant=tenant))
        return TenantBudget(tenant=tenant, windows=[
            BudgetWindow(window=r.window, window_start=r.window_start, resets_at=r.resets_at,
                         spent_usd=r.spent_usd, reserved_usd=r.reserved_usd,
                         cap_usd=r.cap_usd, left_usd=r.left_usd) for r in rows])


async def _update(handle: WorkflowHandle[object, object], name: str, payload: object,
                  result_type: type[T], *, what: str, refused: Callable[[str], ApiError],
                  ended: ApiError) -> T:
    """A run's update ``name``, as the API sends every update: the run's refusal as
    ``refused(reason)``, no worker within ``UPDATE_TIMEOUT_SECONDS`` a 503, a run that has
    ended ``ended``."""
    try:
        return await asyncio.wait_for(
            handle.execute_update(name, payload, result_type=result_type),
            timeout=UPDATE_TIMEOUT_SECONDS)
    except WorkflowUpdateFailedError as e:
        raise refused(str(getattr(e.cause, "message", None) or e.cause)) from None
    except TimeoutError:
        raise ApiError(503, f"no worker accepted {what} for run {handle.id!r} within "
                            f"{UPDATE_TIMEOUT_SECONDS:.0f} s; is a worker running on its task "
                            f"queue?") from None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise ended from None
        raise temporal_error(e, f"run {handle.id!r}") from None


async def _no_tables(op: Callable[[], Awaitable[T]]) -> T:
    """``op``, with a ledger whose schema is older than this API (no worker of this version
    has migrated it yet, as in a rollout) answered as the ledger being unavailable (503)."""
    try:
        return await op()
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as e:
        raise LedgerError(f"the ledger has no such table or function yet ({e}); a worker of "
                          f"this version creates them when it starts") from None


def _refusal_status(reason: str) -> int:
    """The status of a decision the run refused, from the workflow's own words."""
    if reason.startswith("unknown approval"):
        return 404
    if "may not decide" in reason:
        return 403
    if "edited arguments" in reason:
        return 422
    return 409  # already decided, or otherwise at odds with the run's state


def _status_name(status: WorkflowExecutionStatus | None) -> str:
    return status.name if status is not None else "UNKNOWN"


class _Lru(OrderedDict[str, T]):
    """A small bounded memo."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: T) -> T:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


__all__ = ["API_SUB_KEY", "Backend"]
