"""A stand-in for ``AgentWorkflow`` whose ``state`` query always fails: what ``stead run``
meets when the worker cannot answer its watch (the run goes on, the query does not)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from stead.contracts.models import RunRequest, RunResult, RunState


@workflow.defn(name="AgentWorkflow")
class UnansweringAgentWorkflow:
    @workflow.query(name="state")
    def state(self) -> RunState:
        raise ApplicationError("this worker answers no queries")

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        await workflow.sleep(timedelta(seconds=1))  # long enough to be watched
        return RunResult(status="completed", answer=f"done: {request.input}", steps=1)
