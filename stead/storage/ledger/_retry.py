"""Retry while PostgreSQL is unreachable: one helper for the ledger and the blob store.

    rows = await retrying(pool, op, seconds=30, on_wait=activity.heartbeat,
                          fail=lambda why: LedgerError(f"ledger unavailable for {why}"))

The database coming back is an infrastructure matter: it is waited for inside the call, so it
does not use up a tool's own (Temporal) retry budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
"""Errors that mean "the database is away", not "this statement is wrong"."""


async def retrying(pool: asyncpg.Pool, op: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   seconds: float, on_wait: Callable[[], None] | None,
                   fail: Callable[[str], Exception]) -> T:
    """Run ``op`` on a pooled connection, retrying while PostgreSQL is unreachable (with
    backoff, heartbeating through ``on_wait``) for up to ``seconds``; then raise
    ``fail("<seconds>s: <error>")``. Shared by the ledger and the blob store."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            async with pool.acquire() as conn:
                return await op(conn)
        except TRANSIENT as err:
            if time.monotonic() + delay > deadline:
                raise fail(f"{seconds:.0f}s: {type(err).__name__}: {err}") from err
            if on_wait is not None:
                on_wait()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
