"""Tenant spending windows (issue 18): reservations against a tenant's day and month caps in
the real PostgreSQL, as the workers' login role; racing reservers never pass a cap together;
the model activity refuses a call over its tenant's window before the model is called."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from _cli import cli_env, stead
from _procs import WorkerProcess, worker_env
from _spend_worker import SPEND_WORKER_SCRIPT, spender_agent
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel, ConfigDict, SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from stead import errors
from stead.activities.model import ModelActivities, check_reservation_ttl
from stead.api import Role, create_app, issue_token
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.budget import Price, Spend
from stead.contracts.models import (
    Message,
    ModelEndpoint,
    ModelRequest,
    ModelTurn,
    RunRef,
    RunRequest,
    RunResult,
    ToolSchema,
    Usage,
)
from stead.contracts.quota import TenantQuota
from stead.errors import SettingsError
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger, SpendKey
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.worker import WorkerHost

TTL = 900.0


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _key(step: int = 1, *, fallback: int = 0, wf: str | None = None) -> SpendKey:
    return SpendKey(wf or f"wf-{uuid.uuid4().hex[:8]}", "run-1", step, fallback)


@pytest.fixture
async def workers(stack: EmbeddedStack) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two ledgers with pools of their own, as the workers' login role: two workers."""
    a = await Ledger.connect(stack.worker_database_url, min_size=1, max_size=30)
    b = await Ledger.connect(stack.worker_database_url, min_size=1, max_size=30)
    yield a, b
    await a.close()
    await b.close()


async def _window(ledger: Ledger, tenant: str, kind: str = "day") -> tuple[float, float]:
    rows = await ledger.spend_usage({}, tenant=tenant)
    row = next(r for r in rows if r.window == kind)
    return row.spent_usd, row.reserved_usd


async def test_reserve_settle_release_move_money_between_reserved_and_spent(
        workers: tuple[Ledger, Ledger]) -> None:
    """A reservation counts as reserved; settling moves the real cost (not the estimate) to
    spent in both windows; releasing drops it; a release after the settle changes nothing."""
    lg, _ = workers
    tenant, k1, k2 = _tenant(), _key(1), _key(2)
    caps = {"day": 1.0, "month": 5.0}
    got = await lg.reserve_spend(tenant, k1, usd=0.4, caps=caps, ttl_seconds=TTL)
    assert got.outcome == "reserved"
    assert await _window(lg, tenant) == (0.0, 0.4)
    assert await lg.settle_spend(k1, usd=0.25, attempt=1)
    assert await _window(lg, tenant) == (0.25, 0.0)
    assert await _window(lg, tenant, "month") == (0.25, 0.0)
    assert not await lg.release_spend(k1, attempt=1)  # settled: nothing to release
    assert (await lg.reserve_spend(tenant, k2, usd=0.5, caps=caps, ttl_seconds=TTL)).outcome \
        == "reserved"
    assert await _window(lg, tenant) == (0.25, 0.5)
    assert await lg.release_spend(k2, attempt=1)
    assert await _window(lg, tenant) == (0.25, 0.0)


async def test_over_a_cap_the_reservation_is_refused_with_the_window_and_figures(
        workers: tuple[Ledger, Ledger]) -> None:
    lg, _ = workers
    tenant = _tenant()
    caps = {"day": 1.0, "month": 1.5}
    assert (await lg.reserve_spend(tenant, _key(1), usd=0.7, caps=caps,
                                   ttl_seconds=TTL)).outcome == "reserved"
    refused = await lg.reserve_spend(tenant, _key(2), usd=0.31, caps=caps, ttl_seconds=TTL)
    assert refused.outcome == "refused"
    assert refused.window == "day" and refused.cap_usd == 1.0
    assert (refused.spent_usd, refused.reserved_usd) == (0.0, 0.7)
    assert refused.window_start is not None and refused.resets_at is not None
    assert (refused.resets_at - refused.window_start).total_seconds() == 86400
    assert refused.window_start.hour == 0 and refused.window_start.utcoffset() is not None
    # Exactly up to the cap fits; the month window refuses on its own.
    assert (await lg.reserve_spend(tenant, _key(3), usd=0.3, caps=caps,
                                   ttl_seconds=TTL)).outcome == "reserved"
    month = await lg.reserve_spend(tenant, _key(4), usd=0.6, caps={"month": 1.5},
                                   ttl_seconds=TTL)
    assert month.outcome == "refused" and month.window == "month"
    assert month.resets_at is not None and month.resets_at.day == 1


