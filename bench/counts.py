"""What one run costs, counted rather than timed: history events and bytes, activities, local
activities, workflow tasks, ledger round trips and Python function calls per run.

    python -m bench.counts                           # stead and stead-local, 10 runs each
    python -m bench.counts stead --runs 20 --json /tmp/counts.json

Milliseconds on a shared machine move with the load; these counts do not, so two commits can
be compared on a busy machine (run the command in each checkout, one after the other). Each
system of ``bench.peers.temporal_run`` runs ``--runs`` sequential 5-tool runs after
``--warmup`` runs, under ``bench.profile``'s probe: ledger statements (a transaction counting
its BEGIN and COMMIT) and ``cProfile``'s call counts on the event loop's thread and in the
workflow activations. Each run's history is then fetched: its events by type, their
serialized bytes, and the bytes of the payloads each kind of event carries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import statistics
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.peers.temporal_run import STEAD_FULL, STEAD_LOCAL
from bench.peers.workload import FIVE
from bench.profile import SYSTEMS, _Probe, area_of, each_system

DEFAULT_SYSTEMS = (STEAD_FULL, STEAD_LOCAL)


@dataclass
class RunCounts:
    system: str
    runs: int
    ledger_round_trips: float
    """Per run."""
    loop_calls: float
    """Python function calls on the event loop's thread per run (activities, client, ledger)."""
    workflow_calls: float
    """Python function calls in workflow activations per run."""
    history_events: float
    """Median per run."""
    history_bytes: float
    """Median per run: the serialized events."""
    events: dict[str, float] = field(default_factory=dict)
    """Event type -> median count per run."""
    payload_bytes: dict[str, float] = field(default_factory=dict)
    """Event type -> median payload bytes per run."""
    calls: dict[str, dict[str, float]] = field(default_factory=dict)
    """Thread (``asyncio``, ``workflow``) -> area -> Python function calls per run."""


def _calls(prof: Any) -> Counter[str]:
    """Function calls by area (``bench.profile.AREAS``)."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: Counter[str] = Counter()
    for (filename, _line, name), (_cc, nc, _own, _cum, _callers) in stats.items():
        out[area_of(f"{filename}:{name}")] += nc
    return out


def _payload_bytes(event: Any) -> int:
    """Bytes of the payloads an event carries (inputs, results, marker details)."""
    total = 0

    def walk(msg: Any) -> None:
        nonlocal total
        for desc, value in msg.ListFields():
            if desc.message_type is None:
                continue
            if hasattr(value, "ListFields"):  # one message
                items = [value]
            elif hasattr(value, "values"):  # a map
                items = [v for v in value.values() if hasattr(v, "ListFields")]
            else:  # repeated
                items = list(value)
            for item in items:
                if item.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
                    total += item.ByteSize()
                else:
                    walk(item)

    walk(event)
    return total


async def count_system(system: Any, name: str, *, runs: int, warmup: int) -> RunCounts:
    for _ in range(warmup):
        await system.run(FIVE, f"warmup-{uuid.uuid4().hex[:12]}")
    probe = _Probe()
    ids = []
    with probe.installed(profile=True):
        for _ in range(runs):
            run_id = f"counts-{uuid.uuid4().hex[:12]}"
            await system.run(FIVE, run_id)
            ids.append(run_id)
    assert probe.loop_profile is not None and probe.workflow_profile is not None
    per_run: list[tuple[int, int, Counter[str], Counter[str]]] = []
    for run_id in ids:
        history = await system.client.get_workflow_handle(run_id).fetch_history()
        kinds: Counter[str] = Counter()
        payloads: Counter[str] = Counter()
        size = 0
        for ev in history.events:
            kind = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_")
            kinds[kind] += 1
            payloads[kind] += _payload_bytes(ev)
            size += ev.ByteSize()
        per_run.append((len(history.events), size, kinds, payloads))
    loop, wf = _calls(probe.loop_profile), _calls(probe.workflow_profile)
    kinds_all = sorted({k for _, _, ks, _ in per_run for k in ks})
    return RunCounts(
        system=name, runs=runs, ledger_round_trips=probe.round_trips / runs,
        loop_calls=sum(loop.values()) / runs, workflow_calls=sum(wf.values()) / runs,
        history_events=statistics.median(n for n, _, _, _ in per_run),
        history_bytes=statistics.median(b for _, b, _, _ in per_run),
        events={k: statistics.median(ks[k] for _, _, ks, _ in per_run) for k in kinds_all},
        payload_bytes={k: statistics.median(ps[k] for _, _, _, ps in per_run)
                       for k in kinds_all},
        calls={thread: {k: round(v / runs, 1) for k, v in sorted(c.items(), key=lambda kv: -kv[1])}
               for thread, c in (("asyncio", loop), ("workflow", wf))})


async def run_counts(systems: tuple[str, ...], *, runs: int, warmup: int) -> list[RunCounts]:
    return [await count_system(system, name, runs=runs, warmup=warmup)
            async for name, system in each_system(systems, label="counts")]


def report(counts: list[RunCounts]) -> str:
    lines = ["| system | ledger round trips | history events | history bytes | Python calls,"
             " event loop | Python calls, workflow |", "|---|" + "---:|" * 5]
    for c in counts:
        lines.append(f"| {c.system} | {c.ledger_round_trips:.1f} | {c.history_events:g} | "
                     f"{c.history_bytes:g} | {c.loop_calls:.0f} | {c.workflow_calls:.0f} |")
    for c in counts:
        lines += ["", f"{c.system}: events per run (median count, payload bytes)",
                  "| event | count | payload bytes |", "|---|---:|---:|"]
        lines += [f"| {k} | {n:g} | {c.payload_bytes.get(k, 0):g} |"
                  for k, n in c.events.items()]
        for thread, areas in c.calls.items():
            lines += ["", f"{c.system}, {thread} thread(s): Python calls per run by area",
                      "| area | calls |", "|---|---:|"]
            lines += [f"| {a} | {n:.0f} |" for a, n in areas.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.counts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="*", metavar="SYSTEM",
                    help=f"any of {', '.join(SYSTEMS)} (default: {', '.join(DEFAULT_SYSTEMS)})")
    ap.add_argument("--runs", type=int, default=10, help="runs counted (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up runs (default 3)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup not negative")
    systems = tuple(a.systems) or DEFAULT_SYSTEMS
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    counts = asyncio.run(run_counts(systems, runs=a.runs, warmup=a.warmup))
    print(report(counts))
    if a.json is not None:
        a.json.write_text(json.dumps([asdict(c) for c in counts], indent=2))
        print(f"[counts] wrote {a.json}")


if __name__ == "__main__":
    main()
