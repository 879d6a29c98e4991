"""Runs parked on a person leave the worker's cache (``stead.parking``) and resume on the
person's answer, against the real dev server: an approval run, the same with the workflow
sandbox on, a conversation between two messages. Plus the registry and the seam's rule (a run
with work in flight is not parked) on their own."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _approval_worker import bank_agent, effects, transfer_model
from _waits import wait_pending
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from temporalio.client import WorkflowHandle

from stead import parking
from stead.authoring.agent import Agent, AgentCatalog
from stead.client import start_run
from stead.contracts.models import ApprovalDecision, ModelTurn, RunRequest, RunResult
from stead.conversation import ConversationResult, ConversationStart, say, start_conversation
from stead.integrations.llm import FunctionModel
from stead.parking import ParkedEviction, ParkedRuns
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost
from stead.workflows import _seam
from stead.workflows._seam import ActivityCall, TemporalSeam

T = TypeVar("T")

AFTER = 1.0
"""``evict_parked_after_seconds`` of the workers here (long enough for a check right after
a query to see the run it cached)."""


def cached(host: WorkerHost, run_id: str | None) -> bool:
    assert run_id is not None
    return parking.cached(host.worker, run_id)


async def until(check: Callable[[], bool], *, within: float = 15) -> None:
    deadline = time.monotonic() + within
    # The worker's cache has no event to wait on: poll it.
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


def evictions(reader: InMemoryMetricReader) -> float:
    """``stead.worker.parked_evictions`` so far."""
    data = reader.get_metrics_data()
    assert data is not None
    return sum(float(pt.value) for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics if m.name == "stead.worker.parked_evictions"
               for pt in m.data.data_points)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- the registry

def test_the_registry_hands_out_runs_in_the_order_they_parked_per_task_queue() -> None:
    reg = ParkedRuns()
    reg.park("r0", "q")  # nobody watches q yet: not recorded
    assert reg.parked("q") == 0
    reg.watch("q")
    reg.watch("other")
    reg.park("r1", "q")
    reg.park("r2", "other")
    reg.park("r3", "q")
    assert reg.due("q", after=60) == []  # none parked a minute yet
    reg.park("r1", "q")  # parked again: it goes to the end
    reg.unpark("r3")  # answered: gone
    assert (reg.parked("q"), reg.parked("other")) == (1, 1)
    time.sleep(0.02)
    reg.park("r4", "q")
    assert reg.due("q", after=0.01) == ["r1"]  # r4 parked too recently
    assert reg.due("q", after=0.01) == []  # handed out once
    assert reg.due("q", after=0) == ["r4"]
    assert reg.parked("other") == 1
    reg.unwatch("other")  # the last eviction of that queue stopped: its runs are dropped
    assert reg.parked("other") == 0
    reg.park("r5", "other")
    assert reg.parked("other") == 0


def test_the_registry_takes_parks_from_many_threads() -> None:
    reg = ParkedRuns()
    reg.watch("q")

    def park(n: int) -> None:
        for i in range(500):
            reg.park(f"{n}-{i}", "q")
            if i % 2:
                reg.unpark(f"{n}-{i}")

    threads = [threading.Thread(target=park, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.parked("q") == 4 * 250
    assert len(reg.due("q", after=0)) == 1000


class _Bridge:
    def __init__(self) -> None:
        self.evicted: list[str] = []

    def request_workflow_eviction(self, run_id: str) -> None:
        self.evicted.append(run_id)


class _Worker:
    def __init__(self) -> None:
        self._bridge_worker = _Bridge()


async def test_an_eviction_evicts_what_is_due_and_stops_watching_when_cancelled() -> None:
    reg, worker = ParkedRuns(), _Worker()
    ev = ParkedEviction(worker, "q", after=0.1, registry=reg)
    task = asyncio.create_task(ev.run())
    await asyncio.sleep(0)  # it watches from its first step
    reg.park("r1", "q")
    reg.park("r2", "q")
    reg.unpark("r2")
    await until(lambda: worker._bridge_worker.evicted == ["r1"], within=5)
    assert ev.evicted == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reg.park("r3", "q")
    assert reg.parked("q") == 0


async def test_an_eviction_reclaims_memory_after_it_evicted_and_not_more_often(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stead.parking")
    reg, worker, reclaims = ParkedRuns(), _Worker(), []
    ev = ParkedEviction(worker, "q", after=0.05, registry=reg,
                        reclaim=lambda: reclaims.append(time.monotonic()), reclaim_every=0.5)
    task = asyncio.create_task(ev.run())
    await asyncio.sleep(0.3)
    assert reclaims == []  # nothing evicted: nothing to reclaim
    reg.park("r1", "q")
    await until(lambda: len(reclaims) == 1, within=5)
    reg.park("r2", "q")
    await until(lambda: len(reclaims) == 2, within=5)
    assert reclaims[1] - reclaims[0] >= 0.5  # at most every reclaim_every seconds
    await asyncio.sleep(0.8)
    assert (len(reclaims), len(ev.reclaims), worker._bridge_worker.evicted) == (
        2, 2, ["r1", "r2"])
    assert ev.reclaimed_at > ev.evicted_at
    said = [r.getMessage() for r in caplog.records if r.name == "stead.parking"
            and r.levelno == logging.INFO]
    assert len(said) == 2 and said[1].startswith("let go of 2 parked run(s) of q so far; ")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_glibc_malloc_trim_is_found_here() -> None:
    trim = parking.malloc_trim()
    assert trim is not None  # the CI machines run glibc: the default trims
    assert trim() in (0, 1)


def test_an_eviction_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="after > 0"):
        ParkedEviction(_Worker(), "q", after=0)
    with pytest.raises(RuntimeError, match=r"request_workflow_eviction.*"
                       r"STEAD_EVICT_PARKED_AFTER_SECONDS=0"):
        ParkedEviction(object(), "q", after=1)


# ---------------------------------------------------------------------------- the seam's rule

class _HeldSeam(TemporalSeam):
    """TemporalSeam whose activities wait for the test to let them go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def _activity(self, call: ActivityCall[T]) -> T:
        await self.go.wait()
        return None  # type: ignore[return-value]


