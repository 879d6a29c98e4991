"""What a follower of a run receives: ``step``, ``token``, ``approval``, ``result`` and
``error`` events, each with the cursor to resume after it.

    event.name, event.id, event.data          # "token", "r3f2a9c1.4.2.17", TokenEvent(...)
    Cursor.parse(last_event_id)               # ValueError saying what is wrong

A cursor counts what was delivered from each source of a run: its step history (the ``state``
query), its approval decisions (ledger rows), its token stream (``stead_stream`` rows); and
whether its result was delivered. Resuming from a cursor delivers exactly what came after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stead.contracts.models import JsonObject, RunResult, RunStatus, StepInfo
from stead.storage.ledger import StreamKind


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepEvent(StepInfo):
    """A line of the run's step history (``stead run`` prints these)."""

    index: int
    """Position in the history: 0, 1, ..."""


class TokenEvent(_Event):
    """A change to the message a model call is writing (``type``). A message is ``step``,
    ``attempt`` and ``fallback``; per step, show the message of the latest ``start``:

    - ``start``: a call begins the message of ``step``; with ``restart`` it replaces whatever
      an earlier attempt, an earlier model of the chain or an earlier try within this attempt
      wrote: drop it. Later events of other messages of the step are stale: ignore them.
    - ``text``: more text, to append.
    - ``reset``: the message's whole text so far, to show instead of what this attempt sent.
    - ``end``: the attempt finished; ``tool_calls`` names the tools the message calls.
    - ``error``: the attempt failed; a later attempt of the same step restarts the message.
    """

    step: int
    attempt: int
    fallback: int = 0
    """The called model's place in the agent's model chain (0: the first)."""
    type: StreamKind
    text: str = ""
    restart: bool = False
    model: str | None = None
    finish_reason: str | None = None
    tool_calls: list[str] = Field(default_factory=list)
    error: str | None = None
    at: datetime


class ApprovalEvent(_Event):
    """An approval of the run was requested, escalated, or decided (the ledger's
    ``approval_*`` decisions)."""

    approval_id: str
    type: Literal["requested", "escalated", "decided"]
    step: int
    decision: str
    """For ``requested``/``escalated`` the role asked; for ``decided`` the outcome
    (``approved``, ``rejected``, ``expired``)."""
    actor: str
    reason: str
    tool: str | None = None
    arguments: JsonObject | None = None
    risk: float | None = None
    deadline: str | None = None
    at: datetime


class ResultEvent(_Event):
    """The run ended: its result, or why Temporal ended it without one."""

    workflow_id: str
    status: RunStatus
    result: RunResult | None = None
    error: str | None = None


class ErrorEvent(_Event):
    """Something could not be read (Temporal, the ledger, no worker for the steps); the stream
    goes on and tries again."""

    message: str


EventData = StepEvent | TokenEvent | ApprovalEvent | ResultEvent | ErrorEvent
EventName = Literal["step", "token", "approval", "result", "error"]


@dataclass(frozen=True)
class RunEvent:
    """One event of a run's stream."""

    name: EventName
    id: str | None
    """The cursor after this event (``None`` for ``error`` events, which are not replayed)."""
    data: EventData


_CURSOR = re.compile(r"(?P<run>[0-9A-Za-z-]{0,36})\.(?P<steps>\d{1,9})\.(?P<decisions>\d{1,9})"
                     r"\.(?P<tokens>\d{1,18})(?P<done>\.end)?")


@dataclass(frozen=True)
class Cursor:
    """How far a follower got: ``<run>.<steps>.<decisions>.<tokens>[.end]``."""

    run: str = ""
    """The first 8 characters of the run id (another run of the workflow id starts afresh)."""
    steps: int = 0
    """Step history entries delivered."""
    decisions: int = 0
    """The ``seq`` of the last approval decision delivered."""
    tokens: int = 0
    """The ``seq`` of the last token stream row delivered."""
    done: bool = False
    """The result was delivered: nothing more will come."""

    def __str__(self) -> str:
        return (f"{self.run}.{self.steps}.{self.decisions}.{self.tokens}"
                + (".end" if self.done else ""))

    @classmethod
    def parse(cls, text: str) -> Cursor:
        m = _CURSOR.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"{text[:80]!r} is not an event id of this stream (expected "
                             f"<run>.<steps>.<approvals>.<tokens>, as sent in `id:` lines)")
        return cls(run=m["run"], steps=int(m["steps"]), decisions=int(m["decisions"]),
                   tokens=int(m["tokens"]), done=bool(m["done"]))

    def for_run(self, run_id: str) -> Cursor:
        """This cursor if it is of ``run_id``, else the start of that run."""
        tag = run_id[:8]
        if self.run == tag:
            return self
        return Cursor(run=tag)

    def advanced(self, **counts: int | bool) -> Cursor:
        return replace(self, **counts)  # type: ignore[arg-type]
