"""Online evaluation: agents' evaluators applied to their finished production runs, scores in
``stead_evaluations``, and task success read back for metrics and drift.

    pending = await pending_runs(ledger.pool, catalog, PendingRequest(since=s, until=u))
    verdicts = await evaluate_runs(ledger, catalog, pending.runs, source="sweep/1",
                                   judge_model_for=models.client_for)
    rows = await list_evaluations(ledger.pool, workflow_id)        # stead grade --show

``EvaluationWorkflow`` (``workflows/evaluation.py``) runs these as activities, on a Temporal
Schedule that ``stead up``, ``stead worker`` and ``worker.py`` create
(:func:`ensure_schedule`), or now (``stead grade``). Why a sweep and not a workflow started
by each run: the run does nothing for its evaluation, not even a start request; runs that
ended while no sweep ran (workers down, schedule paused, an evaluator version bumped) are
found by the next sweep; and the work is bounded per sweep (``limit``, ``batch``,
``concurrency``) however many runs end at once. The price is latency: a run is scored within
one schedule interval of its end.

A run's **verdict**, from its newest row per evaluator:

- ``unsuccessful``: the run did not complete (its evaluators are recorded as skipped), or an
  evaluator scored it and it did not pass;
- ``unknown``: no evaluator failed it but one raised (left out of the task-success rate and
  counted apart);
- ``succeeded``: it completed, and every evaluator passed it or did not apply.

Sampling is by a hash of ``workflow_id/run_id`` (:func:`sample_point`), computed the same in
Python and in SQL: every sweep picks the same runs, and a larger share keeps a smaller one's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from stead.authoring.evaluation import FinishedRun, RunEvaluator, ToolUse, Verdict
from stead.contracts.evaluation import (
    EVALUATION_WORKFLOW,
    EvaluateRuns,
    EvaluationSweep,
    EvaluationSweepSummary,
    PendingRequest,
    PendingRuns,
    RunKey,
    RunVerdict,
    RunVerdicts,
)
from stead.contracts.models import LedgerDecision, RunResult
from stead.evals import SYNTHETIC_KEY

if TYPE_CHECKING:
    from temporalio.client import Client

    from stead.authoring.agent import AgentCatalog
    from stead.integrations.llm import ModelClient
    from stead.settings import Settings
    from stead.storage.ledger import Ledger

__all__ = [
    "EVALUATION_WORKFLOW",
    "TASK_VERDICTS",
    "EvaluateRuns",
    "EvaluationRow",
    "EvaluationSweep",
    "EvaluationSweepSummary",
    "Graded",
    "PendingRequest",
    "PendingRuns",
    "RunKey",
    "RunVerdict",
    "RunVerdicts",
    "ensure_schedule",
    "evaluate_run",
    "evaluate_runs",
    "grade",
    "in_sample",
    "list_evaluations",
    "load_finished_run",
    "load_finished_runs",
    "outcome_of",
    "pending_runs",
    "sample_point",
    "schedule_id_for",
    "schedule_sweeps",
    "summary_text",
    "task_verdicts",
]

Status = Literal["scored", "skipped", "error"]

# ---------------------------------------------------------------------------- sampling

_SAMPLE_SQL = "('x' || substr(md5(r.workflow_id || '/' || r.run_id), 1, 8))::bit(32)::bigint"
"""The first 32 bits of md5("workflow_id/run_id") as an unsigned number, in SQL."""


def sample_point(workflow_id: str, run_id: str) -> float:
    """Where a run falls in [0, 1): the first 32 bits of md5("workflow_id/run_id") / 2^32."""
    digest = hashlib.md5(f"{workflow_id}/{run_id}".encode(), usedforsecurity=False)
    return int(digest.hexdigest()[:8], 16) / 2**32


def in_sample(workflow_id: str, run_id: str, share: float) -> bool:
    """Whether a run is in a sample of ``share`` (0 to 1) of all runs."""
    return sample_point(workflow_id, run_id) < share


# ---------------------------------------------------------------------------- the finished run


_KEYS = ("join unnest($1::text[], $2::text[]) as k(w, r) on x.workflow_id = k.w"
         " and x.run_id = k.r")
"""Restricts table ``x`` to the runs whose ids are in the arrays $1 (workflows), $2 (runs)."""


async def load_finished_runs(conn: asyncpg.Connection, keys: Sequence[RunKey], *,
                             instructions: Mapping[str, str] | None = None,
                             ) -> dict[tuple[str, str], FinishedRun]:
    """Finished runs as their evaluators see them, from the ledger, in five queries however
    many runs (a key without a finished run is left out). ``instructions``: per agent."""
    args = ([k.workflow_id for k in keys], [k.run_id for k in keys])
    rows = await conn.fetch(f"select x.* from stead_runs x {_KEYS}"
                            " where x.finished_at is not null", *args)
    if not rows:
        return {}
    calls: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for c in await conn.fetch(
            "select x.workflow_id, x.run_id, x.step, x.call_id, x.tool, x.arguments, x.status,"
            f" x.result, x.error from stead_tool_calls x {_KEYS}"
            " order by x.step, x.claimed_at", *args):
        calls.setdefault((c["workflow_id"], c["run_id"]), []).append(c)
    decisions: dict[tuple[str, str], list[LedgerDecision]] = {}
    for d in await conn.fetch(
            "select x.workflow_id, x.run_id, x.seq, x.step, x.kind, x.decision, x.reason,"
            f" x.actor, x.policy, x.data from stead_decisions x {_KEYS} order by x.seq", *args):
        decisions.setdefault((d["workflow_id"], d["run_id"]), []).append(
            LedgerDecision.model_validate({k: d[k] for k in LedgerDecision.model_fields}))
    recalled: dict[tuple[str, str], list[str]] = {}
    for m in await conn.fetch(
            f"select x.workflow_id, x.run_id, m.text from stead_memory_ops x {_KEYS}"
            " cross join lateral unnest(x.item_ids) with ordinality as i(id, n)"
            " join stead_memory m on m.tenant = x.tenant and m.id = i.id"
            " where x.op = 'recall' order by x.created_at, i.n", *args):
        recalled.setdefault((m["workflow_id"], m["run_id"]), []).append(m["text"])
    out = {}
    for row in rows:
        key = (row["workflow_id"], row["run_id"])
        out[key] = _finished_run(row, calls.get(key, []), decisions.get(key, []),
                                 recalled.get(key, []),
                                 (instructions or {}).get(row["agent"], ""))
    return out


def _finished_run(row: asyncpg.Record, ledger_calls: Sequence[asyncpg.Record],
                  decisions: Sequence[LedgerDecision], recalled: Sequence[str],
                  instructions: str) -> FinishedRun:
    """One run from its ledger rows: the result's call records joined with the stored
    results (by step and call id)."""
    result = RunResult.model_validate(row["result"]) if row["result"] else None
    by_call = {(c["step"], c["call_id"]): c for c in ledger_calls}
    calls: list[ToolUse] = []
    if result is not None:
        for rec in result.tool_calls:
            stored = by_call.pop((rec.step, rec.call_id), None)
            ok = stored is not None and stored["status"] == "completed"
            calls.append(ToolUse(step=rec.step, call_id=rec.call_id, tool=rec.tool,
                                 arguments=rec.arguments, status=rec.status,
                                 result=stored["result"] if ok and stored else None,
                                 error=rec.error))
    for c in by_call.values():  # ledger rows the result does not list (kept, not lost)
        calls.append(ToolUse(step=c["step"], call_id=c["call_id"], tool=c["tool"],
                             arguments=c["arguments"],
                             status="ok" if c["status"] == "completed" else "error",
                             result=c["result"] if c["status"] == "completed" else None,
                             error=c["error"]))
    calls.sort(key=lambda u: u.step)
    return FinishedRun(
        workflow_id=row["workflow_id"], run_id=row["run_id"], agent=row["agent"],
        tenant=row["tenant"], status=row["status"], input=row["input"], answer=row["answer"],
        error=row["error"], steps=row["steps"], model=row["model"],
        model_turns=result.model_turns if result else 0, started_at=row["started_at"],
        finished_at=row["finished_at"], tool_calls=tuple(calls), decisions=tuple(decisions),
        path=tuple(result.path) if result else (), instructions=instructions,
        recalled=tuple(recalled), metadata=dict(row["metadata"]))


async def load_finished_run(pool: asyncpg.Pool, key: RunKey, *,
                            instructions: str = "") -> FinishedRun | None:
    """One finished run as its evaluators see it (None: no such finished run)."""
    async with pool.acquire() as c:
        found = await load_finished_runs(c, [key], instructions={key.agent: instructions})
    return found.get((key.workflow_id, key.run_id))


# ---------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class Graded:
    """One evaluator's outcome on one run, as it is stored."""

    evaluator: RunEvaluator
    status: Status
    verdict: Verdict | None = None
    feedback: str = ""
    error: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    duration_ms: float = 0.0


