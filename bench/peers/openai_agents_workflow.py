"""The OpenAI Agents peer's workflow: the workload's agent with its tool activities as
tools, run once with ``Runner.run`` (``bench/peers/openai_agents_run.py`` has the model,
the tools and the worker)."""

from __future__ import annotations

from datetime import timedelta

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
    from bench.peers.openai_sdk import activity_as_tool, sdk
    from bench.peers.workload import SYSTEM_PROMPT
    from bench.plain import TOOL_RETRY, TOOL_TIMEOUT


@workflow.defn(name=WORKFLOW)
class PeerOpenAIAgentsWorkflow:
    @workflow.run
    async def run(self, req: FrameworkRequest) -> RunOutcome:
        tools = [activity_as_tool(TOOL_ACTIVITIES[name], start_to_close_timeout=TOOL_TIMEOUT,
                                  schedule_to_close_timeout=TOOL_TIMEOUT * 3
                                  + timedelta(seconds=6),
                                  retry_policy=TOOL_RETRY)
                 for name in TOOLS[req.workload]]
        agent = sdk.Agent(name=f"peers-{req.workload}", instructions=SYSTEM_PROMPT,
                          model=model_name(req.workload), tools=tools)
        result = await sdk.Runner.run(agent, input=req.input, max_turns=MAX_TURNS,
                                      run_config=sdk.RunConfig(tracing_disabled=True))
        return outcome(result)
