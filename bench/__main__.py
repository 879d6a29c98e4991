"""``python -m bench``: stead vs plain temporalio, latency and throughput, side by side."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from bench.machine import load_average, machine_details
from bench.report import print_report, write_json
from bench.runner import BenchConfig, run_bench


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--runs", type=int, help="sequential runs per system (default 30)")
    ap.add_argument("--concurrency", type=int, help="runs per throughput burst (default 50)")
    ap.add_argument("--rounds", type=int, help="throughput bursts per system (default 5)")
    ap.add_argument("--warmup", type=int, help="sequential warm-up runs per system (default 5)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 8 runs, 2 bursts of 20, 2 warm-up (flags still override)")
    return ap.parse_args(argv)


def config_from(args: argparse.Namespace) -> BenchConfig:
    base = BenchConfig(runs=8, concurrency=20, rounds=2, warmup=2) if args.quick \
        else BenchConfig()
    return BenchConfig(
        runs=args.runs if args.runs is not None else base.runs,
        concurrency=args.concurrency if args.concurrency is not None else base.concurrency,
        rounds=args.rounds if args.rounds is not None else base.rounds,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        breakdown_runs=base.breakdown_runs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Offline and self-contained: never a real model, never someone else's servers.
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    cfg = config_from(args)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    result = asyncio.run(run_bench(cfg, progress=lambda msg: print(f"[bench] {msg}",
                                                                    flush=True)))
    machine["load_average_at_end"] = load_average()
    print_report(result, machine, command.strip())
    if args.json is not None:
        write_json(args.json, result, machine, command.strip())
        print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
    main()