async def test_a_later_attempt_charges_the_abandoned_one_at_its_estimate(
        workers: tuple[Ledger, Ledger]) -> None:
    """The key is the model call: a reserve re-sent by the same attempt holds its reservation;
    a later attempt finding an earlier one's reservation never settled nor released (its
    worker died mid-call, maybe billed) charges that attempt at its estimate, then reserves
    its own. A settle re-sent adds once; the abandoned attempt settling after all (a slow
    worker) replaces its estimate by its cost; a late attempt's release releases nothing."""
    lg, other = workers
    tenant, key = _tenant(), _key(7, fallback=1)
    caps = {"day": 1.0}
    assert (await lg.reserve_spend(tenant, key, usd=0.4, caps=caps, ttl_seconds=TTL)).outcome \
        == "reserved"
    assert (await lg.reserve_spend(tenant, key, usd=0.4, caps=caps, ttl_seconds=TTL)).outcome \
        == "held"  # re-sent after a dropped connection: the same attempt
    assert await _window(lg, tenant) == (0.0, 0.4)
    again = await other.reserve_spend(tenant, key, usd=0.4, caps=caps, ttl_seconds=TTL,
                                      attempt=2)
    assert again.outcome == "reserved"
    assert await _window(lg, tenant) == (pytest.approx(0.4), pytest.approx(0.4))
    assert (await other.reserve_spend(tenant, key, usd=0.4, caps=caps, ttl_seconds=TTL,
                                      attempt=2)).outcome == "held"  # charged once
    assert await _window(lg, tenant) == (pytest.approx(0.4), pytest.approx(0.4))
    assert not await lg.release_spend(key, attempt=1)  # attempt 2 holds it now
    assert await other.settle_spend(key, usd=0.2, attempt=2)
    assert not await other.settle_spend(key, usd=0.2, attempt=2)  # re-sent: added once
    assert await _window(lg, tenant) == (pytest.approx(0.6), 0.0)
    assert await lg.settle_spend(key, usd=0.1, attempt=1)  # not dead after all: its real cost
    assert not await lg.settle_spend(key, usd=0.1, attempt=1)
    assert await _window(lg, tenant) == (pytest.approx(0.3), 0.0)
    row = await lg.pool.fetchrow(
        "select state, attempt, settled_attempts, abandoned_attempts, charged_usd::float8 as c,"
        " settled_usd::float8 as s from stead_spend_reservations where workflow_id=$1",
        key.workflow_id)
    assert (row["state"], row["attempt"], row["settled_attempts"], row["abandoned_attempts"]) \
        == ("settled", 2, [2, 1], [1])
    assert (row["c"], row["s"]) == (0.0, pytest.approx(0.3))
    # The same step's first-choice model is another call with its own reservation.
    assert (await lg.reserve_spend(tenant, _key(7, wf=key.workflow_id), usd=0.6, caps=caps,
                                   ttl_seconds=TTL)).outcome == "reserved"


async def test_the_attempt_that_takes_over_is_refused_if_its_own_estimate_does_not_fit(
        workers: tuple[Ledger, Ledger]) -> None:
    """The abandoned attempt's estimate is spent; the new attempt's is checked against the cap
    with it, and refused when it would pass: the window then holds the one estimate, spent."""
    lg, other = workers
    tenant, key = _tenant(), _key(1)
    caps = {"day": 1.0}
    assert (await lg.reserve_spend(tenant, key, usd=0.6, caps=caps, ttl_seconds=TTL)).outcome \
        == "reserved"
    refused = await other.reserve_spend(tenant, key, usd=0.6, caps=caps, ttl_seconds=TTL,
                                        attempt=2)
    assert refused.outcome == "refused" and refused.window == "day"
    assert (refused.spent_usd, refused.reserved_usd) == (pytest.approx(0.6), 0.0)
    assert await _window(lg, tenant) == (pytest.approx(0.6), 0.0)
    assert (await other.reserve_spend(tenant, key, usd=0.6, caps=caps, ttl_seconds=TTL,
                                      attempt=3)).outcome == "refused"  # not charged again
    assert await _window(lg, tenant) == (pytest.approx(0.6), 0.0)


async def test_a_cleanly_failed_attempt_is_not_charged(workers: tuple[Ledger, Ledger]) -> None:
    """An attempt that released its reservation (the call failed) costs nothing: the retry
    reserves afresh and only its settled cost is spent."""
    lg, other = workers
    tenant, key = _tenant(), _key(1)
    caps = {"day": 1.0}
    assert (await lg.reserve_spend(tenant, key, usd=0.6, caps=caps, ttl_seconds=TTL)).outcome \
        == "reserved"
    assert await lg.release_spend(key, attempt=1)
    assert (await other.reserve_spend(tenant, key, usd=0.6, caps=caps, ttl_seconds=TTL,
                                      attempt=2)).outcome == "reserved"
    assert await _window(lg, tenant) == (0.0, 0.6)
    assert await other.settle_spend(key, usd=0.05, attempt=2)
    assert await _window(lg, tenant) == (pytest.approx(0.05), 0.0)
    assert await lg.pool.fetchval("select charged_usd::float8 from stead_spend_reservations"
                                  " where workflow_id=$1", key.workflow_id) == 0.0


