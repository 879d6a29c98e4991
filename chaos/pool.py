"""Worker processes the harness kills and replaces.

    pool = WorkerPool(settings, world, log_dir=..., size=3, name="kills")
    pool.start()
    pool.kill(pid, kind="random")          # SIGKILL from the harness
    pool.replace_dead()                    # reap, record how each one died, start others

Workers are forked from a ``multiprocessing`` fork server that imported :mod:`chaos.worker`
(and with it temporalio, stead and the agents) once, so a replacement polls ~0.3 s after it
is forked. Each worker is a separate OS process with its own Temporal connection and ledger
pool; nothing in it survives a SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

from chaos.world import ChaosWorld
from stead.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

_context: ForkServerContext | None = None


def fork_context() -> ForkServerContext:
    """The fork server context, preloading the worker's imports (started on first use)."""
    global _context
    if _context is None:
        # The fork server is a fresh interpreter: make sure it finds this checkout (3.11's
        # fork server ignores the parent's sys.path, and a failed preload is silent).
        paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["chaos.worker", "openai"])
        _context = ctx
    return _context


@dataclass
class Death:
    """A worker process that ended, and how."""

    pid: int
    exitcode: int | None
    noticed_at: float
    cause: str
    """``harness`` (the harness SIGKILLed it), ``failpoint`` (it SIGKILLed itself at an
    armed failpoint), ``stopped`` (SIGTERM at the end) or ``crashed`` (anything else; a
    network phase relabels a worker that gave up connecting during its fault ``exited at
    start``, as its log says)."""
    kind: str = ""
    """What the harness meant by the kill (``random``, ``approval``), when it was the harness."""
    killed_at: float | None = None
    replaced_by: int | None = None


@dataclass
class _Slot:
    process: BaseProcess
    started_at: float


@dataclass
class WorkerPool:
    """``size`` chaos workers on ``settings``' task queue, each logging under ``log_dir``."""

    settings: Settings
    world: ChaosWorld
    log_dir: Path
    size: int
    name: str
    replace: bool = True
    """Start a new worker for each one that dies (off while a phase winds down)."""
    deaths: list[Death] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list)
    _harness_kills: dict[int, tuple[float, str]] = field(default_factory=dict)
    _stopping: bool = False
    _spawned: int = 0

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> int:
        from chaos.worker import serve

        ctx = fork_context()
        n = self._spawned
        self._spawned += 1
        log = self.log_dir / f"{self.name}-worker-{n:03d}.log"
        p = ctx.Process(target=serve, args=(self.settings, str(self.world.path), str(log)),
                        name=f"chaos-{self.name}-{n}", daemon=True)
        p.start()
        self._slots.append(_Slot(process=p, started_at=time.time()))
        assert p.pid is not None
        return p.pid

    @property
    def pids(self) -> list[int]:
        """Processes that are alive right now."""
        return [s.process.pid for s in self._slots
                if s.process.pid is not None and s.process.is_alive()]

    def ready_pids(self) -> list[int]:
        """Live processes that have reported they poll."""
        ready = self.world.ready_workers()
        return [p for p in self.pids if p in ready]

    def kill(self, pid: int, *, kind: str) -> bool:
        """SIGKILL one of our workers; False if it is not ours or already gone."""
        for s in self._slots:
            if s.process.pid == pid and s.process.is_alive():
                self._harness_kills[pid] = (time.time(), kind)
                os.kill(pid, signal.SIGKILL)
                s.process.join(10)
                return True
        return False

    def kill_random(self, rng: random.Random, *, kind: str) -> int | None:
        ready = self.ready_pids()
        if not ready:
            return None
        pid = rng.choice(sorted(ready))
        return pid if self.kill(pid, kind=kind) else None

    def replace_dead(self) -> list[Death]:
        """Reap dead workers, record how they died, start replacements (if ``replace``)."""
        found: list[Death] = []
        for s in list(self._slots):
            p = s.process
            if p.is_alive():
                continue
            p.join(1)
            self._slots.remove(s)
            assert p.pid is not None
            harness = self._harness_kills.pop(p.pid, None)
            if harness is not None:
                death = Death(pid=p.pid, exitcode=p.exitcode, noticed_at=time.time(),
                              cause="harness", kind=harness[1], killed_at=harness[0])
            else:
                cause = ("stopped" if self._stopping else
                         "failpoint" if p.exitcode == -signal.SIGKILL else "crashed")
                death = Death(pid=p.pid, exitcode=p.exitcode, noticed_at=time.time(),
                              cause=cause)
            if self.replace and not self._stopping:
                death.replaced_by = self._spawn()
            self.deaths.append(death)
            found.append(death)
        return found

    def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM every worker; SIGKILL those still running after ``grace`` seconds (a hung
        tool keeps a graceful shutdown waiting for its full timeout)."""
        self.replace_dead()  # deaths before the stop keep their cause
        self._stopping = True
        for s in self._slots:
            if s.process.is_alive() and s.process.pid is not None:
                os.kill(s.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for s in self._slots:
            s.process.join(max(deadline - time.monotonic(), 0.1))
            if s.process.is_alive():
                s.process.kill()
                s.process.join(5)
        self.replace_dead()
