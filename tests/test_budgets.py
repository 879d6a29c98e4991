"""Run budgets in real runs: money, tokens and model calls held before each model call, on the
dev server, with the real ``openai`` SDK against ``FakeOpenAIServer`` (which counts every
request it gets) and the audit trail read back from the ledger.

What these pin: a run stops before the call that would pass a limit (and the server never
sees that call), a request narrows a budget but cannot raise it, ``ask`` waits for a person
(``raise_budget``) or times out, ``cheaper_model`` steps down to the named chain model,
spending is counted once from history (activity retries and a worker restart included), a
sub-agent's and a conversation's spending count where they should, every decision is an
audit row, and a budget that cannot work stops the worker at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from stead import errors
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.graph import DEFAULT, Graph
from stead.authoring.tools import Tool, ToolContext, tool
from stead.client import start_run
from stead.contracts.budget import Budget, BudgetRules, Price, RaiseBudget, Spend
from stead.contracts.models import (
    ModelEndpoint,
    ModelTurn,
    RunRequest,
    RunResult,
    RunState,
    StoredDecision,
    Usage,
)
from stead.contracts.policy import Policy, RouteRule
from stead.conversation import ConversationStart, ConversationState, start_conversation
from stead.errors import SpecError
from stead.evals.replay import production_replayer
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.testing.openai_server import FakeOpenAIServer, Fault
from stead.worker import WorkerHost
from stead.workflows._context import Context
from tests._fake_seam import FakeSeam
from tests._fake_seam import context as fake_context

KEY_VAR = "STEAD_TEST_BUDGET_KEY"
KEY = "sk-budget-test-0123456789abcdef"
USAGE = Usage(input_tokens=400, output_tokens=200)
"""What the fake server reports for every answer."""
OUT_LIMIT = 2000
"""The endpoint's output limit: the estimate assumes a full-length answer."""
PRICE = Price(input_usd_per_mtok=0.0, output_usd_per_mtok=100.0)
"""An answer costs 200 x $100/Mtok = $0.02; an estimate 2000 x $100/Mtok = $0.20."""


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


def echo_tool() -> Tool[Echo, Echo]:
    @tool(name="echo")
    async def echo(args: Echo, ctx: ToolContext) -> Echo:
        """Repeat the text."""
        return Echo(text=args.text)
    return echo


ECHO = echo_tool()
"""One tool object for every agent of a catalog (tool names are unique per worker)."""

SCRIPT = [ModelTurn(tool_calls=[call("echo", call_id="call_echo", text="hello")], usage=USAGE),
          ModelTurn(content="the tool said hello", usage=USAGE)]
"""Two model calls: one proposes the echo, one answers."""


@pytest.fixture(autouse=True)
def model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)


def endpoint(server: FakeOpenAIServer, model: str = "gpt-4o-mini", *,
             price: Price | None = PRICE, **kw: Any) -> ModelEndpoint:
    return ModelEndpoint.model_validate({
        "model": model, "base_url": server.base_url, "api_key_env": KEY_VAR,
        "max_output_tokens": OUT_LIMIT, "max_attempts": 2,
        **({"price": price.model_dump()} if price is not None else {}), **kw})


@asynccontextmanager
async def fakes(n: int = 1, script: Sequence[ModelTurn] = SCRIPT
                ) -> AsyncIterator[list[FakeOpenAIServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeOpenAIServer.from_model(
            ScriptedModel(list(script)), api_key=KEY)) for _ in range(n)]


def budget_agent(models: Sequence[ModelEndpoint], rules: BudgetRules | None, *,
                 name: str = "budget", graph: Graph | None = None,
                 routing: Sequence[RouteRule] = ()) -> Agent:
    return Agent(name=name, instructions="Use the echo tool, then answer.",
                 tools=[ECHO], models=list(models),
                 policy=Policy(id=f"{name}-policy", version=1, budget=rules,
                               routing=list(routing)),
                 offline_model=ScriptedModel([ModelTurn(content="offline model used")]),
                 graph=graph if graph is not None else DEFAULT)


async def start(host: WorkerHost, settings: Settings, *, agent: str = "budget",
                budget: Budget | None = None) -> WorkflowHandle[Any, RunResult]:
    assert host.client is not None
    return await start_run(host.client, RunRequest(agent=agent, input="say hello",
                                                   budget=budget),
                           temporal=settings.temporal)


async def result(handle: WorkflowHandle[Any, RunResult]) -> RunResult:
    return await asyncio.wait_for(handle.result(), timeout=60)


def amounts(s: Spend) -> tuple[float, int, int, int]:
    """A spend, its dollars rounded past float noise."""
    return round(s.usd, 9), s.input_tokens, s.output_tokens, s.model_calls


async def budget_rows(ledger: Ledger, wid: str) -> list[StoredDecision]:
    trail = await ledger.trail(wid)
    return [d for d in trail.decisions if d.kind == "budget"]


async def waiting(handle: WorkflowHandle[Any, RunResult]) -> RunState:
    for _ in range(300):
        state: RunState = await handle.query("state", result_type=RunState)
        if state.budget is not None and state.budget.waiting:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError("the run never waited for a budget")