async def test_an_expired_reservation_is_charged_at_its_estimate(
        workers: tuple[Ledger, Ledger]) -> None:
    """A reservation whose worker died and that no later attempt takes over (the run was
    terminated) is charged at its estimate once its TTL passed: read as spent at once, written
    into the window by the tenant's next reserve (no sweep), charged once; a retry after all
    reserves its own estimate against the cap, and a late settle replaces the estimate."""
    lg, _ = workers
    tenant, dead = _tenant(), _key(1)
    caps = {"day": 1.0}
    assert (await lg.reserve_spend(tenant, dead, usd=0.9, caps=caps,
                                   ttl_seconds=0.3)).outcome == "reserved"
    assert (await lg.reserve_spend(tenant, _key(2), usd=0.2, caps=caps,
                                   ttl_seconds=TTL)).outcome == "refused"
    await asyncio.sleep(0.4)
    assert await _window(lg, tenant) == (pytest.approx(0.9), 0.0)

    async def stored() -> float:
        return float(await lg.pool.fetchval(
            "select spent_usd::float8 from stead_tenant_spend where tenant=$1 and kind='day'",
            tenant))
    assert await stored() == 0.0  # not written yet: lazily, by the next reserve
    assert (await lg.reserve_spend(tenant, _key(2), usd=0.2, caps=caps,
                                   ttl_seconds=TTL)).outcome == "refused"
    assert await stored() == pytest.approx(0.9)
    assert (await lg.reserve_spend(tenant, _key(3), usd=0.05, caps=caps,
                                   ttl_seconds=TTL)).outcome == "reserved"
    assert await _window(lg, tenant) == (pytest.approx(0.9), pytest.approx(0.05))
    retry = await lg.reserve_spend(tenant, dead, usd=0.9, caps=caps, ttl_seconds=TTL,
                                   attempt=2)
    assert retry.outcome == "refused"  # 0.9 + 0.05 + 0.9 > 1
    assert (await lg.reserve_spend(tenant, dead, usd=0.04, caps=caps, ttl_seconds=TTL,
                                   attempt=2)).outcome == "reserved"
    assert await _window(lg, tenant) == (pytest.approx(0.9), pytest.approx(0.09))
    assert await lg.settle_spend(dead, usd=0.5, attempt=1)  # it had answered after all
    assert await _window(lg, tenant) == (pytest.approx(0.5), pytest.approx(0.09))


async def test_usage_lists_spenders_and_quota_holders_with_their_caps(
        workers: tuple[Ledger, Ledger]) -> None:
    lg, _ = workers
    spender, idle = _tenant(), _tenant()
    quotas = {idle: TenantQuota(usd_per_month=3.0), "*": TenantQuota(usd_per_day=2.0)}
    await lg.reserve_spend(spender, _key(1), usd=0.5, caps={"day": 2.0}, ttl_seconds=TTL)
    rows = {(r.tenant, r.window): r for r in await lg.spend_usage(quotas)}
    assert rows[(spender, "day")].cap_usd == 2.0
    assert rows[(spender, "day")].left_usd == 1.5
    assert rows[(spender, "month")].cap_usd is None
    assert rows[(spender, "month")].reserved_usd == 0.5
    assert rows[(idle, "month")].cap_usd == 3.0 and rows[(idle, "month")].spent_usd == 0
    assert rows[(idle, "day")].cap_usd is None
    assert "*" not in {t for t, _ in rows}
    only = await lg.spend_usage(quotas, tenant=idle)
    assert {r.tenant for r in only} == {idle} and len(only) == 2


