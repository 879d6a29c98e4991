"""Conversations that last: the payloads of ``ConversationWorkflow`` and a client for them.

    handle = await start_conversation(client, ConversationStart(agent="ops"), temporal=s.temporal)
    turn = await say(handle, "is checkout-api healthy?")      # TurnOutcome: answer, status
    await say(handle, "and what did you find before?")        # the model sees turn 1

A conversation is a long-running workflow that takes user messages over days (update ``say``
waits for the answer; signal ``message`` queues one; signal ``end`` closes it) and runs each
turn as a child ``AgentWorkflow`` (id ``<conversation id>/turn-<n>``) that continues the
conversation's context: a digest in ``stead_blobs`` (``stead.storage.blobs``), so its history holds
the digest, never the transcript. When history grows (Temporal's suggestion, or
``max_history_events`` / ``max_history_bytes``) it continues-as-new at a turn boundary,
carrying only what is in :class:`ConversationStart`.

A ``say`` and continue-as-new: every ``say`` the running execution has accepted is answered
by it before it continues-as-new (it processes the queue up to the last waiting ``say`` and
waits for its update handlers to finish); messages queued by signal move to the next run.
A ``say`` that reaches the server while the execution is closing is not accepted by it: the
server aborts it with a retryable error and the Temporal client sends it again, by workflow id,
to the next run (so use a handle without a run id, as :func:`start_conversation` returns); the
caller only waits a little longer. tests/test_conversation.py sends says all at once across
repeated continue-as-new and checks each is answered once, in order. These models are
imported by workflow code: keep them free of I/O.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from stead.contracts.budget import Budget, Spend
from stead.contracts.models import BlobDigest, Name, RunStatus
from stead.contracts.search_attributes import run_attributes
from stead.settings import TemporalSettings
from stead.storage.blobs import EMPTY_CONTEXT

WORKFLOW_TYPE = "ConversationWorkflow"

CONVERSATION_KEY = "stead.conversation"
TURN_KEY = "stead.turn"
"""``RunRequest.metadata`` keys of a turn: the conversation's workflow id and the turn number."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationStart(_Model):
    """Input of ``ConversationWorkflow``; also what it carries into a continued-as-new run."""

    agent: Name
    """The agent that answers every turn."""
    tenant: Name = "default"
    user: str | None = None
    """Who is talking, for the audit trail of every turn."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Labels copied onto every turn's ``RunRequest`` (plus ``stead.conversation``/``turn``)."""
    max_steps: int | None = Field(default=None, ge=1, le=200)
    """Step budget of each turn (None: the agent's)."""
    context: BlobDigest = EMPTY_CONTEXT
    """The conversation so far (a context manifest); the empty one to start."""
    turns: int = Field(0, ge=0)
    """Turns taken so far, across continued-as-new runs; the next one is ``turns + 1``."""
    completed: int = Field(0, ge=0)
    """Turns whose run completed."""
    failed: int = Field(0, ge=0)
    """Turns that did not complete (the run failed, was denied or refused, or did not run)."""
    queued: list[Text] = Field(default_factory=list)
    """Messages received by signal and not yet answered, in order."""
    continued: int = Field(0, ge=0)
    """How many times the conversation continued-as-new."""
    max_history_events: int = Field(10_000, ge=20)
    """Continue-as-new at a turn boundary once the run's history has this many events."""
    max_history_bytes: int = Field(8_000_000, ge=10_000)
    """... or this many bytes (whichever comes first, or Temporal's own suggestion)."""
    idle_timeout_seconds: float | None = Field(None, gt=0, le=366 * 86_400)
    """Close the conversation after this long without a message (None: wait forever)."""
    budget: Budget | None = Field(None, exclude_if=lambda v: v is None)
    """Limits of the whole conversation, within the agent's policy budget (each turn's
    ``RunRequest.budget``). The agent's policy budget too holds per conversation, not per
    turn: every turn is charged what the turns before it spent (``spent``)."""
    spent: Spend = Field(default_factory=Spend, exclude_if=lambda v: v == Spend())
    """What the conversation's turns have spent so far, across continued-as-new runs."""


class SayInput(_Model):
    """Payload of the ``say`` update and the ``message`` signal: ``{"text": "..."}``."""

    text: Text


class EndInput(_Model):
    """Optional payload of the ``end`` signal."""

    by: str | None = None
    reason: str | None = None


TurnStatus = RunStatus | Literal["error"]
"""A turn's run status, or ``error`` when its run could not be started or did not finish."""


class TurnOutcome(_Model):
    """What ``say`` returns: the answer of one turn."""

    turn: int
    status: TurnStatus
    answer: str | None = None
    error: str | None = None
    run_id: str
    """Workflow id of the turn's ``AgentWorkflow`` (``<conversation id>/turn-<n>``)."""
    context: BlobDigest
    """The conversation after this turn (unchanged when the turn produced none)."""
    spend: Spend = Field(default_factory=Spend, exclude_if=lambda v: v == Spend())
    """What this turn spent."""


class ConversationState(_Model):
    """Answer of the ``state`` query."""

    agent: str
    tenant: str
    status: Literal["open", "ending", "closed"]
    turns: int
    current_turn: int | None = None
    """The turn running now, if any."""
    queued: int = 0
    """Messages waiting for their turn."""
    context: BlobDigest
    completed: int = 0
    failed: int = 0
    history_events: int = 0
    """Events in this run's history (resets when it continues-as-new)."""
    history_bytes: int = 0
    continued_as_new: int = 0
    last: TurnOutcome | None = None
    spent: Spend = Field(default_factory=Spend, exclude_if=lambda v: v == Spend())
    """What the conversation's turns have spent so far."""


class ConversationResult(_Model):
    """Output of ``ConversationWorkflow`` once it closes."""

    reason: Literal["ended", "idle"]
    turns: int
    completed: int
    failed: int
    context: BlobDigest
    continued_as_new: int
    spent: Spend = Field(default_factory=Spend, exclude_if=lambda v: v == Spend())
    """What the conversation's turns spent, in all."""


def new_conversation_id(agent: str, tenant: str = "default") -> str:
    return f"{tenant}-{agent}-chat-{uuid.uuid4().hex[:12]}"


async def start_conversation(client: Client, start: ConversationStart, *,
                             temporal: TemporalSettings,
                             workflow_id: str | None = None, attach: bool = False,
                             ) -> WorkflowHandle[object, ConversationResult]:
    """Start a conversation on the settings' task queue; its handle (no run id, so updates
    follow it across continue-as-new). ``attach``: a running conversation with this id is
    used as it is (``start`` is then ignored) instead of being an error."""
    # Here, not at the top: workflow code imports this module, and stead.client is client-side.
    from stead.client import versioning_override

    attrs = run_attributes(start.agent, start.tenant)
    wid = workflow_id or new_conversation_id(start.agent, start.tenant)
    await client.start_workflow(WORKFLOW_TYPE, start, id=wid, task_queue=temporal.task_queue,
                                result_type=ConversationResult, search_attributes=attrs,
                                static_summary=f"conversation with {start.agent}",
                                versioning_override=versioning_override(start.agent, temporal),
                                id_conflict_policy=(WorkflowIDConflictPolicy.USE_EXISTING
                                                    if attach else WorkflowIDConflictPolicy.FAIL))
    return client.get_workflow_handle(wid, result_type=ConversationResult)


async def say(handle: WorkflowHandle[object, ConversationResult], text: str) -> TurnOutcome:
    """Send one message and wait for its turn's answer."""
    out: TurnOutcome = await handle.execute_update("say", SayInput(text=text),
                                                   result_type=TurnOutcome)
    return out
