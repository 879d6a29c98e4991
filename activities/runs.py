"""Run bookkeeping activities: resolve the agent and open the run, close it, record decisions.

They are short database writes, so the workflow runs them as local activities.
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stead import errors
from stead.authoring.agent import AgentCatalog
from stead.contracts.budget import Spend
from stead.contracts.models import (
    SYNTHETIC_KEY,
    AgentPlan,
    DecisionBatch,
    FinishRun,
    LostSubagent,
    StartRun,
)
from stead.contracts.quota import TenantQuota, quota_for
from stead.integrations.mcp import McpTools
from stead.integrations.model_endpoints import ModelEndpoints
from stead.integrations.model_prices import priced
from stead.observability.telemetry import NO_METRICS, SteadMetrics
from stead.observability.tracing import NO_TRACING, SteadTracing
from stead.settings import ModelPrice
from stead.storage.ledger import Ledger


class RunActivities:
    """Bound to the worker's agent catalog and ledger."""

    def __init__(self, catalog: AgentCatalog, ledger: Ledger, *, model_label: str | None,
                 model_timeout: float = 60.0, model_max_attempts: int = 5,
                 memory: bool = False, metrics: SteadMetrics = NO_METRICS,
                 tracing: SteadTracing = NO_TRACING, mcp: McpTools | None = None,
                 endpoints: ModelEndpoints | None = None,
                 quotas: Mapping[str, TenantQuota] | None = None,
                 prices: Mapping[str, ModelPrice] | None = None) -> None:
        """``mcp``: the worker's MCP servers; their tools are listed into each run's plan.
        ``endpoints``: the agents' model chains, pinned into each run's plan. ``quotas``: the
        tenants' (``STEAD_TENANT_QUOTAS``); a run whose tenant's caps runs in flight or starts
        per minute gets it pinned (``AgentPlan.admission``) and asks for admission.
        ``prices``: ``STEAD_MODEL_PRICES``, pinned into each run's plan for the models it may
        call."""
        self._quotas = quotas or {}
        self._prices: Mapping[str, ModelPrice] = prices or {}
        self._mcp = mcp
        self._endpoints = endpoints
        self._catalog = catalog
        self._tracing = tracing
        self._metrics = metrics
        self._ledger = ledger
        self._model_label = model_label
        self._model_timeout = model_timeout
        self._model_max_attempts = model_max_attempts
        self._memory = memory

    @activity.defn(name="run.start")
    async def start_run(self, start: StartRun) -> AgentPlan:
        """Pin the agent's plan for this run and open its ledger row."""
        req = start.request
        if req.agent not in self._catalog:
            raise ApplicationError(
                f"unknown agent {req.agent!r}; this worker serves: "
                f"{', '.join(self._catalog.names())}",
                type=errors.UNKNOWN_AGENT, non_retryable=True)
        agent = self._catalog[req.agent]
        chain = self._endpoints.chain(agent.name) if self._endpoints is not None else []
        model = chain[0].name if chain else self._model_label or agent.offline_model.name
        await self._ledger.start_run(start, model=model)
        plan = priced(await self._with_mcp(agent.plan(model=model, max_steps=req.max_steps,
                                                      models=chain)), self._prices)
        return plan.model_copy(update={"model_timeout": self._model_timeout,
                                       "model_max_attempts": self._model_max_attempts,
                                       # no store on this worker: the run neither recalls
                                       # nor remembers (recorded in the pinned plan)
                                       "memory": plan.memory if self._memory else None,
                                       "admission": self._admission(start),
                                       "spend_windows": self._spend_windows(start)})

    def _admission(self, start: StartRun) -> TenantQuota | None:
        """The tenant's quota if the run must ask for admission. stead's own runs
        (evaluations, counterfactual replays: ``SYNTHETIC_KEY``) take no tenant's slot."""
        if SYNTHETIC_KEY in start.request.metadata:
            return None
        quota = quota_for(self._quotas, start.request.tenant)
        return quota if quota is not None and quota.limits_admission else None

    def _spend_windows(self, start: StartRun) -> bool:
        """Whether the run's tenant has spending windows: its model requests then carry the
        workflow's estimate for the model activity to reserve (``AgentPlan.spend_windows``)."""
        quota = quota_for(self._quotas, start.request.tenant)
        return quota is not None and bool(quota.windows)

    @activity.defn(name="run.plan")
    async def plan_for(self, start: StartRun) -> AgentPlan:
        """The plan of the agent a request is handed over to by routing."""
        req = start.request
        if req.agent not in self._catalog:
            raise ApplicationError(f"routing hands over to unknown agent {req.agent!r}",
                                   type=errors.UNKNOWN_AGENT, non_retryable=True)
        agent = self._catalog[req.agent]
        chain = self._endpoints.chain(agent.name) if self._endpoints is not None else []
        plan = priced(await self._with_mcp(agent.plan(model=self._model_label or
                                                      agent.offline_model.name,
                                                      max_steps=req.max_steps, models=chain)),
                      self._prices)
        return plan.model_copy(update={"model_timeout": self._model_timeout,
                                       "model_max_attempts": self._model_max_attempts,
                                       "memory": plan.memory if self._memory else None,
                                       "spend_windows": self._spend_windows(start)})

    async def _with_mcp(self, plan: AgentPlan) -> AgentPlan:
        """The plan plus the tools its agent's MCP servers list now: as this activity's result
        the list is pinned in the run's history, whatever the servers offer later."""
        if self._mcp is None:
            return plan
        found = await self._mcp.plans(plan.agent)
        return plan.model_copy(update={"tools": [*plan.tools, *found]}) if found else plan

    @activity.defn(name="run.finish")
    async def finish_run(self, finish: FinishRun) -> None:
        r = finish.result
        # The run's metrics are counted from what the closing statement reads back.
        finished = await self._ledger.finish_run(finish.ref, r, decisions=finish.decisions,
                                                 counting=self._metrics.counting)
        self._tracing.decisions(finish.decisions)
        self._metrics.finished_run(finished, status=r.status)

    @activity.defn(name="run.subagent_spend")
    async def subagent_spend(self, lost: LostSubagent) -> Spend:
        """What a sub-agent that left no result spent, from its model calls in the ledger
        (its own sub-agents' included): the parent counts it against its budget."""
        return await self._ledger.subtree_spend(lost.workflow_id)

    @activity.defn(name="run.decisions")
    async def record_decisions(self, batch: DecisionBatch) -> None:
        """Store audit rows now (the run is about to wait, e.g. for an approver)."""
        await self._ledger.append_decisions(batch.rows)
        self._tracing.decisions(batch.rows)
