"""Runs parked on a person, let go of the worker's memory.

A run waiting for an approval, or a conversation waiting for its next message, may wait
hours. Left in the worker's sticky cache it holds its workflow instance all that time (about
60-120 KiB for a short run, megabytes after a long transcript: bench/RESULTS.md). So the
workflow says when it starts and stops waiting on a person (``Seam.parked``), and
:class:`ParkedEviction`, beside the worker, asks Temporal's core to evict each run parked
longer than ``STEAD_EVICT_PARKED_AFTER_SECONDS``. The run's next workflow task (the approval's
signal, a deadline passing, a ``state`` query) rebuilds it by replaying its history, once, and
it goes on where it waited.

Eviction is what the LRU cache does anyway once it is full, at any point between two workflow
tasks, so it loses nothing: everything the run decided is in its history. Only the replay
costs time (``python -m bench.parked``). A request for a run that is mid-task waits for the
task to complete (core's rule), and one for a run no longer cached is ignored.

An evicted run's memory does not by itself go back to the system. Its workflow instance is
held in reference cycles, which only Python's full collection frees, and glibc keeps what was
freed in its heap: a worker's resident set stayed near its high mark (runs parked after 20 tool
calls, ``bench.parked``'s let-go lines on the code of commit 1d85072, before this reclaim: 437
KiB per run evicted against 533 cached, with the C heap at 21 against 374 KiB). So
after evicting, at most every ``RECLAIM_EVERY`` seconds, the eviction runs a full collection
and asks glibc to return its free pages (``malloc_trim``), off the event loop.

What :data:`PARKED` holds is a memory hint for the worker. No workflow ever reads it back, so
the clock it keeps does not reach a workflow's decisions.

    eviction = ParkedEviction(worker, task_queue, after=30.0)
    task = asyncio.create_task(eviction.run())
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stead.parking")

RECLAIM_EVERY = 30.0
"""Seconds between two reclaims (full collection, ``malloc_trim``) of one eviction, which
reclaims only after it evicted. A full collection stops the process for a moment that grows
with its heap; ``python -m bench.parked`` reports it."""


class ParkedRuns:
    """The runs of this process that wait on a person, oldest first, per task queue.

    Workflows tell it from their activation threads (``park``/``unpark``); the evictions read
    it from the event loop (``due``). Only task queues an eviction watches are recorded, so a
    replayer in the same process (``stead replay``) leaves nothing behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, tuple[str, float]] = {}  # run id -> (task queue, parked at)
        self._watched: Counter[str] = Counter()

    def park(self, run_id: str, task_queue: str) -> None:
        with self._lock:
            if not self._watched[task_queue]:
                return
            self._since.pop(run_id, None)  # parked again: its time starts again, at the end
            self._since[run_id] = (task_queue, time.monotonic())

    def unpark(self, run_id: str) -> None:
        with self._lock:
            self._since.pop(run_id, None)

    def due(self, task_queue: str, after: float) -> list[str]:
        """The runs of ``task_queue`` parked at least ``after`` seconds, taken out."""
        cutoff = time.monotonic() - after
        with self._lock:
            out: list[str] = []
            for run_id, (queue, since) in self._since.items():
                if since > cutoff:
                    break  # in the order they parked: the rest parked later
                if queue == task_queue:
                    out.append(run_id)
            for run_id in out:
                del self._since[run_id]
            return out

    def parked(self, task_queue: str) -> int:
        with self._lock:
            return sum(1 for queue, _ in self._since.values() if queue == task_queue)

    def watch(self, task_queue: str) -> None:
        with self._lock:
            self._watched[task_queue] += 1

    def unwatch(self, task_queue: str) -> None:
        with self._lock:
            self._watched[task_queue] -= 1
            if self._watched[task_queue] > 0:
                return
            del self._watched[task_queue]
            for run_id in [r for r, (q, _) in self._since.items() if q == task_queue]:
                del self._since[run_id]


PARKED = ParkedRuns()
"""This process's parked runs: the workflows' seam writes here, every eviction reads here."""