# ---------------------------------------------------------------------------- stop


@pytest.mark.parametrize("rules", [BudgetRules(max_usd=0.21), BudgetRules(max_tokens=2500),
                                   BudgetRules(max_model_calls=1)],
                         ids=["max_usd", "max_tokens", "max_model_calls"])
async def test_a_run_stops_before_the_call_that_would_pass_its_budget(
        settings: Settings, ledger: Ledger, rules: BudgetRules) -> None:
    """The first call fits (estimated $0.20, ~2,100 tokens, one call); the second, on top of
    the first's settled $0.02 / 600 tokens / one call, would not: the run ends
    ``budget_exceeded`` before it, saying which limit, what was spent and the limit, and
    the model server saw one request only."""
    (limit,) = [k for k, v in rules.model_dump(include={"max_usd", "max_tokens",
                                                        "max_model_calls"}).items() if v]
    async with fakes() as (srv,):
        agent = budget_agent([endpoint(srv)], rules)
        async with WorkerHost(settings, AgentCatalog([agent])) as host:
            h = await start(host, settings)
            r = await result(h)
    assert len(srv.requests) == 1
    assert r.status == "budget_exceeded" and r.model_turns == 1
    assert amounts(r.spend) == (0.02, 400, 200, 1)
    assert r.error is not None and f"{limit}:" in r.error and "limit" in r.error
    assert r.answer is not None and r.answer.startswith("Stopped before the next model call")
    (row,) = await budget_rows(ledger, h.id)
    assert (row.decision, row.data["over"], row.data["model"]) == \
        ("stopped", [limit], "openai:gpt-4o-mini")


async def test_a_request_narrows_the_budget_and_cannot_raise_it(settings: Settings) -> None:
    async with fakes() as (srv,):
        async with WorkerHost(settings, AgentCatalog([budget_agent(
                [endpoint(srv)], BudgetRules(max_model_calls=1))])) as host:
            raised = await result(await start(host, settings,
                                              budget=Budget(max_model_calls=50)))
        async with WorkerHost(settings, AgentCatalog([budget_agent(
                [endpoint(srv)], BudgetRules(max_model_calls=50))])) as host:
            narrowed = await result(await start(host, settings,
                                                budget=Budget(max_model_calls=1)))
            free = await result(await start(host, settings))
    assert raised.status == narrowed.status == "budget_exceeded"
    assert raised.spend.model_calls == narrowed.spend.model_calls == 1
    assert free.status == "completed" and free.spend.model_calls == 2
    assert len(srv.requests) == 4


async def test_prices_come_from_the_settings_table_and_are_pinned_at_run_start(
        settings: Settings) -> None:
    """A chain model without a price is charged at ``STEAD_MODEL_PRICES``' price for it."""
    priced = settings.replace(model_prices={"gpt-4o-mini": {"input": 1000.0, "output": 0.0}})
    async with fakes() as (srv,):
        async with WorkerHost(priced, AgentCatalog([budget_agent(
                [endpoint(srv, price=None)], None)])) as host:
            r = await result(await start(host, priced))
    assert r.status == "completed"
    assert r.spend.usd == pytest.approx(2 * 400 * 1000.0 / 1e6)


BIG_MODEL = RouteRule(name="big-model", action="model", model="openai:gpt-4o")
"""Runs every request on ``openai:gpt-4o``, served by the worker's configured OpenAI server
(named by routing), not by the agent's chain."""


async def test_a_model_chosen_by_routing_is_charged_at_its_pinned_price(
        settings: Settings, ledger: Ledger) -> None:
    """Routing runs the request on ``openai:gpt-4o``: its calls are charged at
    ``STEAD_MODEL_PRICES``' price for it, pinned at run start, so ``max_usd`` holds on a
    routed run too. An answer costs 200 x $100/Mtok = $0.02, an estimate (4,096 output
    tokens, the default limit) $0.41: max_usd $0.42 lets the first call through and
    stops the second, which the server never sees."""
    async with fakes() as (srv,):
        routed = settings.replace(
            openai_api_key=KEY, openai_base_url=srv.base_url,
            model_prices={"gpt-4o": {"input": 0.0, "output": 100.0}})
        agent = budget_agent([endpoint(srv)], BudgetRules(max_usd=0.42), routing=[BIG_MODEL])
        async with WorkerHost(routed, AgentCatalog([agent])) as host:
            h = await start(host, routed)
            r = await result(h)
            history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert [q["model"] for q in srv.requests] == ["gpt-4o"]
    assert r.route == "model:big-model" and r.models == ["openai:gpt-4o"]
    assert r.status == "budget_exceeded" and amounts(r.spend) == (0.02, 400, 200, 1)
    (row,) = await budget_rows(ledger, h.id)
    assert (row.decision, row.data["over"], row.data["model"]) == \
        ("stopped", ["max_usd"], "openai:gpt-4o")


