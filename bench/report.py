"""Tables for people (rich) and JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.breakdown import SEGMENTS
from bench.cpu import COMPONENTS
from bench.runner import PLAIN, STEAD, BenchResult

TARGET_LATENCY_RATIO = 1.5


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    # Below 1 ms the denominator is background noise (plain runs do not use PostgreSQL).
    return _f(a / b, 2) if b >= 1.0 else "-"


def print_report(result: BenchResult, machine: dict[str, object], command: str,
                 console: Console | None = None) -> None:
    con = console or Console()
    cfg = result.config
    s, p = result.systems[STEAD], result.systems[PLAIN]
    assert s.latency is not None and p.latency is not None

    t = Table(title=f"Sequential latency, ms ({cfg.runs} runs each, 6 model + 5 tool "
                    f"activities per run)")
    for col in ("system", "median", "p90", "min", "max", "mean"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for name, label in ((STEAD, "stead (ledger on)"), (PLAIN, "plain temporalio")):
        lat = result.systems[name].latency
        assert lat is not None
        t.add_row(label, *(_f(v) for v in (lat.median, lat.p90, lat.min, lat.max, lat.mean)))
    t.add_row("stead / plain", *(_f(a / b, 2) for a, b in (
        (s.latency.median, p.latency.median), (s.latency.p90, p.latency.p90),
        (s.latency.min, p.latency.min), (s.latency.max, p.latency.max),
        (s.latency.mean, p.latency.mean))), style="bold")
    con.print(t)

    t = Table(title=f"Throughput, runs/s ({cfg.rounds} bursts of {cfg.concurrency} "
                    f"concurrent runs each)")
    t.add_column("system")
    t.add_column("median", justify="right")
    t.add_column("bursts", justify="right")
    for name, label in ((STEAD, "stead (ledger on)"), (PLAIN, "plain temporalio")):
        r = result.systems[name]
        t.add_row(label, _f(r.throughput_median),
                  "  ".join(_f(x) for x in r.burst_runs_per_s))
    t.add_row("stead / plain", _f(result.throughput_ratio, 2), "", style="bold")
    con.print(t)

    sb, pb = s.breakdown, p.breakdown
    if sb is not None and pb is not None and sb.runs and pb.runs:
        t = Table(title=f"Where a run's time goes (server event times; median of the last "
                        f"{sb.runs} sequential runs; ms per run, n = intervals per run)")
        t.add_column("segment")
        for col in ("stead ms", "n", "plain ms", "n", "stead - plain"):
            t.add_column(col, justify="right")
        for seg in SEGMENTS:
            a, b = sb.segments_ms.get(seg, 0.0), pb.segments_ms.get(seg, 0.0)
            if a == 0 and b == 0:
                continue
            t.add_row(seg, _f(a), _f(sb.counts.get(seg, 0), 0), _f(b),
                      _f(pb.counts.get(seg, 0), 0), _f(a - b))
        t.add_row("server total (started -> completed)", _f(sb.total_ms), "", _f(pb.total_ms),
                  "", _f(sb.total_ms - pb.total_ms), style="bold")
        t.add_row("client overhead (start RPC + result poll)", _f(s.client_overhead_ms), "",
                  _f(p.client_overhead_ms), "", _f(s.client_overhead_ms - p.client_overhead_ms))
        t.add_row("history events per run", _f(sb.events, 0), "", _f(pb.events, 0), "", "")
        t.add_row("history bytes per run", _f(sb.history_bytes, 0), "", _f(pb.history_bytes, 0),
                  "", _f(sb.history_bytes - pb.history_bytes, 0))
        con.print(t)

    if s.cpu_ms_per_run_burst and p.cpu_ms_per_run_burst:
        t = Table(title="CPU per run, ms (from /proc; less sensitive to a busy machine than "
                        "wall time)")
        t.add_column("component")
        for col in ("stead seq", "plain seq", "ratio", "stead burst", "plain burst", "ratio"):
            t.add_column(col, justify="right")
        for comp in (*COMPONENTS, "total"):
            a, b = s.cpu_ms_per_run_sequential.get(comp, 0.0), \
                p.cpu_ms_per_run_sequential.get(comp, 0.0)
            c, d = s.cpu_ms_per_run_burst.get(comp, 0.0), p.cpu_ms_per_run_burst.get(comp, 0.0)
            t.add_row(comp, _f(a), _f(b), _ratio(a, b), _f(c), _f(d), _ratio(c, d),
                      style="bold" if comp == "total" else None)
        con.print(t)

    verdict = "within" if result.latency_ratio <= TARGET_LATENCY_RATIO else "NOT within"
    con.print(f"[bold]latency ratio stead/plain = {result.latency_ratio:.2f}[/] "
              f"({verdict} the {TARGET_LATENCY_RATIO}x target); "
              f"throughput ratio = {result.throughput_ratio:.2f}")

    print_machine(con, machine, command, result.seconds)


def print_machine(con: Console, machine: dict[str, object], command: str,
                  seconds: float) -> None:
    """The machine table every benchmark ends with."""
    t = Table(title="Machine", show_header=False)
    t.add_column("key")
    t.add_column("value")
    for k, v in machine.items():
        t.add_row(k, str(v))
    t.add_row("command", command)
    t.add_row("wall time", f"{seconds:.0f} s")
    con.print(t)


def write_json(path: Path, result: BenchResult, machine: dict[str, object], command: str) -> None:
    doc = {"command": command, "machine": machine, **dataclasses.asdict(result)}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
