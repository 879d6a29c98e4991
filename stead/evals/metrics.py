"""Metrics from the ledger: how agents and tools did over a window of runs.

    report = await compute_metrics(ledger, MetricsFilter(since=parse_when("7d", now=now)),
                                   prices=settings.models.prices)

A run belongs to the window when it *started* in ``[since, until)``; everything it did (model
calls, tool attempts, decisions) counts with it, so every figure describes the same runs.
Runs that stead started itself (``metadata`` has :data:`~stead.evals.SYNTHETIC_KEY`: eval
suites, counterfactual replays) are left out unless ``include_synthetic``.

Definitions (each figure says what it counts):

- success rate = completed / finished runs (running ones are not finished yet): the
  *completion* rate;
- task success = evaluated runs that succeeded / evaluated runs, where online evaluation
  (``stead.evals.online``) gave a run its verdict: it succeeded when it completed and no
  evaluator failed it; runs an evaluator could not grade (it raised) are counted apart as
  ``unknown`` and left out of the rate, runs not (yet) evaluated are not counted;
- run latency = ``finished_at - started_at`` of finished runs;
- a tool *call* is one idempotency key (one tool at one step); its attempts are Temporal's
  retries. failure rate = calls that never succeeded / calls; attempt failure rate = failed
  attempts / attempts; retry rate = calls that needed more than one attempt / calls. Tool
  latency is over attempts that ran the tool (``ok``/``error``), not ledger replays;
- approval wait = ``approval_requested`` to ``approval_decided`` (a human's decision or the
  last deadline passing) of the same approval;
- cost = tokens x the settings price table (USD per 1M tokens); offline (scripted) and
  unlisted models cost 0 and say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from stead.evals import SYNTHETIC_KEY
from stead.evals.online import TASK_VERDICTS
from stead.evals.samples import parse_when
from stead.observability.telemetry import GUARDRAIL_KINDS
from stead.settings import ModelPrice
from stead.storage.ledger import Ledger

__all__ = [
    "AgentMetrics",
    "ApprovalMetrics",
    "EvaluatorMetrics",
    "GuardrailCount",
    "MetricsFilter",
    "MetricsReport",
    "ModelUsage",
    "Percentiles",
    "TaskSuccess",
    "ToolMetrics",
    "compute_metrics",
    "parse_when",
    "price_for",
]

_ALL = "*"
"""``agent`` of the row that sums every agent."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Percentiles(_Model):
    """Milliseconds; ``None`` when there was nothing to measure."""

    count: int = 0
    """How many values the percentiles are over."""
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class MetricsFilter(_Model):
    """Which runs: started in ``[since, until)``, of one agent and/or tenant."""

    since: datetime
    until: datetime = Field(default_factory=lambda: datetime.now(UTC))
    agent: str | None = None
    tenant: str | None = None
    include_synthetic: bool = False
    """Count runs started by eval suites and counterfactual replays too."""


class GuardrailCount(_Model):
    kind: str
    """Decision kind: route, gate, call_rejected, output_rejected, approval_edit."""
    decision: str
    """What it decided, e.g. ``deny``, ``ask``, ``allow``, ``refuse``, ``reask``."""
    count: int


class ApprovalMetrics(_Model):
    requested: int = 0
    decided: dict[str, int] = Field(default_factory=dict)
    """By outcome: approved, rejected, expired (no one decided before the last deadline)."""
    escalated: int = 0
    """Deadlines that moved an approval up the approver chain."""
    wait_ms: Percentiles = Percentiles()


class ModelUsage(_Model):
    model: str
    calls: int
    """Model call attempts, failed ones included."""
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    pricing: Literal["priced", "offline", "unpriced"]
    """``offline``: a scripted model, free; ``unpriced``: not in the price table, counted 0."""
    latency_ms: Percentiles