def test_a_routed_model_without_a_price_stops_the_worker_at_start() -> None:
    """Like an unpriced chain model: with max_usd set, a model the routing may choose must
    have a price, or its calls would spend nothing against the limit."""
    from stead.integrations.model_prices import check_budgets
    from stead.settings import ModelPrice
    ep = ModelEndpoint(model="gpt-4o-mini", name="small", price=PRICE)
    agent = budget_agent([ep], BudgetRules(max_usd=1.0), routing=[BIG_MODEL])
    with pytest.raises(SpecError, match=r"agent 'budget'.*max_usd: the routing's model "
                                        r"openai:gpt-4o has no price"):
        check_budgets(AgentCatalog([agent]), {"budget": [ep]}, prices={}, single_model=None)
    check_budgets(AgentCatalog([agent]), {"budget": [ep]},
                  prices={"gpt-4o": ModelPrice(input=2.5, output=10.0)}, single_model=None)


# ---------------------------------------------------------------------------- ask


async def test_ask_waits_for_raise_budget_and_the_audit_names_who_raised_it(
        settings: Settings, ledger: Ledger) -> None:
    rules = BudgetRules(max_model_calls=1, on_exceed="ask", ask_timeout_seconds=60)
    async with fakes() as (srv,):
        async with WorkerHost(settings, AgentCatalog([budget_agent([endpoint(srv)],
                                                                   rules)])) as host:
            h = await start(host, settings)
            state = await waiting(h)
            assert state.node == "budget" and state.budget is not None
            assert state.budget.over == ["max_model_calls"]
            assert state.budget.deadline is not None and len(srv.requests) == 1
            for bad in (RaiseBudget(max_model_calls=1, by="ana", reason="same"),
                        RaiseBudget(max_usd=5.0, by="ana", reason="no usd limit to raise")):
                with pytest.raises(WorkflowUpdateFailedError):
                    await h.execute_update("raise_budget", bad, result_type=Budget)
            new = await h.execute_update(
                "raise_budget", RaiseBudget(max_model_calls=3, by="ana.lopez",
                                            reason="the incident needs one more look"),
                result_type=Budget)
            r = await result(h)
            history = await h.fetch_history()
    await production_replayer().replay_workflow(history)  # the wait and the raise replay
    assert new == Budget(max_model_calls=3)
    assert (r.status, r.answer, r.spend.model_calls) == ("completed", "the tool said hello", 2)
    rows = await budget_rows(ledger, h.id)
    assert [(d.decision, d.actor) for d in rows] == [("asked", "stead"),
                                                     ("raised", "ana.lopez")]
    assert rows[1].reason == "the incident needs one more look"
    assert rows[1].data["to"] == {"max_model_calls": 3}


async def test_ask_times_out_and_the_run_ends_budget_exceeded(
        settings: Settings, ledger: Ledger) -> None:
    rules = BudgetRules(max_model_calls=1, on_exceed="ask", ask_timeout_seconds=0.5)
    async with fakes() as (srv,):
        async with WorkerHost(settings, AgentCatalog([budget_agent([endpoint(srv)],
                                                                   rules)])) as host:
            h = await start(host, settings)
            r = await result(h)
    assert r.status == "budget_exceeded" and "nobody raised it" in (r.error or "")
    assert len(srv.requests) == 1
    assert [d.decision for d in await budget_rows(ledger, h.id)] == ["asked", "timed_out"]


# ---------------------------------------------------------------------------- cheaper model


async def test_cheaper_model_goes_on_with_the_named_chain_model(
        settings: Settings, ledger: Ledger) -> None:
    """The first model's estimate ($2.00) passes max_usd $1; the cheaper one's ($0.02)
    fits: every call goes to the cheaper model's server, the first model's sees none."""
    dear = Price(input_usd_per_mtok=0.0, output_usd_per_mtok=1000.0)
    cheap = Price(input_usd_per_mtok=0.0, output_usd_per_mtok=10.0)
    rules = BudgetRules(max_usd=1.0, on_exceed="cheaper_model", cheaper_model="small")
    async with fakes(2) as (big, small):
        agent = budget_agent([endpoint(big, "gpt-4o", price=dear, name="big"),
                              endpoint(small, "gpt-4o-mini", price=cheap, name="small")],
                             rules)
        async with WorkerHost(settings, AgentCatalog([agent])) as host:
            h = await start(host, settings)
            r = await result(h)
            history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert (r.status, r.models, r.model) == ("completed", ["small"], "small")
    assert big.requests == [] and len(small.requests) == 2
    assert r.spend.usd == pytest.approx(2 * 200 * 10.0 / 1e6)
    (row,) = await budget_rows(ledger, h.id)
    assert (row.decision, row.data["to"]) == ("stepped_down", "small")


def test_a_budget_that_cannot_work_stops_the_worker_at_start(settings: Settings) -> None:
    from stead.integrations.model_prices import check_budgets
    ep = ModelEndpoint(model="gpt-4o-mini", name="small")
    wrong = budget_agent([ep], BudgetRules(on_exceed="cheaper_model", cheaper_model="tiny"),
                         name="wrong")
    unpriced = budget_agent([ep], BudgetRules(max_usd=1.0), name="unpriced")
    with pytest.raises(SpecError) as info:
        check_budgets(AgentCatalog([wrong, unpriced]), {"wrong": [ep], "unpriced": [ep]},
                      prices={}, single_model=None)
    text = str(info.value)
    assert "agent 'wrong'" in text and "cheaper_model: 'tiny' is not a model of the agent's " \
        "chain (small)" in text
    assert "agent 'unpriced'" in text and "max_usd: the chain's small has no price" in text
    # Priced by the settings' table: fine.
    check_budgets(AgentCatalog([unpriced]), {"unpriced": [ep]},
                  prices=settings.models.prices, single_model=None)


