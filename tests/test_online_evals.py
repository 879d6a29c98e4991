"""Online evaluation: finished runs graded after they end, by ``EvaluationWorkflow``, on the
real dev server and PostgreSQL.

One module-wide scenario runs the ``evq`` agent (a name of its own, so the shared ledger's other
runs are never swept here) under a tenant of its own:

================  ==================================================  =========  ============
request           what the model does                                 status     verdict
================  ==================================================  =========  ============
check alpha       reads metrics, answers 12 % of 0.12, 1.5 s of 1500  completed  succeeded
                  ms, 1,234.50 of 1234.5
guess alpha       answers "3 %" without calling any tool              completed  unsuccessful
invent alpha      reads metrics, answers "17 %"                       completed  unsuccessful
crash             the model call fails                                failed     unsuccessful
================  ==================================================  =========  ============

So the completion rate is 3 of 4 and task success 1 of 4. Other tests sweep the same runs
with other declarations of the agent (a raising evaluator, a new version, a judge), on
workers of their own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from _cli import cli_env, stead
from pydantic import BaseModel, SecretStr
from temporalio import activity
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from stead.activities.evaluation import EvaluationActivities
from stead.api import create_app, issue_token
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.evaluation import (
    FinishedRun,
    OnlineEvals,
    RunEvaluator,
    Verdict,
    from_graph,
    grounded_figures,
    judge_run,
    rule,
    used_tools,
)
from stead.authoring.graph import custom, judge
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import (
    Message,
    ModelTurn,
    RunRequest,
    RunResult,
    ToolSchema,
)
from stead.evals.drift import DriftCheckRequest, DriftWindows, run_check
from stead.evals.metrics import MetricsFilter, compute_metrics
from stead.evals.online import (
    EVALUATION_WORKFLOW,
    EvaluateRuns,
    EvaluationSweep,
    EvaluationSweepSummary,
    PendingRequest,
    RunKey,
    RunVerdicts,
    ensure_schedule,
    evaluate_run,
    in_sample,
    list_evaluations,
    pending_runs,
    sample_point,
    schedule_id_for,
)
from stead.evals.samples import Window
from stead.integrations.llm import FunctionModel, ModelCallError, ScriptedModel, call
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.worker import PASSTHROUGH, WorkerHost
from stead.workflows.evaluation import EvaluationWorkflow

AGENT = f"evq-{uuid.uuid4().hex[:8]}"
METRICS = {"service": "alpha", "error_rate": 0.12, "p95_ms": 1500, "rpm": 1234.5}
ANSWERS = {
    "check": "alpha is up: error rate 12 %, p95 1.5 s, 1,234.50 requests per minute.",
    "guess": "alpha looks fine: error rate 3 %.",
    "invent": "alpha is up: error rate 17 %.",
}


# ---------------------------------------------------------------------------- the agent


class ServiceRef(BaseModel):
    service: str


class Metrics(BaseModel):
    service: str
    error_rate: float
    p95_ms: int
    rpm: float


def evq_agent(evals: OnlineEvals | None) -> Agent:
    @tool
    async def read_metrics(args: ServiceRef, ctx: ToolContext) -> Metrics:
        """Current metrics of a service."""
        return Metrics.model_validate(METRICS)

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = next(m.content or "" for m in messages if m.role == "user")
        if "crash" in request:
            raise ModelCallError("model is down", kind="ModelUnavailable", retryable=False)
        kind = request.split()[0]
        looked = any(m.role == "tool" for m in messages)
        if kind in ("check", "invent") and not looked:
            return ModelTurn(tool_calls=[call("read_metrics", service="alpha")])
        return ModelTurn(content=ANSWERS[kind])

    return Agent(name=AGENT, instructions="Report a service's health from its metrics.",
                 tools=[read_metrics], offline_model=FunctionModel(plan, name="scripted:evq"),
                 max_steps=6, evals=evals)


BASE = OnlineEvals([used_tools(), grounded_figures()])


@dataclass
class Scenario:
    tenant: str
    settings: Settings
    started: datetime
    keys: dict[str, RunKey]
    results: dict[str, RunResult | None]
    sweep: EvaluationSweepSummary


async def sweep(client: Client, settings: Settings, **options: Any) -> EvaluationSweepSummary:
    """One sweep of this module's agent through the worker polling ``settings``' queue."""
    handle = await client.start_workflow(
        EVALUATION_WORKFLOW, EvaluationSweep(agent=AGENT, **options),
        id=f"test-sweep-{uuid.uuid4().hex[:10]}", task_queue=settings.temporal.task_queue,
        result_type=EvaluationSweepSummary)
    return await asyncio.wait_for(handle.result(), 60)


@pytest.fixture(scope="module")
async def scenario(stack: EmbeddedStack) -> AsyncIterator[Scenario]:
    settings = stack.resolved_settings().replace(task_queue=f"test-{uuid.uuid4().hex[:10]}",
                                                 memory_backend="off")
    tenant = f"evals-{uuid.uuid4().hex[:10]}"
    started = datetime.now(UTC)
    async with WorkerHost(settings, AgentCatalog([evq_agent(BASE)])) as host:
        assert host.client is not None
        handles = {kind: await start_run(host.client, RunRequest(
            agent=AGENT, input=f"{kind} alpha", tenant=tenant), temporal=settings.temporal)
            for kind in ("check", "guess", "invent", "crash")}
        results: dict[str, RunResult | None] = {}
        for kind, h in handles.items():
            try:
                results[kind] = await asyncio.wait_for(h.result(), 60)
            except Exception:
                results[kind] = None
        keys = {}
        for kind, h in handles.items():
            desc = await h.describe()
            keys[kind] = RunKey(workflow_id=h.id, run_id=desc.run_id, agent=AGENT)
        summary = await sweep(host.client, settings)
    yield Scenario(tenant, settings, started, keys, results, summary)


async def rows_of(ledger: Ledger, key: RunKey) -> dict[tuple[str, int], Any]:
    return {(r.evaluator, r.version): r for r in await list_evaluations(
        ledger.pool, key.workflow_id, run_id=key.run_id)}


def worker_for(settings: Settings, evals: OnlineEvals, **host: Any) -> WorkerHost:
    """Another worker (own task queue) declaring the agent with ``evals``."""
    return WorkerHost(settings.replace(task_queue=f"test-{uuid.uuid4().hex[:10]}"),
                      AgentCatalog([evq_agent(evals)]), **host)


# ---------------------------------------------------------------------------- task success


async def test_the_scenario_ends_as_designed(scenario: Scenario) -> None:
    """Guard for what follows: every run but the crash completed, and the run itself knew
    nothing of its evaluation."""
    statuses = {k: (r.status if r else "failed") for k, r in scenario.results.items()}
    assert statuses == {"check": "completed", "guess": "completed", "invent": "completed",
                        "crash": "failed"}
    check = scenario.results["check"]
    assert check is not None and [c.tool for c in check.tool_calls] == ["read_metrics"]
    assert scenario.sweep.runs == 4 and scenario.sweep.failed_activities == 0
    assert (scenario.sweep.succeeded, scenario.sweep.unsuccessful, scenario.sweep.unknown) == \
        (1, 3, 0)


async def test_a_completed_run_that_called_no_tool_or_is_ungrounded_is_not_a_success(
        scenario: Scenario, ledger: Ledger) -> None:
    """Completed is not successful: the tool-less answer fails used-tools (and its 3 % is
    grounded in nothing), the invented 17 % fails grounded-figures, and the grounded answer
    passes with its derived figures (0.12 as 12 %, 1500 ms as 1.5 s, 1234.5 as 1,234.50)."""
    check = await rows_of(ledger, scenario.keys["check"])
    assert {k: (r.status, r.passed) for k, r in check.items()} == {
        ("used-tools", 1): ("scored", True), ("grounded-figures", 1): ("scored", True)}
    guess = await rows_of(ledger, scenario.keys["guess"])
    assert guess[("used-tools", 1)].passed is False
    assert guess[("used-tools", 1)].feedback == "answered without calling any tool"
    assert guess[("grounded-figures", 1)].passed is False
    assert "3 %" in guess[("grounded-figures", 1)].feedback
    invent = await rows_of(ledger, scenario.keys["invent"])
    assert invent[("used-tools", 1)].passed is True
    assert invent[("grounded-figures", 1)].passed is False
    assert "17 %" in invent[("grounded-figures", 1)].feedback
    crash = await rows_of(ledger, scenario.keys["crash"])
    assert {r.status for r in crash.values()} == {"skipped"}
    assert all(r.feedback == "not graded: the run ended failed" for r in crash.values())
    for row in (*check.values(), *guess.values()):
        assert row.kind == "rule" and row.agent == AGENT and len(row.digest) == 16
        assert row.source.startswith("test-sweep-")


async def test_metrics_show_task_success_beside_the_completion_rate(
        scenario: Scenario, ledger: Ledger) -> None:
    report = await compute_metrics(ledger, MetricsFilter(
        since=scenario.started - timedelta(minutes=1), tenant=scenario.tenant), prices={})
    [a] = report.agents
    assert a.success_rate == pytest.approx(3 / 4)
    ts = a.task_success
    assert (ts.evaluated, ts.succeeded, ts.unknown) == (4, 1, 0)
    assert ts.rate == pytest.approx(1 / 4)
    by_name = {e.evaluator: e for e in ts.evaluators}
    assert (by_name["used-tools"].scored, by_name["used-tools"].passed,
            by_name["used-tools"].skipped) == (3, 2, 1)
    assert (by_name["grounded-figures"].scored, by_name["grounded-figures"].passed) == (3, 1)
    assert report.overall.task_success.evaluated == 4


async def test_the_cli_and_the_http_api_report_task_success(scenario: Scenario) -> None:
    env = cli_env(scenario.settings)
    done = await stead("metrics", "--since", "1h", "--tenant", scenario.tenant, "--json",
                       env=env, timeout=60)
    assert done.code == 0, done.err
    [a] = done.json()["agents"]
    assert a["success_rate"] == 0.75
    assert (a["task_success"]["rate"], a["task_success"]["evaluated"]) == (0.25, 4)
    table = await stead("metrics", "--since", "1h", "--tenant", scenario.tenant, env=env,
                        timeout=60)
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if f"│ {AGENT}" in line)
    assert "75.0%" in row and "25.0% of 4" in row
    assert "grounded-figures" in table.out

    shown = await stead("grade", "--show", scenario.keys["guess"].workflow_id, "--json",
                        env=env, timeout=60)
    assert shown.code == 0, shown.err
    assert {r["evaluator"] for r in shown.json()} == {"used-tools", "grounded-figures"}
    people = await stead("grade", "--show", scenario.keys["guess"].workflow_id, env=env,
                         timeout=60)
    assert people.code == 0, people.err
    assert "answered without calling any tool" in people.out and "used-tools" in people.out
    missing = await stead("grade", "--show", "no-such-workflow", env=env, timeout=60)
    assert missing.code == 4 and "no evaluation scores" in missing.err

    secret = "evals-secret-" + "x" * 40
    app = create_app(scenario.settings.replace(api_secret=SecretStr(secret)))
    token = issue_token(secret, sub="audit", tenant=scenario.tenant, roles=("auditor",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as http:
        got = (await http.get("/v1/metrics?since=1h",
                              headers={"Authorization": f"Bearer {token}"})).json()
    await app.state.backend.close()
    [a] = got["agents"]
    assert a["task_success"]["evaluated"] == 4 and a["task_success"]["succeeded"] == 1


# ---------------------------------------------------------------------------- isolation


async def test_an_evaluator_that_raises_is_an_evaluation_error_and_the_run_is_untouched(
        scenario: Scenario, ledger: Ledger) -> None:
    def boom(run: FinishedRun) -> bool:
        raise RuntimeError(f"evaluator bug on {run.agent}")

    key = scenario.keys["check"]
    before = await ledger.trail(key.workflow_id)
    evals = OnlineEvals([used_tools(), grounded_figures(), rule("explodes", boom)])
    async with worker_for(scenario.settings, evals) as host:
        assert host.client is not None
        summary = await sweep(host.client, host.settings.replace(task_queue=host.task_queue))
    # The three completed runs got a row of the new evaluator; the failed one a skip.
    assert summary.runs == 4 and summary.rows == 4 and summary.failed_activities == 0
    assert summary.unknown == 1  # the grounded run: nothing failed it, one evaluator raised
    rows = await rows_of(ledger, key)
    bad = rows[("explodes", 1)]
    assert (bad.status, bad.score, bad.passed) == ("error", None, None)
    assert bad.error == f"RuntimeError: evaluator bug on {AGENT}"
    after = await ledger.trail(key.workflow_id)
    assert after == before
    assert await ledger.verify_chain(key.workflow_id) == []
    report = await compute_metrics(ledger, MetricsFilter(
        since=scenario.started - timedelta(minutes=1), tenant=scenario.tenant), prices={})
    ts = report.agents[0].task_success
    # Still known unsuccessful: guess, invent (an evaluator failed), crash (not completed).
    assert (ts.evaluated, ts.succeeded, ts.unknown) == (3, 0, 1)
    assert {e.evaluator: e.errors for e in ts.evaluators}["explodes"] == 3


async def test_a_new_evaluator_version_scores_again_and_the_newest_decides(
        scenario: Scenario, ledger: Ledger) -> None:
    """used-tools@2 treats the tool-less run as fine: both versions' rows stay, version 1's
    verdict is history, version 2's counts."""
    lenient = used_tools(version=2, applies=lambda run: "guess" not in run.input)
    evals = OnlineEvals([lenient, grounded_figures()])
    async with worker_for(scenario.settings, evals) as host:
        assert host.client is not None
        summary = await sweep(host.client, host.settings.replace(task_queue=host.task_queue))
    assert summary.rows == 4  # one used-tools@2 row per run
    guess = await rows_of(ledger, scenario.keys["guess"])
    assert guess[("used-tools", 1)].passed is False
    assert guess[("used-tools", 2)].status == "skipped"
    assert guess[("used-tools", 2)].feedback == "does not apply to this run"
    assert guess[("used-tools", 1)].digest != guess[("used-tools", 2)].digest
    report = await compute_metrics(ledger, MetricsFilter(
        since=scenario.started - timedelta(minutes=1), tenant=scenario.tenant), prices={})
    versions = {(e.evaluator, e.version) for e in report.agents[0].task_success.evaluators}
    assert {("used-tools", 1), ("used-tools", 2), ("grounded-figures", 1)} <= versions


