"""``python -m bench.replay``: how fast the recorded corpus replays (histories/s).

    python -m bench.replay                         # evals/histories, 3 warm-up + 15 timed passes
    python -m bench.replay --copies 5 --json out.json

What ``stead replay DIR`` and the CI gate do, timed: the corpus files are read and validated
once (reading is timed separately), then each pass replays every history through
:func:`stead.evals.replay.replay` with one production-configured ``Replayer`` (the worker's
workflow runner: no sandbox unless ``STEAD_WORKFLOW_SANDBOX`` says so; stead's data
converter). ``--copies K`` feeds each history K times per pass, so a pass is long enough that
the replay iterator's start-up does not dominate. The first pass in the process also pays the
first replay of each workflow type (and, sandboxed, the sandbox's first import of the
workflow modules); it is reported on its own ("cold") and never counted in the timed passes.
Every pass must replay every history cleanly, or the benchmark stops: a fast broken replay
measures nothing.

No server is involved: replay is CPU work in this process (the SDK core plus the workflow
code). ``--compare-sandbox`` adds as many passes with the other runner (sandboxed when
production runs without, and the reverse), to show the sandbox's share of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from temporalio.worker import Replayer

from bench.machine import load_average, machine_details
from bench.report import print_machine
from bench.stats import Summary, summarise
from stead.evals.replay import (
    RecordedHistory,
    ReplayOutcome,
    load_histories,
    production_replayer,
    replay,
)
from stead.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "evals" / "histories"


@dataclass
class ReplayBench:
    corpus: str
    histories: int
    """Distinct histories in the corpus."""
    events: int
    """Events in the corpus (one copy)."""
    copies: int
    warmup: int
    passes: int
    load_ms: float
    """Reading and validating every file once (JSON + protobuf parse)."""
    cold_pass_s: float
    """The first pass in the process: includes the first replay of each workflow type."""
    pass_seconds: list[float] = field(default_factory=list)
    histories_per_s: Summary | None = None
    events_per_s: Summary | None = None
    history_events: dict[str, int] = field(default_factory=dict)
    per_history_ms: dict[str, Summary] = field(default_factory=dict)
    """Median etc. of each history's replay time over the timed passes (between consecutive
    results of the replay iterator)."""
    sandboxed: bool = False
    """Whether the timed passes ran the workflows in Temporal's sandbox."""
    other_runner_histories_per_s: Summary | None = None
    """With ``--compare-sandbox``: the same passes with the other workflow runner."""


async def _one_pass(recs: list[RecordedHistory], copies: int,
                    stamps: dict[str, list[float]] | None,
                    make: Callable[[], Replayer] = production_replayer) -> float:
    batch = [r for r in recs for _ in range(copies)]
    replayer = make()
    last = time.perf_counter()

    def seen(o: ReplayOutcome) -> None:
        nonlocal last
        now = time.perf_counter()
        if stamps is not None:
            stamps[o.workflow_id].append((now - last) * 1000)
        last = now

    started = time.perf_counter()
    report = await replay(batch, replayer=replayer, on_outcome=seen)
    took = time.perf_counter() - started
    bad = [o for o in report.outcomes if o.status != "ok"]
    if bad:
        raise SystemExit(f"replay failed for {len(bad)} histories, e.g. {bad[0].workflow_id}: "
                         f"{bad[0].status} {bad[0].detail}; fix the corpus or the code first")
    return took


async def run_bench(corpus: Path, *, copies: int, warmup: int, passes: int,
                    compare_sandbox: bool = False, progress: bool = True) -> ReplayBench:
    started = time.perf_counter()
    recs = load_histories([corpus])
    load_ms = (time.perf_counter() - started) * 1000
    events = sum(len(r.history.events) for r in recs)
    res = ReplayBench(corpus=str(corpus), histories=len(recs), events=events, copies=copies,
                      warmup=warmup, passes=passes, load_ms=load_ms, cold_pass_s=0.0,
                      history_events={r.history.workflow_id: len(r.history.events)
                                      for r in recs},
                      sandboxed=load_settings().worker.workflow_sandbox)
    res.cold_pass_s = await _one_pass(recs, copies, None)
    for _ in range(warmup):
        await _one_pass(recs, copies, None)
    stamps: dict[str, list[float]] = defaultdict(list)
    for i in range(passes):
        res.pass_seconds.append(await _one_pass(recs, copies, stamps))
        if progress:
            print(f"[bench.replay] pass {i + 1}/{passes}: {res.pass_seconds[-1]:.3f} s",
                  flush=True)
    n = len(recs) * copies
    res.histories_per_s = summarise([n / s for s in res.pass_seconds])
    res.events_per_s = summarise([events * copies / s for s in res.pass_seconds])
    res.per_history_ms = {wid: summarise(v) for wid, v in sorted(stamps.items())}
    if compare_sandbox:
        def other() -> Replayer:
            return production_replayer(sandbox=not res.sandboxed)
        for _ in range(warmup + 1):
            await _one_pass(recs, copies, None, other)
        times = [await _one_pass(recs, copies, None, other) for _ in range(passes)]
        res.other_runner_histories_per_s = summarise([n / s for s in times])
    return res