async def test_a_worker_with_a_budget_that_cannot_work_does_not_start(
        settings: Settings) -> None:
    async with fakes() as (srv,):
        agent = budget_agent([endpoint(srv, price=None, name="x")], BudgetRules(max_usd=1.0))
        with pytest.raises(SpecError, match=r"agent 'budget'.*max_usd"):
            async with WorkerHost(settings.replace(model_prices={}), AgentCatalog([agent])):
                pass


# ---------------------------------------------------------------------------- spending holds


async def test_spend_survives_retries_and_a_worker_restart_without_double_counting(
        settings: Settings, ledger: Ledger) -> None:
    """The first call fails once (5xx; the activity's retry answers), the run then waits for
    a budget raise; the worker stops and a new one takes over: the result's spend is the
    usage the server reported for each answered call, once each."""
    rules = BudgetRules(max_model_calls=1, on_exceed="ask", ask_timeout_seconds=60)
    async with fakes() as (srv,):
        srv.inject(Fault("server_error", status=503))
        catalog = AgentCatalog([budget_agent([endpoint(srv)], rules)])
        async with WorkerHost(settings, catalog) as first:
            h = await start(first, settings)
            await waiting(h)
        async with WorkerHost(settings, catalog) as second:
            assert second.client is not None
            h2 = second.client.get_workflow_handle(h.id, result_type=RunResult)
            await h2.execute_update("raise_budget", RaiseBudget(
                max_model_calls=5, by="ops-lead", reason="after the restart"),
                result_type=Budget)
            r = await result(h2)
            history = await h2.fetch_history()
    await production_replayer().replay_workflow(history)
    assert len(srv.requests) == 3  # the 503, its retry, the answer after the raise
    assert r.status == "completed"
    assert amounts(r.spend) == (0.04, 800, 400, 2)


def _child_graph() -> Graph:
    g = (Graph("budget-parent", version=1).route("route")
         .subagent("delegate", "budget")
         .finish("done"))
    g.edge("route", "delegate").edge("delegate", "done")
    return g


PARENT_GRAPH = _child_graph()


async def test_a_sub_agents_spend_counts_in_its_parents(settings: Settings) -> None:
    """The parent delegates to the echo agent (two calls): the parent's spend is the
    child's; with a parent budget of one call the child gets that and stops after it."""
    async with fakes() as (srv,):
        child = budget_agent([endpoint(srv)], None)
        parent = budget_agent([endpoint(srv)], BudgetRules(max_model_calls=10), name="parent",
                              graph=PARENT_GRAPH)
        tight = budget_agent([endpoint(srv)], BudgetRules(max_model_calls=1), name="tight",
                             graph=PARENT_GRAPH)
        async with WorkerHost(settings, AgentCatalog([child, parent, tight])) as host:
            r = await result(await start(host, settings, agent="parent"))
            t = await result(await start(host, settings, agent="tight"))
    assert r.status == "completed"
    assert amounts(r.spend) == (0.04, 800, 400, 2)
    assert t.spend.model_calls == 1


def _explode(_: Any) -> bool:
    raise ApplicationError("the sub-agent's own check blew up", type="CheckFailed",
                           non_retryable=True)


def _failing_graph() -> Graph:
    """One model call, then an edge condition that fails the run (an ApplicationError in
    workflow code: the run fails, its parent sees a ChildWorkflowError)."""
    from stead.authoring.graph import Condition
    g = Graph("budget-failing", version=1).route("route").model("think").finish("done")
    g.edge("route", "think").edge("think", "done", when=Condition("explodes", _explode))
    g.edge("think", "done")
    return g


def _failing_parent_graph() -> Graph:
    g = (Graph("budget-failing-parent", version=1).route("route")
         .subagent("delegate", "failing").finish("done"))
    g.edge("route", "delegate").edge("delegate", "done")
    return g


async def test_a_sub_agent_that_fails_still_counts_what_it_spent_in_its_parent(
        settings: Settings) -> None:
    """The sub-agent makes one model call ($0.02, 600 tokens) and then fails (its workflow
    raises): its failure carries its spending in the error's details, and the parent's
    ``RunResult.spend`` includes it. The parent's history replays."""
    from temporalio.client import WorkflowFailureError
    async with fakes() as (srv,):
        failing = budget_agent([endpoint(srv)], None, name="failing", graph=_failing_graph())
        parent = budget_agent([endpoint(srv)], BudgetRules(max_model_calls=10),
                              name="parent", graph=_failing_parent_graph())
        async with WorkerHost(settings, AgentCatalog([failing, parent])) as host:
            assert host.client is not None
            h = await start(host, settings, agent="parent")
            r = await result(h)
            history = await h.fetch_history()
            child = host.client.get_workflow_handle(f"{h.id}/delegate-1")
            with pytest.raises(WorkflowFailureError) as failed:
                await child.result()
    await production_replayer().replay_workflow(history)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CheckFailed"
    assert len(srv.requests) == 1
    assert r.status == "completed"  # the parent goes on past a failed sub-agent
    assert amounts(r.spend) == (0.02, 400, 200, 1)


