"""``stead metrics``: figures computed from the ledger after real runs with known outcomes.

One module-wide scenario runs the ``mx`` agent (below) on the real dev server and PostgreSQL,
under a tenant of its own (the test database is shared: every query here filters on it):

==================  =============================================  ==========================
request             what happens                                   final status
==================  =============================================  ==========================
lookup and flaky    lookup ok; flaky fails once, then succeeds     completed
broken              broken fails both its attempts; model answers  completed
pay 50000           above the hard limit: the gate denies          denied
pay 500             the gate asks; the test approves               completed
forbidden           routing refuses                                refused
crash               the model call fails (non-retryable)           failed
lookup (synthetic)  an eval run: left out unless asked             completed
==================  =============================================  ==========================

Every ok model turn reports 100 input and 10 output tokens as ``gpt-4o-mini-2024-07-18``.
Percentiles are checked against numpy over the same ledger rows (linear interpolation is what
``percentile_cont`` computes).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from _cli import stead
from _waits import wait_pending
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import (
    ApprovalDecision,
    Message,
    ModelTurn,
    RetrySpec,
    RunRequest,
    RunResult,
    ToolSchema,
    Usage,
)
from stead.contracts.policy import parse_policy
from stead.evals import SYNTHETIC_KEY
from stead.evals.metrics import (
    MetricsFilter,
    MetricsReport,
    Percentiles,
    compute_metrics,
    parse_when,
    price_for,
)
from stead.integrations.llm import FunctionModel, ModelCallError, assistant_turns, call
from stead.settings import ModelPrice, Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
PRICES = {"gpt-4o-mini": ModelPrice(input=0.15, output=0.60)}

MX_POLICY = parse_policy("""
id: mx-test
version: 1
routing:
  - name: no-forbidden
    when: {keywords: [forbidden]}
    action: refuse
    reason: Forbidden requests are refused.
thresholds: {approve_at: 0.5, deny_at: 0.9}
hard_limits:
  - {tool: transfer, field: amount, above: 10000, reason: Transfers above the ceiling}
approvals:
  chain: [oncall]
  timeout_seconds: 600
""", source="mx-test.yaml")
"""Reads score 0.05 (allowed); a transfer scores 0.65 (asks); above 10000 it is denied."""


# ---------------------------------------------------------------------------- the agent


class Key(BaseModel):
    key: str


class Value(BaseModel):
    value: str


class Amount(BaseModel):
    amount: int


class Receipt(BaseModel):
    transfer_id: str


def mx_agent(name: str = "mx") -> Agent:
    """Tools with known behaviour: ``flaky`` fails its first attempt, ``broken`` every one."""
    fast = RetrySpec(initial_interval=0.05, max_interval=0.05)

    @tool
    async def lookup(args: Key, ctx: ToolContext) -> Value:
        """Read a value."""
        return Value(value=f"value of {args.key}")

    @tool(retry=fast.model_copy(update={"max_attempts": 3}))
    async def flaky(args: Key, ctx: ToolContext) -> Value:
        """Read a value from a backend that drops the first request."""
        if ctx.attempt == 1:
            raise RuntimeError("connection reset")
        return Value(value=f"flaky {args.key}")

    @tool(retry=fast.model_copy(update={"max_attempts": 2}))
    async def broken(args: Key, ctx: ToolContext) -> Value:
        """Read a value from a backend that is down."""
        raise ValueError("backend down")

    @tool(side_effect="irreversible", risk="high", idempotent=False)
    async def transfer(args: Amount, ctx: ToolContext) -> Receipt:
        """Move money. Irreversible."""
        return Receipt(transfer_id=f"T-{args.amount}")

    return Agent(name=name, instructions="Use the tools the request names.",
                 tools=[lookup, flaky, broken, transfer], offline_model=mx_model(),
                 max_steps=8, policy=MX_POLICY)


def mx_model() -> FunctionModel:
    """Calls the tools the request names (``pay N`` is a transfer), then answers."""
    usage = Usage(input_tokens=100, output_tokens=10)

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = next(m.content or "" for m in messages if m.role == "user")
        if "crash" in request:
            raise ModelCallError("model is down", kind="ModelUnavailable", retryable=False)
        if assistant_turns(messages) == 0:
            calls = [call(name, key="k") for name in ("lookup", "flaky", "broken")
                     if name in request]
            pay = re.search(r"pay (\d+)", request)
            if pay:
                calls.append(call("transfer", amount=int(pay[1])))
            if calls:
                return ModelTurn(tool_calls=calls, model=RESPONSE_MODEL, usage=usage)
        return ModelTurn(content="All done.", model=RESPONSE_MODEL, usage=usage)

    return FunctionModel(plan, name="scripted:mx")


# ---------------------------------------------------------------------------- the scenario

Handle = WorkflowHandle[Any, RunResult]




async def run_scenario(client: Client, settings: Settings, tenant: str, *,
                       agent: str = "mx") -> dict[str, RunResult]:
    """The table in the module docstring; returns each request's result."""
    async def start(text: str, **metadata: str) -> Handle:
        return await start_run(client, RunRequest(agent=agent, input=text, tenant=tenant,
                                                  metadata=metadata), temporal=settings.temporal)

    texts = ["lookup and flaky", "broken", "pay 50000", "forbidden", "crash"]
    handles = {t: await start(t) for t in texts}
    handles["synthetic"] = await start("lookup", **{SYNTHETIC_KEY: "eval"})
    handles["pay 500"] = paying = await start("pay 500")
    approval = (await wait_pending(paying)).approval_id
    await paying.signal("approve", ApprovalDecision(approval_id=approval, by="alice"))
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles.values())),
                                     60)
    return dict(zip(handles, results, strict=True))


