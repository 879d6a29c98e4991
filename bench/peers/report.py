"""The peer benchmark's tables (rich) and JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.breakdown import SEGMENTS
from bench.cpu import COMPONENTS
from bench.peers.runner import DBOS, LABELS, LANGGRAPH, PeersResult, Spread
from bench.peers.temporal_run import (
    FLOOR,
    OPENAI_AGENTS,
    PLAIN,
    PYDANTIC_AI,
    STEAD_FULL,
    STEAD_LOCAL,
    TEMPORAL_SYSTEMS,
)
from bench.report import print_machine

TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("5-tool latency, stead full / LangGraph+PG", f"latency {STEAD_FULL}/{LANGGRAPH}", 1.0, "<="),
    ("5-tool latency, stead full / DBOS", f"latency {STEAD_FULL}/{DBOS}", 1.0, "<="),
    ("throughput at 50, stead full / LangGraph+PG", f"throughput@50 {STEAD_FULL}/{LANGGRAPH}",
     1.0, ">="),
    ("throughput at 50, stead full / DBOS", f"throughput@50 {STEAD_FULL}/{DBOS}", 1.0, ">="),
    ("stead features over plain temporalio (latency)", f"latency {STEAD_FULL}/{PLAIN}", 1.10,
     "<="),
    ("5-tool latency, stead local / LangGraph+PG", f"latency {STEAD_LOCAL}/{LANGGRAPH}", 1.0,
     "<="),
    ("5-tool latency, stead local / DBOS", f"latency {STEAD_LOCAL}/{DBOS}", 1.0, "<="),
    ("throughput at 50, stead local / LangGraph+PG",
     f"throughput@50 {STEAD_LOCAL}/{LANGGRAPH}", 1.0, ">="),
    ("throughput at 50, stead local / DBOS", f"throughput@50 {STEAD_LOCAL}/{DBOS}", 1.0, ">="),
    ("stead local over plain temporalio (latency)", f"latency {STEAD_LOCAL}/{PLAIN}", 1.10,
     "<="),
    ("5-tool latency, stead local / the engine's floor", f"latency {STEAD_LOCAL}/{FLOOR}", 1.3,
     "<="),
    ("throughput at 50, stead local / the engine's floor",
     f"throughput@50 {STEAD_LOCAL}/{FLOOR}", 0.8, ">="),
    *((f"5-tool latency, {mine} / {peer}", f"latency {mine}/{peer}", 1.0, "<=")
      for mine in (STEAD_FULL, STEAD_LOCAL) for peer in (PYDANTIC_AI, OPENAI_AGENTS)),
    *((f"throughput at 50, {mine} / {peer}", f"throughput@50 {mine}/{peer}", 1.0, ">=")
      for mine in (STEAD_FULL, STEAD_LOCAL) for peer in (PYDANTIC_AI, OPENAI_AGENTS)),
)
"""The issues' targets (#8, #16): (what, ratio key, bound, direction)."""


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def _spread_table(title: str, res: PeersResult, attr: str, *, ratio_to: str = STEAD_FULL,
                  unit_note: str = "") -> Table | None:
    rows = [(n, getattr(r, attr)) for n, r in res.systems.items() if getattr(r, attr)]
    if not rows:
        return None
    t = Table(title=title + unit_note)
    t.add_column("system")
    for col in ("median", "p10", "p90", "min", "max", "n", "stead full / this"):
        t.add_column(col, justify="right")
    base: Spread | None = getattr(res.systems[ratio_to], attr) if ratio_to in res.systems \
        else None
    for name, s in rows:
        ratio = _f(base.median / s.median, 2) if base is not None and s.median else "-"
        t.add_row(LABELS[name], *(_f(v) for v in (s.median, s.p10, s.p90, s.min, s.max)),
                  str(s.n), ratio if name != ratio_to else "",
                  style="bold" if name == ratio_to else None)
    return t


