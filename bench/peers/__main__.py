"""``python -m bench.peers``: stead, plain temporalio (and the engine's floor), pydantic-ai
and the OpenAI Agents SDK on Temporal, LangGraph + PostgreSQL and DBOS, side by side in one
invocation on one stack (see ``bench/peers/__init__.py``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bench.peers import missing_extra

if TYPE_CHECKING:
    from bench.peers.runner import PeersConfig

T = TypeVar("T")


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 10,50,200, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be at least 1: {text!r}")
    return levels


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The peer benchmark's flags (``python -m bench --workload peers`` shares them)."""
    ap.add_argument("--long-runs", type=int, help="50-tool runs per system (default 5)")
    ap.add_argument("--hitl-runs", type=int, help="approval runs per system (default 20)")
    ap.add_argument("--memory-runs", type=int,
                    help="parked runs per system for worker memory (default 1000; 0 skips)")
    ap.add_argument("--levels", type=_levels,
                    help="throughput concurrency levels, comma separated (default 10,50,200)")
    ap.add_argument("--systems", help="comma-separated subset of: stead, stead-local, "
                                      "stead-min, plain, plain-local, floor, pydantic-ai, "
                                      "openai-agents, langgraph, langgraph-async, dbos")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    ap.add_argument("--runs", type=int, help="sequential 5-tool runs per system (default 30)")
    ap.add_argument("--warmup", type=int, help="warm-up runs per system (default 5)")
    ap.add_argument("--rounds", type=int, help="bursts per system and level (default 3)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 5 runs, levels 10,50, 1 round, 2 long runs, 5 approval "
                         "runs, 100 parked runs (flags still override)")
    add_arguments(ap)
    return ap.parse_args(argv)


def config_from(args: argparse.Namespace) -> PeersConfig:
    from bench.peers.runner import SYSTEMS, PeersConfig

    base = PeersConfig(runs=5, warmup=2, concurrency=(10, 50), rounds=1, long_runs=2,
                       hitl_runs=5, memory_runs=100, breakdown_runs=5) if args.quick \
        else PeersConfig()
    systems = base.systems
    if args.systems:
        systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
        unknown = sorted(set(systems) - set(SYSTEMS))
        if unknown:
            raise SystemExit(f"error: unknown system(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(SYSTEMS)}")
    for flag in ("runs", "warmup", "rounds", "long_runs", "hitl_runs", "memory_runs"):
        v = getattr(args, flag, None)
        if v is not None and v < 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must not be negative")
    if getattr(args, "runs", None) == 0:
        raise SystemExit("error: --runs must be at least 1 (the latency table needs a run)")

    def pick(name: str, default: T) -> T:
        v = getattr(args, name, None)
        return default if v is None else v

    return PeersConfig(runs=pick("runs", base.runs), warmup=pick("warmup", base.warmup),
                       concurrency=pick("levels", base.concurrency),
                       rounds=pick("rounds", base.rounds),
                       long_runs=pick("long_runs", base.long_runs),
                       hitl_runs=pick("hitl_runs", base.hitl_runs),
                       memory_runs=pick("memory_runs", base.memory_runs),
                       breakdown_runs=base.breakdown_runs, systems=systems)


def run(args: argparse.Namespace, command: str) -> None:
    """Run the benchmark the parsed ``args`` describe and print (and write) its report."""
    problem = missing_extra()
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    from bench.machine import load_average, machine_details
    from bench.peers.report import print_peers, write_json
    from bench.peers.runner import run_peers

    cfg = config_from(args)
    machine = machine_details()
    from importlib import metadata

    for dist in ("langgraph", "langgraph-checkpoint-postgres", "dbos", "psycopg",
                 "pydantic-ai-slim", "temporalio-openai-agents", "openai-agents"):
        machine[dist] = metadata.version(dist)
    result = asyncio.run(run_peers(cfg, progress=lambda m: print(f"[peers] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_peers(result, machine, command)
    if args.json is not None:
        write_json(args.json, result, machine, command)
        print(f"[peers] wrote {args.json}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run(args, "python -m bench.peers " + shlex.join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