async def grade(evaluator: RunEvaluator, run: FinishedRun, *,
                judge_model: ModelClient | None = None,
                judge_timeout: float = 60.0) -> Graded:
    """One evaluator on one run; whatever the evaluator raises becomes an ``error`` outcome.

    Only completed runs are graded (the others are recorded as skipped: they are not a task
    success whatever their answer). Rules run in a thread, so a slow check never stalls the
    worker's event loop (and the workflow tasks of the runs it serves)."""
    started = time.perf_counter()

    def ms() -> float:
        return (time.perf_counter() - started) * 1000

    if run.status != "completed":
        return Graded(evaluator, "skipped", feedback=f"not graded: the run ended {run.status}")
    try:
        if evaluator.applies is not None and not evaluator.applies(run):
            return Graded(evaluator, "skipped", feedback="does not apply to this run",
                          duration_ms=ms())
        if evaluator.kind == "judge":
            if judge_model is None:
                raise LookupError("no judge model: give OnlineEvals(judge_model=...) or "
                                  "configure a model server")
            turn = await asyncio.wait_for(
                judge_model.complete(evaluator.judge_messages(run), []), judge_timeout)
            verdict = evaluator.judge_verdict(turn.content)
            return Graded(evaluator, "scored", verdict, feedback=verdict.feedback,
                          model=turn.model or judge_model.name,
                          input_tokens=turn.usage.input_tokens,
                          output_tokens=turn.usage.output_tokens, duration_ms=ms())
        verdict = await asyncio.to_thread(evaluator.grade, run)
        return Graded(evaluator, "scored", verdict, feedback=verdict.feedback, duration_ms=ms())
    except Exception as err:  # an evaluator's failure is recorded, never the run's
        what = "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"
        return Graded(evaluator, "error", error=what[:2000],
                      model=judge_model.name if evaluator.kind == "judge" and judge_model
                      else None, duration_ms=ms())


