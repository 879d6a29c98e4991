"""The pydantic-ai peer's workflow: the workload's durable agent, run once
(``bench/peers/pydantic_ai_run.py`` defines the agents and the worker)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai.durable_exec.temporal import PydanticAIWorkflow

    from bench.peers.models import FrameworkRequest, RunOutcome
    from bench.peers.pydantic_ai_run import AGENTS, LIMITS, WORKFLOW, outcome


@workflow.defn(name=WORKFLOW)
class PeerPydanticAIWorkflow(PydanticAIWorkflow):
    __pydantic_ai_agents__ = list(AGENTS.values())

    @workflow.run
    async def run(self, req: FrameworkRequest) -> RunOutcome:
        result = await AGENTS[req.workload].run(req.input, usage_limits=LIMITS)
        return outcome(result.output, result.all_messages(), result.usage.requests)
