"""``python -m bench``: stead vs plain temporalio, latency and throughput, side by side.

    python -m bench                          # stead vs plain temporalio (the default workload)
    python -m bench --workload policy        # bench agent without / with a reference policy
    python -m bench --workload approvals     # approval -> approved tool start (signal, update)
    python -m bench --workload peers         # = python -m bench.peers (LangGraph, DBOS, ...)
    python -m bench --workload parked        # = python -m bench.parked (parked-run memory, resume)
    python -m bench --workload ttft          # = python -m bench.ttft (time to first token)

``--runs``, ``--warmup`` and ``--json`` apply to every workload; ``--quick`` too (8 runs,
2 warm-up). The guardrail microbenchmark, which needs no stack, is ``python -m
bench.guardrails``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from bench import approvals, guardrails, parked, ttft
from bench.machine import load_average, machine_details
from bench.peers import __main__ as peers_cli
from bench.report import print_report, write_json
from bench.runner import BenchConfig, run_bench

WORKLOADS = ("plain", "policy", "approvals", "peers", "parked", "ttft")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--runs", type=int, help="sequential runs per system (default 30)")
    ap.add_argument("--concurrency", type=int, help="runs per throughput burst (default 50)")
    ap.add_argument("--rounds", type=int, help="throughput bursts per system (default 5)")
    ap.add_argument("--warmup", type=int, help="sequential warm-up runs per system (default 5)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 8 runs, 2 bursts of 20, 2 warm-up (flags still override)")
    ap.add_argument("--workload", choices=WORKLOADS, default="plain",
                    help="plain: stead vs plain temporalio (default); policy: the bench agent "
                         "without / with a reference policy (guardrail cost end to end); "
                         "approvals: approval signal/update -> approved tool starts; "
                         "peers: stead vs plain temporalio, LangGraph+PostgreSQL and DBOS "
                         "(python -m bench.peers; --levels instead of --concurrency); "
                         "parked: worker memory per parked run and resume latency after "
                         "cache eviction (python -m bench.parked); "
                         "ttft: time to first token through stead vs straight from the model "
                         "server (python -m bench.ttft)")
    approvals.add_arguments(ap)
    ttft.add_arguments(ap)
    peers_cli.add_arguments(ap)
    parked.add_arguments(ap)
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
    if args.workload == "peers":
        peers_cli.run(args, command.strip())
        return
    if args.workload == "parked":
        parked.run(args, command.strip())
        return
    if args.workload == "ttft":
        args.runs, args.warmup = cfg.runs, cfg.warmup
        ttft.run(args, command.strip())
        return
    machine = machine_details()
    if args.workload != "plain":
        _other_workload(args, cfg, machine, command.strip())
        return
    result = asyncio.run(run_bench(cfg, progress=lambda msg: print(f"[bench] {msg}",
                                                                    flush=True)))
    machine["load_average_at_end"] = load_average()
    print_report(result, machine, command.strip())
    if args.json is not None:
        write_json(args.json, result, machine, command.strip())
        print(f"[bench] wrote {args.json}")


def _other_workload(args: argparse.Namespace, cfg: BenchConfig, machine: dict[str, object],
                    command: str) -> None:
    def progress(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    if args.workload == "policy":
        res = asyncio.run(guardrails.policy_workload(cfg.runs, cfg.warmup, progress=progress))
        machine["load_average_at_end"] = load_average()
        guardrails.print_policy(res, machine, command)
        doc: guardrails.PolicyResult | approvals.ApprovalsResult = res
    else:
        res_a = asyncio.run(approvals.approvals_workload(cfg.runs, cfg.warmup, args.settle,
                                                         progress=progress))
        machine["load_average_at_end"] = load_average()
        approvals.print_approvals(res_a, machine, command)
        doc = res_a
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "machine": machine,
                                         **dataclasses.asdict(doc)},
                                        indent=2, default=str) + "\n")
        print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
    main()