@pytest.mark.parametrize("patched", [True, False], ids=["new run", "recorded before"])
async def test_a_failed_sub_agents_spend_is_counted_only_behind_its_patch(
        patched: bool) -> None:
    """Workflow parts on the fake seam: the child fails with the spending in its error's
    details; a parent that takes the patch counts it, a parent replaying a history recorded
    before the patch (``patched`` False) does not, so its later decisions stay the same."""
    from stead.workflows._budget import CHILD_FAILURE_SPEND_PATCH, SPEND_DETAIL

    spent = Spend(usd=0.5, input_tokens=10, output_tokens=20, model_calls=1)
    failed = ApplicationError("blew up", {SPEND_DETAIL: spent.model_dump()}, type="CheckFailed",
                              non_retryable=True)
    seam = FakeSeam(handlers={"child": lambda req: _child_error(failed)},
                    patches=[CHILD_FAILURE_SPEND_PATCH] if patched else [])
    r, _ = await _parent_on(seam)
    assert CHILD_FAILURE_SPEND_PATCH in seam.asked_patches
    assert r.spend == (spent if patched else Spend())


def _child_error(cause: BaseException) -> BaseException:
    """What a parent's workflow sees of a sub-agent that ended with ``cause``."""
    from temporalio.exceptions import ChildWorkflowError

    err = ChildWorkflowError("child ended", namespace="default", workflow_id="wf-1/c",
                             run_id="r", workflow_type="AgentWorkflow", initiated_event_id=1,
                             started_event_id=2, retry_state=None)
    err.__cause__ = cause
    return err


async def _parent_on(seam: FakeSeam) -> tuple[RunResult, Context]:
    """The parent graph (a sub-agent node) run on ``seam``; its result and context."""
    from stead.workflows._approvals import ApprovalBook
    from stead.workflows._context import ALLOW_ALL, Frame
    from stead.workflows._decisions import DecisionLog
    from stead.workflows._graph import GraphRun

    ctx = fake_context(seam)
    ctx.policy = ALLOW_ALL
    decisions = DecisionLog(ctx)
    plan = budget_agent([], None, graph=PARENT_GRAPH).plan(model="fake")
    frame = Frame.start(ctx, RunRequest(agent="budget", input="hi", tenant="t"), plan)
    return await GraphRun(ctx, frame, decisions, ApprovalBook(ctx, decisions)).run(), ctx


def _lost_parent_graph() -> Graph:
    g = (Graph("budget-lost-parent", version=1).route("route")
         .subagent("delegate", "stuck").finish("done"))
    g.edge("route", "delegate").edge("delegate", "done")
    return g


async def test_a_terminated_sub_agents_spend_is_read_from_the_ledger_by_its_parent(
        settings: Settings, ledger: Ledger) -> None:
    """The sub-agent's first model call is answered ($0.02, 600 tokens), then its tool
    hangs and an operator terminates it: no result, no failure details. The parent reads
    what the sub-agent's model calls cost from the ledger, counts it (an audit row says so)
    and goes on; its history replays."""
    release = asyncio.Event()
    started = asyncio.Event()

    @tool(name="hang")
    async def hang(args: Echo, ctx: ToolContext) -> Echo:
        """Wait until released."""
        started.set()
        await release.wait()
        return args

    script = [ModelTurn(tool_calls=[call("hang", call_id="call_hang", text="x")], usage=USAGE),
              ModelTurn(content="never reached", usage=USAGE)]
    async with fakes(script=script) as (srv,):
        stuck = Agent(name="stuck", instructions="Call hang.", tools=[hang],
                      models=[endpoint(srv)], policy=Policy(id="stuck-policy", version=1),
                      offline_model=ScriptedModel([ModelTurn(content="offline")]))
        parent = budget_agent([endpoint(srv)], BudgetRules(max_usd=1.0), name="parent",
                              graph=_lost_parent_graph())
        async with WorkerHost(settings, AgentCatalog([stuck, parent])) as host:
            assert host.client is not None
            h = await start(host, settings, agent="parent")
            await asyncio.wait_for(started.wait(), 30)
            await host.client.get_workflow_handle(f"{h.id}/delegate-1").terminate("stuck")
            r = await result(h)
            release.set()
            history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert len(srv.requests) == 1
    assert r.status == "completed"  # the parent goes on past a lost sub-agent
    assert amounts(r.spend) == (0.02, 400, 200, 1)
    (counted,) = [d for d in await budget_rows(ledger, h.id)
                  if d.decision == "subagent_counted"]
    assert counted.data["ended"] == "terminated"
    assert counted.data["subagent"] == f"{h.id}/delegate-1"
    child = await ledger.trail(f"{h.id}/delegate-1")
    assert [round(c.cost_usd or 0, 9) for c in child.model_calls] == [0.02]