@dataclass
class Scenario:
    tenant: str
    settings: Settings
    results: dict[str, RunResult]
    started: datetime
    ended: datetime


@pytest.fixture(scope="module")
async def scenario(stack: EmbeddedStack) -> AsyncIterator[Scenario]:
    settings = stack.resolved_settings().replace(task_queue=f"test-{uuid.uuid4().hex[:10]}",
                                                 memory_backend="off")
    tenant = f"metrics-{uuid.uuid4().hex[:10]}"
    started = datetime.now(UTC)
    async with WorkerHost(settings, AgentCatalog([mx_agent()])) as host:
        assert host.client is not None
        results = await run_scenario(host.client, settings, tenant)
    yield Scenario(tenant, settings, results, started, datetime.now(UTC))


async def report_for(ledger: Ledger, s: Scenario, **options: Any) -> MetricsReport:
    flt = MetricsFilter(since=s.started - timedelta(minutes=1), tenant=s.tenant, **options)
    return await compute_metrics(ledger, flt, prices=PRICES)


def expected_percentiles(values: Sequence[float]) -> Percentiles:
    p50, p95, p99 = np.percentile(np.array(values, dtype=float), [50, 95, 99])
    return Percentiles(count=len(values), p50=float(p50), p95=float(p95), p99=float(p99))


def assert_close(got: Percentiles, want: Percentiles) -> None:
    assert got.count == want.count
    for field in ("p50", "p95", "p99"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-6, abs=1e-6), \
            field


# ---------------------------------------------------------------------------- from the ledger


async def test_the_scenario_ends_as_designed(scenario: Scenario) -> None:
    """Guard for the figures below: each run ended the way the docstring table says."""
    assert {k: r.status for k, r in scenario.results.items()} == {
        "lookup and flaky": "completed", "broken": "completed", "pay 50000": "denied",
        "forbidden": "refused", "crash": "failed", "synthetic": "completed",
        "pay 500": "completed"}


