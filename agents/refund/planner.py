"""The refund agent's offline model: a small rule-based planner, not a table of canned replies.

It reads the request (order id, amount as people write it — "€30", "40,000 EUR", "40k" — and
the reason), looks the order up, refunds what was asked (never more than is left to refund, the
whole remainder when no amount is given), tells the customer, and writes the answer from what
the tools returned. When policy denies the refund, an approver rejects it or the payment
provider refuses it, it says so and why. It is a pure function of the transcript, so a retried
or replayed model call gives the same turn.

Its answers only state figures and ids found in the request or in tool results, so they pass
the policy's grounding check; denial reasons are put in words rather than quoted with numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from stead.contracts.models import Message, ModelTurn, ToolCall, ToolSchema
from stead.integrations.llm import FunctionModel, ToolHistory, tool_history

_ORDER = re.compile(r"\b(?:ORD[-\s]?|order\s+(?:no\.?\s*|number\s+|#\s*)?)(\d{3,10})\b",
                    re.IGNORECASE)

_CURRENCY = r"€|\$|£|eur\b|euros?\b|usd\b|dollars?\b"
_NUMBER = (r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?"      # 40,000  1,234.50
           r"|\d{1,3}(?:\.\d{3})+(?:,\d{1,2})?"     # 40.000  1.234,50
           r"|\d+(?:[.,]\d{1,2})?")                 # 30  30.5  30,50
_AMOUNT = re.compile(
    rf"(?<![\w.,])(?P<pre>(?:{_CURRENCY})\s?)?(?P<num>{_NUMBER})(?![\d])"
    rf"(?P<k>\s?k\b)?(?P<post>\s?(?:{_CURRENCY}))?",
    re.IGNORECASE)
_VERB_BEFORE = re.compile(r"\b(?:refund(?:ing)?|back|return|credit)\s+(?:me\s+|of\s+)?$",
                          re.IGNORECASE)
_REASON = re.compile(r"\b(?:because|since|due to|reason:?)\s+(?P<reason>.+)$",
                     re.IGNORECASE | re.DOTALL)
_CLAUSES = re.compile(r"[,;:!?]\s+|\.\s+|\s+[—–-]\s+|\n+")
_FILLER = re.compile(r"^(?:please|pls|thanks|thank you|hi|hello|asap|now)\b[\s!.]*$",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Amount:
    value: Decimal
    text: str
    """As the user wrote it (``"40,000 EUR"``, ``"€30"``): the answer repeats it verbatim."""


def find_order(text: str) -> str | None:
    """The first order id in ``text``, normalised: ``ord 1001`` / ``order #1001`` -> ORD-1001."""
    m = _ORDER.search(text)
    return f"ORD-{m.group(1)}" if m else None


def _decimal(num: str) -> Decimal | None:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?", num):
        num = num.replace(",", "")
    elif re.fullmatch(r"\d{1,3}(?:\.\d{3})+(?:,\d{1,2})?", num):
        num = num.replace(".", "").replace(",", ".")
    else:
        num = num.replace(",", ".")
    try:
        return Decimal(num)
    except InvalidOperation:
        return None


def find_amount(text: str) -> Amount | None:
    """The amount a request asks for: a number with a currency sign or word, a ``k`` suffix,
    or right after "refund"/"back". Order ids are not amounts."""
    cleaned = _ORDER.sub(lambda m: " " * len(m.group()), text)
    for m in _AMOUNT.finditer(cleaned):
        money_like = m.group("pre") or m.group("post") or m.group("k")
        if not (money_like or _VERB_BEFORE.search(cleaned[:m.start()])):
            continue
        value = _decimal(m.group("num"))
        if value is None:
            continue
        if m.group("k"):
            value *= 1000
        return Amount(value=value, text=m.group().strip())
    return None


def find_reason(text: str) -> str:
    """Why the customer wants the money back, from the request's wording."""
    m = _REASON.search(text)
    if m:
        return _tidy(m.group("reason"))
    for clause in _CLAUSES.split(text):
        c = clause.strip()
        if (not c or find_order(c) or find_amount(c) or _FILLER.match(c)
                or re.search(r"\b(?:refund|give back|money back|reimburse)", c, re.IGNORECASE)):
            continue
        if sum(ch.isalpha() for ch in c) >= 3:
            return _tidy(c)
    return "customer request"


def _tidy(reason: str) -> str:
    return reason.strip().rstrip(".!").strip()[:300] or "customer request"


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)




def _error_text(err: dict[str, Any]) -> str:
    """The error's message plus what each failed attempt said (type names included)."""
    parts = [str(err.get("message", ""))]
    for f in err.get("failures") or []:
        if isinstance(f, dict):
            parts.append(str(f.get("error", "")))
    return " ".join(p for p in parts if p)


def _denial(message: str) -> str:
    """Why policy or a person stopped the refund, in words (no figures to misquote)."""
    low = message.lower()
    if "rejected by" in low:
        m = re.search(r"rejected by ([^:]+?)(?::\s*(?P<note>.+))?$", message, re.DOTALL)
        who = m.group(1).strip() if m else "an approver"
        note = (m.group("note") or "").strip().rstrip(".") if m else ""
        said = f" (“{note}”)" if note and not re.search(r"\d", note) else ""
        return f"the approver ({who}) rejected it{said}"
    if "no approver decided" in low or "auto-denied" in low:
        return ("no approver decided before the deadline, even after escalation, so it was "
                "denied automatically")
    if "hard limit" in low:
        return ("the amount is above the policy's hard limit for refunds; a refund this "
                "large has to go through finance")
    if "never allowed" in low:
        return "refunds are switched off under the current policy"
    if "deny line" in low:
        return "the policy rates this refund as too risky to run"
    return "the policy does not allow it"


