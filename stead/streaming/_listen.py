"""The reading side's wake-up: one ``LISTEN stead_stream`` connection per process, fanned out
to the readers of each workflow.

    async with StreamListener(dsn) as listener:
        with listener.watch(workflow_id) as waker:
            while True:
                waker.arm()                       # before reading, so no NOTIFY slips by
                rows = await ledger.stream_rows(workflow_id, ...)
                ...
                await waker.wait(timeout=1.0)     # a NOTIFY for the workflow, or the timeout

A NOTIFY only says "read again": the rows are the truth, so a reader that misses one (the
listening connection was down, say) loses nothing, it reads a little later. While the
connection is down every reader polls at its timeout and the listener reconnects with
backoff; each (re)connection wakes every reader once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from types import TracebackType

import asyncpg

from stead.storage.ledger import STREAM_CHANNEL

log = logging.getLogger("stead.streaming")

RECONNECT_MAX_SECONDS = 5.0


class Waker:
    """One reader's wake-up call (see :meth:`StreamListener.watch`)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def arm(self) -> None:
        """Forget earlier wake-ups: call it before reading."""
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Until woken (True) or ``timeout`` seconds passed (False)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class StreamListener:
    """Listens on ``stead_stream`` for a process; connects on :meth:`start`, reconnects by
    itself, stops on :meth:`close`."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._wakers: dict[str, set[Waker]] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closed = False
        self.connected = asyncio.Event()
        """Set while the LISTEN connection is up."""

    async def start(self) -> None:
        """Connect now (raising what the first connection raises) and keep connected."""
        if self._task is not None:
            return
        await self._connect()
        self._task = asyncio.create_task(self._keep())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def __aenter__(self) -> StreamListener:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @contextlib.contextmanager
    def watch(self, workflow_id: str) -> Iterator[Waker]:
        """A waker that NOTIFYs for ``workflow_id`` set, for the block's duration."""
        waker = Waker()
        self._wakers.setdefault(workflow_id, set()).add(waker)
        try:
            yield waker
        finally:
            group = self._wakers.get(workflow_id)
            if group is not None:
                group.discard(waker)
                if not group:
                    del self._wakers[workflow_id]

    # ---------------------------------------------------------------- connection

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload:
            for waker in self._wakers.get(payload, ()):
                waker.wake()
        else:  # a workflow id too long for a payload: anyone may be meant
            self._wake_all()

    def _wake_all(self) -> None:
        for group in self._wakers.values():
            for waker in group:
                waker.wake()

    def _terminated(self, conn: object) -> None:
        self.connected.clear()
        self._lost.set()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.add_listener(STREAM_CHANNEL, self._notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._lost.clear()
        self.connected.set()
        self._wake_all()  # whatever was written while nobody listened

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    async def _keep(self) -> None:
        delay = 0.1
        while not self._closed:
            await self._lost.wait()
            await self._drop()
            self._wake_all()
            while not self._closed:
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        TimeoutError) as err:
                    log.warning("stream listener: cannot reconnect (%s: %s); again in %.1f s",
                                type(err).__name__, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                else:
                    delay = 0.1
                    break
