"""The pydantic-ai peer's workflow: the workload's durable agent, run once; for the approval
run, run again from its messages once a person approved the call it deferred
(``bench/peers/pydantic_ai_run.py`` defines the agents and the worker)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import DeferredToolRequests, DeferredToolResults
    from pydantic_ai.durable_exec.temporal import PydanticAIWorkflow

    from bench.peers.models import FrameworkRequest, RunOutcome
    from bench.peers.plain_workflow import APPROVE
    from bench.peers.pydantic_ai_run import AGENTS, LIMITS, WORKFLOW, outcome


@workflow.defn(name=WORKFLOW)
class PeerPydanticAIWorkflow(PydanticAIWorkflow):
    __pydantic_ai_agents__ = list(AGENTS.values())

    def __init__(self) -> None:
        self.approved = False
        self.waiting = False

    @workflow.signal(name=APPROVE)
    def approve(self) -> None:
        self.approved = True

    @workflow.query(name="waiting")
    def is_waiting(self) -> bool:
        """True once the run waits for the approval signal (the HITL harness polls it)."""
        return self.waiting and not self.approved

    @workflow.run
    async def run(self, req: FrameworkRequest) -> RunOutcome:
        agent = AGENTS[req.workload]
        result = await agent.run(req.input, usage_limits=LIMITS)
        requests = result.usage.requests
        while isinstance(result.output, DeferredToolRequests):
            self.waiting = True
            await workflow.wait_condition(lambda: self.approved)
            approved = DeferredToolResults(
                approvals={c.tool_call_id: True for c in result.output.approvals})
            result = await agent.run(message_history=result.all_messages(),
                                     deferred_tool_results=approved, usage_limits=LIMITS)
            requests += result.usage.requests
        return outcome(result.output, result.all_messages(), requests)