@pytest.mark.parametrize("patched", [True, False], ids=["new run", "recorded before"])
async def test_a_lost_sub_agents_spend_is_read_only_behind_its_patch(patched: bool) -> None:
    """On the fake seam: a sub-agent that was terminated (or timed out) is looked up in the
    ledger by a parent that takes the patch; one replaying an older history asks nothing."""
    from temporalio.exceptions import TerminatedError

    from stead.workflows._budget import CHILD_LOST_SPEND_PATCH

    spent = Spend(usd=0.25, input_tokens=10, output_tokens=20, model_calls=2)
    asked: list[str] = []
    seam = FakeSeam(handlers={
        "child": lambda req: _child_error(TerminatedError("terminated by an operator")),
        "run.subagent_spend": lambda q: asked.append(q.workflow_id) or spent},
        patches=[CHILD_LOST_SPEND_PATCH] if patched else [])
    r, ctx = await _parent_on(seam)
    assert CHILD_LOST_SPEND_PATCH in seam.asked_patches
    assert r.spend == (spent if patched else Spend())
    assert asked == ([f"{ctx.ref.workflow_id}/delegate-1"] if patched else [])


async def test_a_conversation_turn_that_fails_still_counts_what_it_spent(
        settings: Settings) -> None:
    """A turn of the failing agent makes one model call and fails: the conversation's
    spending (its state, the turn's outcome) includes that call."""
    from stead.conversation import say
    async with fakes() as (srv,):
        failing = budget_agent([endpoint(srv)], None, name="failing", graph=_failing_graph())
        async with WorkerHost(settings, AgentCatalog([failing])) as host:
            assert host.client is not None
            h = await start_conversation(
                host.client, ConversationStart(agent="failing", budget=Budget(max_model_calls=5)),
                temporal=settings.temporal)
            one = await asyncio.wait_for(say(h, "say hello"), timeout=60)
            state = await h.query("state", result_type=ConversationState)
            history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert one.status == "error" and "blew up" in (one.error or "")
    assert amounts(one.spend) == (0.02, 400, 200, 1)
    assert amounts(state.spent) == (0.02, 400, 200, 1)


async def test_a_conversation_keeps_its_spend_across_turns_and_continue_as_new(
        settings: Settings) -> None:
    """Per conversation: with a conversation budget of two calls, turn one spends both and
    turn two is stopped before its first; the spend carries over continue-as-new."""
    from stead.conversation import say
    async with fakes() as (srv,):
        async with WorkerHost(settings, AgentCatalog([budget_agent([endpoint(srv)],
                                                                   None)])) as host:
            assert host.client is not None
            h = await start_conversation(
                host.client, ConversationStart(agent="budget", max_history_events=20,
                                               budget=Budget(max_model_calls=2)),
                temporal=settings.temporal)
            one = await asyncio.wait_for(say(h, "say hello"), timeout=60)
            two = await asyncio.wait_for(say(h, "say hello again"), timeout=60)
            state = await h.query("state", result_type=ConversationState)
    assert (one.status, one.spend.model_calls) == ("completed", 2)
    assert (two.status, two.spend.model_calls) == ("budget_exceeded", 0)
    assert "max_model_calls: 2 made + 1 > limit 2" in (two.error or "")
    assert state.spent.model_calls == 2 and state.continued_as_new >= 1
    assert len(srv.requests) == 2


# ---------------------------------------------------------------------------- tenant windows


async def test_a_tenant_window_refusal_ends_the_run_budget_exceeded_without_fallback() -> None:
    """The model activity refusing a call over the tenant's window (non-retryable
    ``TenantBudgetExceeded``) ends the run ``budget_exceeded`` with its message: the next
    model of the chain is not asked and the run is not ``failed``. (Workflow parts on the
    fake seam: the raiser lives in the model activity, which another branch adds.)"""
    from stead.workflows._approvals import ApprovalBook
    from stead.workflows._context import ALLOW_ALL, Frame
    from stead.workflows._decisions import DecisionLog
    from stead.workflows._graph import GraphRun
    from tests._fake_seam import FakeSeam, activity_failure, context
    asked: list[str] = []

    def refuse(req: Any) -> BaseException:
        asked.append(req.endpoint.name if req.endpoint else "")
        return activity_failure("tenant t is over its daily window ($10.00 of $10.00)",
                                type=errors.TENANT_BUDGET_EXCEEDED,
                                activity_type="model.complete")

    seam = FakeSeam(handlers={"model.complete": refuse})
    ctx = context(seam)
    plan = budget_agent([], None).plan(model="fake", models=[
        ModelEndpoint(model="m1", name="first"), ModelEndpoint(model="m2", name="second")])
    ctx.policy = ALLOW_ALL
    decisions = DecisionLog(ctx)
    frame = Frame.start(ctx, RunRequest(agent="budget", input="hi", tenant="t"), plan)
    r = await GraphRun(ctx, frame, decisions, ApprovalBook(ctx, decisions)).run()
    assert r.status == "budget_exceeded" and asked == ["first"]
    assert "daily window" in (r.error or "")