class RefundPlanner:
    """Plans the refund agent's next turn from the transcript."""

    def __init__(self) -> None:
        self.model = FunctionModel(self.next_turn, name="scripted:refund")

    def next_turn(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = next((m.content or "" for m in messages if m.role == "user"), "")
        done = tool_history(messages)
        turn_no = sum(1 for m in messages if m.role == "assistant")

        def call(name: str, args: dict[str, Any]) -> ModelTurn:
            return ModelTurn(tool_calls=[ToolCall(id=f"call_{turn_no}_{name}", name=name,
                                                  arguments=json.dumps(args))])

        def answer(text: str) -> ModelTurn:
            return ModelTurn(content=text)

        order_id = find_order(request)
        if order_id is None:
            return answer("Which order is this about? Please give me the order id from the "
                          "confirmation email (it starts with ORD-) and I will look at the "
                          "refund.")

        # 1. Look before paying: what was paid, what is left.
        if "lookup_order" not in done.called:
            return call("lookup_order", {"order_id": order_id})
        order = done.results.get("lookup_order")
        if order is None:
            text = _error_text(done.errors.get("lookup_order", {}))
            if "UnknownOrder" in text or "no order" in text:
                return answer(f"I could not find order {order_id}; please check the id. "
                              f"Nothing was refunded.")
            return answer(f"I could not look up {order_id} right now (the order system did "
                          f"not answer). Nothing was refunded; please try again later.")

        currency = str(order.get("currency", "EUR"))
        refundable = _money(order.get("refundable"))
        if refundable <= 0:
            return answer(f"There is nothing left to refund on {order_id}: the "
                          f"{order.get('paid')} {currency} paid were already refunded.")

        wanted = find_amount(request)
        if wanted is not None and wanted.value <= 0:
            return answer(f"A refund needs an amount above zero; {order_id} has "
                          f"{order.get('refundable')} {currency} left to refund. How much "
                          f"should I refund?")
        amount = refundable if wanted is None else min(wanted.value, refundable)

        # 2. Refund (the runtime may pause here for an approver, or deny it).
        if "issue_refund" not in done.called:
            return call("issue_refund", {"order_id": order_id, "amount": float(amount),
                                         "reason": find_reason(request)})
        receipt = done.results.get("issue_refund")
        if receipt is None:
            return answer(self._not_refunded(order_id, order, wanted, currency,
                                             done.errors.get("issue_refund", {})))

        # 3. Tell the customer.
        if "notify_customer" not in done.called:
            return call("notify_customer", {
                "order_id": order_id,
                "message": (f"Hello {order.get('customer', '')}, we have refunded "
                            f"{receipt.get('amount')} {currency} for your order {order_id} "
                            f"({order.get('item', 'your item')}). The money goes back to your "
                            f"original payment method. Refund reference: "
                            f"{receipt.get('refund_id')}."),
            })
        return answer(self._refunded(order_id, order, wanted, currency, receipt, done))

    @staticmethod
    def _not_refunded(order_id: str, order: dict[str, Any], wanted: Amount | None,
                      currency: str, err: dict[str, Any]) -> str:
        if wanted is not None and wanted.value <= _money(order.get("refundable")):
            what = f"the {wanted.text}"
        else:
            what = f"the remaining {order.get('refundable')} {currency}"
        kind = str(err.get("type", ""))
        text = _error_text(err)
        if kind == "PolicyDenied":
            return f"I did not refund {what} on {order_id}: {_denial(text)}. Nothing was paid out."
        if "RefundExceedsPayment" in text:
            return (f"The payment provider refused the refund on {order_id}: it is more than "
                    f"what is left to refund ({order.get('refundable')} {currency} when I "
                    f"looked the order up). Nothing was paid out.")
        return (f"The refund of {what} on {order_id} did not go through: the payment "
                f"provider kept failing. Nothing was paid out; please try again later.")

    @staticmethod
    def _refunded(order_id: str, order: dict[str, Any], wanted: Amount | None, currency: str,
                  receipt: dict[str, Any], done: ToolHistory) -> str:
        parts = [f"Refunded {receipt.get('amount')} {currency} on {order_id} to the original "
                 f"payment method (refund {receipt.get('refund_id')})."]
        if receipt.get("created") is False:
            parts.append("The payment provider had already processed this refund, so it was "
                         "not paid twice.")
        if wanted is not None and wanted.value > _money(order.get("refundable")):
            parts.append(f"You asked for {wanted.text}, but only {order.get('refundable')} "
                         f"{currency} was left to refund.")
        left = _money(receipt.get("refundable_left"))
        parts.append(f"{receipt.get('refundable_left')} {currency} remains refundable."
                     if left > 0 else "The order is now fully refunded.")
        if "notify_customer" in done.results:
            parts.append("The customer was notified by email.")
        else:
            parts.append("I could not notify the customer; please let them know.")
        return " ".join(parts)
