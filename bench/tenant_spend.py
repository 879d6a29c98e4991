"""``python -m bench.tenant_spend``: what a tenant's spending windows cost per model call.

    python -m bench.tenant_spend                       # ~15 s on the embedded PostgreSQL
    python -m bench.tenant_spend --calls 2000 --concurrency 50 --json out.json

A model call of a tenant with spending windows makes two more database round trips than one
without: ``reserve_spend`` before the model is called and ``settle_spend`` after it answered
(``stead.storage.ledger._spend``). Both are SQL functions that take a lock per tenant, so the
calls of one tenant are decided one at a time. Three cases, each on the embedded PostgreSQL
(the workers' least-privilege role, two pools as two workers):

- **sequential**: one call after another: the latency each round trip adds to a call;
- **one tenant, contended**: ``--concurrency`` calls at once, all of one tenant, across both
  pools: the per-tenant lock at work (the worst case: every call waits for the others);
- **spread**: as many at once, each of another tenant: no lock shared.

Each concurrent case also checks the cap it ran against held: spent + reserved never above it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import load_average, machine_details
from bench.stats import Summary, summarise


@dataclass(frozen=True)
class Case:
    name: str
    calls: int
    seconds: float
    reserve_ms: Summary
    settle_ms: Summary

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else float("nan")


async def _call(ledger: object, tenant: str, cap: float, usd: float,
                out: tuple[list[float], list[float]]) -> bool:
    from stead.storage.ledger import Ledger, SpendKey

    assert isinstance(ledger, Ledger)
    key = SpendKey(f"bench-{uuid.uuid4().hex}", "r", 1)
    t0 = time.perf_counter()
    got = await ledger.reserve_spend(tenant, key, usd=usd, caps={"day": cap, "month": cap},
                                     ttl_seconds=900)
    t1 = time.perf_counter()
    out[0].append((t1 - t0) * 1000)
    if got.outcome != "reserved":
        return False
    await ledger.settle_spend(key, usd=usd / 2)
    out[1].append((time.perf_counter() - t1) * 1000)
    return True


async def _case(name: str, pools: list[object], calls: int, concurrency: int,
                tenants: int) -> Case:
    from stead.storage.ledger import Ledger

    names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(tenants)]
    cap = 1e9  # never reached: this measures the cost, tests/test_tenant_spend.py the caps
    times: tuple[list[float], list[float]] = ([], [])
    queue = list(range(calls))

    async def lane(i: int) -> None:
        while queue:
            n = queue.pop()
            await _call(pools[i % len(pools)], names[n % tenants], cap, 0.001, times)
    t0 = time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    seconds = time.perf_counter() - t0
    first = pools[0]
    assert isinstance(first, Ledger)
    for t in names:
        for w in await first.spend_usage({}, tenant=t):
            assert w.spent_usd + w.reserved_usd <= cap
    return Case(name, calls, seconds, summarise(times[0]), summarise(times[1]))


async def bench(calls: int, concurrency: int, dsn: str | None) -> list[Case]:
    from stead.settings import Settings
    from stead.stack.embedded import EmbeddedStack, free_port
    from stead.storage.ledger import Ledger, migrate

    async def run(worker_dsn: str) -> list[Case]:
        pools = [await Ledger.connect(worker_dsn, min_size=concurrency // 2 + 1,
                                      max_size=concurrency) for _ in range(2)]
        try:
            await _case("warm-up", pools, 200, 1, 1)
            return [await _case("sequential", pools, calls, 1, 1),
                    await _case(f"one tenant, {concurrency} at once", pools, calls,
                                concurrency, 1),
                    await _case(f"spread, {concurrency} at once", pools, calls, concurrency,
                                concurrency)]
        finally:
            for p in pools:
                await p.close()

    if dsn is not None:
        await migrate(dsn)
        return await run(dsn)
    with tempfile.TemporaryDirectory(prefix="stead-bench-spend-") as tmp:
        settings = Settings(data_dir=Path(tmp), temporal_port=free_port(), ui_port=free_port(),
                            postgres_port=free_port(), memory_backend="off").replace(
            temporal_address=None, database_url=None, openai_api_key=None,
            otel_exporter_otlp_endpoint=None)
        async with EmbeddedStack(settings, ui=False) as stack:
            return await run(stack.worker_database_url)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tenant_spend", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000, help="model calls per case")
    ap.add_argument("--concurrency", type=int, default=50, help="calls at once (concurrent "
                                                                "cases)")
    ap.add_argument("--database-url", help="a PostgreSQL to use (migrated first; default: "
                                           "the embedded one, started for the run)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    cases = asyncio.run(bench(args.calls, args.concurrency, args.database_url))
    machine = machine_details()
    print(f"tenant spending windows: reserve + settle per model call "
          f"({args.calls} calls per case); load {load_average()}")
    print(f"{'case':<28} {'calls/s':>9} {'reserve p50':>12} {'p90':>8} {'settle p50':>11} "
          f"{'p90':>8}")
    for c in cases:
        print(f"{c.name:<28} {c.calls_per_second:>9.0f} {c.reserve_ms.median:>9.2f} ms "
              f"{c.reserve_ms.p90:>5.2f} ms {c.settle_ms.median:>8.2f} ms "
              f"{c.settle_ms.p90:>5.2f} ms")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "cases": [{**asdict(c), "calls_per_second": c.calls_per_second}
                                          for c in cases]}, indent=2, default=str))


if __name__ == "__main__":
    main()