async def test_runs_success_rate_and_latency_per_agent(scenario: Scenario,
                                                       ledger: Ledger) -> None:
    report = await report_for(ledger, scenario)

    [mx] = report.agents
    assert mx.agent == "mx"
    assert mx.runs == 6  # the synthetic run is left out
    assert mx.by_status == {"completed": 3, "denied": 1, "failed": 1, "refused": 1}
    assert (mx.finished, mx.completed) == (6, 3)
    assert mx.success_rate == pytest.approx(0.5)
    assert (mx.denied_runs, mx.refused_runs, mx.escalated_runs) == (1, 1, 0)
    rows = await ledger.pool.fetch(
        "select extract(epoch from finished_at - started_at)::float8 * 1000 as ms"
        " from stead_runs where tenant = $1 and not (metadata ? $2)",
        scenario.tenant, SYNTHETIC_KEY)
    assert_close(mx.latency_ms, expected_percentiles([r["ms"] for r in rows]))
    # One agent: the all-agents row says the same.
    assert report.overall.model_dump(exclude={"agent"}) == mx.model_dump(exclude={"agent"})


async def test_guardrail_denials_and_approval_wait(scenario: Scenario, ledger: Ledger) -> None:
    [mx] = (await report_for(ledger, scenario)).agents

    assert mx.gate_denials == 1
    counts = {(g.kind, g.decision): g.count for g in mx.guardrails}
    assert counts == {("gate", "allow"): 3, ("gate", "ask"): 1, ("gate", "deny"): 1,
                      ("route", "allow"): 5, ("route", "refuse"): 1}
    assert (mx.approvals.requested, mx.approvals.decided, mx.approvals.escalated) == (
        1, {"approved": 1}, 0)
    rows = await ledger.pool.fetch(
        "select d.kind, d.created_at from stead_decisions d join stead_runs r"
        " using (workflow_id, run_id) where r.tenant = $1 and r.input = 'pay 500'"
        " and d.kind in ('approval_requested', 'approval_decided') order by d.seq",
        scenario.tenant)
    assert [r["kind"] for r in rows] == ["approval_requested", "approval_decided"]
    wait = (rows[1]["created_at"] - rows[0]["created_at"]).total_seconds() * 1000
    assert wait > 0
    assert_close(mx.approvals.wait_ms, Percentiles(count=1, p50=wait, p95=wait, p99=wait))


async def test_model_calls_tokens_and_cost(scenario: Scenario, ledger: Ledger) -> None:
    [mx] = (await report_for(ledger, scenario)).agents

    # 2 turns for each of the four runs that reached the model and answered, one failed call.
    assert (mx.model_calls, mx.model_errors) == (9, 1)
    assert (mx.input_tokens, mx.output_tokens) == (800, 80)
    by_model = {u.model: u for u in mx.models}
    priced, offline = by_model[RESPONSE_MODEL], by_model["scripted:mx"]
    assert (priced.calls, priced.errors, priced.pricing) == (8, 0, "priced")
    assert priced.cost_usd == pytest.approx((800 * 0.15 + 80 * 0.60) / 1e6)
    assert (offline.calls, offline.errors, offline.pricing, offline.cost_usd) == (
        1, 1, "offline", 0.0)
    assert mx.cost_usd == pytest.approx(priced.cost_usd)


async def test_tool_failure_and_retry_rates(scenario: Scenario, ledger: Ledger) -> None:
    report = await report_for(ledger, scenario)
    tools = {t.tool: t for t in report.tools}

    assert set(tools) == {"lookup", "flaky", "broken", "transfer"}  # the denied one never ran
    flaky, broken, lookup = tools["flaky"], tools["broken"], tools["lookup"]
    assert (flaky.calls, flaky.attempts, flaky.failed_attempts, flaky.failed_calls) == (
        1, 2, 1, 0)
    assert (flaky.failure_rate, flaky.attempt_failure_rate, flaky.retry_rate) == (
        0.0, 0.5, 1.0)
    assert (broken.calls, broken.attempts, broken.failed_attempts, broken.failed_calls,
            broken.retries) == (1, 2, 2, 1, 1)
    assert (broken.failure_rate, broken.retry_rate) == (1.0, 1.0)
    assert (lookup.calls, lookup.attempts, lookup.failure_rate, lookup.retry_rate) == (
        1, 1, 0.0, 0.0)
    rows = await ledger.pool.fetch(
        "select a.duration_ms from stead_tool_attempts a join stead_runs r"
        " using (workflow_id, run_id) where r.tenant = $1 and a.tool = 'flaky'",
        scenario.tenant)
    assert_close(flaky.latency_ms, expected_percentiles([r["duration_ms"] for r in rows]))


