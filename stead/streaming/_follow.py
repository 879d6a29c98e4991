"""Following one run: its steps, tokens, approvals and result as one ordered stream of
:class:`RunEvent`, resumable from any event's cursor.

    async for event in follow_run(client, ledger, listener, workflow_id=wid, run_id=rid,
                                  tenant="acme", cursor=Cursor.parse(last_event_id)):
        ...   # None now and then when nothing happened for ``keepalive`` seconds

Three sources, read concurrently so that a slow one never holds up another:

- tokens: ``stead_stream`` rows, read when the listener's NOTIFY wakes the reader (or every
  ``poll_seconds`` without one);
- steps: the ``state`` query's history, every ``poll_seconds`` and as soon as a model call's
  message ends; approvals: the ledger's approval decisions, at the same times;
- the result: Temporal's, waited for.

When the result is in, every source is read one last time from where the delivered events
left off, then the ``result`` event ends the stream. The caller checks that the run is the
tenant's (the API's 404) before it follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Literal

import asyncpg
from temporalio.client import Client, WorkflowFailureError, WorkflowQueryFailedError
from temporalio.service import RPCError

from stead.contracts.models import RunResult, RunState, StoredDecision
from stead.errors import LedgerError
from stead.storage.ledger import Ledger, StreamRow
from stead.streaming._events import (
    ApprovalEvent,
    Cursor,
    ErrorEvent,
    ResultEvent,
    RunEvent,
    StepEvent,
    TokenEvent,
)
from stead.streaming._listen import StreamListener

POLL_SECONDS = 0.5
QUERY_TIMEOUT = 3.0
ROWS_PER_READ = 500

_READ_ERRORS = (LedgerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_APPROVAL_TYPES: dict[str, Literal["requested", "escalated", "decided"]] = {
    "approval_requested": "requested", "approval_escalated": "escalated",
                   "approval_decided": "decided"}


def token_event(row: StreamRow) -> TokenEvent:
    d = row.data
    return TokenEvent(step=row.step, attempt=row.attempt, fallback=row.fallback,
                      type=row.kind, text=row.text,
                      restart=bool(d.get("restart", False)), model=_str(d.get("model")),
                      finish_reason=_str(d.get("finish_reason")),
                      tool_calls=[str(t) for t in d.get("tool_calls") or []],
                      error=_str(d.get("error")), at=row.created_at)


def approval_event(row: StoredDecision) -> ApprovalEvent:
    d = row.data
    args = d.get("arguments")
    risk = d.get("risk")
    return ApprovalEvent(
        approval_id=str(d.get("approval_id", "")), type=_APPROVAL_TYPES[row.kind],
        step=row.step, decision=row.decision, actor=row.actor, reason=row.reason,
        tool=_str(d.get("tool")), arguments=args if isinstance(args, dict) else None,
        risk=float(risk) if isinstance(risk, int | float) else None,
        deadline=_str(d.get("deadline")), at=row.created_at)


def _str(v: object) -> str | None:
    return None if v is None else str(v)


class _Follow:
    """The state of one follower: what was delivered (``cursor``) and what was read."""

    def __init__(self, client: Client, ledger: Ledger, listener: StreamListener | None, *,
                 workflow_id: str, run_id: str, tenant: str, cursor: Cursor,
                 poll_seconds: float, query_timeout: float) -> None:
        self.client, self.ledger, self.listener = client, ledger, listener
        self.workflow_id, self.run_id, self.tenant = workflow_id, run_id, tenant
        self.cursor = cursor
        self.poll = poll_seconds
        self.query_timeout = query_timeout
        self.handle = client.get_workflow_handle(workflow_id, run_id=run_id,
                                                 result_type=RunResult)
        self.queue: asyncio.Queue[RunEvent | ResultEvent] = asyncio.Queue()
        self.poke = asyncio.Event()
        """Set when a message ended: look at the steps now rather than at the next poll."""
        self._said: set[str] = set()

    # ---------------------------------------------------------------- emitting

    def admit(self, event: RunEvent) -> RunEvent | None:
        """``event`` if it is past the cursor (which it then advances), else None."""
        c, data = self.cursor, event.data
        if isinstance(data, TokenEvent):
            seq = int(event.id or 0)
            if seq <= c.tokens:
                return None
            c = c.advanced(tokens=seq)
        elif isinstance(data, StepEvent):
            if data.index < c.steps:
                return None
            c = c.advanced(steps=data.index + 1)
        elif isinstance(data, ApprovalEvent):
            seq = int(event.id or 0)
            if seq <= c.decisions:
                return None
            c = c.advanced(decisions=seq)
        elif isinstance(data, ResultEvent):
            c = c.advanced(done=True)
        else:
            return event
        self.cursor = c
        return RunEvent(event.name, str(c), data)

    def error(self, message: str) -> None:
        """Say each problem once per follower."""
        if message not in self._said:
            self._said.add(message)
            self.queue.put_nowait(RunEvent("error", None, ErrorEvent(message=message)))

    # ---------------------------------------------------------------- reading
    # Each read puts what it found into the queue in one go (no await in between), with the
    # source's own position as the event id; the consumer turns ids into cursors.

    async def read_tokens(self, after: int) -> int:
        while True:
            rows = await self.ledger.stream_rows(self.workflow_id, run_id=self.run_id,
                                                 tenant=self.tenant, after=after,
                                                 limit=ROWS_PER_READ)
            for r in rows:
                self.queue.put_nowait(RunEvent("token", str(r.seq), token_event(r)))
                if r.kind in ("end", "error"):
                    self.poke.set()
            if rows:
                after = rows[-1].seq
            if len(rows) < ROWS_PER_READ:
                return after

    async def read_steps(self, after: int, *, final: bool = False) -> int:
        try:
            state = await self.handle.query("state", result_type=RunState,
                                            rpc_timeout=timedelta(seconds=self.query_timeout))
        except RPCError as e:
            if final:
                self.error(f"the last steps are not shown: no worker answered the state "
                           f"query ({e.message})")
            return after  # no worker has picked the run up yet: ask again later
        except WorkflowQueryFailedError as e:
            self.error(f"steps are not shown: the worker could not answer the state query "
                       f"({e})")
            return after
        for i, s in enumerate(state.history[after:], start=after):
            self.queue.put_nowait(RunEvent("step", None, StepEvent(index=i, **s.model_dump())))
        return max(after, len(state.history))

    async def read_approvals(self, after: int) -> int:
        rows = await self.ledger.approval_decisions(self.workflow_id, run_id=self.run_id,
                                                    tenant=self.tenant, after=after)
        for r in rows:
            self.queue.put_nowait(RunEvent("approval", str(r.seq), approval_event(r)))
        return rows[-1].seq if rows else after

    # ---------------------------------------------------------------- loops

    async def tokens_loop(self) -> None:
        after = self.cursor.tokens
        with (self.listener.watch(self.workflow_id) if self.listener is not None
              else contextlib.nullcontext()) as waker:
            while True:
                if waker is not None:
                    waker.arm()
                try:
                    after = await self.read_tokens(after)
                except _READ_ERRORS as e:
                    self.error(f"the token stream cannot be read: {type(e).__name__}: {e}")
                if waker is not None:
                    await waker.wait(self.poll * 4 if self._listening() else self.poll)
                else:
                    await asyncio.sleep(self.poll)

    def _listening(self) -> bool:
        return self.listener is not None and self.listener.connected.is_set()

    async def state_loop(self) -> None:
        steps, decisions = self.cursor.steps, self.cursor.decisions
        while True:
            self.poke.clear()
            steps = await self.read_steps(steps)
            try:
                decisions = await self.read_approvals(decisions)
            except _READ_ERRORS as e:
                self.error(f"approvals cannot be read from the ledger: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), self.poll)

    async def result_loop(self) -> None:
        delay = self.poll
        while True:
            try:
                result = await self.handle.result(follow_runs=False)
            except WorkflowFailureError as e:
                cause = e.cause
                message = str(getattr(cause, "message", None) or cause or e)
                self.queue.put_nowait(ResultEvent(workflow_id=self.workflow_id,
                                                  status="failed", error=message))
                return
            except RPCError as e:
                self.error(f"Temporal did not answer for the run's result ({e.message}); "
                           f"asking again")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.queue.put_nowait(ResultEvent(workflow_id=self.workflow_id,
                                              status=result.status, result=result))
            return

    async def last_reads(self) -> None:
        """Everything after the cursor, once, after the run ended."""
        c = self.cursor
        await self.read_steps(c.steps, final=True)
        try:
            await self.read_approvals(c.decisions)
            await self.read_tokens(c.tokens)
        except _READ_ERRORS as e:
            self.error(f"the ledger cannot be read: {type(e).__name__}: {e}")


async def follow_run(client: Client, ledger: Ledger, listener: StreamListener | None, *,
                     workflow_id: str, run_id: str, tenant: str, cursor: Cursor | None = None,
                     poll_seconds: float = POLL_SECONDS, query_timeout: float = QUERY_TIMEOUT,
                     keepalive: float | None = None,
                     closing: asyncio.Event | None = None) -> AsyncIterator[RunEvent | None]:
    """The run's events after ``cursor`` (of another run or None: from the start), ending
    with ``result``; ``None`` after ``keepalive`` idle seconds; ends early when ``closing``
    is set. A cursor that says ``done`` yields nothing."""
    start = (cursor or Cursor()).for_run(run_id)
    if start.done:
        return
    f = _Follow(client, ledger, listener, workflow_id=workflow_id, run_id=run_id, tenant=tenant,
                cursor=start, poll_seconds=poll_seconds, query_timeout=query_timeout)
    tasks = [asyncio.create_task(f.tokens_loop()), asyncio.create_task(f.state_loop())]
    result_task = asyncio.create_task(f.result_loop())
    closed: asyncio.Task[bool] | None = (asyncio.create_task(closing.wait())
                                        if closing is not None else None)
    try:
        while True:
            get = asyncio.create_task(f.queue.get())
            waiting = {get} if closed is None else {get, closed}
            done, _ = await asyncio.wait(waiting, timeout=keepalive,
                                         return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                if closed is not None and closed in done:
                    return
                yield None
                continue
            item = get.result()
            if isinstance(item, ResultEvent):
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # What the loops had read already comes first, then one last read of each
                # source from where that left off.
                for event in _drain(f):
                    yield event
                await f.last_reads()
                for event in _drain(f):
                    yield event
                final = f.admit(RunEvent("result", None, item))
                if final is not None:
                    yield final
                return
            admitted = f.admit(item)
            if admitted is not None:
                yield admitted
    finally:
        for t in (*tasks, result_task):
            t.cancel()
        if closed is not None:
            closed.cancel()
        await asyncio.gather(*tasks, result_task, return_exceptions=True)


def _drain(f: _Follow) -> list[RunEvent]:
    out: list[RunEvent] = []
    while not f.queue.empty():
        item = f.queue.get_nowait()
        if isinstance(item, ResultEvent):
            continue
        admitted = f.admit(item)
        if admitted is not None:
            out.append(admitted)
    return out