async def test_the_worker_role_may_not_rewrite_what_was_spent_directly(
        stack: EmbeddedStack) -> None:
    """Workers may reserve and settle (the functions) but not delete the windows' rows."""
    conn = await asyncpg.connect(stack.worker_database_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("delete from stead_tenant_spend")
    finally:
        await conn.close()


# ------------------------------------------------------------------ the concurrency proof


async def _race(ledgers: tuple[Ledger, Ledger], tenant: str, sizes: list[float],
                caps: dict[str, float]) -> tuple[list[SpendKey], list[bool]]:
    """Every size reserved at once (one model call each), alternately through the two
    workers' pools, each on a connection of its own (the pools hold 30 each)."""
    start = asyncio.Event()
    keys = [_key(i + 1) for i in range(len(sizes))]

    async def one(i: int, usd: float) -> bool:
        await start.wait()
        got = await ledgers[i % 2].reserve_spend(tenant, keys[i], usd=usd, caps=caps,
                                                 ttl_seconds=TTL)
        return got.outcome == "reserved"
    tasks = [asyncio.create_task(one(i, usd)) for i, usd in enumerate(sizes)]
    await asyncio.sleep(0.05)
    start.set()
    return keys, list(await asyncio.gather(*tasks))


async def test_fifty_racing_reservers_on_two_workers_never_pass_the_cap(
        workers: tuple[Ledger, Ledger]) -> None:
    """50 reservations of $0.10 raced against a cap: exactly as many win as fit, and the
    window holds exactly the cap; with a day and a month cap, the tighter one decides."""
    tenant = _tenant()
    _, won = await _race(workers, tenant, [0.1] * 50, {"day": 1.0})
    assert sum(won) == 10
    assert await _window(workers[0], tenant) == (0.0, pytest.approx(1.0))
    tenant = _tenant()
    _, won = await _race(workers, tenant, [0.1] * 50, {"day": 1.0, "month": 0.75})
    assert sum(won) == 7
    assert await _window(workers[0], tenant, "month") == (0.0, pytest.approx(0.7))


async def test_random_sized_races_fill_the_cap_and_refuse_only_what_no_longer_fits(
        workers: tuple[Ledger, Ledger]) -> None:
    """Seeded rounds: 50 racers of random sizes against a random cap, the winners settled at
    random real costs (some above their estimates), then another 50 racers. While reserving,
    spent + reserved never passes the cap; every refused racer truly did not fit (the window
    plus it is over the cap even now); a window passes its cap only by what calls cost beyond
    their estimates, never by a race."""
    rng = random.Random(18)
    for _ in range(5):
        tenant, cap = _tenant(), round(rng.uniform(0.5, 3.0), 2)
        beyond = 0.0  # what settled calls cost over their estimates, summed
        for _ in range(2):
            sizes = [round(rng.uniform(0.01, 0.4), 4) for _ in range(50)]
            before = sum(await _window(workers[0], tenant))
            keys, won = await _race(workers, tenant, sizes, {"day": cap})
            spent, reserved = await _window(workers[0], tenant)
            total = spent + reserved
            mine = sum(s for s, w in zip(sizes, won, strict=True) if w)
            assert total == pytest.approx(before + mine)
            assert total <= max(cap, before) + 1e-9
            assert all(total + s > cap - 1e-9 for s, w in zip(sizes, won, strict=True)
                       if not w)
            assert sum(won) < 50
            for i, (key, usd, w) in enumerate(zip(keys, sizes, won, strict=True)):
                if w:
                    cost = usd * rng.uniform(0.2, 1.3)
                    beyond += max(cost - usd, 0.0)
                    assert await workers[i % 2].settle_spend(key, usd=cost, attempt=1)
            spent, reserved = await _window(workers[0], tenant)
            assert reserved == 0
            assert spent <= cap + beyond + 1e-9


# ------------------------------------------------------------------ in real runs

KEY_VAR = "STEAD_TEST_SPEND_KEY"
KEY = "sk-spend-test-0123456789abcdef"
SCRIPT = [ModelTurn(tool_calls=[call("echo", call_id="call_echo", text="hello")],
                    usage=Usage(input_tokens=1200, output_tokens=40)),
          ModelTurn(content="the tool said hello", usage=Usage(input_tokens=1300,
                                                                output_tokens=9))]
"""What the fake server answers, with the usage it reports (what calls are settled at)."""
REFUSED = {"budget_exceeded", "failed"}
"""How a run ends when its tenant's window refuses its model call: ``budget_exceeded`` once
the workflow maps the refusal (issue 18 part 1), ``failed`` before."""


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


@tool(name="echo")
async def echo(args: Echo, ctx: ToolContext) -> Echo:
    """Repeat the text."""
    return Echo(text=args.text)


@pytest.fixture
async def served(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                 ) -> AsyncIterator[tuple[WorkerHost, Settings, FakeOpenAIServer, dict[str, str],
                                          InMemoryMetricReader]]:
    """A worker whose agent ``spender`` calls gpt-4o-mini (listed at $0.15/$0.60 per 1M
    tokens) on the fake OpenAI server; tenant ``poor`` may spend $0.001 a day (less than one
    call's estimate: its answer is assumed 4096 tokens long), ``rich`` $5, others no limit."""
    monkeypatch.setenv(KEY_VAR, KEY)
    names = {"poor": _tenant(), "rich": _tenant(), "free": _tenant()}
    quotas = {names["poor"]: {"usd_per_day": 0.001},
              names["rich"]: {"usd_per_day": 5.0, "usd_per_month": 50.0}}
    s = settings.replace(tenant_quotas=quotas)
    reader = InMemoryMetricReader()
    provider = SdkMeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    async with FakeOpenAIServer.from_model(ScriptedModel(list(SCRIPT)), api_key=KEY) as srv:
        ep = ModelEndpoint.model_validate({"model": "gpt-4o-mini", "base_url": srv.base_url,
                                           "api_key_env": KEY_VAR})
        agent = Agent(name="spender", instructions="Use the echo tool, then answer.",
                      tools=[echo], models=[ep],
                      offline_model=ScriptedModel([ModelTurn(content="offline")]))
        async with WorkerHost(s, AgentCatalog([agent]), meter_provider=provider) as host:
            yield host, s, srv, names, reader
    reader.shutdown()


async def _run(host: WorkerHost, s: Settings, tenant: str) -> tuple[str, RunResult]:
    assert host.client is not None
    handle = await start_run(host.client, RunRequest(agent="spender", input="say hello",
                                                     tenant=tenant), temporal=s.temporal)
    return handle.id, await asyncio.wait_for(handle.result(), timeout=120)


def _counters(reader: InMemoryMetricReader) -> dict[str, dict[frozenset[tuple[str, object]],
                                                          float]]:
    data = reader.get_metrics_data()
    out: dict[str, dict[frozenset[tuple[str, object]], float]] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name.startswith("stead.tenant."):
                    for p in m.data.data_points:
                        key = frozenset((p.attributes or {}).items())
                        out.setdefault(m.name, {})[key] = p.value  # type: ignore[union-attr]
    return out


async def test_a_tenant_over_its_day_window_is_refused_before_the_model_is_called(
        served: tuple[WorkerHost, Settings, FakeOpenAIServer, dict[str, str],
                      InMemoryMetricReader], ledger: Ledger) -> None:
    """The poor tenant's first model call would pass its $0.001 day cap: refused before any
    request reaches the model server, non-retryable, the message naming tenant, window,
    figures and reset; the rich tenant's run is unaffected and its calls are settled at the
    usage the server reported; a tenant without a quota spends nothing in the windows."""
    host, s, srv, names, reader = served
    wid, poor = await _run(host, s, names["poor"])
    assert srv.requests == []  # the model was never called
    # One attempt (each would count a refusal: see the counter below). What the run does then
    # is the workflow's: it ends budget_exceeded with the refusal's message (with the run
    # budgets of issue 18 part 1), before them it failed with it.
    assert poor.status in REFUSED
    assert f"tenant {names['poor']!r} is over its day spending window" in (poor.error or "")
    assert "$0.0010 cap" in (poor.error or "") and "resets at" in (poor.error or "")
    trail = await ledger.trail(wid)
    assert trail.model_calls == []
    (day,) = [r for r in await ledger.spend_usage(s.tenants.quotas, tenant=names["poor"])
              if r.window == "day"]
    assert (day.spent_usd, day.reserved_usd, day.cap_usd) == (0.0, 0.0, 0.001)

    # The rich tenant's first call fails once (a 500): released, then reserved again by the
    # retry and settled once, at what the server reported.
    srv.inject(Fault("server_error"))
    wid, rich = await _run(host, s, names["rich"])
    assert (rich.status, rich.answer) == ("completed", "the tool said hello")
    trail = await ledger.trail(wid)
    price = Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60)
    cost = sum(price.cost(m.input_tokens, m.output_tokens)
               for m in trail.model_calls)
    assert [(m.step, m.attempt, m.status) for m in trail.model_calls] == [
        (1, 1, "error"), (1, 2, "ok"), (3, 1, "ok")]
    assert cost == pytest.approx(price.cost(2500, 49))
    held = await ledger.pool.fetch(
        "select step, state, attempt, settled_attempts, settled_usd::float8 as usd"
        " from stead_spend_reservations where workflow_id=$1 order by step", wid)
    assert [(r["step"], r["state"], r["attempt"], r["settled_attempts"]) for r in held] == [
        (1, "settled", 2, [2]), (3, "settled", 1, [1])]
    assert await ledger.pool.fetchval(  # the failed attempt released: not charged
        "select sum(charged_usd)::float8 from stead_spend_reservations where workflow_id=$1",
        wid) == 0.0
    assert sum(r["usd"] for r in held) == pytest.approx(cost)
    usage = {r.window: r for r in await ledger.spend_usage(s.tenants.quotas,
                                                           tenant=names["rich"])}
    assert usage["day"].spent_usd == pytest.approx(cost)
    assert usage["month"].spent_usd == pytest.approx(cost)
    assert usage["day"].reserved_usd == 0 and usage["month"].cap_usd == 50.0

    # A tenant without a quota: not a single reservation (no round trip on its hot path).
    _, free = await _run(host, s, names["free"])
    assert free.status == "completed"
    assert await ledger.pool.fetchval(
        "select count(*) from stead_spend_reservations where tenant=$1", names["free"]) == 0

    got = _counters(reader)
    refusals = got["stead.tenant.budget_refusals"]
    assert refusals == {frozenset({("stead.tenant", names["poor"]),
                                   ("stead.window", "day")}): 1}
    spend = got["stead.tenant.spend"]
    assert spend[frozenset({("stead.tenant", names["rich"])})] == pytest.approx(cost)
    assert set(spend) == {frozenset({("stead.tenant", names["rich"])})}


