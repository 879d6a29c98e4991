"""Load one system only, so a sampling profiler sees nothing else in the process.

    py-spy record -f raw -o stead.txt -- python -m bench.profile stead --runs 30 --bursts 3
"""

from __future__ import annotations

import argparse
import asyncio

from bench.runner import SYSTEMS, bench_stack


async def _load(system: str, runs: int, bursts: int, concurrency: int) -> None:
    async with bench_stack() as h:
        for _ in range(3):
            await h.one(system)
        for _ in range(runs):
            await h.one(system)
        for _ in range(bursts):
            wall = await h.burst(system, concurrency)
            print(f"{system}: {concurrency} runs in {wall:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("system", choices=SYSTEMS)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=50)
    a = ap.parse_args()
    asyncio.run(_load(a.system, a.runs, a.bursts, a.concurrency))


if __name__ == "__main__":
    main()
