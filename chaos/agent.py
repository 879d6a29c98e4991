"""The chaos agents: ``shop`` (one order: look up, reserve, charge, ship) and ``drills`` (one
misbehaving tool per request). Their tools act on a :class:`~chaos.world.ChaosWorld`.

``shop`` covers the three idempotency classes a runtime must keep apart, in one run:

============== ================= ============= =====================================
tool           side effect       idempotent    after a lost attempt
============== ================= ============= =====================================
lookup_order   read              yes           run again
reserve_stock  write             yes           run again, same key (provider dedups)
charge_card    irreversible      no            reconcile hook asks the processor
ship_parcel    irreversible      no            no hook: escalate, never re-run
============== ================= ============= =====================================

Every effectful tool passes two failpoints, ``<tool>:before`` and ``<tool>:after`` its effect;
the second sits between the side effect and the ledger write that records it. The planner
passes ``model:<turn>`` inside each model call. Charges above 500 need an approval.

``drills`` tools each fail one way: a timeout, lost heartbeats, a business error, a hang, a
multi-megabyte result.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity

from chaos.world import SKUS, ChaosWorld
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import Message, ModelTurn, RetrySpec, Timeouts, ToolCall, ToolSchema
from stead.contracts.policy import (
    Approvals,
    ArgumentRule,
    OutputRules,
    Policy,
    RiskWeights,
    Thresholds,
)
from stead.integrations.llm import FunctionModel, assistant_turns, tool_history

SHOP, DRILLS = "shop", "drills"
MAX_STEPS = 12
"""Step budget of both agents: an endless tool-call loop ends here, as ``failed``."""
APPROVAL_ABOVE = 500.0
"""Charges above this amount ask the ``oncall`` approver."""
DRILLS_KINDS = ("timeout", "heartbeat", "business", "hang", "oversized")
OVERSIZED_BYTES = 3_000_000
"""Size of the oversized drill's result: above Temporal's 2 MiB payload limit."""

# ---------------------------------------------------------------------------- shop models


class OrderRef(BaseModel):
    order_id: str = Field(pattern=r"^o-\d+$", description="Order id, e.g. o-17")


class Order(BaseModel):
    order_id: str
    customer: str
    total: float


class ReserveRequest(BaseModel):
    order_id: str = Field(pattern=r"^o-\d+$")
    sku: str = Field(pattern=r"^sku-\d+$")
    qty: int = Field(ge=1, le=100)


class Reservation(BaseModel):
    reservation_id: int
    created: bool = Field(description="False when this idempotency key had reserved already")


class ChargeRequest(BaseModel):
    order_id: str = Field(pattern=r"^o-\d+$")
    amount: float = Field(gt=0, le=100_000)


class Receipt(BaseModel):
    charge_id: int
    amount: float
    reconciled: bool = False
    """True when an earlier, lost attempt had charged and the processor said so."""


class ShipRequest(BaseModel):
    order_id: str = Field(pattern=r"^o-\d+$")


class Parcel(BaseModel):
    parcel_id: int


# ---------------------------------------------------------------------------- drill models


class Drill(BaseModel):
    label: str = Field(min_length=1, max_length=100)


class DrillResult(BaseModel):
    label: str
    attempt: int
    text: str = ""


class CardDeclined(Exception):
    """The processor declined the card: a business answer, retrying cannot change it."""


def shop_tools(world: ChaosWorld) -> list[Tool[Any, Any]]:
    """The shop's tools, bound to ``world``."""

    def entered(name: str, ctx: ToolContext) -> None:
        world.invoked(tool=name, key=ctx.idempotency_key, attempt=ctx.attempt)
        world.failpoint(ctx.workflow_id, f"{name}:before")

    async def effected(name: str, ctx: ToolContext) -> None:
        world.failpoint(ctx.workflow_id, f"{name}:after")
        await ctx.wait(world.knobs().hold_seconds, every=0.2)

    @tool(side_effect="read", risk="low", timeouts=Timeouts(start_to_close=10, heartbeat=3),
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=8))
    async def lookup_order(args: OrderRef, ctx: ToolContext) -> Order:
        """Look an order up: customer and total."""
        ctx.heartbeat()
        n = int(args.order_id.removeprefix("o-"))
        return Order(order_id=args.order_id, customer=f"customer-{n % 97}",
                     total=round(10 + (n % 50) * 1.5, 2))

    @tool(side_effect="write", risk="low", idempotent=True,
          timeouts=Timeouts(start_to_close=10, heartbeat=3),
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=8))
    async def reserve_stock(args: ReserveRequest, ctx: ToolContext) -> Reservation:
        """Reserve stock for an order. Idempotent: the stock service deduplicates by key."""
        ctx.heartbeat()
        entered("reserve_stock", ctx)
        rid, created = world.reserve(key=ctx.idempotency_key, sku=args.sku, qty=args.qty)
        await effected("reserve_stock", ctx)
        return Reservation(reservation_id=rid, created=created)

    async def charged(args: ChargeRequest, ctx: ToolContext) -> Receipt | None:
        charge_id = world.charge_for_key(ctx.idempotency_key)
        if charge_id is None:
            return None
        return Receipt(charge_id=charge_id, amount=args.amount, reconciled=True)

    @tool(side_effect="irreversible", risk="medium", idempotent=False, reconcile=charged,
          timeouts=Timeouts(start_to_close=10, heartbeat=3),
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=8))
    async def charge_card(args: ChargeRequest, ctx: ToolContext) -> Receipt:
        """Charge the customer's card for an order. Not idempotent: each call charges."""
        ctx.heartbeat()
        entered("charge_card", ctx)
        charge_id = world.charge(key=ctx.idempotency_key, order_id=args.order_id,
                                 amount=args.amount)
        await effected("charge_card", ctx)
        return Receipt(charge_id=charge_id, amount=args.amount)

    @tool(side_effect="irreversible", risk="low", idempotent=False,
          timeouts=Timeouts(start_to_close=10, heartbeat=3),
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=8))
    async def ship_parcel(args: ShipRequest, ctx: ToolContext) -> Parcel:
        """Hand the order's parcel to the carrier. Not idempotent, and the carrier cannot be
        asked afterwards whether a parcel was handed over."""
        ctx.heartbeat()
        entered("ship_parcel", ctx)
        parcel_id = world.ship(key=ctx.idempotency_key, order_id=args.order_id)
        await effected("ship_parcel", ctx)
        return Parcel(parcel_id=parcel_id)

    return [lookup_order, reserve_stock, charge_card, ship_parcel]