def print_bench(res: ReplayBench, machine: dict[str, object], command: str, seconds: float,
                console: Console | None = None) -> None:
    con = console or Console()
    assert res.histories_per_s is not None and res.events_per_s is not None
    hs, es = res.histories_per_s, res.events_per_s
    per_pass = res.histories * res.copies
    t = Table(title=f"Replay speed: {res.histories} recorded histories ({res.events} events) "
                    f"x {res.copies} per pass, {res.passes} timed passes after "
                    f"{res.warmup} warm-up")
    for col in ("measure", "median", "min", "max", "p90"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    t.add_row("histories/s", f"{hs.median:.1f}", f"{hs.min:.1f}", f"{hs.max:.1f}", "",
              style="bold")
    t.add_row("events/s", f"{es.median:.0f}", f"{es.min:.0f}", f"{es.max:.0f}", "")
    ps = summarise(res.pass_seconds)
    t.add_row(f"pass, s ({per_pass} histories)", f"{ps.median:.3f}", f"{ps.min:.3f}",
              f"{ps.max:.3f}", f"{ps.p90:.3f}")
    if res.other_runner_histories_per_s is not None:
        u = res.other_runner_histories_per_s
        other = "without the sandbox" if res.sandboxed else "in the sandbox"
        t.add_row(f"histories/s {other} (what-if)", f"{u.median:.1f}",
                  f"{u.min:.1f}", f"{u.max:.1f}", "")
    t.add_row("first pass in the process (cold), s", f"{res.cold_pass_s:.3f}", "", "", "")
    t.add_row("read + validate the files, ms", f"{res.load_ms:.1f}", "", "", "")
    con.print(t)

    t = Table(title="Per history, ms (median over every replay of it in the timed passes)")
    for col in ("history", "events", "median", "p90", "max"):
        t.add_column(col, justify="left" if col == "history" else "right")
    for wid, s in sorted(res.per_history_ms.items(), key=lambda kv: -kv[1].median):
        t.add_row(wid, str(res.history_events.get(wid, "")), f"{s.median:.1f}",
                  f"{s.p90:.1f}", f"{s.max:.1f}")
    con.print(t)
    print_machine(con, machine, command, seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.replay",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--corpus", type=Path, default=CORPUS,
                    help="directory of history files (default evals/histories)")
    ap.add_argument("--copies", type=int, default=5,
                    help="times each history is replayed per pass (default 5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed passes after the cold one")
    ap.add_argument("--passes", type=int, default=15, help="timed passes (default 15)")
    ap.add_argument("--compare-sandbox", action="store_true",
                    help="also time the passes with the other workflow runner (what-if)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.copies < 1 or args.passes < 1 or args.warmup < 0:
        ap.error("--copies and --passes must be at least 1, --warmup at least 0")
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    command = "python -m bench.replay " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    started = time.perf_counter()
    res = asyncio.run(run_bench(args.corpus, copies=args.copies, warmup=args.warmup,
                                passes=args.passes,
                                compare_sandbox=args.compare_sandbox))
    machine["load_average_at_end"] = load_average()
    seconds = time.perf_counter() - started
    print_bench(res, machine, command.strip(), seconds)
    doc = {"command": command.strip(), "machine": machine, **dataclasses.asdict(res)}
    assert res.histories_per_s is not None
    print(json.dumps({"histories_per_s_median": round(res.histories_per_s.median, 1),
                      "histories_per_s_min": round(res.histories_per_s.min, 1),
                      "histories_per_s_max": round(res.histories_per_s.max, 1),
                      "histories": res.histories, "copies": res.copies,
                      "passes": res.passes, "cold_pass_s": round(res.cold_pass_s, 3)}))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"[bench.replay] wrote {args.json}")


if __name__ == "__main__":
    main()
