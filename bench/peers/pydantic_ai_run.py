"""The workloads on pydantic-ai's Temporal integration (``pydantic_ai.durable_exec.temporal``),
as its documentation sets it up.

    async with pydantic_ai_worker(settings, task_queue) as client:
        outcome = await PydanticAISystem(client, task_queue).run("five", run_id)

- One pydantic-ai ``Agent`` per workload, with the ``TemporalDurability`` capability: the
  installed release (2.68) documents it as the way to make an agent durable and keeps
  ``TemporalAgent`` (the wrapper the issue names) only as a deprecated path to the same
  activities. Inside the workflow every model request and every tool call is an activity
  the capability registers; the agent loop runs in the workflow.
- The model is pydantic-ai's ``FunctionModel`` running the workload's own scripted planner
  (``Workload.think``): pydantic-ai's messages become stead ``Message`` objects, the
  planner's ``ModelTurn`` becomes a ``ModelResponse`` of ``TextPart`` / ``ToolCallPart``.
- The tools are a ``FunctionToolset`` whose functions call the stead ``Tool`` objects
  (``Workload.act``) with the schemas stead declares for them; a tool returns stead's tool
  message text, so the planner reads the same JSON it reads on every other system.
- Activity timeouts and retries are stead's defaults (``bench.plain``), as on plain
  temporalio. The worker is the plain peer's (same slots, cache, sandbox passthrough) with
  ``PydanticAIPlugin`` on its client, which adds pydantic-ai's data converter and passthrough.

The agents live in this module, which the workflow module imports through the sandbox
(passed through): the workflow finds the same agent objects the worker registered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Final

from pydantic_ai import Agent, DeferredToolRequests, RunContext, Tool
from pydantic_ai.durable_exec.temporal import PydanticAIPlugin, TemporalDurability
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.usage import UsageLimits
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker
from temporalio.workflow import ActivityConfig

from bench.peers.models import FrameworkRequest, RunOutcome
from bench.peers.temporal_run import PYDANTIC_AI, SignalApprovals
from bench.peers.workload import HITL, LONG_TOOLS, SYSTEM_PROMPT, Workload, workloads
from bench.plain import MODEL_RETRY, MODEL_TIMEOUT, TOOL_RETRY, TOOL_TIMEOUT
from stead.contracts.models import Message, ModelTurn, ToolCall
from stead.settings import Settings

WORKFLOW: Final = "PeerPydanticAIWorkflow"
TOOLSET_ID: Final = "lookups"
LIMITS: Final = UsageLimits(request_limit=2 * LONG_TOOLS + 10)
"""pydantic-ai stops a run at 50 model requests by default; the long run makes 51. This is
the step bound stead's long agent has (``max_steps``)."""


def stead_messages(messages: Sequence[ModelMessage], info: AgentInfo) -> list[Message]:
    """pydantic-ai's conversation as stead messages, for the planner. A retry prompt means a
    tool call or an answer was refused, which the bench work never causes: it raises."""
    out: list[Message] = []
    if info.instructions:
        out.append(Message(role="system", content=info.instructions))
    for m in messages:
        if isinstance(m, ModelResponse):
            calls = [ToolCall(id=p.tool_call_id, name=p.tool_name, arguments=p.args_as_json_str())
                     for p in m.parts if isinstance(p, ToolCallPart)]
            text = "".join(p.content for p in m.parts if isinstance(p, TextPart))
            out.append(Message(role="assistant", content=text or None, tool_calls=calls))
            continue
        for part in m.parts:
            if isinstance(part, SystemPromptPart):
                out.append(Message(role="system", content=part.content))
            elif isinstance(part, UserPromptPart):
                if not isinstance(part.content, str):
                    raise TypeError(f"the bench sends text prompts, got {part.content!r}")
                out.append(Message(role="user", content=part.content))
            elif isinstance(part, ToolReturnPart):
                out.append(Message(role="tool", tool_call_id=part.tool_call_id,
                                   name=part.tool_name, content=part.model_response_str()))
            elif isinstance(part, RetryPromptPart):
                raise RuntimeError(f"pydantic-ai asked the planner to retry: "
                                   f"{part.model_response()}")
    return out


def model_response(turn: ModelTurn) -> ModelResponse:
    """The planner's turn as pydantic-ai's response: its text, then its tool calls."""
    parts: list[ModelResponsePart] = [TextPart(turn.content)] if turn.content else []
    parts += [ToolCallPart(tool_name=c.name, args=c.arguments, tool_call_id=c.id)
              for c in turn.tool_calls]
    return ModelResponse(parts=parts, model_name=turn.model or None)


