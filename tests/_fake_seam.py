"""A fake of ``stead.workflows._seam.Seam``: the parts of an agent run without a Temporal server.

Activities are answered by handlers keyed by activity type (``model.complete``,
``tool.lookup``...; ``run.decisions`` is answered by default); every call is kept in
``calls``. Time stands still until a wait times out: then the clock jumps by the timeout, as
a Temporal timer would fire. ``during_waits`` scripts what happens while the run waits (send
a signal, say); an empty script lets every wait time out.

    seam = FakeSeam(handlers={"model.complete": lambda req: ModelTurn(content="hi")})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from stead.contracts.models import RunRef, RunRequest, RunResult, RunState
from stead.workflows._context import Context
from stead.workflows._seam import ActivityCall

T = TypeVar("T")

Handler = Callable[[Any], Any]


def activity_failure(message: str, *, type: str = "Boom", attempt: int | None = None,
                     activity_type: str = "tool.x") -> ActivityError:
    """What the workflow sees when an activity failed for good with ``message``."""
    err = ActivityError("activity failed", scheduled_event_id=1, started_event_id=2,
                        identity="fake", activity_type=activity_type, activity_id="1",
                        retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED)
    details = [{"attempt": attempt}] if attempt is not None else []
    err.__cause__ = ApplicationError(message, *details, type=type)
    return err


class FakeSeam:
    """Records what a run asks of Temporal and answers it from handlers."""

    def __init__(self, *, handlers: dict[str, Handler] | None = None,
                 patches: Sequence[str] = (),
                 during_waits: Sequence[Callable[[], None] | None] = ()) -> None:
        self.clock = datetime(2026, 1, 1, 12, tzinfo=UTC)
        self.handlers: dict[str, Handler] = {"run.decisions": lambda batch: None,
                                             **(handlers or {})}
        self.patches = set(patches)
        self.asked_patches: list[str] = []
        self.during_waits = list(during_waits)
        self.calls: list[ActivityCall[Any]] = []
        self.upserts: list[SearchAttributeUpdate[Any]] = []
        self.details: list[str] = []
        self.timeouts: list[float | None] = []
        """The timeout of every wait that had to wait."""
        self.children: list[RunRequest] = []
        self.parks: list[bool] = []
        """Every ``parked`` call: True when the run began waiting on a person."""

    @property
    def scheduled(self) -> list[str]:
        """Activity types in the order they were scheduled."""
        return [c.name for c in self.calls]

    def now(self) -> datetime:
        return self.clock

    def patched(self, patch_id: str) -> bool:
        self.asked_patches.append(patch_id)
        return patch_id in self.patches

    def upsert(self, updates: Sequence[SearchAttributeUpdate[Any]]) -> None:
        self.upserts.extend(updates)

    def set_details(self, text: str) -> None:
        self.details.append(text)

    def cancelled(self) -> bool:
        return False

    async def activity(self, call: ActivityCall[T]) -> T:
        self.calls.append(call)
        got = self.handlers[call.name](call.arg)
        if isinstance(got, BaseException):
            raise got
        return got  # type: ignore[no-any-return]

    async def wait(self, done: Callable[[], bool], *, timeout: float | None = None) -> bool:
        if done():
            return True
        self.timeouts.append(timeout)
        action = self.during_waits.pop(0) if self.during_waits else None
        if action is not None:
            action()
            if done():
                return True
        assert timeout is not None, "the run would wait forever"
        self.clock += timedelta(seconds=timeout)
        return False

    async def child_run(self, request: RunRequest, *, id: str, summary: str) -> RunResult:
        self.children.append(request)
        got = self.handlers["child"](request)
        if isinstance(got, BaseException):
            raise got
        assert isinstance(got, RunResult)
        return got

    def parked(self, waiting: bool) -> None:
        self.parks.append(waiting)


def context(seam: FakeSeam, *, approval_timeout: float = 60.0) -> Context:
    """A workflow instance's context on ``seam``, as ``AgentWorkflow.run`` sets it up."""
    return Context(seam=seam,
                   state=RunState(agent="lab", tenant="t", status="running", step=0,
                                  node="start"),
                   ref=RunRef(workflow_id="wf-1", run_id="run-1", agent="lab", tenant="t"),
                   approval_timeout=approval_timeout, key_root="wf-1:run-1")