def outcome_of(run_status: str, rows: Sequence[tuple[Status, bool | None]]
               ) -> Literal["succeeded", "unsuccessful", "unknown"]:
    """A run's verdict from its evaluators' newest ``(status, passed)`` rows."""
    if run_status != "completed" or any(s == "scored" and p is False for s, p in rows):
        return "unsuccessful"
    if any(s == "error" for s, _ in rows):
        return "unknown"
    return "succeeded"


_INSERT = """
insert into stead_evaluations(workflow_id, run_id, agent, evaluator, version, digest, kind,
  status, score, passed, feedback, error, model, input_tokens, output_tokens, duration_ms, source)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
  $7::text[], $8::text[], $9::float8[], $10::bool[], $11::text[], $12::text[], $13::text[],
  $14::int[], $15::int[], $16::float8[], $17::text[])
on conflict (workflow_id, run_id, evaluator, version) do nothing
returning workflow_id, run_id
"""


async def evaluate_runs(ledger: Ledger, catalog: AgentCatalog, keys: Sequence[RunKey], *,
                        source: str, judge_model_for: Callable[[str], ModelClient] | None = None,
                        judge_timeout: float = 60.0) -> list[RunVerdict]:
    """Grade finished runs with every evaluator of their agents that has not scored them
    yet, and store the rows in one statement: a verdict per key, in order.

    Idempotent: a retried call finds the rows an earlier attempt stored and grades nothing
    again (no judge is asked twice); a row two sweeps race to store is stored once."""
    agents = {k.agent: catalog[k.agent] for k in keys if k.agent in catalog}
    declared = {name: a.evals for name, a in agents.items() if a.evals is not None}
    wanted = [k for k in keys if k.agent in declared]
    async with ledger.pool.acquire() as c:
        runs = await load_finished_runs(c, wanted, instructions={
            name: a.instructions for name, a in agents.items()})
        stored: dict[tuple[str, str], dict[tuple[str, int], tuple[Status, bool | None]]] = {}
        for row in await c.fetch(
                "select x.workflow_id, x.run_id, x.evaluator, x.version, x.status, x.passed"
                f" from stead_evaluations x {_KEYS}",
                [k.workflow_id for k in wanted], [k.run_id for k in wanted]):
            stored.setdefault((row["workflow_id"], row["run_id"]), {})[
                (row["evaluator"], row["version"])] = (row["status"], row["passed"])
    judges: dict[str, ModelClient | None] = {}
    graded: dict[tuple[str, str], list[Graded]] = {}
    for k in wanted:
        run = runs.get((k.workflow_id, k.run_id))
        if run is None:
            continue
        evals = declared[k.agent]
        have = stored.get((k.workflow_id, k.run_id), {})
        todo = [e for e in evals.graded if e.key not in have]
        if any(e.kind == "judge" for e in todo) and k.agent not in judges:
            judges[k.agent] = evals.judge_model or (
                judge_model_for(k.agent) if judge_model_for is not None else None)
        graded[(k.workflow_id, k.run_id)] = [
            await grade(e, run, judge_model=judges.get(k.agent), judge_timeout=judge_timeout)
            for e in todo]
    written: dict[tuple[str, str], int] = {}
    rows = [(k[0], k[1], runs[k].agent, g) for k, gs in graded.items() for g in gs]
    if rows:
        red = ledger.redactor
        columns = list(zip(*[(w, r, agent, g.evaluator.name, g.evaluator.version,
                              g.evaluator.digest(), g.evaluator.kind, g.status,
                              g.verdict.score if g.verdict else None,
                              g.verdict.passed if g.verdict else None, red.text(g.feedback),
                              red.text(g.error) if g.error is not None else None, g.model,
                              g.input_tokens, g.output_tokens, g.duration_ms, source)
                             for w, r, agent, g in rows], strict=True))
        async with ledger.pool.acquire() as c:
            for row in await c.fetch(_INSERT, *(list(col) for col in columns)):
                key = (row["workflow_id"], row["run_id"])
                written[key] = written.get(key, 0) + 1
    out = []
    for k in keys:
        run = runs.get((k.workflow_id, k.run_id))
        if run is None:
            out.append(RunVerdict(run=k, outcome="missing"))
            continue
        evaluators = declared[k.agent].graded
        current = {**stored.get((k.workflow_id, k.run_id), {}),
                   **{g.evaluator.key: (g.status, g.verdict.passed if g.verdict else None)
                      for g in graded.get((k.workflow_id, k.run_id), [])}}
        mine = {e.name: current[e.key] for e in evaluators if e.key in current}
        out.append(RunVerdict(
            run=k, outcome=outcome_of(run.status, list(mine.values())),
            written=written.get((k.workflow_id, k.run_id), 0),
            failed=sorted(n for n, (st, ok) in mine.items() if st == "scored" and ok is False),
            errors=sorted(n for n, (st, _) in mine.items() if st == "error")))
    return out


