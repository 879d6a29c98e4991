"""Worker memory per parked run, one system in a fresh process (``python -m bench.peers``
runs this once per system against its stack).

    python -m bench.peers.rss --system stead --runs 1000 --temporal 127.0.0.1:7233 \\
        --worker-dsn postgresql://... --owner-dsn postgresql://... --otlp http://...

What is measured: the resident set (``VmRSS``) of this process, which hosts the system's
worker (and the client that starts the runs), after ``gc.collect()``:

1. build the system and warm it up (5 approval runs and 2 five-tool runs, completed);
2. RSS before; start ``--runs`` approval runs, 25 at a time, each until it is parked
   waiting for its approval; RSS after. The difference per 1,000 runs is reported.
3. approve them all and check every run finished with the right answer.

Where a parked run lives differs by system, and that is the point of the figure:

- stead / plain temporalio / pydantic-ai / the OpenAI Agents SDK on Temporal: the run's
  workflow instance stays in the worker's sticky cache (``max_cached_workflows`` is raised to
  ``--runs`` + 100, and stead's eviction of parked runs is off, so none is evicted), with its
  coroutine and its state (for the frameworks, their agent run's messages and state); its
  durable state is Temporal's history. ``python -m bench.parked`` measures stead with its
  default eviction of parked runs.
- LangGraph: nothing. ``ainvoke`` returned at the ``interrupt``; the run is its checkpoint
  rows in PostgreSQL and resuming loads them.
- DBOS: the workflow's coroutine, suspended in ``recv_async``, with its DBOS context and
  notification registration; its durable state is DBOS's rows in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import approvals
from bench.peers.databases import DBOS_DB, LANGGRAPH_DB, with_database
from bench.peers.temporal_run import (
    OPENAI_AGENTS,
    PLAIN,
    PYDANTIC_AI,
    STEAD_FULL,
    STEAD_MIN,
    Parked,
    temporal_system,
)
from bench.peers.workload import FIVE, HITL, workloads
from stead.settings import Settings

BATCH = 25
TEMPORAL = (STEAD_FULL, STEAD_MIN, PLAIN, PYDANTIC_AI, OPENAI_AGENTS)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def open_system(args: argparse.Namespace) -> AsyncIterator[Any]:
    if args.system in TEMPORAL:
        with tempfile.TemporaryDirectory(prefix="stead-peers-rss-") as tmp:
            base = Settings(data_dir=Path(tmp), temporal_address=args.temporal,
                            database_url=args.worker_dsn, migrate_database_url=args.owner_dsn,
                            openai_api_key=None)
            async with temporal_system(base, args.system, otlp=args.otlp,
                                       cached_workflows=args.runs + 100) as s:
                yield s
    elif args.system == "langgraph":
        from bench.peers.langgraph_run import langgraph_system

        async with langgraph_system(with_database(args.owner_dsn, LANGGRAPH_DB)) as s:
            yield s
    elif args.system == "dbos":
        from bench.peers.dbos_run import dbos_system

        async with dbos_system(with_database(args.owner_dsn, DBOS_DB)) as s:
            yield s
    else:
        raise SystemExit(f"unknown system {args.system!r}")


async def _in_batches(items: list[Any], fn: Any) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(items), BATCH):
        out += await asyncio.gather(*(fn(x) for x in items[i:i + BATCH]))
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    w = workloads()
    async with open_system(args) as s:
        async def full_hitl(run_id: str) -> None:
            p = await s.park(run_id)
            await s.release(p)
            w[HITL].check(s.name, run_id, await s.finish(p))

        for _ in range(5):
            await full_hitl(f"rss-{s.name}-warm-{uuid.uuid4().hex[:10]}")
        for _ in range(2):
            rid = f"rss-{s.name}-warm5-{uuid.uuid4().hex[:10]}"
            w[FIVE].check(s.name, rid, await s.run(FIVE, rid))
        approvals._entered.clear()
        gc.collect()
        await asyncio.sleep(1.0)
        before = rss_mib()
        t0 = time.perf_counter()
        ids = [f"rss-{s.name}-{uuid.uuid4().hex[:12]}" for _ in range(args.runs)]
        parked: list[Parked] = await _in_batches(ids, lambda rid: s.park(rid, precise=False))
        took = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # the last runs' workflow tasks complete
        gc.collect()
        after = rss_mib()

        async def done(p: Parked) -> None:
            await s.release(p)
            w[HITL].check(s.name, p.run_id, await s.finish(p))
        await _in_batches(parked, done)
        approvals._entered.clear()
    return {"runs": args.runs, "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1),
            "mib_per_1000_runs": round((after - before) * 1000 / args.runs, 2),
            "park_seconds": round(took, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.rss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", required=True,
                    choices=(*TEMPORAL, "langgraph", "dbos"))
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--temporal", required=True, help="Temporal frontend address")
    ap.add_argument("--worker-dsn", required=True, help="stead ledger DSN (worker role)")
    ap.add_argument("--owner-dsn", required=True, help="PostgreSQL owner DSN (migrations)")
    ap.add_argument("--otlp", help="OTLP/HTTP endpoint for stead's full path")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    print(json.dumps(asyncio.run(measure(args))), flush=True)


if __name__ == "__main__":
    main()