def scripted_model(w: Workload) -> FunctionModel:
    """``FunctionModel`` over the workload's planner (it runs in the model activity)."""
    async def think(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return model_response(await w.think(stead_messages(messages, info)))

    return FunctionModel(think, model_name=f"scripted:{w.name}")


def toolset(w: Workload, *, approval: bool = False) -> FunctionToolset[None]:
    """The workload's stead tools as a pydantic-ai toolset, with stead's argument schemas.
    A call runs in the toolset's call-tool activity; its run is that activity's workflow.
    ``approval``: every tool needs a person's approval (pydantic-ai's ``requires_approval``:
    the run ends with the calls as ``DeferredToolRequests`` instead of making them)."""
    def bind(name: str) -> Any:
        async def call_tool(ctx: RunContext[None], **arguments: Any) -> str:
            run_id = activity.info().workflow_id
            if run_id is None:
                raise RuntimeError(f"{name} runs in an agent run's tool activity only")
            msg = await w.act(ToolCall(id=ctx.tool_call_id or name, name=name,
                                       arguments=json.dumps(arguments)),
                              run_id=run_id, step=ctx.run_step)
            return msg.content or ""
        return call_tool

    tools = [Tool.from_schema(bind(s.name), name=s.name, description=s.description,
                              json_schema=dict(s.parameters), takes_ctx=True)
             for s in w.schemas]
    for t in tools:
        t.requires_approval = approval  # from_schema has no parameter for it
    return FunctionToolset(tools, id=TOOLSET_ID)


def durable_agent(w: Workload) -> Agent[None, Any]:
    """One workload's pydantic-ai agent, durable on Temporal with stead's activity defaults.
    The approval run's agent may also end with ``DeferredToolRequests`` (its tool asks)."""
    durability: TemporalDurability[None] = TemporalDurability(
        activity_config=ActivityConfig(
            start_to_close_timeout=TOOL_TIMEOUT,
            schedule_to_close_timeout=TOOL_TIMEOUT * 3 + timedelta(seconds=6),
            retry_policy=TOOL_RETRY),
        model_activity_config=ActivityConfig(
            start_to_close_timeout=MODEL_TIMEOUT,
            schedule_to_close_timeout=MODEL_TIMEOUT * 5 + timedelta(seconds=120),
            retry_policy=MODEL_RETRY))
    approval = w.name == HITL
    return Agent(scripted_model(w), name=f"peers_{w.name}", instructions=SYSTEM_PROMPT,
                 toolsets=[toolset(w, approval=approval)], capabilities=[durability],
                 output_type=[str, DeferredToolRequests] if approval else str)


AGENTS: Final[dict[str, Agent[None, Any]]] = {
    name: durable_agent(w) for name, w in workloads().items()}
"""The agents the workflow runs, by workload."""


def outcome(output: str, messages: Sequence[ModelMessage], model_calls: int) -> RunOutcome:
    """A finished run's answer, the tools that returned (in order) and the model requests."""
    tools = [p.tool_name for m in messages if isinstance(m, ModelRequest) for p in m.parts
             if isinstance(p, ToolReturnPart) and p.outcome == "success"]
    return RunOutcome(answer=output, tools_called=tools, model_calls=model_calls)


class PydanticAISystem(SignalApprovals):
    """``PeerPydanticAIWorkflow`` on a worker whose client carries ``PydanticAIPlugin``. The
    approval run is two agent runs in one workflow: the first ends with the tool call
    deferred for approval, the workflow waits for the ``approve`` signal, the second resumes
    from the first's messages with the call approved (pydantic-ai's deferred tools)."""

    temporal = True

    def __init__(self, client: Client, task_queue: str) -> None:
        self.name = PYDANTIC_AI
        self.client = client
        self.task_queue = task_queue
        self.workloads = workloads()

    async def _start(self, workload: str, run_id: str, *,
                     approval: bool) -> WorkflowHandle[Any, RunOutcome]:
        if workload not in AGENTS:
            raise ValueError(f"{self.name} has no agent for the {workload!r} workload")
        return await self.client.start_workflow(
            WORKFLOW, FrameworkRequest(workload=workload, input=self.workloads[workload].request),
            id=run_id, task_queue=self.task_queue, result_type=RunOutcome)


@contextlib.asynccontextmanager
async def pydantic_ai_worker(settings: Settings, task_queue: str) -> AsyncIterator[Client]:
    """A worker for ``PeerPydanticAIWorkflow``: the plain peer's options, pydantic-ai's plugin
    on the client (it registers the agents' activities from ``__pydantic_ai_agents__``)."""
    from bench.peers.pydantic_ai_workflow import PeerPydanticAIWorkflow
    from bench.runner import plain_worker_options

    assert settings.temporal.address is not None
    client = await Client.connect(settings.temporal.address,
                                  namespace=settings.temporal.namespace,
                                  plugins=[PydanticAIPlugin()])
    async with Worker(client, task_queue=task_queue, workflows=[PeerPydanticAIWorkflow],
                      **plain_worker_options(settings.worker)):
        yield client
