"""``python -m chaos``: kill workers, restart servers, break the model and the tools — then
prove nothing was lost, nothing was done twice and the ledger is whole.

    python -m chaos                                 # the default suite (~6 min on 2 cores)
    python -m chaos --runs 5 --kills 3 --only kills # a smoke run
    python -m chaos --reliability-md RELIABILITY.md # also refresh the table there

Exit code 0 when every invariant holds, 1 when one does not (a lost run, a duplicate side
effect, a silent re-run, a ledger gap, a broken hash chain) or a phase was skipped for time,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from bench.machine import load_average, machine_details
from chaos.harness import PHASES, ChaosConfig, run_chaos
from chaos.report import print_report, update_markdown, write_json


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = ChaosConfig()
    ap = argparse.ArgumentParser(prog="python -m chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=_count, default=d.runs,
                    help=f"shop orders in the kills phase (default {d.runs})")
    ap.add_argument("--kills", type=_count, default=d.kills,
                    help=f"worker SIGKILLs to aim for (default {d.kills})")
    ap.add_argument("--minutes", type=_minutes, default=d.minutes,
                    help=f"time budget; later phases are skipped past it (default {d.minutes:g})")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    ap.add_argument("--workers", type=_count, default=d.workers,
                    help=f"worker processes per pool (default {d.workers})")
    ap.add_argument("--concurrency", type=_count, default=d.concurrency,
                    help=f"runs in flight in the kills phase (default {d.concurrency})")
    ap.add_argument("--infra-runs", type=_count, default=d.infra_runs,
                    help=f"runs across each server restart (default {d.infra_runs})")
    ap.add_argument("--fault-runs", type=_count, default=d.fault_runs,
                    help=f"runs per model/tool fault kind (default {d.fault_runs})")
    ap.add_argument("--only", action="append", choices=PHASES, metavar="PHASE",
                    help=f"run only these phases (repeatable): {', '.join(PHASES)}")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--reliability-md", type=Path, metavar="PATH",
                    help="replace the generated block of this Markdown file with the report")
    ap.add_argument("--keep", action="store_true",
                    help="keep the data directory (worker logs, world, Temporal DB)")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        ap.error("--workers and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Loopback only and self-contained: never a real model, never someone else's servers.
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "PINECONE_API_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    cfg = ChaosConfig(runs=args.runs, kills=args.kills, minutes=args.minutes, seed=args.seed,
                      workers=args.workers, concurrency=args.concurrency,
                      infra_runs=args.infra_runs, fault_runs=args.fault_runs,
                      phases=tuple(args.only) if args.only else PHASES, keep=args.keep)
    command = " ".join(["python -m chaos", shlex.join(sys.argv[1:] if argv is None
                                                      else argv)]).strip()
    machine = machine_details()
    result = asyncio.run(run_chaos(cfg, progress=lambda m: print(f"[chaos] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_report(result, machine, command)
    if result.data_dir:
        print(f"[chaos] data kept in {result.data_dir}")
    if args.json is not None:
        write_json(args.json, result, machine, command)
        print(f"[chaos] wrote {args.json}")
    if args.reliability_md is not None:
        update_markdown(args.reliability_md, result, machine, command)
        print(f"[chaos] updated {args.reliability_md}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