# ------------------------------------------------------------------ stead budget, GET /v1/budget

API_SECRET = "spend-secret-" + "x" * 40


async def _spend(ledger: Ledger, tenant: str, *, settled: float, reserved: float) -> None:
    done = _key(1)
    await ledger.reserve_spend(tenant, done, usd=settled, caps={}, ttl_seconds=TTL)
    await ledger.settle_spend(done, usd=settled)
    await ledger.reserve_spend(tenant, _key(2), usd=reserved, caps={}, ttl_seconds=TTL)


async def test_stead_budget_prints_each_window_for_people_and_scripts(
        settings: Settings, ledger: Ledger) -> None:
    acme, other = _tenant(), _tenant()
    await _spend(ledger, acme, settled=0.25, reserved=0.5)
    await _spend(ledger, other, settled=0.01, reserved=0.0)
    env = cli_env(settings, STEAD_TENANT_QUOTAS=json.dumps({acme: {"usd_per_day": 2.0}}))
    done = await stead("budget", "--tenant", acme, "--json", env=env)
    assert done.code == 0, done.err
    rows = {w["window"]: w for w in done.json()["windows"]}
    assert set(rows) == {"day", "month"}
    day = rows["day"]
    assert (day["tenant"], day["spent_usd"], day["reserved_usd"], day["cap_usd"],
            day["left_usd"]) == (acme, 0.25, 0.5, 2.0, 1.25)
    assert rows["month"]["cap_usd"] is None and rows["month"]["left_usd"] is None
    assert datetime.fromisoformat(day["resets_at"]) - datetime.fromisoformat(
        day["window_start"]) == timedelta(days=1)
    everyone = await stead("budget", "--json", env=env)
    assert {acme, other} <= {w["tenant"] for w in everyone.json()["windows"]}
    table = await stead("budget", "--tenant", acme, env={**env, "COLUMNS": "200"})
    assert table.code == 0, table.err
    line = next(ln for ln in table.out.splitlines() if " day " in ln)
    for cell in (acme, "0.2500", "0.5000", "2.0000", "1.2500"):
        assert cell in line, (cell, line)
    assert "no cap" in table.out


