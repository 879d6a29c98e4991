"""Budget arithmetic: what a model call is expected to cost before it is made, and what it
cost after, from the usage its server reported.

    guess = estimate(request_bytes(messages, tools), max_output_tokens=1024, price=price)
    if limit.exceeded(spent + guess): ...                  # stop, ask or step down
    spent = spent + settle(turn.usage, price)

An estimate is deliberately pessimistic: the request's tokens are taken as its JSON bytes over
:data:`BYTES_PER_TOKEN` (English text runs at about four bytes a token, JSON punctuation at
fewer), and the answer as the whole output limit. A run checks the estimate before each call,
so it stops before a call that could pass its budget, not after; what it is charged is the
settled usage. Pure and deterministic: called from workflow code.
"""

from __future__ import annotations

from stead.contracts.budget import Price, Spend
from stead.contracts.models import Message, ToolSchema, Usage

BYTES_PER_TOKEN = 4
"""Request bytes per estimated input token."""

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The answer length an estimate assumes for a model that declares no output limit
(``ModelEndpoint.max_output_tokens``)."""


def request_bytes(messages: list[Message], tools: list[ToolSchema]) -> int:
    """A model request's size as an estimate measures it: its messages and tool schemas as
    JSON (the workflow checks it against the payload limit too)."""
    return (sum(len(m.model_dump_json().encode()) for m in messages)
            + sum(len(t.model_dump_json().encode()) for t in tools))


def estimate_tokens(request_bytes: int) -> int:
    """Input tokens a request of this many bytes is estimated at (rounded up)."""
    return -(-max(request_bytes, 0) // BYTES_PER_TOKEN)


def estimate(request_bytes: int, *, max_output_tokens: int, price: Price | None) -> Spend:
    """The most one model call is expected to cost: its request, plus a full-length answer.
    An unpriced model (``price`` None) costs no money, only tokens and the call."""
    tin, tout = estimate_tokens(request_bytes), max(max_output_tokens, 0)
    return Spend(usd=price.cost(tin, tout) if price is not None else 0.0,
                 input_tokens=tin, output_tokens=tout, model_calls=1)


def settle(usage: Usage, price: Price | None) -> Spend:
    """What one answered model call cost, from the usage its server reported."""
    return Spend(usd=price.cost(usage.input_tokens, usage.output_tokens)
                 if price is not None else 0.0,
                 input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                 model_calls=1)