class EvaluatorMetrics(_Model):
    """One evaluator version's rows over the window's runs."""

    evaluator: str
    version: int
    scored: int
    passed: int
    errors: int
    """Runs it could not grade: it raised (a failed judge model, a bug in a rule)."""
    skipped: int
    """Runs it did not grade: they did not complete, or it does not apply to them."""
    pass_rate: float | None
    """passed / scored; None before it scored a run."""


class TaskSuccess(_Model):
    """Task success from online evaluation: how many evaluated runs really did their task."""

    rate: float | None = None
    """succeeded / evaluated; None before any run was evaluated."""
    evaluated: int = 0
    """Finished runs with a verdict (each completed and passed, or not)."""
    succeeded: int = 0
    """Evaluated runs that completed and that no evaluator failed."""
    unknown: int = 0
    """Runs with no verdict: an evaluator raised and none failed them (not in ``rate``)."""
    evaluators: list[EvaluatorMetrics] = Field(default_factory=list)


class AgentMetrics(_Model):
    agent: str
    """Agent name, or ``*`` for the row over all agents."""
    runs: int
    by_status: dict[str, int]
    finished: int
    completed: int
    success_rate: float | None
    """completed / finished (the completion rate); None before any run finished."""
    task_success: TaskSuccess = TaskSuccess()
    """Evaluated task success (``stead.evals.online``), beside the completion rate."""
    latency_ms: Percentiles
    escalated_runs: int
    denied_runs: int
    """Runs that ended ``denied`` (a call was denied by policy or rejected by an approver)."""
    refused_runs: int
    """Runs that routing refused outright."""
    budget_exceeded_runs: int = 0
    """Runs that ended ``budget_exceeded``: stopped before a model call that would pass the
    run's budget (``max_usd``, ``max_tokens``, ``max_model_calls``) or its tenant's spending
    window."""
    gate_denials: int
    """Tool calls the gate denied (policy: hard limit or risk above ``deny_at``)."""
    guardrails: list[GuardrailCount]
    approvals: ApprovalMetrics
    model_calls: int
    model_errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    models: list[ModelUsage]


class ToolMetrics(_Model):
    tool: str
    calls: int
    attempts: int
    failed_calls: int
    failed_attempts: int
    retried_calls: int
    retries: int
    """Attempts beyond the first, summed over calls."""
    failure_rate: float | None
    attempt_failure_rate: float | None
    retry_rate: float | None
    latency_ms: Percentiles


class MetricsReport(_Model):
    filter: MetricsFilter
    generated_at: datetime
    overall: AgentMetrics
    agents: list[AgentMetrics]
    tools: list[ToolMetrics]


# ---------------------------------------------------------------------------- prices


def price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The entry whose name is the longest prefix of ``model`` (also without a ``provider:``
    prefix), so ``gpt-4o-mini`` prices ``openai:gpt-4o-mini-2024-07-18``."""
    names = {model, model.partition(":")[2]} - {""}
    best: tuple[int, ModelPrice] | None = None
    for key, price in prices.items():
        if any(n.startswith(key) for n in names) and (best is None or len(key) > best[0]):
            best = (len(key), price)
    return best[1] if best else None


def _usage(agent_model: str, calls: int, errors: int, tokens_in: int, tokens_out: int,
           latency: Percentiles, prices: Mapping[str, ModelPrice]) -> ModelUsage:
    price = price_for(agent_model, prices)
    if agent_model.startswith("scripted"):
        pricing: Literal["priced", "offline", "unpriced"] = "offline"
        cost = 0.0
    elif price is None:
        pricing, cost = "unpriced", 0.0
    else:
        pricing = "priced"
        cost = (tokens_in * price.input + tokens_out * price.output) / 1_000_000
    return ModelUsage(model=agent_model, calls=calls, errors=errors, input_tokens=tokens_in,
                      output_tokens=tokens_out, cost_usd=cost, pricing=pricing,
                      latency_ms=latency)


# ---------------------------------------------------------------------------- queries

# $1 since, $2 until, $3 agent, $4 tenant, $5 include synthetic, $6 the synthetic key.
_RUNS = """
with runs as (
  select workflow_id, run_id, agent, status, started_at, finished_at from stead_runs
  where started_at >= $1 and started_at < $2
    and ($3::text is null or agent = $3) and ($4::text is null or tenant = $4)
    and ($5::bool or not (metadata ? $6::text)))