async def test_synthetic_runs_count_only_when_asked(scenario: Scenario,
                                                   ledger: Ledger) -> None:
    [mx] = (await report_for(ledger, scenario, include_synthetic=True)).agents
    assert (mx.runs, mx.completed, mx.by_status["completed"]) == (7, 4, 4)
    assert mx.success_rate == pytest.approx(4 / 7)
    report = await report_for(ledger, scenario, include_synthetic=True)
    assert {t.tool: t.calls for t in report.tools}["lookup"] == 2


async def test_window_and_agent_filters(scenario: Scenario, ledger: Ledger) -> None:
    before = await compute_metrics(ledger, MetricsFilter(
        since=scenario.started - timedelta(hours=1), until=scenario.started,
        tenant=scenario.tenant), prices=PRICES)
    assert (before.overall.runs, before.agents, before.tools) == (0, [], [])
    assert before.overall.success_rate is None
    other = await report_for(ledger, scenario, agent="ops")
    assert other.overall.runs == 0
    with pytest.raises(ValueError, match="empty window"):
        await compute_metrics(ledger, MetricsFilter(since=scenario.ended,
                                                    until=scenario.started), prices=PRICES)


# ---------------------------------------------------------------------------- pure parts


def test_parse_when_accepts_durations_dates_and_now() -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_when("24h", now=now) == now - timedelta(hours=24)
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("1h30m", now=now) == now - timedelta(minutes=90)
    assert parse_when("2w", now=now) == now - timedelta(weeks=2)
    assert parse_when("now", now=now) == now
    assert parse_when("2025-02-01", now=now) == datetime(2025, 2, 1, tzinfo=UTC)
    assert parse_when("2025-02-01T10:00:00+02:00", now=now) == datetime(2025, 2, 1, 8,
                                                                        tzinfo=UTC)
    for bad in ("yesterday", "24", "h", "-1d", "1y", ""):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_when(bad, now=now)


def test_prices_match_the_longest_prefix() -> None:
    prices = {"gpt-4o": ModelPrice(input=2.5, output=10), "gpt-4o-mini": PRICES["gpt-4o-mini"]}
    assert price_for("gpt-4o-mini-2024-07-18", prices) == prices["gpt-4o-mini"]
    assert price_for("openai:gpt-4o-2024-08-06", prices) == prices["gpt-4o"]
    assert price_for("claude-3", prices) is None
    assert price_for("scripted:ops", prices) is None


# ---------------------------------------------------------------------------- the CLI


