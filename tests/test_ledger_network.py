"""The ledger on a bad network, through ``stead.testing.fault_proxy`` (found by the chaos
suite's ``pgnet`` phase): a statement on a half-dead link — bytes sent, nothing back, no FIN,
no RST — used to hang its caller, and its cancellation, forever; now the command timeout
ends it and the operation goes on over a new connection. And a worker started while the
database refuses connections waits for it (bounded) instead of exiting.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from stead.authoring.agent import AgentCatalog
from stead.errors import LedgerError
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.testing.fault_proxy import FaultProxy
from stead.worker import WorkerHost


def _upstream(stack: EmbeddedStack) -> str:
    return f"127.0.0.1:{stack.settings.stack.postgres_port}"


async def test_a_statement_on_a_half_dead_link_ends_within_the_command_timeout(
        stack: EmbeddedStack) -> None:
    async with FaultProxy(upstream=_upstream(stack)) as proxy:
        ledger = await Ledger.connect(proxy.url_for(stack.database_url), min_size=1,
                                      max_size=2, command_timeout=1.0)
        try:
            assert (await ledger.trail("wf-none")).runs == []
            proxy.stall(0.5)  # the pooled connection is caught and never answers again
            t = time.monotonic()
            trail = await asyncio.wait_for(ledger.trail("wf-none"), 20)
            took = time.monotonic() - t
            assert trail.runs == []
            # 1 s for the statement, at most 1 s more for asyncpg's cancellation of it, then
            # a new connection (the stall is over by then).
            assert 1.0 <= took < 6, took
            assert proxy.stats.stalled == 1 and proxy.stats.connections >= 2
        finally:
            ledger.pool.terminate()


async def test_without_a_command_timeout_only_a_reset_ends_it(stack: EmbeddedStack) -> None:
    """What the chaos suite met: the call waits as long as the link stays silent."""
    async with FaultProxy(upstream=_upstream(stack)) as proxy:
        ledger = await Ledger.connect(proxy.url_for(stack.database_url), min_size=1,
                                      max_size=1, command_timeout=None)
        try:
            await ledger.trail("wf-none")
            proxy.stall(0.2)
            call = asyncio.ensure_future(ledger.trail("wf-none"))
            await asyncio.sleep(3)
            assert not call.done()  # long after the stall ended
            proxy.drop()  # a reset is the only thing that ends it
            assert (await asyncio.wait_for(call, 20)).runs == []
        finally:
            ledger.pool.terminate()


async def test_connect_waits_through_refused_connections_within_retry_seconds(
        stack: EmbeddedStack) -> None:
    async with FaultProxy(upstream=_upstream(stack)) as proxy:
        dsn = proxy.url_for(stack.database_url)
        proxy.refuse(1.5)
        with pytest.raises(LedgerError, match="cannot connect to the ledger database: "
                                              "ConnectionRefusedError"):
            await Ledger.connect(dsn, retry_seconds=0)
        t = time.monotonic()
        ledger = await Ledger.connect(dsn, retry_seconds=20)
        try:
            assert time.monotonic() - t >= 1.0
            assert (await ledger.trail("wf-none")).runs == []
        finally:
            await ledger.close()
        proxy.stall()  # a connect that never completes is bounded too
        t = time.monotonic()
        with pytest.raises(LedgerError, match="TimeoutError"):
            await Ledger.connect(dsn, retry_seconds=0, connect_timeout=0.5)
        assert time.monotonic() - t < 5
        proxy.clear()
        proxy.drop()


async def test_the_worker_takes_its_timeouts_from_settings(settings: Settings,
                                                          catalog: AgentCatalog) -> None:
    s = settings.replace(db_command_timeout_seconds=7.0, db_connect_timeout_seconds=4.0)
    async with WorkerHost(s, catalog) as host:
        assert host.ledger is not None
        kwargs = host.ledger.pool._connect_kwargs  # asyncpg's, as given to each connect
        assert (kwargs["command_timeout"], kwargs["timeout"]) == (7.0, 4.0)