async def test_stead_raise_budget_raises_a_waiting_run_and_stead_run_caps_one(
        settings: Settings, ledger: Ledger) -> None:
    from tests._cli import cli_env, stead
    rules = BudgetRules(max_model_calls=1, on_exceed="ask", ask_timeout_seconds=60)
    env = cli_env(settings)
    async with fakes() as (srv,):
        catalog = AgentCatalog([budget_agent([endpoint(srv)], rules),
                                budget_agent([endpoint(srv)], None, name="capped")])
        async with WorkerHost(settings, catalog) as host:
            h = await start(host, settings)
            await waiting(h)
            lower = await stead("raise-budget", h.id, "--max-model-calls", "1", "--as", "bo",
                                "--reason", "try", env=env)
            bad = await stead("raise-budget", h.id, "--as", "bo", "--reason", "", env=env)
            ok = await stead("raise-budget", h.id, "--max-model-calls", "4", "--as", "bo",
                             "--reason", "one more look", "--json", env=env)
            r = await result(h)
            capped = await stead("run", "capped", "say hello", "--max-usd", "0.000001",
                                 "--json", env=env)
    assert capped.code == 1 and capped.json()["status"] == "budget_exceeded"
    assert lower.code == 1 and "raise refused" in lower.err + lower.out
    assert "only raises" in lower.err + lower.out
    assert bad.code == 2
    assert ok.code == 0 and ok.json() == {"max_model_calls": 4}
    assert r.status == "completed"
    raised = [d for d in await budget_rows(ledger, h.id) if d.decision == "raised"]
    assert [(d.actor, d.data["via"]) for d in raised] == [("bo", "update")]


async def test_an_approver_raises_a_waiting_runs_budget_over_http(
        settings: Settings, ledger: Ledger) -> None:
    """``POST /v1/runs/{id}/budget`` on a run waiting under ``on_exceed: ask``: another
    tenant's token gets 404 and a requester's 403 (the run still waits); a raise that does not
    raise is a 409 in the run's words, a body naming no limit a 422; the approver's raise
    answers the new limit, the run goes on, and the audit row names the token's subject.
    Once the run has ended, a raise is a 409."""
    import httpx
    from pydantic import SecretStr

    from stead.api import create_app, issue_token
    secret = "budget-api-secret-" + "x" * 32
    api_settings = settings.replace(api_secret=SecretStr(secret))
    tenant = "t-budget-api"

    def auth(role: Any, *, sub: str = "lena", of: str = tenant) -> dict[str, str]:
        token = issue_token(secret, sub=sub, tenant=of, roles=(role,))
        return {"Authorization": f"Bearer {token}"}

    rules = BudgetRules(max_model_calls=1, on_exceed="ask", ask_timeout_seconds=60)
    async with fakes() as (srv,):
        catalog = AgentCatalog([budget_agent([endpoint(srv)], rules)])
        async with WorkerHost(api_settings, catalog) as host:
            assert host.client is not None
            app = create_app(api_settings, client=host.client)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://api") as http:
                h = await start_run(host.client, RunRequest(agent="budget", input="say hello",
                                                            tenant=tenant),
                                    temporal=api_settings.temporal)
                await waiting(h)
                path = f"/v1/runs/{h.id}/budget"
                raise_3 = {"max_model_calls": 3, "reason": "the incident needs one more look"}
                theirs = await http.post(path, json=raise_3,
                                         headers=auth("approver", of="t-someone-else"))
                requester = await http.post(path, json=raise_3, headers=auth("requester"))
                lower = await http.post(path, headers=auth("approver"),
                                        json={"max_model_calls": 1, "reason": "same"})
                no_limit = await http.post(path, headers=auth("approver"),
                                           json={"reason": "more"})
                assert (await waiting(h)).budget is not None  # nothing above raised it
                ok = await http.post(path, json=raise_3, headers=auth("approver"))
                r = await result(h)
                after = await http.post(path, headers=auth("approver"),
                                        json={"max_model_calls": 9, "reason": "too late"})
            await app.state.backend.close()
    assert theirs.status_code == 404 and theirs.json()["error"]["type"] == "not_found"
    assert requester.status_code == 403
    assert lower.status_code == 409, lower.text
    assert "only raises" in lower.json()["error"]["message"]
    assert no_limit.status_code == 422 and "at least one limit" in no_limit.text
    assert (ok.status_code, ok.json()) == (200, {"max_usd": None, "max_tokens": None,
                                                 "max_model_calls": 3})
    assert (r.status, r.spend.model_calls) == ("completed", 2)
    assert after.status_code == 409 and "has ended" in after.json()["error"]["message"]
    rows = await budget_rows(ledger, h.id)
    assert [(d.decision, d.actor) for d in rows] == [("asked", "stead"), ("raised", "lena")]
    assert rows[1].reason == "the incident needs one more look"
    assert rows[1].data["via"] == "update"