async def test_get_budget_shows_only_the_tokens_tenant_to_auditors(
        settings: Settings, ledger: Ledger) -> None:
    acme, other = _tenant(), _tenant()
    await _spend(ledger, acme, settled=0.4, reserved=0.1)
    await _spend(ledger, other, settled=3.0, reserved=0.0)
    s = settings.replace(api_secret=SecretStr(API_SECRET),
                         tenant_quotas={"*": {"usd_per_day": 1.0, "usd_per_month": 10.0}})
    app = create_app(s)

    def auth(tenant: str, role: Role) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(API_SECRET, sub="ana", tenant=tenant,
                                                         roles=(role,))}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as c:
        r = await c.get("/v1/budget", headers=auth(acme, "auditor"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tenant"] == acme
        day, month = body["windows"]
        assert (day["window"], day["spent_usd"], day["reserved_usd"], day["cap_usd"]) == \
            ("day", 0.4, 0.1, 1.0)
        assert day["left_usd"] == pytest.approx(0.5)
        assert (month["window"], month["cap_usd"]) == ("month", 10.0)
        r = await c.get("/v1/budget", headers=auth(other, "auditor"))
        assert r.json()["windows"][0]["spent_usd"] == 3.0
        assert r.json()["windows"][0]["left_usd"] == 0  # over its cap: nothing left
        assert (await c.get("/v1/budget", headers=auth(acme, "requester"))).status_code == 403
        assert (await c.get("/v1/budget")).status_code == 401
        assert "/v1/budget" in (await c.get("/openapi.json")).json()["paths"]
    await app.state.backend.close()


async def test_two_workers_running_one_tenants_runs_at_once_keep_its_cap(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, ledger: Ledger) -> None:
    """20 runs of one tenant at once on two workers (two pools) against a day cap that holds
    about four calls' estimates, with slow streamed answers so that calls overlap: some runs
    complete, some are refused; the window's spent never passes the cap (calls cost less than
    their estimates here, so nothing may), nothing stays reserved, and what was settled is
    exactly what the ledger's model calls cost."""
    monkeypatch.setenv(KEY_VAR, KEY)
    tenant, cap = _tenant(), 0.01
    s = settings.replace(tenant_quotas={tenant: {"usd_per_day": cap}})
    async with FakeOpenAIServer.from_model(ScriptedModel(list(SCRIPT)), api_key=KEY,
                                           chunk_delay=0.05) as srv:
        ep = ModelEndpoint.model_validate({"model": "gpt-4o-mini", "base_url": srv.base_url,
                                           "api_key_env": KEY_VAR})

        def catalog() -> AgentCatalog:
            return AgentCatalog([Agent(name="spender", instructions="Use echo, then answer.",
                                       tools=[echo], models=[ep],
                                       offline_model=ScriptedModel([ModelTurn(content="x")]))])
        async with WorkerHost(s, catalog()) as one, WorkerHost(s, catalog()):
            assert one.client is not None
            handles = [await start_run(one.client, RunRequest(
                agent="spender", input=f"say hello {i}", tenant=tenant), temporal=s.temporal)
                for i in range(20)]
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=180)
    statuses = [r.status for r in results]
    assert "completed" in statuses and set(statuses) & REFUSED
    assert set(statuses) <= REFUSED | {"completed"}
    for r in results:
        if r.status in REFUSED:
            assert f"tenant {tenant!r} is over its day spending window" in (r.error or "")
    (day,) = [w for w in await ledger.spend_usage(s.tenants.quotas, tenant=tenant)
              if w.window == "day"]
    assert day.reserved_usd == 0
    assert 0 < day.spent_usd <= cap
    price = Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60)
    cost = 0.0
    for h in handles:
        trail = await ledger.trail(h.id)
        cost += sum(price.cost(m.input_tokens, m.output_tokens) for m in trail.model_calls)
    assert day.spent_usd == pytest.approx(cost)


# ------------------------------------------------------------------ the activity alone