async def test_a_second_sweep_finds_nothing_left_to_grade(scenario: Scenario) -> None:
    async with WorkerHost(scenario.settings, AgentCatalog([evq_agent(BASE)])) as host:
        assert host.client is not None
        again = await sweep(host.client, scenario.settings)
    assert (again.runs, again.rows) == (0, 0)


class CountingJudge:
    """A judge model that counts its calls and answers with a fixed reply."""

    def __init__(self, reply: str) -> None:
        self.calls = 0
        self._model = ScriptedModel([ModelTurn(content=reply)], name="scripted:judge")
        self.name = self._model.name

    async def complete(self, messages: Sequence[Message],
                       tools: Sequence[ToolSchema]) -> ModelTurn:
        self.calls += 1
        assert "Rubric:\nThe answer reports the error rate." in (messages[1].content or "")
        return await self._model.complete(messages, tools)


async def test_a_retried_evaluation_writes_once_and_asks_the_judge_once(
        scenario: Scenario, ledger: Ledger, client: Client) -> None:
    """Each activity's first attempt stores the scores and then dies (as a worker that
    crashed before Temporal heard of it): the retry finds the rows and grades nothing again."""
    judge_model = CountingJudge('{"score": 0.9, "reason": "it does"}')
    agent = evq_agent(OnlineEvals([judge_run("The answer reports the error rate.",
                                             name="judge-retry")], judge_model=judge_model))
    acts = EvaluationActivities(AgentCatalog([agent]), ledger)

    class DiesAfterCommit(EvaluationActivities):
        attempts: list[int] = []

        @activity.defn(name="evals.evaluate")
        async def evaluate(self, req: EvaluateRuns) -> RunVerdicts:
            got = await acts.evaluate(req)
            self.attempts.append(activity.info().attempt)
            if activity.info().attempt == 1:
                raise RuntimeError("the worker died after the commit")
            return got

    dying = DiesAfterCommit(AgentCatalog([agent]), ledger)
    queue = f"test-{uuid.uuid4().hex[:10]}"
    async with Worker(client, task_queue=queue, workflows=[EvaluationWorkflow],
                      activities=[acts.pending, dying.evaluate],
                      workflow_runner=SandboxedWorkflowRunner(restrictions=SandboxRestrictions
                                                              .default.with_passthrough_modules(
                                                                  *PASSTHROUGH))):
        handle = await client.start_workflow(
            EVALUATION_WORKFLOW, EvaluationSweep(agent=AGENT, batch=2), id=f"test-sweep-{queue}",
            task_queue=queue, result_type=EvaluationSweepSummary)
        summary = await asyncio.wait_for(handle.result(), 60)
    assert summary.runs == 4 and summary.failed_activities == 0
    # Two batches of two runs: each first attempt died after storing its rows, and the
    # retry added nothing.
    assert sorted(dying.attempts) == [1, 1, 2, 2]
    assert summary.rows == 0
    assert judge_model.calls == 3  # the three completed runs, once each
    rows = await rows_of(ledger, scenario.keys["check"])
    judged = rows[("judge-retry", 1)]
    assert (judged.kind, judged.status, judged.score, judged.passed) == \
        ("judge", "scored", 0.9, True)
    assert judged.model == "scripted:judge"
    assert judged.source.startswith(f"test-sweep-{queue}/")
    # Calling the grading again directly (a third attempt) still writes nothing.
    again = await evaluate_run(ledger, AgentCatalog([agent]), scenario.keys["check"],
                               source="again")
    assert (again.written, again.outcome) == (0, "succeeded")
    assert judge_model.calls == 3


