"""The refund agent's tools, acting on a :class:`~stead.agents.refund.world.RefundWorld`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from stead.agents.refund.world import (
    Order,
    RefundExceedsPayment,
    RefundWorld,
    UnknownOrder,
    money,
    to_cents,
)
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import RetrySpec, Timeouts

ORDER_ID = r"^ORD-\d{1,10}$"


class OrderRef(BaseModel):
    order_id: str = Field(pattern=ORDER_ID, description="Order id, e.g. ORD-1001")


class OrderInfo(BaseModel):
    order_id: str
    customer: str
    item: str
    status: str
    currency: str
    paid: Decimal
    refunded: Decimal
    """Refunded so far."""
    refundable: Decimal
    """What is left to refund: paid minus refunded."""


class RefundRequest(BaseModel):
    order_id: str = Field(pattern=ORDER_ID)
    amount: float = Field(gt=0, le=10_000_000,
                          description="Amount to refund in the order's currency, e.g. 30.5")
    reason: str = Field(min_length=3, max_length=500)


class RefundReceipt(BaseModel):
    refund_id: str
    order_id: str
    amount: Decimal
    currency: str
    refunded_total: Decimal
    """Refunded on the order so far, this refund included."""
    refundable_left: Decimal
    created: bool = Field(description="False when this idempotency key had already paid it out")


class CustomerNotice(BaseModel):
    order_id: str = Field(pattern=ORDER_ID)
    message: str = Field(min_length=3, max_length=2000)


class NoticeSent(BaseModel):
    notification_id: str
    order_id: str
    channel: Literal["email"] = "email"
    sent: bool = Field(description="False when this idempotency key had already sent it")


_NON_RETRYABLE = ["UnknownOrder", "RefundExceedsPayment"]


def refund_tools(world: RefundWorld) -> list[Tool[Any, Any]]:
    """Build the refund tools bound to ``world``."""

    def info(o: Order) -> OrderInfo:
        return OrderInfo(order_id=o.order_id, customer=o.customer, item=o.item, status=o.status,
                         currency=o.currency, paid=money(o.paid_cents),
                         refunded=money(o.refunded_cents), refundable=money(o.refundable_cents))

    @tool(side_effect="read", risk="low",
          retry=RetrySpec(initial_interval=0.1, max_interval=1.0, max_attempts=3,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=5))
    async def lookup_order(args: OrderRef, ctx: ToolContext) -> OrderInfo:
        """Look an order up: customer, item, status, amount paid, already refunded and what is
        left to refund."""
        return info(world.order(args.order_id))

    @tool(side_effect="irreversible", risk="high",
          # Irreversible, but the payment provider deduplicates on the idempotency key, so a
          # retry after a lost worker never pays twice.
          idempotent=True,
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=5,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=10, heartbeat=2))
    async def issue_refund(args: RefundRequest, ctx: ToolContext) -> RefundReceipt:
        """Refund part or all of an order to the customer's original payment method. The
        amount may not exceed what is left to refund (see lookup_order)."""
        refund = world.refund(key=ctx.idempotency_key, order_id=args.order_id,
                              amount_cents=to_cents(args.amount), reason=args.reason)
        await ctx.wait(world.knobs().refund_seconds)
        after = world.order(args.order_id)
        return RefundReceipt(refund_id=f"RF-{700000 + refund.refund_id}",
                             order_id=refund.order_id, amount=money(refund.amount_cents),
                             currency=after.currency, refunded_total=money(after.refunded_cents),
                             refundable_left=money(after.refundable_cents),
                             created=refund.created)

    @tool(side_effect="write", risk="low", idempotent=True,
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=5,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=10))
    async def notify_customer(args: CustomerNotice, ctx: ToolContext) -> NoticeSent:
        """Email the order's customer a message (the address comes from the order)."""
        notification_id, sent = world.notify(key=ctx.idempotency_key, order_id=args.order_id,
                                             message=args.message)
        return NoticeSent(notification_id=f"MSG-{notification_id}", order_id=args.order_id,
                          sent=sent)

    return [lookup_order, issue_refund, notify_customer]



__all__ = ["RefundExceedsPayment", "UnknownOrder", "refund_tools"]