async def stead_metrics(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    done = await stead("metrics", *args, env=env, timeout=60)
    return done.code, done.out, done.err


def cli_env(s: Scenario) -> dict[str, str]:
    assert s.settings.ledger.database_url is not None and s.settings.temporal.address is not None
    env = {k: v for k, v in os.environ.items() if k != "STEAD_MODEL_PRICES"}
    return {**env, "DATABASE_URL": s.settings.ledger.database_url,
            "TEMPORAL_ADDRESS": s.settings.temporal.address}


def table_row(out: str, *first: str) -> list[str]:
    """The cells of the first table row of ``out`` whose leading cells are ``first``."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[:len(first)] == list(first):
            return cells
    raise AssertionError(f"no row starting {first} in:\n{out}")


async def test_cli_prints_json_for_scripts_and_tables_for_people(scenario: Scenario) -> None:
    env = cli_env(scenario)
    code, out, err = await stead_metrics("--since", "1h", "--tenant", scenario.tenant, "--json",
                                         env=env)
    assert code == 0, err
    data = json.loads(out)
    [mx] = data["agents"]
    assert (mx["runs"], mx["success_rate"], mx["gate_denials"]) == (6, 0.5, 1)
    assert data["filter"]["tenant"] == scenario.tenant
    # The default price table knows gpt-4o-mini.
    assert {m["model"]: m["pricing"] for m in mx["models"]} == {
        RESPONSE_MODEL: "priced", "scripted:mx": "offline"}
    assert {t["tool"]: t["retry_rate"] for t in data["tools"]}["flaky"] == 1.0

    code, out, err = await stead_metrics("--tenant", scenario.tenant, "--agent", "mx",
                                         env=env)
    assert code == 0, err
    assert table_row(out, "mx")[:10] == ["mx", "6", "3", "1", "1", "1", "0", "0", "0",
                                         "50.0%"]
    assert table_row(out, "flaky")[:6] == ["flaky", "1", "2", "0.0%", "50.0%", "100.0%"]
    assert table_row(out, "mx", RESPONSE_MODEL)[2:7] == ["8", "0", "800", "80", "0.000168"]
    assert "(eval and counterfactual runs excluded)" in out


async def test_runs_stopped_by_their_budget_are_counted_and_shown(
        stack: EmbeddedStack, ledger: Ledger) -> None:
    """The ``mx`` agent under a budget of one model call, in a tenant of its own: "lookup"
    needs a second call and ends ``budget_exceeded``, "hello" answers in one and completes.
    The report counts the stopped run (``budget_exceeded_runs``), ``stead metrics`` shows it
    in the runs table's "over budget" column, and ``GET /v1/metrics`` carries the same
    field."""
    import dataclasses

    import httpx
    from pydantic import SecretStr

    from stead.api import create_app, issue_token
    from stead.contracts.budget import BudgetRules
    secret = "metrics-budget-secret-" + "x" * 30
    settings = stack.resolved_settings().replace(task_queue=f"test-{uuid.uuid4().hex[:10]}",
                                                 memory_backend="off",
                                                 api_secret=SecretStr(secret))
    tenant = f"metrics-budget-{uuid.uuid4().hex[:8]}"
    started = datetime.now(UTC)
    agent = dataclasses.replace(mx_agent("mxb"), policy=MX_POLICY.model_copy(
        update={"id": "mxb-test", "budget": BudgetRules(max_model_calls=1)}))
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        handles = [await start_run(host.client, RunRequest(agent="mxb", input=text,
                                                           tenant=tenant),
                                   temporal=settings.temporal) for text in ("lookup", "hello")]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
    assert [r.status for r in results] == ["budget_exceeded", "completed"]

    report = await compute_metrics(ledger, MetricsFilter(
        since=started - timedelta(minutes=1), tenant=tenant), prices=PRICES)
    (mxb,) = report.agents
    assert mxb.by_status == {"budget_exceeded": 1, "completed": 1}
    assert (mxb.budget_exceeded_runs, report.overall.budget_exceeded_runs) == (1, 1)
    assert (mxb.finished, mxb.success_rate) == (2, 0.5)

    env = {**cli_env(Scenario(tenant, settings, {}, started, started))}
    code, out, err = await stead_metrics("--since", "1h", "--tenant", tenant, env=env)
    assert code == 0, err
    assert table_row(out, "mxb")[:10] == ["mxb", "2", "1", "0", "0", "0", "0", "1", "0",
                                          "50.0%"]
    assert "over budget" in out
    code, out, err = await stead_metrics("--since", "1h", "--tenant", tenant, "--json",
                                         env=env)
    assert code == 0, err
    assert json.loads(out)["agents"][0]["budget_exceeded_runs"] == 1

    app = create_app(settings)
    token = issue_token(secret, sub="audrey", tenant=tenant, roles=("auditor",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as http:
        r = await http.get("/v1/metrics?since=1h",
                           headers={"Authorization": f"Bearer {token}"})
    await app.state.backend.close()
    assert r.status_code == 200, r.text
    assert r.json()["overall"]["budget_exceeded_runs"] == 1


async def test_cli_rejects_bad_windows_with_exit_2(scenario: Scenario) -> None:
    env = cli_env(scenario)
    code, _, err = await stead_metrics("--since", "yesterday", env=env)
    assert code == 2
    assert "--since: 'yesterday' is neither a duration" in err
    code, _, err = await stead_metrics("--since", "1h", "--until", "2h", env=env)
    assert code == 2
    assert "empty window" in err
