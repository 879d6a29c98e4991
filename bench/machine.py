"""The machine a result was measured on: a number means little without it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from stead.stack.embedded import find_binary


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _temporal_cli() -> str:
    try:
        out = subprocess.run([str(find_binary("temporal")), "--version"], capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or out.stderr.strip()
    except Exception as err:  # informational only: never fail the benchmark over it
        return f"unknown ({err})"


def _stead_revision() -> str:
    """The commit measured, and whether the runtime's code differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "stead", "workflows",
                                "activities", "guardrails"], cwd=root, capture_output=True,
                               text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    changed = len(dirty.stdout.splitlines())
    return head.stdout.strip() + (f" + {changed} uncommitted runtime file(s)" if changed else "")


def load_average() -> str:
    """1, 5 and 15 minute load averages: how busy the machine was besides the benchmark."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_details() -> dict[str, object]:
    return {
        "stead_commit": _stead_revision(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": sys.version.split()[0],
        "temporalio": _version("temporalio"),
        "temporal_cli": _temporal_cli(),
        "pydantic": _version("pydantic"),
        "asyncpg": _version("asyncpg"),
        "bytecode": f"cached in {sys.pycache_prefix}" if sys.pycache_prefix
        else "written next to sources" if not sys.dont_write_bytecode else "not written",
        "load_average_at_start": load_average(),
    }
