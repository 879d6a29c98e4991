"""The ledger's connection: a pool, the redactor every write goes through, the retry wrapper.

    ledger = await Ledger.connect(dsn, redactor=Redactor.from_settings(settings))

The operations themselves live with their job: writes in ``_writes``, reads in ``_reads``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

import asyncpg

from stead.errors import LedgerError
from stead.security.secrets import DEFAULT_REDACTOR, Redactor
from stead.storage.ledger._retry import TRANSIENT, retrying
from stead.storage.ledger._values import Storable, init_connection

T = TypeVar("T")

COMMAND_TIMEOUT = 60.0
"""Default bound on one ledger statement (``STEAD_DB_COMMAND_TIMEOUT_SECONDS``)."""
CONNECT_TIMEOUT = 10.0
"""Default bound on one connection attempt (``STEAD_DB_CONNECT_TIMEOUT_SECONDS``)."""


async def keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: its session as it is.

    asyncpg's default resets the session on every release (``RESET ALL``, ``UNLISTEN *``,
    ``CLOSE ALL``, advisory locks released): one more round trip after every ledger write,
    as many as the writes themselves. Nothing that uses this pool leaves session state
    behind (settings are ``set local``, no ``LISTEN``, cursors or session advisory locks:
    the migrator holds its lock on a connection of its own), and asyncpg still rolls back a
    transaction left open and drops listeners before it calls this."""


class LedgerBase:
    """A connection pool, redaction and the retry of operations while PostgreSQL is away."""

    def __init__(self, pool: asyncpg.Pool, *, retry_seconds: float = 30.0,
                 redactor: Redactor = DEFAULT_REDACTOR) -> None:
        self.pool = pool
        self.retry_seconds = retry_seconds
        self.redactor = redactor
        self._store = Storable(redactor)
        """Applied to every value written; the default knows patterns, not secret values."""

    def redacting(self, redactor: Redactor) -> Self:
        """This ledger (same pool) writing through ``redactor``: a worker's settings add their
        secret values and patterns to a ledger built before them."""
        return type(self)(self.pool, retry_seconds=self.retry_seconds, redactor=redactor)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10,
                      retry_seconds: float = 30.0,
                      command_timeout: float | None = COMMAND_TIMEOUT,
                      connect_timeout: float = CONNECT_TIMEOUT,
                      redactor: Redactor = DEFAULT_REDACTOR) -> Self:
        """A pool on ``dsn``; while PostgreSQL is unreachable, keep trying for up to
        ``retry_seconds`` (a worker started during a network blip waits for it instead of
        exiting; 0: fail at once), each attempt bounded by ``connect_timeout``.

        ``command_timeout`` bounds every statement (None: unbounded). It is what ends a
        statement on a half-dead link — bytes sent, nothing coming back, no FIN or RST — and
        asyncpg bounds its cancellation of that statement by the same value: without it both
        wait forever, and the pooled connection with them."""
        deadline = time.monotonic() + retry_seconds
        delay = 0.1
        while True:
            try:
                pool = await asyncpg.create_pool(
                    dsn, min_size=min_size, max_size=max_size, init=init_connection,
                    reset=keep_session, command_timeout=command_timeout,
                    timeout=connect_timeout)
                break
            except TRANSIENT as err:
                if time.monotonic() + delay > deadline:
                    raise LedgerError(f"cannot connect to the ledger database: "
                                      f"{type(err).__name__}: {err}") from err
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        assert pool is not None
        return cls(pool, retry_seconds=retry_seconds, redactor=redactor)

    async def close(self) -> None:
        await self.pool.close()

    async def _retrying(self, op: Callable[[asyncpg.Connection], Awaitable[T]],
                        on_wait: Callable[[], None] | None = None) -> T:
        return await retrying(self.pool, op, seconds=self.retry_seconds, on_wait=on_wait,
                              fail=lambda why: LedgerError(f"ledger unavailable for {why}"))
