"""A worker whose link to Temporal goes half-dead (``stead.testing.fault_proxy``): its polls
hang on the dead connection until the client's HTTP/2 keepalive gives up on it, so the
keepalive settings bound how long the worker is deaf (found by the ``temporalnet`` chaos
phase: 30 s + 15 s with the SDK's defaults).
"""

from __future__ import annotations

import asyncio
import time

from stead.authoring.agent import AgentCatalog
from stead.client import connect, keepalive, start_run
from stead.contracts.models import RunRequest
from stead.settings import Settings, TemporalSettings
from stead.stack.embedded import EmbeddedStack
from stead.testing.fault_proxy import FaultProxy
from stead.worker import WorkerHost

REQUEST = "Checkout API is throwing 500s - check status and logs, open a ticket"


def test_keepalive_comes_from_settings() -> None:
    assert keepalive(TemporalSettings()).interval_millis == 30_000  # the SDK's default
    k = keepalive(TemporalSettings(keepalive_interval_seconds=10, keepalive_timeout_seconds=2.5))
    assert (k.interval_millis, k.timeout_millis) == (10_000, 2_500)


async def test_a_worker_behind_a_half_dead_link_hears_again_within_its_keepalive(
        stack: EmbeddedStack, settings: Settings, catalog: AgentCatalog) -> None:
    direct = await connect(settings)
    async with FaultProxy(upstream=stack.temporal_address) as proxy:
        s = settings.replace(temporal_address=proxy.address,
                             temporal_keepalive_interval_seconds=10,
                             temporal_keepalive_timeout_seconds=3)
        async with WorkerHost(s, catalog):
            first = await start_run(direct, RunRequest(agent="ops", input=REQUEST),
                                    temporal=settings.temporal)
            assert (await asyncio.wait_for(first.result(), 60)).status == "completed"
            proxy.stall(1.0)  # the worker's connection is caught: silent for good
            await asyncio.sleep(1.5)
            assert proxy.stats.hung == 1
            t = time.monotonic()
            h = await start_run(direct, RunRequest(agent="ops", input=REQUEST),
                                temporal=settings.temporal)
            r = await asyncio.wait_for(h.result(), 60)
            took = time.monotonic() - t
            assert r.status == "completed"
            # Deaf until the ping goes unanswered (<= 10 s + 3 s), then a new connection;
            # with the SDK's defaults this took ~44 s.
            assert took < 30, took
            assert proxy.stats.connections >= 2
            proxy.drop()
