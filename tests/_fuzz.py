"""Hypothesis properties whose examples talk to the test stack, and the strategies they share.

Hypothesis drives plain (synchronous) functions, while the stack's client and workers live on
the session's event loop. :func:`run_property` runs a property in a worker thread and each
example's coroutine on the session loop (:func:`on_loop`), so a failing example still shrinks
to a small one and is printed with the seed that reproduces it.

Example counts stay modest (every example is a real run or a real process), and no example
database is written: a failure prints its example and its reproduction blob instead.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""Base settings of every fuzz property: no per-example deadline (examples are real runs)."""


def fuzz(max_examples: int) -> settings:
    """:data:`FUZZ` with ``max_examples`` (a decorator; keeps the ``settings`` fixture name
    free in test modules)."""
    return settings(FUZZ, max_examples=max_examples)


def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
            timeout: float = 120) -> T:
    """Run ``coro`` on the session loop from the property's thread; wait at most
    ``timeout`` seconds."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def run_property(prop: Callable[[], None]) -> None:
    """Run a ``@given`` property in a worker thread, keeping the session loop free to serve
    the coroutines its examples send with :func:`on_loop`."""
    await asyncio.to_thread(prop)


def bound(loop: asyncio.AbstractEventLoop,
          check: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """``check`` (async) as a synchronous function of the same arguments, run on ``loop``.
    Checks return a label of the example's outcome, for ``hypothesis.event`` (the statistics
    show what the examples covered)."""
    def sync(*args: Any) -> T:
        return on_loop(loop, check(*args))  # type: ignore[arg-type]
    return sync


# ---------------------------------------------------------------------------- strategies

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
"""Any text a JSON document can carry (lone surrogates cannot be encoded)."""

argv_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                    max_size=40)
"""Any text a command-line argument can carry (no NUL)."""

json_leaf: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | text)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(text, inner, max_size=4), max_leaves=12)
"""Any JSON value (no NaN or infinities: JSON has none)."""


def json_text(value: Any) -> str:
    """``value`` as JSON text, as an operator would type it."""
    return json.dumps(value, ensure_ascii=False)


def is_finite_json(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_finite_json(v) for v in value)
    if isinstance(value, dict):
        return all(is_finite_json(v) for v in value.values())
    return True


def near(valid: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
         ) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like ``valid`` with some fields dropped, replaced by fuzz, or added."""
    def build(drop: list[str], replace: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in valid.items() if k not in drop}
        out.update(replace)
        out.update(extra)
        return out

    keys = sorted(set(valid) | set(fields))
    return st.builds(
        build,
        st.lists(st.sampled_from(sorted(valid)), max_size=2, unique=True),
        st.fixed_dictionaries({}, optional={k: fields.get(k, json_values) for k in keys}),
        st.dictionaries(text, json_values, max_size=1))