"""

# Grouping sets give each agent's row and the all-agents row (agent null) in one pass.
_Q_RUNS = _RUNS + """
select agent, count(*) as runs,
  count(*) filter (where status <> 'running') as finished,
  count(*) filter (where status = 'completed') as completed,
  count(*) filter (where finished_at is not null) as timed,
  percentile_cont(array[0.5, 0.95, 0.99]) within group (
    order by extract(epoch from finished_at - started_at)::float8 * 1000)
    filter (where finished_at is not null) as latency
from runs group by grouping sets ((agent), ())
"""

_Q_STATUS = _RUNS + """
select agent, status, count(*) as n from runs group by grouping sets ((agent, status), (status))
"""

_Q_DECISIONS = _RUNS + """
select r.agent, d.kind, d.decision, count(*) as n
from runs r join stead_decisions d on d.workflow_id = r.workflow_id and d.run_id = r.run_id
where d.kind = any($7::text[])
group by grouping sets ((r.agent, d.kind, d.decision), (d.kind, d.decision))
"""

_Q_APPROVAL_WAIT = _RUNS + """
select r.agent, count(*) as n,
  percentile_cont(array[0.5, 0.95, 0.99]) within group (
    order by extract(epoch from dd.created_at - rq.created_at)::float8 * 1000) as wait
from runs r
join stead_decisions rq on rq.workflow_id = r.workflow_id and rq.run_id = r.run_id
  and rq.kind = 'approval_requested'
join stead_decisions dd on dd.workflow_id = rq.workflow_id and dd.run_id = rq.run_id
  and dd.kind = 'approval_decided' and dd.data->>'approval_id' = rq.data->>'approval_id'
group by grouping sets ((r.agent), ())
"""

_Q_MODELS = _RUNS + """
select r.agent, m.model, count(*) as calls, count(*) filter (where m.status <> 'ok') as errors,
  coalesce(sum(m.input_tokens), 0)::int8 as tokens_in,
  coalesce(sum(m.output_tokens), 0)::int8 as tokens_out,
  percentile_cont(array[0.5, 0.95, 0.99]) within group (order by m.duration_ms) as latency
from runs r join stead_model_calls m on m.workflow_id = r.workflow_id and m.run_id = r.run_id
group by grouping sets ((r.agent, m.model), (m.model))
"""

# A call is failed once it can no longer succeed: marked failed, or left open/running by a run
# that has finished (its last attempt timed out or its worker died).
_Q_TOOL_CALLS = _RUNS + """
select c.tool, count(*) as calls,
  count(*) filter (where c.status = 'failed' or (c.status in ('open', 'running')
                                                and r.finished_at is not null)) as failed,
  count(*) filter (where c.attempts > 1) as retried,
  coalesce(sum(c.attempts - 1), 0)::int8 as retries
from runs r join stead_tool_calls c on c.workflow_id = r.workflow_id and c.run_id = r.run_id
group by c.tool
"""

_Q_TOOL_ATTEMPTS = _RUNS + """
select a.tool, count(*) as attempts,
  count(*) filter (where a.status = 'error' or (a.status = 'running'
                                                and r.finished_at is not null)) as failed,
  count(*) filter (where a.status in ('ok', 'error') and a.duration_ms is not null) as timed,
  percentile_cont(array[0.5, 0.95, 0.99]) within group (order by a.duration_ms)
    filter (where a.status in ('ok', 'error') and a.duration_ms is not null) as latency