def drill_tools(world: ChaosWorld) -> list[Tool[Any, Any]]:
    """One tool per tool fault; each decides from the world's attempt count when to fail."""

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=1),
          retry=RetrySpec(initial_interval=0.2, max_interval=1, max_attempts=3))
    async def slow_quote(args: Drill, ctx: ToolContext) -> DrillResult:
        """Quote a price. Its first attempt outlives the 1 s start-to-close timeout."""
        if world.count_attempt(ctx.idempotency_key) == 1:
            await asyncio.sleep(3)
        return DrillResult(label=args.label, attempt=ctx.attempt, text="quoted")

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=30, heartbeat=1),
          retry=RetrySpec(initial_interval=0.2, max_interval=1, max_attempts=3))
    async def long_export(args: Drill, ctx: ToolContext) -> DrillResult:
        """Export a report (long, heartbeating). Its first attempt stops heartbeating."""
        if world.count_attempt(ctx.idempotency_key) == 1:
            ctx.heartbeat()
            await asyncio.sleep(4)  # silent: the 1 s heartbeat timeout declares it lost
        else:
            await ctx.wait(1.0, every=0.2)
        return DrillResult(label=args.label, attempt=ctx.attempt, text="exported")

    @tool(side_effect="write", idempotent=True, timeouts=Timeouts(start_to_close=5),
          retry=RetrySpec(initial_interval=0.2, max_attempts=5, non_retryable=["CardDeclined"]))
    async def refund_card(args: Drill, ctx: ToolContext) -> DrillResult:
        """Refund to a card. The processor declines it: a non-retryable business error."""
        world.count_attempt(ctx.idempotency_key)
        raise CardDeclined(f"card declined for {args.label} (do_not_honor)")

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=1.5),
          retry=RetrySpec(initial_interval=0.2, max_interval=1, max_attempts=2))
    async def stuck_call(args: Drill, ctx: ToolContext) -> DrillResult:
        """Call a dependency that never answers: bounded only by the tool's timeouts."""
        world.count_attempt(ctx.idempotency_key)
        await asyncio.Event().wait()
        raise AssertionError("unreachable: the event is never set")

    @tool(side_effect="read", timeouts=Timeouts(start_to_close=10),
          retry=RetrySpec(initial_interval=0.2, max_interval=1, max_attempts=4))
    async def big_report(args: Drill, ctx: ToolContext) -> DrillResult:
        """Build a report whose text is several megabytes."""
        world.count_attempt(ctx.idempotency_key)
        return DrillResult(label=args.label, attempt=ctx.attempt, text="x" * OVERSIZED_BYTES)

    return [slow_quote, long_export, refund_card, stuck_call, big_report]