async def test_a_run_with_work_in_flight_is_not_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[bool] = []
    monkeypatch.setattr(_seam, "parked", told.append)
    seam = _HeldSeam()
    seam.parked(True)  # a branch waits on a person
    assert told == [True]
    call: ActivityCall[Any] = ActivityCall("tool.lookup", None, start_to_close=timedelta(seconds=5))
    first = asyncio.create_task(seam.activity(call))
    second = asyncio.create_task(seam.activity(call))
    await asyncio.sleep(0)
    assert told == [True, False]  # another branch has work in flight: not parked
    seam.go.set()
    await asyncio.gather(first, second)
    assert told == [True, False, True]  # the work is done, the person still awaited
    seam.parked(False)
    assert told == [True, False, True, False]
    await seam.activity(call)  # no one waits: the hot path tells the registry nothing
    assert told == [True, False, True, False]


def test_an_evicted_run_closing_outside_its_workflow_leaves_the_registry_alone() -> None:
    """The ``finally`` of a parked wait runs outside the workflow's loop when an evicted run's
    coroutine is closed: it must neither raise nor touch the registry."""
    registry = parking.PARKED
    registry.watch("q-closed")
    try:
        registry.park("run-closed", "q-closed")
        _seam.parked(False)  # no workflow running here
        _seam.parked(True)
        assert registry.parked("q-closed") == 1
    finally:
        registry.unpark("run-closed")
        registry.unwatch("q-closed")


# ---------------------------------------------------------------------------- on the server

