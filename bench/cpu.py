"""CPU time used by this process and the servers it started, read from /proc.

Wall-clock numbers on a shared machine move with whatever else runs there; the CPU each
side spends per run moves much less, so the benchmark reports both.

    before = snapshot(); ...; used = delta(before, snapshot())   # seconds per component
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

COMPONENTS = ("python", "temporal", "postgres")
"""``python``: this process (client + both workers); ``temporal``: the dev server;
``postgres``: the ledger's server with all its backends."""


def _read(pid: int) -> tuple[int, str, float, float] | None:
    """(ppid, command, own cpu seconds, reaped children's cpu seconds)"""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command sits in parentheses and may contain spaces; fields after it are numeric.
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    ppid = int(f[1])
    own = (int(f[11]) + int(f[12])) / _TICK
    children = (int(f[13]) + int(f[14])) / _TICK
    return ppid, comm, own, children


def _component(comm: str) -> str | None:
    if comm.startswith("temporal"):
        return "temporal"
    if comm.startswith("postgres"):
        return "postgres"
    return None


def available() -> bool:
    return Path("/proc/self/stat").exists()


def snapshot() -> dict[str, float]:
    """CPU seconds so far of this process and of its descendants, by component."""
    me = os.getpid()
    procs: dict[int, tuple[int, str, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _read(int(entry.name))
            if info is not None:
                procs[int(entry.name)] = info
    out = dict.fromkeys(COMPONENTS, 0.0)
    if me in procs:
        out["python"] = procs[me][2]
    for pid, (_, comm, own, children) in procs.items():
        if pid == me or not _descends(pid, me, procs):
            continue
        comp = _component(comm)
        if comp is not None:
            out[comp] += own + children
    return out


def _descends(pid: int, root: int, procs: dict[int, tuple[int, str, float, float]]) -> bool:
    seen = 0
    while pid in procs and seen < 64:
        pid = procs[pid][0]
        if pid == root:
            return True
        seen += 1
    return False


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(after.get(k, 0.0) - before.get(k, 0.0), 0.0) for k in COMPONENTS}