def print_peers(res: PeersResult, machine: dict[str, object], command: str,
                console: Console | None = None) -> None:
    con = console or Console(width=150)
    cfg = res.config
    for table in (
        _spread_table(f"5-tool run, sequential latency, ms ({cfg.runs} runs each; 6 model + 5 "
                      f"tool calls)", res, "latency"),
        _spread_table(f"50-tool run, latency, ms ({cfg.long_runs} runs each; 51 model + 50 "
                      f"tool calls)", res, "long"),
        _spread_table(f"Approval -> approved tool entered, ms ({cfg.hitl_runs} runs each, "
                      f"parked {cfg.settle}s first)", res, "hitl"),
    ):
        if table is not None:
            con.print(table)

    levels = list(cfg.concurrency)
    if levels and any(r.throughput_median for r in res.systems.values()):
        t = Table(title=f"Throughput, runs/s (median of {cfg.rounds} bursts per level; "
                        f"{escape('[min-max]')} of the bursts)")
        t.add_column("system")
        for c in levels:
            t.add_column(f"{c} concurrent", justify="right")
        for c in levels:
            t.add_column(f"stead full / this @{c}", justify="right")
        full = res.systems.get(STEAD_FULL)
        for name, r in res.systems.items():
            cells = []
            for c in levels:
                xs = r.throughput.get(c, [])
                cells.append(f"{_f(r.throughput_median[c])} [{_f(min(xs))}-{_f(max(xs))}]"
                             if xs else "-")
            for c in levels:
                mine = r.throughput_median.get(c)
                cells.append(_f(full.throughput_median[c] / mine, 2)
                             if full is not None and mine and name != STEAD_FULL
                             and c in full.throughput_median else "")
            t.add_row(LABELS[name], *cells, style="bold" if name == STEAD_FULL else None)
        con.print(t)

        c = 50 if 50 in levels else levels[-1]
        t = Table(title=f"CPU per run during the {c}-concurrent bursts, ms (from /proc: "
                        f"python = this process, all clients and workers)")
        t.add_column("system")
        for comp in (*COMPONENTS, "total"):
            t.add_column(comp, justify="right")
        for name, r in res.systems.items():
            used = r.cpu_ms_per_run.get(c)
            if used:
                t.add_row(LABELS[name], *(_f(used.get(k, 0.0)) for k in (*COMPONENTS, "total")))
        con.print(t)

    mem = [(n, r.memory) for n, r in res.systems.items() if r.memory is not None]
    if mem:
        t = Table(title="Worker memory: RSS of a fresh worker process before / after parking "
                        "N approval runs (see bench/peers/rss.py for what is held where)")
        t.add_column("system")
        for col in ("runs parked", "RSS before MiB", "RSS after MiB", "MiB per 1,000 runs",
                    "KiB per run", "parking took s"):
            t.add_column(col, justify="right")
        for name, m in mem:
            assert m is not None
            t.add_row(LABELS[name], str(m.runs), _f(m.rss_before_mib), _f(m.rss_after_mib),
                      _f(m.mib_per_1000_runs, 2), _f(m.mib_per_1000_runs * 1.024, 1),
                      _f(m.park_seconds))
        con.print(t)

    bds = [(n, res.systems[n].breakdown) for n in TEMPORAL_SYSTEMS
           if n in res.systems and res.systems[n].breakdown is not None]
    if bds:
        t = Table(title="Where a Temporal run's time goes (server event times; median of the "
                        "last sequential runs; ms per run, n = intervals per run)")
        t.add_column("segment")
        for n, _ in bds:
            t.add_column(f"{n} ms", justify="right")
            t.add_column("n", justify="right")
        for seg in SEGMENTS:
            vals = [(b.segments_ms.get(seg, 0.0), b.counts.get(seg, 0)) for _, b in bds
                    if b is not None]
            if all(v == 0 for v, _ in vals):
                continue
            t.add_row(seg, *(x for v, k in vals for x in (_f(v), _f(k, 0))))
        t.add_row("server total (started -> completed)",
                  *(x for _, b in bds if b is not None for x in (_f(b.total_ms), "")),
                  style="bold")
        t.add_row("history events per run",
                  *(x for _, b in bds if b is not None for x in (_f(b.events, 0), "")))
        t.add_row("history bytes per run",
                  *(x for _, b in bds if b is not None for x in (_f(b.history_bytes, 0), "")))
        con.print(t)

    for name, r in res.systems.items():
        for note in r.notes:
            con.print(f"{LABELS[name]}: {note}")

    t = Table(title="Targets (issues #8 and #16), ratios from this run")
    for col in ("target", "ratio", "bound", "verdict"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for what, key, bound, direction in TARGETS:
        v = res.ratios.get(key)
        if v is None:
            continue
        ok = v <= bound if direction == "<=" else v >= bound
        t.add_row(what, _f(v, 2), f"{direction} {bound:.2f}", "met" if ok else "MISSED",
                  style=None if ok else "bold")
    if t.row_count:  # none when the systems a target compares were not run
        con.print(t)
    print_machine(con, machine, command, res.seconds)


def write_json(path: Path, res: PeersResult, machine: dict[str, object], command: str) -> None:
    doc = {"command": command, "machine": machine, **dataclasses.asdict(res)}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