from runs r join stead_tool_attempts a on a.workflow_id = r.workflow_id and a.run_id = r.run_id
group by a.tool
"""


_Q_TASK = _RUNS + ", " + TASK_VERDICTS.format(runs="runs") + """
select r.agent, count(*) filter (where v.verdict <> 'unknown') as evaluated,
  count(*) filter (where v.verdict = 'succeeded') as succeeded,
  count(*) filter (where v.verdict = 'unknown') as unknown
from runs r join verdicts v on v.workflow_id = r.workflow_id and v.run_id = r.run_id
group by grouping sets ((r.agent), ())
"""

_Q_EVALUATORS = _RUNS + """
select r.agent, e.evaluator, e.version,
  count(*) filter (where e.status = 'scored') as scored,
  count(*) filter (where e.status = 'scored' and e.passed) as passed,
  count(*) filter (where e.status = 'error') as errors,
  count(*) filter (where e.status = 'skipped') as skipped
from runs r join stead_evaluations e on e.workflow_id = r.workflow_id and e.run_id = r.run_id
group by grouping sets ((r.agent, e.evaluator, e.version), (e.evaluator, e.version))
"""


def _pct(count: int, values: Sequence[float | None] | None) -> Percentiles:
    if not count or values is None:
        return Percentiles(count=count)
    p50, p95, p99 = values
    return Percentiles(count=count, p50=p50, p95=p95, p99=p99)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def compute_metrics(ledger: Ledger, flt: MetricsFilter, *,
                          prices: Mapping[str, ModelPrice]) -> MetricsReport:
    """Every figure for the runs ``flt`` selects, per agent, over all agents and per tool."""
    if flt.since >= flt.until:
        raise ValueError(f"empty window: since ({flt.since.isoformat()}) is not before until "
                         f"({flt.until.isoformat()})")
    args = (flt.since, flt.until, flt.agent, flt.tenant, flt.include_synthetic, SYNTHETIC_KEY)
    kinds = [*GUARDRAIL_KINDS, "approval_requested", "approval_decided", "approval_escalated"]

    async def op(c: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
        return {
            "runs": await c.fetch(_Q_RUNS, *args),
            "status": await c.fetch(_Q_STATUS, *args),
            "decisions": await c.fetch(_Q_DECISIONS, *args, kinds),
            "waits": await c.fetch(_Q_APPROVAL_WAIT, *args),
            "models": await c.fetch(_Q_MODELS, *args),
            "tool_calls": await c.fetch(_Q_TOOL_CALLS, *args),
            "tool_attempts": await c.fetch(_Q_TOOL_ATTEMPTS, *args),
            # A ledger not yet migrated to online evaluation (0008) has no scores to read.
            **({"task": await c.fetch(_Q_TASK, *args),
                "evaluators": await c.fetch(_Q_EVALUATORS, *args)}
               if await c.fetchval("select to_regclass('stead_evaluations') is not null")
               else {"task": [], "evaluators": []}),
        }

    # One snapshot: every query sees the same runs even while runs are finishing.
    async with ledger.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                readonly=True):
        rows = await op(conn)

    def key(agent: str | None) -> str:
        return _ALL if agent is None else agent

    by_status: dict[str, dict[str, int]] = {}
    for r in rows["status"]:
        by_status.setdefault(key(r["agent"]), {})[r["status"]] = r["n"]
    decisions: dict[str, dict[tuple[str, str], int]] = {}
    for r in rows["decisions"]:
        decisions.setdefault(key(r["agent"]), {})[(r["kind"], r["decision"])] = r["n"]
    waits = {key(r["agent"]): _pct(r["n"], r["wait"]) for r in rows["waits"]}
    models: dict[str, list[ModelUsage]] = {}
    for r in rows["models"]:
        models.setdefault(key(r["agent"]), []).append(_usage(
            r["model"], r["calls"], r["errors"], r["tokens_in"], r["tokens_out"],
            _pct(r["calls"], r["latency"]), prices))

    graded: dict[str, list[EvaluatorMetrics]] = {}
    for r in rows["evaluators"]:
        graded.setdefault(key(r["agent"]), []).append(EvaluatorMetrics(
            evaluator=r["evaluator"], version=r["version"], scored=r["scored"],
            passed=r["passed"], errors=r["errors"], skipped=r["skipped"],
            pass_rate=_rate(r["passed"], r["scored"])))
    task = {key(r["agent"]): TaskSuccess(
        rate=_rate(r["succeeded"], r["evaluated"]), evaluated=r["evaluated"],
        succeeded=r["succeeded"], unknown=r["unknown"],
        evaluators=sorted(graded.get(key(r["agent"]), []),
                          key=lambda e: (e.evaluator, e.version)))
        for r in rows["task"]}

    def agent_row(r: asyncpg.Record) -> AgentMetrics:
        name = key(r["agent"])
        status = by_status.get(name, {})
        dec = decisions.get(name, {})
        used = sorted(models.get(name, []), key=lambda u: u.model)
        return AgentMetrics(
            agent=name, runs=r["runs"], by_status=dict(sorted(status.items())),
            finished=r["finished"], completed=r["completed"],
            success_rate=_rate(r["completed"], r["finished"]),
            task_success=task.get(name, TaskSuccess()),
            latency_ms=_pct(r["timed"], r["latency"]),
            escalated_runs=status.get("escalated", 0), denied_runs=status.get("denied", 0),
            refused_runs=status.get("refused", 0),
            budget_exceeded_runs=status.get("budget_exceeded", 0),
            gate_denials=dec.get(("gate", "deny"), 0),
            guardrails=[GuardrailCount(kind=k, decision=d, count=n)
                        for (k, d), n in sorted(dec.items()) if k in GUARDRAIL_KINDS],
            approvals=ApprovalMetrics(
                requested=sum(n for (k, _), n in dec.items() if k == "approval_requested"),
                decided={d: n for (k, d), n in sorted(dec.items()) if k == "approval_decided"},
                escalated=sum(n for (k, _), n in dec.items() if k == "approval_escalated"),
                wait_ms=waits.get(name, Percentiles())),
            model_calls=sum(u.calls for u in used), model_errors=sum(u.errors for u in used),
            input_tokens=sum(u.input_tokens for u in used),
            output_tokens=sum(u.output_tokens for u in used),
            cost_usd=sum(u.cost_usd for u in used), models=used)

    agents = [agent_row(r) for r in rows["runs"]]
    overall = next((a for a in agents if a.agent == _ALL), None) or _empty()
    attempts = {r["tool"]: r for r in rows["tool_attempts"]}
    tools = []
    for c in sorted(rows["tool_calls"], key=lambda r: r["tool"]):
        a = attempts.get(c["tool"])
        n_attempts = a["attempts"] if a else 0
        failed_attempts = a["failed"] if a else 0
        tools.append(ToolMetrics(
            tool=c["tool"], calls=c["calls"], attempts=n_attempts, failed_calls=c["failed"],
            failed_attempts=failed_attempts, retried_calls=c["retried"], retries=c["retries"],
            failure_rate=_rate(c["failed"], c["calls"]),
            attempt_failure_rate=_rate(failed_attempts, n_attempts),
            retry_rate=_rate(c["retried"], c["calls"]),
            latency_ms=_pct(a["timed"], a["latency"]) if a else Percentiles()))
    return MetricsReport(filter=flt, generated_at=datetime.now(UTC), overall=overall,
                         agents=sorted((a for a in agents if a.agent != _ALL),
                                       key=lambda a: a.agent),
                         tools=tools)


def _empty() -> AgentMetrics:
    """The all-agents row of a window without runs."""
    return AgentMetrics(agent=_ALL, runs=0, by_status={}, finished=0, completed=0,
                        success_rate=None, latency_ms=Percentiles(), escalated_runs=0,
                        denied_runs=0, refused_runs=0, gate_denials=0, guardrails=[],
                        approvals=ApprovalMetrics(), model_calls=0, model_errors=0,
                        input_tokens=0, output_tokens=0, cost_usd=0.0, models=[])