async def evaluate_run(ledger: Ledger, catalog: AgentCatalog, key: RunKey, *, source: str,
                       judge_model_for: Callable[[str], ModelClient] | None = None,
                       judge_timeout: float = 60.0) -> RunVerdict:
    """:func:`evaluate_runs` of one run."""
    [verdict] = await evaluate_runs(ledger, catalog, [key], source=source,
                                    judge_model_for=judge_model_for,
                                    judge_timeout=judge_timeout)
    return verdict


# ---------------------------------------------------------------------------- the sweep's reads


async def pending_runs(pool: asyncpg.Pool, catalog: AgentCatalog, req: PendingRequest, *,
                       sample: float | None = None) -> PendingRuns:
    """Finished runs in ``[since, until)`` (by finish time) of agents with evaluators, in
    their sample (``sample`` overrides each agent's share), that some current evaluator has
    not scored; oldest first, at most ``limit``."""
    found: list[tuple[datetime, RunKey]] = []
    more = False
    declared = sorted(a.name for a in catalog.agents() if a.evals is not None)
    for agent in catalog.agents():
        if agent.evals is None or (req.agent is not None and agent.name != req.agent):
            continue
        share = agent.evals.sample if sample is None else sample
        if share <= 0:
            continue
        names = [e.name for e in agent.evals.graded]
        versions = [e.version for e in agent.evals.graded]
        async with pool.acquire() as c:
            rows = await c.fetch(
                "select r.workflow_id, r.run_id, r.finished_at from stead_runs r"
                " where r.agent = $1 and r.finished_at >= $2 and r.finished_at < $3"
                "  and r.status <> 'running' and ($4::bool or not (r.metadata ? $5::text))"
                f"  and {_SAMPLE_SQL} < $6::float8 * 4294967296"
                "  and (select count(*) from stead_evaluations e"
                "       join unnest($7::text[], $8::int[]) as k(evaluator, version)"
                "         on e.evaluator = k.evaluator and e.version = k.version"
                "       where e.workflow_id = r.workflow_id and e.run_id = r.run_id)"
                "      < cardinality($7::text[])"
                " order by r.finished_at, r.workflow_id, r.run_id limit $9",
                agent.name, req.since, req.until, agent.evals.include_synthetic, SYNTHETIC_KEY,
                share, names, versions, req.limit + 1)
        more = more or len(rows) > req.limit
        found += [(row["finished_at"], RunKey(workflow_id=row["workflow_id"],
                                              run_id=row["run_id"], agent=agent.name))
                  for row in rows[:req.limit]]
    found.sort(key=lambda p: (p[0], p[1].workflow_id, p[1].run_id))
    return PendingRuns(runs=[k for _, k in found[:req.limit]],
                       more=more or len(found) > req.limit, agents=declared)