async def test_judges_and_graph_evaluators_grade_the_finished_run(
        scenario: Scenario, ledger: Ledger) -> None:
    """Step evaluators of the graph apply to the finished run; a judge's reply without a
    score, or a judge model that fails, is an evaluation error."""
    def mentions_alpha(state: Any) -> tuple[bool, str]:
        return "alpha" in (state.answer or ""), "the answer does not name the service"

    class Failing:
        name = "failing-judge"

        async def complete(self, messages: Sequence[Message],
                           tools: Sequence[ToolSchema]) -> ModelTurn:
            raise ModelCallError("judge down", kind="ModelUnavailable", retryable=True)

    catalog = AgentCatalog([evq_agent(OnlineEvals(
        [from_graph(custom("names-service", mentions_alpha)),
         from_graph(judge("The answer is short."), name="judge-garbled")],
        judge_model=ScriptedModel([ModelTurn(content="looks great to me")])))])
    key = scenario.keys["check"]
    got = await evaluate_run(ledger, catalog, key, source="test")
    assert got.outcome == "unknown" and got.errors == ["judge-garbled"]
    rows = await rows_of(ledger, key)
    assert (rows[("names-service", 1)].kind, rows[("names-service", 1)].passed) == \
        ("graph", True)
    assert rows[("judge-garbled", 1)].status == "error"
    assert "judge reply not understood" in (rows[("judge-garbled", 1)].error or "")

    failing = AgentCatalog([evq_agent(OnlineEvals([judge_run("Anything.", name="judge-down")],
                                                  judge_model=Failing()))])
    down = await evaluate_run(ledger, failing, key, source="test")
    assert down.errors == ["judge-down"]
    row = (await rows_of(ledger, key))[("judge-down", 1)]
    assert row.error == "ModelCallError: judge down" and row.model == "failing-judge"