DRILL_TOOL = {"timeout": "slow_quote", "heartbeat": "long_export", "business": "refund_card",
              "hang": "stuck_call", "oversized": "big_report"}


# ---------------------------------------------------------------------------- planners

_REJECTED = ("malformed_arguments", "invalid_arguments", "unknown_tool")
"""Error types of a call the workflow's gate refused before any tool ran."""
_ORDER = re.compile(r"\bo-(\d+)\b")
_ITEM = re.compile(r"\b(\d+)\s*x\s*(sku-\d+)\b")
_AMOUNT = re.compile(r"\bcharge\s+(\d+(?:\.\d+)?)")


def _call(turn: int, name: str, args: dict[str, Any]) -> ModelTurn:
    # Call ids depend on the turn only: a retried model call proposes the same call.
    return ModelTurn(tool_calls=[ToolCall(id=f"call_{turn}_{name}", name=name,
                                          arguments=json.dumps(args))])


class ShopPlanner:
    """Plans one order from the request: "order o-17: reserve 2 x sku-3, charge 40.00, ship".

    It calls the four tools in order, answers from their results, corrects a call the gate
    refused (bad arguments) like a model would, and gives up (answering why) on the first
    tool error. A request containing "loop" makes it a model stuck in a tool-call
    loop: it looks the order up again and again until the step budget stops it.
    """

    def __init__(self, world: ChaosWorld | None = None) -> None:
        self.world = world
        self.model = FunctionModel(self.next_turn, name="scripted:chaos-shop")

    def _failpoint(self, turn: int) -> None:
        if self.world is not None and activity.in_activity():
            wid = activity.info().workflow_id
            if wid is not None:
                self.world.failpoint(wid, f"model:{turn}")

    def next_turn(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        turn = assistant_turns(messages) + 1
        self._failpoint(turn)
        request = next((m.content or "" for m in messages if m.role == "user"), "")
        done = tool_history(messages)
        order = _ORDER.search(request)
        if order is None:
            return ModelTurn(content="Which order? Give an order id such as o-17.")
        oid = f"o-{order.group(1)}"
        if "loop" in request.lower():
            return _call(turn, "lookup_order", {"order_id": oid})
        item = _ITEM.search(request)
        qty, sku = (int(item.group(1)), item.group(2)) if item else (1, SKUS[0])
        amount = _AMOUNT.search(request)
        plan: list[tuple[str, dict[str, Any]]] = [
            ("lookup_order", {"order_id": oid}),
            ("reserve_stock", {"order_id": oid, "sku": sku, "qty": qty}),
            ("charge_card", {"order_id": oid,
                             "amount": float(amount.group(1)) if amount else 10.0}),
            ("ship_parcel", {"order_id": oid}),
        ]
        for name, args in plan:
            if name in done.errors:
                err = done.errors[name]
                tries = sum(1 for c in done.calls if c.name == name)
                if err.get("type") in _REJECTED and tries < 3:
                    return _call(turn, name, args)  # the gate refused the call: correct it
                why = err.get("message") or err.get("type")
                return ModelTurn(content=f"Order {oid} was not completed: {name} failed "
                                         f"({why}).")
            if name not in done.results:
                return _call(turn, name, args)
        r = done.results
        return ModelTurn(content=(
            f"Order {oid} done: reserved {qty} x {sku} (reservation "
            f"{r['reserve_stock'].get('reservation_id')}), charged "
            f"{r['charge_card'].get('amount')} (charge {r['charge_card'].get('charge_id')}), "
            f"parcel {r['ship_parcel'].get('parcel_id')} shipped."))


class DrillPlanner:
    """Runs the drill named in the request ("drill: timeout") once and reports its outcome."""

    def __init__(self) -> None:
        self.model = FunctionModel(self.next_turn, name="scripted:chaos-drills")

    def next_turn(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        turn = assistant_turns(messages) + 1
        request = next((m.content or "" for m in messages if m.role == "user"), "")
        kind = next((k for k in DRILLS_KINDS if k in request.lower()), None)
        if kind is None:
            return ModelTurn(content=f"Name a drill: {', '.join(DRILLS_KINDS)}.")
        name = DRILL_TOOL[kind]
        done = tool_history(messages)
        if name in done.results:
            res = done.results[name]
            return ModelTurn(content=f"Drill {kind}: {name} answered on attempt "
                                     f"{res.get('attempt')}.")
        if name in done.errors:
            err = done.errors[name]
            return ModelTurn(content=f"Drill {kind}: {name} failed "
                                     f"({err.get('type')}: {str(err.get('message'))[:300]}).")
        return _call(turn, name, {"label": f"drill-{kind}"})


# ---------------------------------------------------------------------------- agents

SHOP_POLICY = Policy(
    id="chaos-shop", version=1,
    description="Charges above 500 ask on-call; nothing else needs a human.",
    thresholds=Thresholds(approve_at=0.6, deny_at=1.0001),
    # No risk from earlier failures or echoed tool output: the suite decides who is asked.
    risk=RiskWeights(per_prior_failure=0.0, untrusted=0.0, arguments=[
        ArgumentRule(tool="charge_card", field="amount", above=APPROVAL_ABOVE, add=0.4,
                     label="large charge")]),
    approvals=Approvals(chain=["oncall"], timeout_seconds=300, untrusted_line=1.0),
    output=OutputRules(secrets=True, grounding=False),
)


def chaos_catalog(world: ChaosWorld) -> AgentCatalog:
    """Both chaos agents over one world."""
    shop = Agent(name=SHOP, instructions="Fulfil the order: look it up, reserve the stock, "
                                         "charge the card, ship the parcel.",
                 tools=shop_tools(world), offline_model=ShopPlanner(world).model,
                 max_steps=MAX_STEPS, policy=SHOP_POLICY,
                 description="Chaos suite: one order, four tools of three idempotency kinds.")
    drills = Agent(name=DRILLS, instructions="Run the named drill once and report.",
                   tools=drill_tools(world), offline_model=DrillPlanner().model,
                   max_steps=MAX_STEPS, description="Chaos suite: one misbehaving tool.")
    return AgentCatalog([shop, drills])


def order_request(n: int, *, qty: int, sku: str, amount: float, loop: bool = False) -> str:
    """The text of a shop request the planner understands."""
    text = f"Order o-{n}: reserve {qty} x {sku}, charge {amount:.2f}, ship it."
    return text + (" Then loop." if loop else "")
