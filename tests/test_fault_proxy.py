"""The fault-injecting TCP proxy (``stead.testing.fault_proxy``): every fault as a real client
sees it — a plain echo server for exact timings, asyncpg against the suite's PostgreSQL, and a
temporalio Client against the dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from stead.stack.embedded import EmbeddedStack
from stead.testing.fault_proxy import _CHUNK, FaultProxy


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def round_trip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes) -> float:
    t = time.monotonic()
    w.write(data)
    await w.drain()
    assert await r.readexactly(len(data)) == data
    return time.monotonic() - t


# ---------------------------------------------------------------------------- echo server


async def test_latency_is_added_per_direction_with_jitter_that_never_reorders() -> None:
    async with echo_server() as up, FaultProxy(upstream=up, seed=3) as proxy:
        r, w = await dial(proxy)
        assert await round_trip(r, w, b"x") < 0.5
        proxy.set_latency(up=0.15, down=0.1)
        rtt = await round_trip(r, w, b"y")
        assert 0.25 <= rtt < 1.0, rtt
        proxy.set_latency(up=0.0, down=0.0, jitter=0.05)
        for i in range(40):  # 40 small writes, each with its own random delay
            w.write(b"%03d" % i)
            await asyncio.sleep(0.002)
        got = await asyncio.wait_for(r.readexactly(120), 5)
        assert got == b"".join(b"%03d" % i for i in range(40))
        proxy.clear()
        assert await round_trip(r, w, b"z") < 0.5
        w.close()
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == 3 + 120


async def test_the_same_seed_makes_the_same_jitter() -> None:
    async def delays(seed: int) -> list[float]:
        async with echo_server() as up, FaultProxy(upstream=up, seed=seed) as proxy:
            proxy.set_latency(up=0.0, down=0.0, jitter=0.01)
            r, w = await dial(proxy)
            await round_trip(r, w, b"a")
            w.close()
            return [proxy._rng.random() for _ in range(3)]  # the generator's state after

    assert await delays(5) == await delays(5)
    assert await delays(5) != await delays(6)


async def test_bandwidth_is_capped() -> None:
    async with echo_server() as up, FaultProxy(upstream=up) as proxy:
        r, w = await dial(proxy)
        proxy.set_bandwidth(down=500_000)
        rtt = await round_trip(r, w, b"b" * 250_000)
        # 250 kB at 500 kB/s, down only: each chunk waits for the one before it to have taken
        # its time, so all but the last read (at most _CHUNK bytes) are paced.
        assert rtt >= (250_000 - _CHUNK) / 500_000, rtt
        w.close()


async def test_drop_resets_open_connections_and_new_ones_work() -> None:
    async with echo_server() as up, FaultProxy(upstream=up) as proxy:
        conns = [await dial(proxy) for _ in range(3)]
        for r, w in conns:
            await round_trip(r, w, b"hi")
        assert proxy.stats.open == 3
        assert proxy.drop() == 3
        for r, _ in conns:
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(r.readexactly(1), 2)
        r, w = await dial(proxy)
        await round_trip(r, w, b"again")
        assert (proxy.stats.dropped, proxy.stats.drops, proxy.stats.open) == (3, 1, 1)
        for w_ in [w, *(c[1] for c in conns)]:
            w_.close()


async def test_drop_a_fraction_with_a_clean_close() -> None:
    async with echo_server() as up, FaultProxy(upstream=up, seed=1) as proxy:
        conns = [await dial(proxy) for _ in range(4)]
        for r, w in conns:
            await round_trip(r, w, b"hi")
        assert proxy.drop(how="close", fraction=0.5) == 2
        ended = 0
        for r, w in conns:
            try:
                data = await asyncio.wait_for(r.read(1), 0.3)
                ended += data == b""  # a FIN, not a reset
            except TimeoutError:
                await round_trip(r, w, b"still here")
        assert ended == 2
        assert proxy.stats.open == 2
        for _, w in conns:
            w.close()


async def test_refuse_closes_the_port_for_a_while_then_it_opens_again() -> None:
    async with echo_server() as up, FaultProxy(upstream=up) as proxy:
        r0, w0 = await dial(proxy)
        proxy.refuse(0.5)
        with pytest.raises(ConnectionRefusedError):
            await dial(proxy)
        await round_trip(r0, w0, b"open ones are untouched")
        await asyncio.sleep(0.7)
        r, w = await dial(proxy)
        await round_trip(r, w, b"back")
        proxy.refuse(5, how="reset")  # listening, but resetting each newcomer
        r2, w2 = await dial(proxy)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(r2.readexactly(1), 2)
        w2.close()
        proxy.clear()
        r3, w3 = await dial(proxy)
        await round_trip(r3, w3, b"cleared")
        assert (proxy.stats.refusals, proxy.stats.refused) == (2, 1)
        for w_ in (w0, w, w3):
            w_.close()


async def test_a_resumed_stall_holds_bytes_then_delivers_them() -> None:
    async with echo_server() as up, FaultProxy(upstream=up) as proxy:
        r, w = await dial(proxy)
        proxy.stall(0.6, resume=True)
        t = time.monotonic()
        w.write(b"held")
        await w.drain()
        await asyncio.sleep(0.2)
        assert proxy.stats.bytes_held == 4
        assert await asyncio.wait_for(r.readexactly(4), 3) == b"held"
        assert time.monotonic() - t >= 0.55
        assert proxy.stats.bytes_held == 0 and proxy.stats.hung == 0
        await round_trip(r, w, b"flowing")
        w.close()


async def test_a_half_dead_stall_hangs_its_connections_for_good_but_not_new_ones() -> None:
    async with echo_server() as up, FaultProxy(upstream=up) as proxy:
        r, w = await dial(proxy)
        await round_trip(r, w, b"before")
        proxy.stall(0.3)  # resume=False: a vanished peer, no FIN, no RST
        r2, w2 = await dial(proxy)  # opened during the stall: caught too
        w.write(b"lost")
        w2.write(b"lost")
        await asyncio.sleep(0.5)
        assert not proxy.stalling and proxy.stats.hung == 2
        for rr in (r, r2):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(rr.readexactly(1), 0.5)
        r3, w3 = await dial(proxy)
        await round_trip(r3, w3, b"after")
        assert (proxy.stats.stalls, proxy.stats.stalled) == (1, 2)
        w.close()  # the client gives up: only then is the link closed upstream
        await asyncio.sleep(0.1)
        assert proxy.stats.hung == 1 and proxy.stats.open == 2
        proxy.drop()
        assert proxy.stats.hung == 0
        for w_ in (w2, w3):
            w_.close()


def test_bad_fault_values_are_refused() -> None:
    proxy = FaultProxy(upstream="127.0.0.1:1")
    with pytest.raises(ValueError, match="negative"):
        proxy.set_latency(up=-1)
    with pytest.raises(ValueError, match="positive"):
        proxy.set_bandwidth(down=0)
    assert proxy.url_for("postgresql://u:p@127.0.0.1:5432/db?x=1") == \
        f"postgresql://u:p@{proxy.address}/db?x=1"


# ---------------------------------------------------------------------------- PostgreSQL


def _pg_upstream(stack: EmbeddedStack) -> str:
    return f"127.0.0.1:{stack.settings.stack.postgres_port}"


async def test_postgres_through_the_proxy_sees_each_fault(stack: EmbeddedStack) -> None:
    async with FaultProxy(upstream=_pg_upstream(stack)) as proxy:
        dsn = proxy.url_for(stack.database_url)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("select 1") == 1
            proxy.set_latency(up=0.1, down=0.1)
            t = time.monotonic()
            await conn.fetchval("select 2")
            assert time.monotonic() - t >= 0.2
            proxy.clear()
            proxy.drop()
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, OSError,
                                asyncpg.InterfaceError)):
                await conn.fetchval("select 3")
        finally:
            conn.terminate()

        conn = await asyncpg.connect(dsn)  # a new connection after the drop
        try:
            proxy.stall()  # half-dead, until cleared
            with pytest.raises(TimeoutError):
                await conn.fetchval("select 4", timeout=0.5)
            proxy.clear()
            assert proxy.stats.hung == 1
        finally:
            conn.terminate()

        proxy.refuse(1.0)
        with pytest.raises(OSError):
            await asyncpg.connect(dsn, timeout=2)
        await asyncio.sleep(1.2)
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("select 5") == 5
        await conn.close()
    assert proxy.stats.connections >= 3 and proxy.stats.dropped >= 1


# ---------------------------------------------------------------------------- Temporal


async def _describe(client: Client, timeout: float = 2.0) -> float:
    t = time.monotonic()
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace), timeout=timedelta(seconds=timeout))
    return time.monotonic() - t


async def test_temporal_through_the_proxy_sees_each_fault(stack: EmbeddedStack) -> None:
    async with FaultProxy(upstream=stack.temporal_address) as proxy:
        client = await Client.connect(proxy.address)
        assert await _describe(client) < 5
        proxy.set_latency(up=0.1, down=0.1)
        assert await _describe(client) >= 0.2
        proxy.clear()

        proxy.drop()  # the client reconnects on its own
        for _ in range(20):
            try:
                await _describe(client)
                break
            except RPCError:
                await asyncio.sleep(0.2)
        else:
            pytest.fail("no answer after the drop")
        assert proxy.stats.connections >= 2

        proxy.stall()  # a half-dead link: a bounded call fails, it does not hang
        with pytest.raises(RPCError):
            await _describe(client, timeout=1.0)
        proxy.clear()
        proxy.drop()  # what the client's keepalive would do after its timeout

        proxy.refuse(1.0)
        with pytest.raises(RuntimeError):
            await Client.connect(proxy.address)
        await asyncio.sleep(1.2)
        again = await Client.connect(proxy.address)
        assert await _describe(again) < 5