async def test_the_activity_reserves_the_workflows_estimate_and_charges_it_without_usage(
        ledger: Ledger, catalog: AgentCatalog) -> None:
    """A request carrying its price and estimate (as the workflow sets them) reserves exactly
    that estimate; a server that reports no usage is charged the estimate, not nothing; a
    request over the cap is refused before the model is asked, its message naming the tenant,
    the window, the figures and the reset."""
    tenant = _tenant()
    asked: list[int] = []

    class Counting(ScriptedModel):
        async def complete(self, messages: Sequence[Message],
                           tools: Sequence[ToolSchema]) -> ModelTurn:
            asked.append(1)
            return await super().complete(messages, tools)
    acts = ModelActivities(catalog, ledger, model=Counting([ModelTurn(content="hi")] * 3),
                           quotas={tenant: TenantQuota(usd_per_month=0.05)}, stream=False)
    price = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)

    def request(step: int, usd: float) -> ModelRequest:
        return ModelRequest(ref=RunRef(workflow_id=f"wf-{tenant}", run_id="r1", agent="ops",
                                       tenant=tenant, step=step),
                            messages=[Message(role="user", content="hello")], tools=[],
                            price=price, estimate=Spend(usd=usd, model_calls=1))
    turn = await ActivityEnvironment().run(acts.complete, request(1, 0.03))
    assert turn.content == "hi" and asked == [1]
    (row,) = await ledger.pool.fetch(
        "select usd::float8 as usd, state, settled_usd::float8 as settled"
        " from stead_spend_reservations where tenant=$1", tenant)
    assert (row["usd"], row["state"], row["settled"]) == (0.03, "settled", 0.03)
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(acts.complete, request(2, 0.025))
    assert asked == [1]  # refused before the model was asked
    err = refused.value
    assert (err.type, err.non_retryable) == (errors.TENANT_BUDGET_EXCEEDED, True)
    assert f"tenant {tenant!r} is over its month spending window" in err.message
    assert "$0.0300 spent and $0.0000 reserved" in err.message
    assert "$0.0500 cap" in err.message and "estimated at $0.0250" in err.message
    assert "resets at " in err.message and "-01 00:00 UTC" in err.message


async def test_a_cancelled_call_is_charged_its_estimate_not_released(
        ledger: Ledger, catalog: AgentCatalog) -> None:
    """A call cancelled while the model answers (the run cancelled mid-stream, a worker's
    graceful shutdown) has usually been billed in part: its reservation stays live, as a dead
    attempt's does, and the retry charges it at its estimate beside its own cost."""
    tenant = _tenant()
    asked = asyncio.Event()
    answer = ModelTurn(content="hi", usage=Usage(input_tokens=1000, output_tokens=0))

    class HangsOnce(ScriptedModel):
        async def complete(self, messages: Sequence[Message],
                           tools: Sequence[ToolSchema]) -> ModelTurn:
            if not asked.is_set():
                asked.set()
                await asyncio.Event().wait()
            return await super().complete(messages, tools)
    acts = ModelActivities(catalog, ledger, model=HangsOnce([answer]),
                           quotas={tenant: TenantQuota(usd_per_month=1.0)}, stream=False)
    req = ModelRequest(ref=RunRef(workflow_id=f"wf-{tenant}", run_id="r1", agent="ops",
                                  tenant=tenant, step=1),
                       messages=[Message(role="user", content="hello")], tools=[],
                       price=Price(input_usd_per_mtok=10.0, output_usd_per_mtok=10.0),
                       estimate=Spend(usd=0.04, model_calls=1))
    task = asyncio.create_task(ActivityEnvironment().run(acts.complete, req))
    await asyncio.wait_for(asked.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (row,) = await ledger.pool.fetch(
        "select state, attempt from stead_spend_reservations where tenant=$1", tenant)
    assert (row["state"], row["attempt"]) == ("reserved", 1)  # not released
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    await retry.run(acts.complete, req)
    assert await _window(ledger, tenant, "month") == (pytest.approx(0.04 + 0.01), 0.0)


async def test_local_model_calls_whose_attempts_restart_are_each_counted(
        ledger: Ledger, catalog: AgentCatalog) -> None:
    """A local activity's attempts restart at 1 when its workflow task runs again on another
    worker after a crash: each execution is known to its reservation by a nonce of its own, so
    a dead one that reserved is charged its estimate by the re-run, and a re-run after a
    settled one has its own settle counted too."""
    tenant = _tenant()
    answer = ModelTurn(content="hi", usage=Usage(input_tokens=1000, output_tokens=0))
    acts = ModelActivities(catalog, ledger, model=ScriptedModel([answer] * 3),
                           quotas={tenant: TenantQuota(usd_per_month=1.0)}, stream=False)
    price = Price(input_usd_per_mtok=10.0, output_usd_per_mtok=10.0)
    req = ModelRequest(ref=RunRef(workflow_id=f"wf-{tenant}", run_id="r1", agent="ops",
                                  tenant=tenant, step=1),
                       messages=[Message(role="user", content="hello")], tools=[],
                       price=price, estimate=Spend(usd=0.05, model_calls=1))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, is_local=True, attempt=1)
    # A dead execution's attempt 1 reserved and never came back.
    dead = await ledger.reserve_spend(tenant, SpendKey.of(req.ref), usd=0.05,
                                      caps={"month": 1.0}, ttl_seconds=TTL, attempt=1)
    assert dead.outcome == "reserved"
    await env.run(acts.complete, req)  # the re-run, attempt 1 again
    await env.run(acts.complete, req)  # and again after that one settled
    assert await _window(ledger, tenant, "month") == (pytest.approx(0.05 + 0.01 + 0.01), 0.0)


