"""ConversationWorkflow: an agent that takes user messages over days, one turn at a time.

Each message becomes a turn: a child ``AgentWorkflow`` (id ``<conversation id>/turn-<n>``)
whose ``RunRequest.context`` is the conversation so far (a digest in ``stead_blobs``); its
``RunResult.context`` is the next turn's. This history therefore grows by a few small events
per turn, whatever the length of the conversation, and the workflow continues-as-new at a turn
boundary when it has grown enough (see ``stead.conversation`` for the contract, including what
happens to a ``say`` sent meanwhile).

Update ``say`` ({"text": ...}) answers with the turn's outcome; signal ``message`` queues a
message without waiting; signal ``end`` closes the conversation once queued turns are done;
query ``state``. A failed turn is reported to its caller and the conversation goes on.

A budget holds per conversation, not per turn (what users expect of a money cap): each turn's
request carries what the turns before it spent (``RunRequest.spent``) and the conversation's
own limits (``ConversationStart.budget``), and the turn's ``RunResult.spend`` is added to the
carried ``ConversationStart.spent``, which continue-as-new keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

from stead.workflows._budget import CHILD_FAILURE_SPEND_PATCH, failed_spend
from stead.workflows._seam import parked

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from stead import errors
    from stead.client import WORKFLOW_TYPE
    from stead.contracts.budget import Spend
    from stead.contracts.models import RunRequest, RunResult
    from stead.contracts.search_attributes import AGENT_KEY, TENANT_KEY, run_attributes
    from stead.conversation import (
        CONVERSATION_KEY,
        TURN_KEY,
        ConversationResult,
        ConversationStart,
        ConversationState,
        EndInput,
        SayInput,
        TurnOutcome,
    )

_SAY_EXAMPLE = '{"text": "..."}'


@dataclass
class _Pending:
    seq: int
    text: str
    reply: bool
    """True for a ``say``: an update handler waits for this message's outcome."""