@pytest.mark.parametrize("sandbox", [False, True], ids=["unsandboxed", "sandboxed"])
async def test_a_parked_approval_run_leaves_the_cache_and_resumes_on_its_approval(
        settings: Settings, ledger: Ledger, tmp_path: Path, sandbox: bool) -> None:
    """The run waits for its approval, and ``AFTER`` seconds later it is out of the worker's
    cache. A ``state`` query rebuilds it (it answers from the replayed run), and it leaves
    again. The approval then resumes it by replaying its history: the transfer runs once,
    and the answer and the audit trail are those of a run that stayed cached."""
    path = tmp_path / "effects"
    agent = bank_agent(path, transfer_model(500, "ACME-1"))
    reader = InMemoryMetricReader()
    async with WorkerHost(settings.replace(evict_parked_after_seconds=AFTER,
                                           workflow_sandbox=sandbox),
                          AgentCatalog([agent]),
                          meter_provider=MeterProvider(metric_readers=[reader])) as host:
        assert host.client is not None and host.parked_eviction is not None
        h: WorkflowHandle[Any, RunResult] = await start_run(
            host.client, RunRequest(agent="bank", input="pay 500 to ACME-1"),
            temporal=settings.temporal)
        assert (await wait_pending(h)).approval_id == "a2"
        await until(lambda: not cached(host, h.result_run_id))
        assert host.parked_eviction.evicted == 1
        # A query replays it into the cache, still waiting, and it is let go once more.
        assert (await wait_pending(h)).approval_id == "a2"
        assert cached(host, h.result_run_id)
        await until(lambda: not cached(host, h.result_run_id))
        assert host.parked_eviction.evicted == 2
        assert [line for line in effects(path) if line.startswith(f"{h.id}:")] == []
        # An eviction asked for a run the worker does not hold is ignored.
        parking._bridge_worker(host.worker).request_workflow_eviction("no-such-run")

        await h.signal("approve", ApprovalDecision(approval_id="a2", by="alice"))
        r = await asyncio.wait_for(h.result(), 30)
        assert evictions(reader) == 2

    assert (r.status, r.approvals, r.answer) == ("completed", 1, "Done: transfer T-1."), r
    assert [(c.tool, c.status) for c in r.tool_calls] == [("transfer", "ok")]
    [line] = [line for line in effects(path) if line.startswith(f"{h.id}:")]
    assert line.endswith(" 500 ACME-1")
    trail = await ledger.trail(h.id)
    assert [(d.kind, d.decision, d.actor) for d in trail.decisions
            if d.kind.startswith("approval")] == [
        ("approval_requested", "oncall", "stead"), ("approval_decided", "approved", "alice")]
    assert await ledger.verify_chain(h.id) == []
    assert parking.PARKED.parked(host.task_queue) == 0


async def test_with_eviction_off_a_parked_run_stays_cached(
        settings: Settings, tmp_path: Path) -> None:
    agent = bank_agent(tmp_path / "effects", transfer_model(500, "ACME-1"))
    async with WorkerHost(settings.replace(evict_parked_after_seconds=0),
                          AgentCatalog([agent])) as host:
        assert host.client is not None and host.parked_eviction is None
        h: WorkflowHandle[Any, RunResult] = await start_run(
            host.client, RunRequest(agent="bank", input="pay 500 to ACME-1"),
            temporal=settings.temporal)
        assert (await wait_pending(h)).approval_id == "a2"
        await asyncio.sleep(AFTER * 3)  # what evicted it above, three times over
        assert cached(host, h.result_run_id)
        await h.signal("approve", ApprovalDecision(approval_id="a2", by="alice"))
        assert (await asyncio.wait_for(h.result(), 30)).answer == "Done: transfer T-1."


async def test_a_conversation_between_messages_leaves_the_cache_and_answers_the_next(
        settings: Settings) -> None:
    def plan(messages: Any, tools: Any) -> ModelTurn:
        said = [m.content for m in messages if m.role == "user"]
        return ModelTurn(content=f"heard {' / '.join(s or '' for s in said)}")

    agent = Agent(name="listener", instructions="Repeat what you heard.", tools=[],
                  offline_model=FunctionModel(plan, name="listener"))
    async with WorkerHost(settings.replace(evict_parked_after_seconds=AFTER),
                          AgentCatalog([agent])) as host:
        assert host.client is not None and host.parked_eviction is not None
        h: WorkflowHandle[Any, ConversationResult] = await start_conversation(
            host.client, ConversationStart(agent="listener"), temporal=settings.temporal)
        first = await asyncio.wait_for(say(h, "one"), 60)
        run_id = (await h.describe()).run_id
        await until(lambda: not cached(host, run_id))
        assert host.parked_eviction.evicted >= 1
        second = await asyncio.wait_for(say(h, "two"), 60)
        await h.signal("end")
        done = await asyncio.wait_for(h.result(), 60)

    assert (first.answer, second.answer) == ("heard one", "heard one / two")
    assert (done.reason, done.turns, done.completed) == ("ended", 2, 2)