# ---------------------------------------------------------------------------- sampling


async def insert_finished(ledger: Ledger, agent: str, n: int, *, finished: datetime,
                          tenant: str) -> list[RunKey]:
    keys = [RunKey(workflow_id=f"{agent}-{i:04d}-{uuid.uuid4().hex[:6]}", run_id="r1",
                   agent=agent) for i in range(n)]
    async with ledger.pool.acquire() as c:
        await c.executemany(
            "insert into stead_runs(workflow_id, run_id, agent, tenant, input, status, answer,"
            " started_at, finished_at) values($1, $2, $3, $4, 'hello', 'completed', 'hi', $5,"
            " $5)", [(k.workflow_id, k.run_id, agent, tenant, finished) for k in keys])
    return keys


async def test_a_sample_picks_the_same_runs_in_sql_and_in_python(ledger: Ledger) -> None:
    agent = f"smp-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    keys = await insert_finished(ledger, agent, 300, finished=now - timedelta(minutes=5),
                                 tenant="evals-sampling")
    catalog = AgentCatalog([Agent(name=agent, instructions="x", tools=[],
                                  offline_model=ScriptedModel([ModelTurn(content="hi")]),
                                  evals=OnlineEvals([rule("said-hi", lambda r: r.answer == "hi")],
                                                    sample=0.3))])
    req = PendingRequest(since=now - timedelta(hours=1), until=now, agent=agent, limit=1000)
    found = await pending_runs(ledger.pool, catalog, req)
    picked = {k.workflow_id for k in found.runs}
    assert picked == {k.workflow_id for k in keys if in_sample(k.workflow_id, k.run_id, 0.3)}
    assert 40 < len(picked) < 140  # 90 expected of 300
    assert all(0 <= sample_point(k.workflow_id, k.run_id) < 1 for k in keys)
    # A larger share keeps the smaller one's runs; the worker's override wins over the agent.
    half = await pending_runs(ledger.pool, catalog, req, sample=0.6)
    assert picked < {k.workflow_id for k in half.runs}
    assert (await pending_runs(ledger.pool, catalog, req, sample=0.0)).runs == []
    assert len((await pending_runs(ledger.pool, catalog, req, sample=1.0)).runs) == 300
    # Limits page oldest first, and say there is more.
    page = await pending_runs(ledger.pool, catalog, req.model_copy(update={"limit": 10}))
    assert len(page.runs) == 10 and page.more
    # Graded runs are no longer pending.
    for k in found.runs[:5]:
        assert (await evaluate_run(ledger, catalog, k, source="test")).outcome == "succeeded"
    left = await pending_runs(ledger.pool, catalog, req)
    assert len(left.runs) == len(found.runs) - 5


