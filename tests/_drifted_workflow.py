"""Test-only variants of ``AgentWorkflow`` with the kind of change that breaks runs in flight.

Each is registered under the production name, as a careless edit of ``workflows/agent.py``
would be, and differs only in what it does before each tool call:

- :class:`ExtraTimerBeforeTools` sleeps first (a new timer command): Temporal's error names the
  history event that no longer matches.
- :class:`AuditActivityBeforeTools` schedules another activity first: Temporal's error names
  only the two activity types, so replay locates the event itself.

Histories that never reach a tool call (refused by routing, unknown agent) replay cleanly under
both: the change only breaks runs that took the changed path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from stead.contracts.models import RunRequest, RunResult
    from stead.workflows._seam import ActivityCall, TemporalSeam
    from stead.workflows.agent import AgentWorkflow

AUDIT_ACTIVITY = "tool.audit_before_call"

T = TypeVar("T")


def _tool_call(call: ActivityCall[T]) -> bool:
    return call.name.startswith("tool.")


class _SleepFirst(TemporalSeam):
    async def activity(self, call: ActivityCall[T]) -> T:
        if _tool_call(call):
            await workflow.sleep(timedelta(seconds=1))
        return await super().activity(call)


class _AuditFirst(TemporalSeam):
    async def activity(self, call: ActivityCall[T]) -> T:
        if _tool_call(call):
            await workflow.execute_activity(AUDIT_ACTIVITY, call.name.removeprefix("tool."),
                                            start_to_close_timeout=timedelta(seconds=5))
        return await super().activity(call)


@workflow.defn(name="AgentWorkflow")
class ExtraTimerBeforeTools(AgentWorkflow):
    seam = _SleepFirst

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        return await super().run(request)


@workflow.defn(name="AgentWorkflow")
class AuditActivityBeforeTools(AgentWorkflow):
    seam = _AuditFirst

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        return await super().run(request)