# ---------------------------------------------------------------------------- reading scores


class EvaluationRow(BaseModel):
    """A row of ``stead_evaluations``: one evaluator version's outcome on one run."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    workflow_id: str
    run_id: str
    agent: str
    evaluator: str
    version: int
    digest: str
    kind: str
    status: str
    """``scored``, ``skipped`` (not a completed run, or the evaluator does not apply) or
    ``error`` (the evaluator raised)."""
    score: float | None
    passed: bool | None
    feedback: str
    error: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    duration_ms: float
    source: str
    evaluated_at: datetime


async def list_evaluations(pool: asyncpg.Pool, workflow_id: str, *, run_id: str | None = None,
                           tenant: str | None = None) -> list[EvaluationRow]:
    """A workflow's evaluation rows (of one run, of one tenant's runs), oldest first."""
    async with pool.acquire() as c:
        rows = await c.fetch(
            "select e.* from stead_evaluations e join stead_runs r"
            "  on r.workflow_id = e.workflow_id and r.run_id = e.run_id"
            " where e.workflow_id = $1 and ($2::text is null or e.run_id = $2)"
            "  and ($3::text is null or r.tenant = $3)"
            " order by r.started_at, e.evaluated_at, e.evaluator, e.version",
            workflow_id, run_id, tenant)
    return [EvaluationRow.model_validate(dict(r)) for r in rows]


TASK_VERDICTS = """
newest as (
  select distinct on (e.workflow_id, e.run_id, e.evaluator)
    e.workflow_id, e.run_id, e.evaluator, e.version, e.status, e.passed
  from {runs} r join stead_evaluations e
    on e.workflow_id = r.workflow_id and e.run_id = r.run_id
  order by e.workflow_id, e.run_id, e.evaluator, e.version desc),