async def test_a_fallback_model_is_held_to_the_budget_before_it_is_called(
        settings: Settings, ledger: Ledger) -> None:
    """The first model is down; the next one of the chain would pass max_usd: the run stops
    instead of calling it (the handover and the stop are both on record)."""
    from stead.stack.embedded import free_port
    dear = Price(input_usd_per_mtok=0.0, output_usd_per_mtok=1000.0)
    async with fakes() as (srv,):
        down = endpoint(srv, name="primary", max_attempts=1).model_copy(
            update={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
        agent = budget_agent([down, endpoint(srv, "gpt-4o", price=dear, name="dear")],
                             BudgetRules(max_usd=1.0))
        async with WorkerHost(settings, AgentCatalog([agent])) as host:
            h = await start(host, settings)
            r = await result(h)
    assert r.status == "budget_exceeded" and srv.requests == []
    assert "the next call to dear would pass max_usd" in (r.error or "")
    trail = await ledger.trail(h.id)
    assert [(d.kind, d.decision) for d in trail.decisions
            if d.kind in ("budget", "model_fallback")] == [("model_fallback", "dear"),
                                                           ("budget", "stopped")]


async def test_a_tenant_window_refusal_from_the_model_activity_ends_the_run_on_the_server(
        settings: Settings, ledger: Ledger) -> None:
    """On the dev server: a model whose activity refuses the call as the tenant windows will
    (a non-retryable ``TenantBudgetExceeded`` ApplicationError; here a test model raises it
    through the activity's own error mapping) ends the run ``budget_exceeded``, audited."""
    from stead.integrations.llm import FunctionModel, ModelCallError
    tries: list[int] = []

    def over_window(messages: Any, tools: Any) -> ModelTurn:
        tries.append(1)
        raise ModelCallError("tenant default is over its daily window ($5.00 of $5.00)",
                             kind=errors.TENANT_BUDGET_EXCEEDED, retryable=False)

    agent = budget_agent([], BudgetRules(max_model_calls=5))
    async with WorkerHost(settings, AgentCatalog([agent]),
                          model=FunctionModel(over_window, name="fn:windowed")) as host:
        h = await start(host, settings)
        r = await result(h)
    assert (r.status, tries) == ("budget_exceeded", [1])
    assert "daily window" in (r.error or "") and r.spend == Spend()
    assert [d.decision for d in await budget_rows(ledger, h.id)] == ["tenant_window"]


def test_a_policy_files_budget_section_is_read_and_a_bad_one_named() -> None:
    from stead.contracts.policy import PolicyError, parse_policy
    p = parse_policy("id: ops\nversion: 3\nbudget:\n  max_usd: 0.5\n  on_exceed: ask\n"
                     "  ask_timeout_seconds: 120\n", source="ops.yaml")
    assert p.budget == BudgetRules(max_usd=0.5, on_exceed="ask", ask_timeout_seconds=120)
    with pytest.raises(PolicyError, match=r"ops\.yaml:4: .*on_exceed"):
        parse_policy("id: ops\nversion: 3\nbudget:\n  on_exceed: pray\n", source="ops.yaml")


# ---------------------------------------------------------------------------- unused: free


async def test_only_a_run_with_a_budget_or_tenant_windows_estimates_its_model_calls(
        settings: Settings) -> None:
    """A run with no budget whose tenant has no spending windows pays nothing for either
    feature: its model requests carry no estimate (the pinned price still rides along). A
    budget, or windows on the tenant (pinned as ``AgentPlan.spend_windows`` at run start),
    each bring the workflow's estimate back (the request's bytes over four plus the model's
    output limit, at its price), and both runs are charged as before."""
    from stead.contracts.models import ModelRequest
    windowed = settings.replace(tenant_quotas={"acme": {"usd_per_day": 100.0}})
    async with fakes() as (srv,):
        async with WorkerHost(windowed, AgentCatalog([budget_agent([endpoint(srv)],
                                                                   None)])) as host:
            assert host.client is not None
            client = host.client
            runs = {}
            for name, req in {
                    "neither": RunRequest(agent="budget", input="say hello"),
                    "budget": RunRequest(agent="budget", input="say hello",
                                         budget=Budget(max_model_calls=10)),
                    "windows": RunRequest(agent="budget", input="say hello",
                                          tenant="acme")}.items():
                h = await start_run(client, req, temporal=windowed.temporal)
                runs[name] = (h, await result(h))
            sent: dict[str, list[ModelRequest]] = {}
            for name, (h, _) in runs.items():
                sent[name] = []
                for ev in (await h.fetch_history()).events:
                    a = ev.activity_task_scheduled_event_attributes
                    if ev.HasField("activity_task_scheduled_event_attributes") \
                            and a.activity_type.name == "model.complete":
                        (m,) = await client.data_converter.decode(a.input.payloads,
                                                                  [ModelRequest])
                        sent[name].append(m)
    for name, (_, r) in runs.items():
        assert r.status == "completed" and r.spend.usd == pytest.approx(0.04), name
        assert len(sent[name]) == 2 and all(m.price == PRICE for m in sent[name]), name
    assert all(m.estimate is None for m in sent["neither"])
    for name in ("budget", "windows"):
        assert all(m.estimate is not None and m.estimate.usd == pytest.approx(0.2)
                   and m.estimate.model_calls == 1 for m in sent[name]), name