@workflow.defn(name="ConversationWorkflow", failure_exception_types=[ValidationError])
class ConversationWorkflow:
    """A conversation with one agent. Update ``say``; signals ``message`` and ``end``;
    query ``state``."""

    @workflow.init
    def __init__(self, start: ConversationStart | None = None) -> None:
        # Handlers may run before ``run`` starts: everything they touch exists from here on.
        self._s = start or ConversationStart(agent="-")
        self._queue: list[_Pending] = []
        self._outcomes: dict[int, TurnOutcome] = {}
        self._seq = 0
        self._ending = False
        self._closed = False
        self._current: int | None = None
        self._last: TurnOutcome | None = None
        for text in self._s.queued:
            self._enqueue(text, reply=False)

    def _enqueue(self, text: str, *, reply: bool) -> int:
        self._seq += 1
        self._queue.append(_Pending(seq=self._seq, text=text, reply=reply))
        return self._seq

    # ------------------------------------------------------------------ handlers

    @workflow.update(name="say")
    async def say(self, message: SayInput | None = None) -> TurnOutcome:
        assert message is not None  # the validator refuses a missing payload
        seq = self._enqueue(message.text, reply=True)
        await workflow.wait_condition(lambda: seq in self._outcomes)
        return self._outcomes.pop(seq)

    @say.validator
    def _validate_say(self, message: SayInput | None = None) -> None:
        if message is None:
            raise ValueError(f"say needs a payload: {_SAY_EXAMPLE}")
        if not message.text.strip():
            raise ValueError(f"say needs some text: {_SAY_EXAMPLE}")
        if self._ending or self._closed:
            raise ValueError(f"conversation {workflow.info().workflow_id} has ended; start a "
                             f"new one")

    @workflow.signal(name="message")
    def message(self, message: SayInput | None = None) -> None:
        # A signal cannot be refused: a missing or blank one, or one after ``end``, is dropped.
        if message is not None and message.text.strip() and not self._ending:
            self._enqueue(message.text, reply=False)

    @workflow.signal(name="end")
    def end(self, end: EndInput | None = None) -> None:
        self._ending = True

    @workflow.query(name="state")
    def state(self) -> ConversationState:
        info = workflow.info()
        return ConversationState(
            agent=self._s.agent, tenant=self._s.tenant,
            status="closed" if self._closed else "ending" if self._ending else "open",
            turns=self._s.turns, current_turn=self._current, queued=len(self._queue),
            context=self._s.context, completed=self._s.completed, failed=self._s.failed,
            history_events=info.get_current_history_length(),
            history_bytes=info.get_current_history_size(),
            continued_as_new=self._s.continued, last=self._last, spent=self._s.spent)

    # ------------------------------------------------------------------ the conversation

    @workflow.run
    async def run(self, start: ConversationStart | None = None) -> ConversationResult:
        if start is None:
            raise ApplicationError(
                'a conversation needs a ConversationStart, e.g. {"agent": "ops"}; got none',
                type=errors.BAD_REQUEST, non_retryable=True)
        attrs = workflow.info().typed_search_attributes
        if attrs.get(AGENT_KEY) is None or attrs.get(TENANT_KEY) is None:
            workflow.upsert_search_attributes([AGENT_KEY.value_set(start.agent),
                                               TENANT_KEY.value_set(start.tenant)])
        idle = (timedelta(seconds=self._s.idle_timeout_seconds)
                if self._s.idle_timeout_seconds is not None else None)
        while True:
            if self._queue:
                await self._turn(self._queue.pop(0))
                if self._ending:
                    continue  # finish what was queued, then close
                if self._should_continue():
                    await self._continue_as_new()
                continue
            if self._ending:
                return await self._close("ended")
            workflow.set_current_details(
                f"Waiting for a message (turn {self._s.turns + 1} next); update `say` "
                f"with {_SAY_EXAMPLE}")
            parked(True)  # on the person who writes next: the worker may let it go
            try:
                await workflow.wait_condition(lambda: bool(self._queue) or self._ending,
                                              timeout=idle)
            except TimeoutError:
                return await self._close("idle")
            finally:
                parked(False)

    def _should_continue(self) -> bool:
        info = workflow.info()
        return (info.is_continue_as_new_suggested()
                or info.get_current_history_length() >= self._s.max_history_events
                or info.get_current_history_size() >= self._s.max_history_bytes)

    async def _turn(self, item: _Pending) -> None:
        info = workflow.info()
        s = self._s
        n = s.turns + 1
        self._current = n
        child_id = f"{info.workflow_id}/turn-{n}"
        workflow.set_current_details(f"Turn {n}: **{s.agent}** is answering: "
                                     f"{item.text[:200]}")
        request = RunRequest(agent=s.agent, input=item.text, tenant=s.tenant, user=s.user,
                             metadata={**s.metadata, CONVERSATION_KEY: info.workflow_id,
                                       TURN_KEY: str(n)},
                             max_steps=s.max_steps, context=s.context, budget=s.budget,
                             spent=s.spent if s.spent != Spend() else None)
        try:
            result: RunResult = await workflow.execute_child_workflow(
                WORKFLOW_TYPE, request, id=child_id, result_type=RunResult,
                search_attributes=run_attributes(s.agent, s.tenant),
                static_summary=f"{s.agent}, turn {n}: {item.text[:100]}")
            if result.context is not None:
                s.context = result.context
            s.spent = s.spent + result.spend
            outcome = TurnOutcome(turn=n, status=result.status, answer=result.answer,
                                  error=result.error, run_id=child_id, context=s.context,
                                  spend=result.spend)
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as err:
            cause = err.cause if isinstance(err, ChildWorkflowError) else None
            why = getattr(cause, "message", None) or str(cause or err)
            # What a failed turn spent before it failed counts against the conversation.
            spent = failed_spend(cause)
            if spent is not None and workflow.patched(CHILD_FAILURE_SPEND_PATCH):
                s.spent = s.spent + spent
            else:
                spent = None
            outcome = TurnOutcome(turn=n, status="error", error=f"turn {n} did not run to an "
                                  f"end: {why}", run_id=child_id, context=s.context,
                                  spend=spent or Spend())
        s.turns = n
        if outcome.status == "completed":
            s.completed += 1
        else:
            s.failed += 1
        self._current = None
        self._last = outcome
        if item.reply:
            self._outcomes[item.seq] = outcome

    async def _continue_as_new(self) -> None:
        """Answer every ``say`` this run accepted, then continue with what must carry over."""
        while True:
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() or any(p.reply for p in self._queue))
            if not any(p.reply for p in self._queue):
                break
            # In order: signalled messages queued before a waiting say go first.
            await self._turn(self._queue.pop(0))
        if self._ending:
            return  # the main loop finishes the queue and closes
        carried = self._s.model_copy(update={
            "queued": [p.text for p in self._queue], "continued": self._s.continued + 1})
        workflow.continue_as_new(carried)

    async def _close(self, reason: str) -> ConversationResult:
        self._ending = True  # a say from now on is refused by the validator
        while True:  # one accepted in the same moment still gets its answer
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() or bool(self._queue))
            if not self._queue:
                break
            await self._turn(self._queue.pop(0))
        self._closed = True
        s = self._s
        workflow.set_current_details(f"Closed ({reason}) after {s.turns} turn(s)")
        return ConversationResult(reason="idle" if reason == "idle" else "ended",
                                  turns=s.turns, completed=s.completed, failed=s.failed,
                                  context=s.context, continued_as_new=s.continued,
                                  spent=s.spent)