def _bridge_worker(worker: Any) -> Any:
    """temporalio's core worker behind ``worker``; temporalio offers no public way to evict a
    run, only its core's ``request_workflow_eviction``."""
    bridge = getattr(worker, "_bridge_worker", None)
    if not callable(getattr(bridge, "request_workflow_eviction", None)):
        raise RuntimeError("this temporalio version has no Worker._bridge_worker with "
                           "request_workflow_eviction; stead.parking needs an update "
                           "(or set STEAD_EVICT_PARKED_AFTER_SECONDS=0)")
    return bridge


def cached(worker: Any, run_id: str) -> bool:
    """Whether ``worker`` holds the run in its sticky cache (temporalio keeps one running
    workflow per cached run id and has no public API for it)."""
    running = getattr(getattr(worker, "_workflow_worker", None), "_running_workflows", None)
    if not isinstance(running, dict):
        raise RuntimeError("this temporalio version keeps its workflow cache elsewhere; "
                           "stead.parking.cached needs an update")
    return run_id in running


@functools.cache
def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (returns free heap pages to the system); None elsewhere."""
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


def reclaim() -> None:
    """Free what evicted runs left in reference cycles and hand free heap pages back."""
    gc.collect()
    trim = malloc_trim()
    if trim is not None:
        trim()


class ParkedEviction:
    """Evicts ``worker``'s runs once they have been parked ``after`` seconds (checked every
    ``after / 4`` seconds, at least every second, at most every 50 ms)."""

    def __init__(self, worker: Any, task_queue: str, *, after: float,
                 registry: ParkedRuns = PARKED,
                 on_evict: Callable[[int], None] | None = None,
                 reclaim: Callable[[], object] = reclaim,
                 reclaim_every: float = RECLAIM_EVERY) -> None:
        """``on_evict``: told how many runs each round evicted (a metric). ``reclaim``: what
        returns the evicted runs' memory to the system, after evictions."""
        if after <= 0:
            raise ValueError(f"ParkedEviction needs after > 0, got {after!r}")
        self._bridge = _bridge_worker(worker)
        self.task_queue = task_queue
        self.after = after
        self.registry = registry
        self._on_evict = on_evict
        self._reclaim = reclaim
        self._reclaim_every = reclaim_every
        self._unreclaimed = False
        self.evicted_at = self.reclaimed_at = float("-inf")
        """``time.monotonic()`` of the last round that evicted, and of the last reclaim."""
        self.evicted = 0
        """Evictions asked so far (core ignores one for a run it no longer holds)."""
        self.reclaims: list[float] = []
        """How long each reclaim took, seconds."""

    def evict_due(self) -> list[str]:
        """Evict the runs parked long enough; returns their run ids."""
        due = self.registry.due(self.task_queue, self.after)
        for run_id in due:
            self._bridge.request_workflow_eviction(run_id)
        self.evicted += len(due)
        if due:
            self._unreclaimed, self.evicted_at = True, time.monotonic()
            if self._on_evict is not None:
                self._on_evict(len(due))
            log.debug("evicted %d parked run(s) from the cache of %s", len(due),
                      self.task_queue)
        return due

    async def run(self) -> None:
        """Until cancelled. Watches the task queue only while it runs."""
        tick = min(max(self.after / 4, 0.05), 1.0)
        self.registry.watch(self.task_queue)
        try:
            while True:
                await asyncio.sleep(tick)
                # Reclaim what earlier rounds evicted (their evictions are processed by now).
                if self._unreclaimed \
                        and time.monotonic() - self.reclaimed_at >= self._reclaim_every:
                    self._unreclaimed = False
                    began = time.monotonic()
                    await asyncio.to_thread(self._reclaim)
                    self.reclaimed_at = time.monotonic()
                    self.reclaims.append(self.reclaimed_at - began)
                    log.info("let go of %d parked run(s) of %s so far; reclaiming their memory "
                             "took %.0f ms", self.evicted, self.task_queue,
                             1000 * self.reclaims[-1])
                self.evict_due()
        finally:
            self.registry.unwatch(self.task_queue)