async def test_a_sweep_grades_only_the_sample(stack: EmbeddedStack, ledger: Ledger,
                                              settings: Settings) -> None:
    agent = f"smp-{uuid.uuid4().hex[:8]}"
    keys = await insert_finished(ledger, agent, 40, tenant="evals-sampling",
                                 finished=datetime.now(UTC) - timedelta(minutes=1))
    evals = OnlineEvals([rule("said-hi", lambda r: r.answer == "hi")], sample=0.5)
    catalog = AgentCatalog([Agent(name=agent, instructions="x", tools=[], evals=evals,
                                  offline_model=ScriptedModel([ModelTurn(content="hi")]))])
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        handle = await host.client.start_workflow(
            EVALUATION_WORKFLOW, EvaluationSweep(agent=agent, limit=7, batch=3,
                                                   concurrency=2),
            id=f"test-sweep-{uuid.uuid4().hex[:10]}", task_queue=settings.temporal.task_queue,
            result_type=EvaluationSweepSummary)
        summary = await asyncio.wait_for(handle.result(), 60)
    sampled = [k for k in keys if in_sample(k.workflow_id, k.run_id, 0.5)]
    # limit 7 per round: the sweep continued as new until all were graded.
    assert summary.runs == len(sampled) == summary.succeeded
    assert summary.rounds == -(-len(sampled) // 7)
    graded = {k.workflow_id for k in keys if await list_evaluations(ledger.pool, k.workflow_id)}
    assert graded == {k.workflow_id for k in sampled}


# ---------------------------------------------------------------------------- reference agents


async def test_the_ops_agents_derived_figures_count_as_grounded(
        client: Client, settings: Settings, ledger: Ledger, catalog: AgentCatalog) -> None:
    """The reference ops agent writes the error rate as a percentage of the tool's fraction;
    its own evaluators call that grounded, and the run a task success."""
    h = await start_run(client, RunRequest(agent="ops", input="How is auth-service doing?"),
                        temporal=settings.temporal)
    r = await h.result()
    assert r.status == "completed" and "error rate" in (r.answer or "")
    key = RunKey(workflow_id=h.id, run_id=(await h.describe()).run_id, agent="ops")
    got = await evaluate_run(ledger, catalog, key, source="test")
    assert got.outcome == "succeeded", got
    rows = await rows_of(ledger, key)
    assert {k[0] for k in rows} == {"used-tools", "grounded-figures"}


# ---------------------------------------------------------------------------- drift


async def insert_evaluated(ledger: Ledger, agent: str, tenant: str, window: Window,
                           verdicts: list[bool]) -> None:
    span = (window.until - window.since) / (len(verdicts) + 1)
    runs, scores = [], []
    for i, ok in enumerate(verdicts):
        wid = f"{agent}-{uuid.uuid4().hex[:12]}"
        at = window.since + span * (i + 1)
        runs.append((wid, agent, tenant, at, at + timedelta(seconds=1)))
        scores.append((wid, agent, ok))
    async with ledger.pool.acquire() as c:
        await c.executemany(
            "insert into stead_runs(workflow_id, run_id, agent, tenant, input, status,"
            " started_at, finished_at) values($1, 'r1', $2, $3, 'req', 'completed', $4, $5)",
            runs)
        await c.executemany(
            "insert into stead_evaluations(workflow_id, run_id, agent, evaluator, version, kind,"
            " status, score, passed, source) values($1, 'r1', $2, 'grounded-figures', 1, 'rule',"
            " 'scored', case when $3 then 1.0 else 0.0 end, $3, 'test')", scores)


async def test_drift_sees_task_success_fall_while_completion_holds(
        ledger: Ledger, settings: Settings) -> None:
    """Every run completes in both windows; evaluated task success falls from 90 % to 40 %."""
    t0 = datetime(2021, 5, 10, tzinfo=UTC)
    recent = Window(since=t0 - timedelta(days=1), until=t0)
    baseline = Window(since=t0 - timedelta(days=7), until=t0 - timedelta(days=1))
    tenant, agent = f"evals-drift-{uuid.uuid4().hex[:8]}", "evq-drift"
    await insert_evaluated(ledger, agent, tenant, baseline, [i % 10 != 0 for i in range(60)])
    await insert_evaluated(ledger, agent, tenant, recent, [i % 5 < 2 for i in range(60)])
    report = (await run_check(ledger.pool, DriftCheckRequest(
        windows=DriftWindows(baseline=baseline, recent=recent), tenant=tenant))).report
    task = report.signal("task_success")
    assert task.status == "crossed"
    assert (task.baseline, task.recent) == (pytest.approx(0.9), pytest.approx(0.4))
    assert (task.n_baseline, task.n_recent) == (60, 60)
    assert report.signal("success_rate").status == "ok"

    done = await stead("drift", "--tenant", tenant, "--since", recent.since.isoformat(),
                       "--until", recent.until.isoformat(), "--baseline-since",
                       baseline.since.isoformat(), "--embedder", "none", "--json",
                       env=cli_env(settings), timeout=90)
    assert done.code == 1, done.err
    assert "task_success" in done.json()["crossed"]


async def test_drift_says_when_too_few_runs_were_evaluated(ledger: Ledger) -> None:
    t0 = datetime(2021, 6, 10, tzinfo=UTC)
    recent = Window(since=t0 - timedelta(days=1), until=t0)
    baseline = Window(since=t0 - timedelta(days=7), until=t0 - timedelta(days=1))
    tenant = f"evals-drift-{uuid.uuid4().hex[:8]}"
    await insert_evaluated(ledger, "evq-drift", tenant, baseline, [True] * 30)
    await insert_evaluated(ledger, "evq-drift", tenant, recent, [False] * 5)
    report = (await run_check(ledger.pool, DriftCheckRequest(
        windows=DriftWindows(baseline=baseline, recent=recent), tenant=tenant))).report
    task = report.signal("task_success")
    assert task.status == "insufficient data" and task.n_recent == 5


# ---------------------------------------------------------------------------- the schedule


async def test_worker_processes_create_the_schedule_once_and_leave_it_as_changed(
        worker: WorkerHost, client: Client, settings: Settings,
        catalog: AgentCatalog) -> None:
    s = settings.replace(eval_every_seconds=90)
    sid = schedule_id_for(s.temporal.task_queue)
    try:
        await worker.keep_evaluation_schedule()  # what `stead worker` does once it polls
        assert await ensure_schedule(client, s, catalog) == "exists"
        desc = await client.get_schedule_handle(sid).describe()
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == (EVALUATION_WORKFLOW,
                                                        s.temporal.task_queue)
        assert desc.schedule.spec.intervals[0].every == timedelta(seconds=60)  # the default
        await client.get_schedule_handle(sid).pause(note="by hand")
        done = await stead("grade", "--schedule", "2m", "--json", env=cli_env(s), timeout=60)
        assert done.code == 0, done.err
        assert (done.json()["action"], done.json()["schedule_id"]) == ("updated", sid)
        desc = await client.get_schedule_handle(sid).describe()
        assert desc.schedule.spec.intervals[0].every == timedelta(minutes=2)
        assert desc.schedule.state.paused  # an update keeps what a person changed
    finally:
        await client.get_schedule_handle(sid).delete()
    off = settings.replace(eval_every_seconds=0)
    assert await ensure_schedule(client, off, catalog) is None
    plain = AgentCatalog([Agent(name="plain", instructions="x", tools=[],
                                offline_model=ScriptedModel([ModelTurn(content="hi")]))])
    assert await ensure_schedule(client, s, plain) is None


async def test_stead_grade_sweeps_now_through_the_worker(
        worker: WorkerHost, settings: Settings) -> None:
    done = await stead("grade", "--agent", "ops", "--since", "10s", "--json",
                       env=cli_env(settings), timeout=90)
    assert done.code == 0, done.err
    assert done.json()["agents"] == ["ops"] and done.json()["failed_activities"] == 0
    typo = await stead("grade", "--agent", "opz", env=cli_env(settings), timeout=90)
    assert typo.code == 2 and "declare no evaluators for it; they do for: ops" in typo.err
    bad = await stead("grade", "--since", "yesterday", env=cli_env(settings), timeout=60)
    assert bad.code == 2 and "--since" in bad.err


# ---------------------------------------------------------------------------- declarations


def test_declarations_are_checked_when_the_catalog_is_built() -> None:
    from stead.errors import SpecError

    evals = OnlineEvals([used_tools(), used_tools(), judge_run("  "),
                         RunEvaluator(name="v0", version=0, check=lambda r: True)],
                        sample=1.5)
    with pytest.raises(SpecError) as err:
        AgentCatalog([evq_agent(evals)])
    text = str(err.value)
    for expected in ("sample 1.5 is outside [0, 1]", "two evaluators are named 'used-tools'",
                     "judge evaluator 'judge' has no rubric", "version must be at least 1"):
        assert expected in text
    with pytest.raises(ValueError, match="min_calls"):
        used_tools(min_calls=0)


@pytest.mark.parametrize(("got", "want"), [
    (True, (True, 1.0, "")), ((False, "why"), (False, 0.0, "why")), (0.4, (False, 0.4, None)),
    (Verdict(score=0.8), (True, 0.8, "")), (Verdict(passed=False, feedback="no"),
                                            (False, 0.0, "no")),
])
def test_a_rule_may_return_a_bool_a_pair_a_score_or_a_verdict(
        got: Any, want: tuple[bool, float, str | None]) -> None:
    run = FinishedRun(workflow_id="w", run_id="r", agent="a", tenant="t", status="completed",
                      input="i", answer="a")
    v = rule("r", lambda _: got, threshold=0.5).grade(run)
    assert (v.passed, v.score) == want[:2]
    if want[2] is not None:
        assert v.feedback == want[2]


def test_a_rule_returning_nonsense_raises_for_the_sweep_to_record() -> None:
    run = FinishedRun(workflow_id="w", run_id="r", agent="a", tenant="t", status="completed",
                      input="i", answer="a")
    for bad, message in (("yes", "returned str"), (1.5, "outside"), (Verdict(), "passed or")):
        check: Callable[[FinishedRun], Any] = lambda _, b=bad: b  # noqa: E731
        with pytest.raises((TypeError, ValueError), match=message):
            rule("r", check).grade(run)


def test_the_sweeps_input_is_checked() -> None:
    with pytest.raises(ValueError):
        EvaluationSweep(lookback=timedelta(0))
    with pytest.raises(ValueError):
        EvaluationSweep(limit=0)
    assert json.loads(EvaluationSweep().model_dump_json())["lookback"] == "P1D"


def test_used_tools_counts_called_tools_and_with_answered_only_those_that_answered() -> None:
    from stead.authoring.evaluation import ToolUse

    def run(*calls: ToolUse) -> FinishedRun:
        return FinishedRun(workflow_id="w", run_id="r", agent="a", tenant="t",
                           status="completed", input="i", answer="a", tool_calls=calls)

    failed = ToolUse(step=1, call_id="c1", tool="lookup", arguments={}, status="error",
                     error="down")
    refused = ToolUse(step=2, call_id="c2", tool="refund", arguments={}, status="rejected")
    ok = ToolUse(step=3, call_id="c3", tool="lookup", arguments={}, status="ok", result={})
    assert used_tools().grade(run(failed)).passed
    v = used_tools(answered=True).grade(run(failed, refused))
    assert not v.passed and v.feedback == ("answered although every call failed (1 proposed "
                                           "call(s) never ran: refund)")
    assert used_tools(answered=True, any_of=["lookup"]).grade(run(failed, ok)).passed
    assert not used_tools(any_of=["refund"]).grade(run(refused, ok)).passed
    assert not used_tools(min_calls=2).grade(run(ok)).passed