async def test_a_worker_killed_mid_call_is_charged_its_estimate_and_its_retry_its_cost(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, ledger: Ledger,
        tmp_path: Path) -> None:
    """SIGKILL the worker while its model call (reserved) waits for the model: the reservation
    stays live (nobody released it); the retry on another worker charges the killed attempt at
    its estimate (it may have been billed), reserves its own and settles it once at what the
    answered call cost: the window holds both, nothing counted twice."""
    monkeypatch.setenv(KEY_VAR, KEY)
    tenant = _tenant()
    quotas = json.dumps({tenant: {"usd_per_day": 1.0}})
    s = settings.replace(tenant_quotas={tenant: {"usd_per_day": 1.0}},
                         model_timeout_seconds=4.0)
    answer = [ModelTurn(content="done", usage=Usage(input_tokens=1000, output_tokens=20))]
    async with FakeOpenAIServer.from_model(ScriptedModel(answer * 2), api_key=KEY) as srv:
        srv.inject(Fault("timeout", delay=30))  # the first call hangs past its 4 s
        env = worker_env(s, tmp_path / "data", STEAD_TENANT_QUOTAS=quotas,
                         STEAD_MODEL_TIMEOUT_SECONDS="4", SPEND_BASE_URL=srv.base_url,
                         **{KEY_VAR: KEY})
        proc = WorkerProcess(SPEND_WORKER_SCRIPT, env, tmp_path / "worker.log").start()
        try:
            client = await connect(s)
            handle = await start_run(client, RunRequest(agent="spender", input="hi",
                                                        tenant=tenant), temporal=s.temporal)
            for _ in range(300):
                held = await ledger.pool.fetch(
                    "select state, attempt from stead_spend_reservations where workflow_id=$1",
                    handle.id)
                if held and srv.pending_faults() == 0:  # reserved, and the model asked
                    break
                await asyncio.sleep(0.1)
            assert [(r["state"], r["attempt"]) for r in held] == [("reserved", 1)], \
                proc.output()
            proc.kill()
        finally:
            proc.stop()
        async with WorkerHost(s, AgentCatalog([spender_agent(srv.base_url)])):
            r = await asyncio.wait_for(handle.result(), timeout=90)
    assert (r.status, r.answer) == ("completed", "done")
    rows = await ledger.pool.fetch(
        "select step, state, attempt, settled_attempts, settled_usd::float8 as usd,"
        " abandoned_attempts, charged_usd::float8 as charged, usd::float8 as estimate"
        " from stead_spend_reservations where workflow_id=$1", handle.id)
    cost = Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60).cost(1000, 20)
    assert [(x["state"], x["attempt"], x["settled_attempts"], x["abandoned_attempts"])
            for x in rows] == [("settled", 2, [2], [1])]
    assert rows[0]["usd"] == pytest.approx(cost)
    assert rows[0]["charged"] == pytest.approx(rows[0]["estimate"]) and rows[0]["charged"] > 0
    (day,) = [w for w in await ledger.spend_usage(s.tenants.quotas, tenant=tenant)
              if w.window == "day"]
    assert (day.spent_usd, day.reserved_usd) == (pytest.approx(cost + rows[0]["charged"]), 0.0)


async def test_a_worker_whose_reservations_could_expire_mid_call_does_not_start(
        settings: Settings, catalog: AgentCatalog) -> None:
    """A reservation TTL not above the longest model call (the worker's model timeout, or a
    chain model's own) is refused at start, naming the variable, the call and the fix; with no
    spending windows configured the TTL does not matter."""
    windows = {"*": {"usd_per_day": 5.0}}
    short = settings.replace(tenant_quotas=windows, quota_reservation_ttl_seconds=30.0)
    with pytest.raises(SettingsError) as bad:
        async with WorkerHost(short, catalog):
            pass
    assert "STEAD_QUOTA_RESERVATION_TTL_SECONDS=30 is not above the longest model call " \
           "(60 s, STEAD_MODEL_TIMEOUT_SECONDS)" in str(bad.value)
    slow = ModelEndpoint.model_validate({"model": "gpt-4o-mini", "name": "slow",
                                         "timeout_seconds": 1200})
    with pytest.raises(SettingsError, match="1200 s, timeout_seconds of the model 'slow'"):
        check_reservation_ttl(settings.replace(tenant_quotas=windows), [slow])
    check_reservation_ttl(settings.replace(quota_reservation_ttl_seconds=30.0), [slow])
    check_reservation_ttl(settings.replace(tenant_quotas={"*": {"runs_in_flight": 3}},
                                           quota_reservation_ttl_seconds=30.0), [slow])