verdicts as (
  select r.workflow_id, r.run_id,
    case when r.status <> 'completed' or bool_or(n.status = 'scored' and not n.passed)
           then 'unsuccessful'
         when bool_or(n.status = 'error') then 'unknown'
         else 'succeeded' end as verdict
  from {runs} r join newest n on n.workflow_id = r.workflow_id and n.run_id = r.run_id
  group by r.workflow_id, r.run_id, r.status)
"""
"""Common table expressions (after ``with ..., ``) giving ``verdicts(workflow_id, run_id,
verdict)`` for the runs of the table or CTE ``{runs}`` (columns workflow_id, run_id, status)
that have evaluation rows; each evaluator's newest version decides."""


async def task_verdicts(conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
                        ) -> dict[tuple[str, str], str]:
    """``verdict`` (succeeded, unsuccessful, unknown) of each evaluated run of ``keys``."""
    if not keys or not await conn.fetchval(
            "select to_regclass('stead_evaluations') is not null"):
        return {}  # nothing evaluated yet, or a ledger from before online evaluation (0008)
    rows = await conn.fetch(
        "with runs as (select s.workflow_id, s.run_id, s.status from stead_runs s"
        "  join unnest($1::text[], $2::text[]) as k(w, r) on s.workflow_id = k.w"
        "  and s.run_id = k.r), " + TASK_VERDICTS.format(runs="runs")
        + " select workflow_id, run_id, verdict from verdicts",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["workflow_id"], r["run_id"]): r["verdict"] for r in rows}


# ---------------------------------------------------------------------------- schedules


def schedule_id_for(task_queue: str) -> str:
    """The id of a task queue's evaluation schedule: ``stead-evaluations`` for the default
    queue ``stead``, else ``stead-evaluations-<queue>``."""
    return "stead-evaluations" if task_queue == "stead" else f"stead-evaluations-{task_queue}"


async def schedule_sweeps(client: Client, *, schedule_id: str, every: timedelta,
                          sweep: EvaluationSweep, task_queue: str, replace: bool = True,
                          ) -> Literal["created", "updated", "exists"]:
    """Create a Temporal Schedule that starts ``EvaluationWorkflow`` every ``every`` on
    ``task_queue`` (a sweep still running when the next is due makes it skip). An existing
    schedule gets this spec and action when ``replace`` (keeping whether it is paused), else
    is left as it is."""
    from temporalio.client import ScheduleActionStartWorkflow

    from stead.client import put_interval_schedule

    action = ScheduleActionStartWorkflow(
        EVALUATION_WORKFLOW, sweep, id=f"{schedule_id}-sweep", task_queue=task_queue,
        execution_timeout=max(every * 10, timedelta(hours=1)),
        static_summary="online evaluation: score finished runs with their agents' evaluators")
    return await put_interval_schedule(client, schedule_id, action, every=every,
                                       if_exists="keep_state" if replace else "leave")


async def ensure_schedule(client: Client, settings: Settings, catalog: AgentCatalog,
                          ) -> str | None:
    """What a long-running worker process does at start: when an agent declares evaluators
    and ``STEAD_EVAL_EVERY_SECONDS`` is above 0, create the task queue's evaluation schedule
    unless it exists (a schedule someone changed or paused is left as it is). Returns what
    was done, or None when nothing was to do."""
    every = settings.evals.every_seconds
    if every <= 0 or not any(a.evals is not None for a in catalog.agents()):
        return None
    queue = settings.temporal.task_queue
    return await schedule_sweeps(client, schedule_id=schedule_id_for(queue),
                                 every=timedelta(seconds=every), sweep=EvaluationSweep(),
                                 task_queue=queue, replace=False)


def summary_text(s: EvaluationSweepSummary) -> str:
    """One line about a sweep, for details and the CLI."""
    rate = f"{s.succeeded / (s.succeeded + s.unsuccessful):.0%} succeeded" \
        if s.succeeded + s.unsuccessful else "none judged"
    return (f"{s.runs} run(s) graded: {rate} ({s.succeeded} succeeded, {s.unsuccessful} "
            f"unsuccessful, {s.unknown} unknown), {s.rows} score row(s)"
            + (f", {s.failed_activities} evaluation(s) failed" if s.failed_activities else "")
            + ("; more left for the next sweep" if s.more else ""))
