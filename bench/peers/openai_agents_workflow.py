"""The OpenAI Agents peer's workflow: the workload's agent with its tool activities as
tools, run once with ``Runner.run``; for the approval run, run again from its state once a
person approved the call it stopped at (``bench/peers/openai_agents_run.py`` has the model,
the tools and the worker)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.peers.models import FrameworkRequest, RunOutcome
    from bench.peers.openai_agents_run import (
        MAX_TURNS,
        TOOL_ACTIVITIES,
        TOOLS,
        WORKFLOW,
        model_name,
        outcome,
    )
    from bench.peers.openai_sdk import Agent, RunConfig, Runner, activity_as_tool
    from bench.peers.plain_workflow import APPROVE
    from bench.peers.workload import HITL, SYSTEM_PROMPT
    from bench.plain import TOOL_RETRY, TOOL_TIMEOUT


@workflow.defn(name=WORKFLOW)
class PeerOpenAIAgentsWorkflow:
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
        tools = [activity_as_tool(TOOL_ACTIVITIES[name], start_to_close_timeout=TOOL_TIMEOUT,
                                  schedule_to_close_timeout=TOOL_TIMEOUT * 3
                                  + timedelta(seconds=6),
                                  retry_policy=TOOL_RETRY)
                 for name in TOOLS[req.workload]]
        for t in tools:
            t.needs_approval = req.workload == HITL
        agent = Agent(name=f"peers-{req.workload}", instructions=SYSTEM_PROMPT,
                      model=model_name(req.workload), tools=tools)
        options: dict[str, Any] = {"max_turns": MAX_TURNS,
                                   "run_config": RunConfig(tracing_disabled=True)}
        result = await Runner.run(agent, input=req.input, **options)
        while result.interruptions:
            self.waiting = True
            await workflow.wait_condition(lambda: self.approved)
            state = result.to_state()
            for item in result.interruptions:
                state.approve(item)
            result = await Runner.run(agent, state, **options)
        return outcome(result)
