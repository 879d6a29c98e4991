"""The workloads on the OpenAI Agents SDK with Temporal's plugin (``temporalio.openai_agents``,
the ``temporalio-openai-agents`` package), as its documentation sets it up.

    async with openai_agents_worker(settings, task_queue) as client:
        outcome = await OpenAIAgentsSystem(client, task_queue).run("five", run_id)

- The workflow builds an ``agents.Agent`` and calls ``Runner.run``; ``OpenAIAgentsPlugin``
  on the client replaces the SDK's runner inside the workflow, so every model call is the
  plugin's own model activity (``invoke_model_activity``) and the agent loop runs in the
  workflow.
- The tools are Temporal activities turned into agent tools with ``activity_as_tool``, as
  the plugin's documentation recommends; each calls the stead ``Tool`` (``Workload.act``)
  and returns stead's tool message text.
- The model is :class:`ScriptedModel`, an ``agents.Model`` that runs the workload's scripted
  planner (``Workload.think``) in the model activity, given to the plugin through its
  ``model_provider`` (the seam the plugin's own test models use). It never touches the
  network; with a custom provider the plugin builds no OpenAI client either. The SDK's
  tracing is off per run (``RunConfig(tracing_disabled=True)``): telemetry is off on every
  system but stead's full paths.
- Activity timeouts and retries are stead's defaults (``bench.plain``), as on plain
  temporalio; the worker is the plain peer's (same slots, cache, sandbox passthrough) with
  the plugin adding its passthrough, data converter and interceptors.

The SDK's ``Agent`` is built in the workflow (its documented pattern: it is cheap and holds
no I/O); the tool activities live here, and the workflow imports them passed through. The
SDK itself comes through ``bench.peers.openai_sdk``: its import name, ``agents``, is also
the name of this repository's reference-agents folder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, Final

from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseOutputText,
)
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from bench.peers.models import FrameworkRequest, RunOutcome
from bench.peers.openai_sdk import (
    Model,
    ModelActivityParameters,
    ModelProvider,
    ModelResponse,
    OpenAIAgentsPlugin,
    ToolCallItem,
    ToolCallOutputItem,
    Usage,
)
from bench.peers.temporal_run import OPENAI_AGENTS, SignalApprovals
from bench.peers.workload import FIVE, HITL, LONG, LONG_TOOLS, Workload, workloads
from bench.plain import MODEL_RETRY, MODEL_TIMEOUT
from stead.contracts.models import Message, ModelTurn, ToolCall
from stead.settings import Settings

WORKFLOW: Final = "PeerOpenAIAgentsWorkflow"
MAX_TURNS: Final = 2 * LONG_TOOLS + 10
"""The SDK stops a run after 10 model turns by default; the long run takes 51. This is the
step bound stead's long agent has (``max_steps``)."""
WORKLOADS: Final = (FIVE, LONG, HITL)
"""The workloads this peer runs."""


def model_name(workload: str) -> str:
    """The model name an agent of ``workload`` asks for; the provider maps it back."""
    return f"scripted:{workload}"


def _item(raw: Any) -> dict[str, Any]:
    """An input item as plain JSON data (the activity may hand over dicts or models)."""
    if isinstance(raw, BaseModel):
        return raw.model_dump(mode="json", exclude_unset=True)
    if isinstance(raw, dict):
        return raw
    raise TypeError(f"unexpected model input item {raw!r}")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))


def stead_messages(system: str | None,
                   given: str | Sequence[Any]) -> list[Message]:
    """The SDK's Responses-shaped input as stead messages, for the planner: consecutive
    function calls are one assistant turn; a call's output is a tool message."""
    out: list[Message] = [Message(role="system", content=system)] if system else []
    if isinstance(given, str):
        return [*out, Message(role="user", content=given)]
    for raw in given:
        item = _item(raw)
        kind = item.get("type", "message")
        if kind == "function_call":
            call = ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])
            if out and out[-1].role == "assistant" and out[-1].tool_calls:
                out[-1].tool_calls.append(call)
            else:
                out.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            out.append(Message(role="tool", tool_call_id=item["call_id"],
                               content=_text(item["output"])))
        elif kind == "message" and item.get("role") in ("system", "developer"):
            out.append(Message(role="system", content=_text(item.get("content", ""))))
        elif kind == "message" and item.get("role") in ("user", "assistant"):
            out.append(Message(role=item["role"], content=_text(item.get("content", ""))))
        else:
            raise TypeError(f"the bench's planner cannot read the input item {item!r}")
    return out


def model_response(turn: ModelTurn) -> Any:
    """The planner's turn as the SDK's response: a text message, then its function calls."""
    output: list[ResponseOutputItem] = []
    if turn.content:
        output.append(ResponseOutputMessage(
            id="msg", role="assistant", status="completed", type="message",
            content=[ResponseOutputText(text=turn.content, annotations=[],
                                        type="output_text")]))
    output += [ResponseFunctionToolCall(type="function_call", id=f"fc_{c.id}", call_id=c.id,
                                        name=c.name, arguments=c.arguments, status="completed")
               for c in turn.tool_calls]
    return ModelResponse(output=output, usage=Usage(requests=1), response_id=None)


class ScriptedModel(Model):  # type: ignore[misc]  # the SDK has no static types here
    """An ``agents.Model`` that is the workload's scripted planner (no network)."""

    def __init__(self, w: Workload) -> None:
        self.workload = w

    async def get_response(self, system_instructions: str | None, input: str | list[Any],
                           *args: Any, **kwargs: Any) -> Any:
        """One model call: the planner's next turn for this conversation (the SDK also
        passes settings, tool and handoff definitions, tracing: the planner needs none)."""
        return model_response(await self.workload.think(stead_messages(system_instructions,
                                                                       input)))

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the bench runs the agents without streaming")


class ScriptedModels(ModelProvider):  # type: ignore[misc]  # likewise
    """The plugin's ``model_provider``: ``scripted:<workload>`` -> that workload's planner."""

    def __init__(self) -> None:
        self.models = {model_name(n): ScriptedModel(w) for n, w in workloads().items()
                       if n in WORKLOADS}

    def get_model(self, model_name: str | None) -> ScriptedModel:
        if model_name not in self.models:
            raise ValueError(f"no scripted model {model_name!r}; the bench's are "
                             f"{', '.join(self.models)}")
        return self.models[model_name]


ToolActivity = Callable[[str], Coroutine[Any, Any, str]]


def tool_activity(w: Workload, name: str) -> ToolActivity:
    """The stead tool ``name`` as a Temporal activity whose signature is the tool's (the SDK
    derives the tool's schema from it): every bench tool takes one string, ``key``."""
    t = w.tools[name]
    fields = list(t.input_model.model_fields)
    if fields != ["key"]:
        raise ValueError(f"the openai-agents peer wraps tools taking one 'key' argument; "
                         f"{name} takes {fields}")

    async def call_tool(key: str) -> str:
        info = activity.info()
        if info.workflow_id is None:
            raise RuntimeError(f"{name} runs as an activity of an agent run, not on its own")
        # The SDK hands a tool activity only the arguments: the activity's sequence number in
        # its run stands in for the step.
        step = int(info.activity_id) if info.activity_id.isdigit() else 0
        msg = await w.act(ToolCall(id=f"{info.workflow_id}:{info.activity_id}", name=name,
                                   arguments=json.dumps({"key": key})),
                          run_id=info.workflow_id, step=step)
        return msg.content or ""

    call_tool.__name__ = call_tool.__qualname__ = name  # the SDK names the tool after it
    call_tool.__doc__ = t.description
    return activity.defn(name=f"peers.openai.{name}")(call_tool)


def _tool_activities() -> dict[str, ToolActivity]:
    ws = workloads()
    acts: dict[str, ToolActivity] = {}
    for n in WORKLOADS:
        for s in ws[n].schemas:
            acts.setdefault(s.name, tool_activity(ws[n], s.name))
    return acts


TOOL_ACTIVITIES: Final = _tool_activities()
"""The tool activities by tool name (one set: the workloads share their tools)."""
TOOLS: Final = {n: [s.name for s in w.schemas] for n, w in workloads().items() if n in WORKLOADS}
"""The tool names each workload's agent gets."""


def outcome(result: Any) -> RunOutcome:
    """A finished run's answer, the tools whose calls returned (in order), the model calls."""
    returned = {i.raw_item["call_id"] if isinstance(i.raw_item, dict) else i.raw_item.call_id
                for i in result.new_items if isinstance(i, ToolCallOutputItem)}
    tools = [i.raw_item.name for i in result.new_items
             if isinstance(i, ToolCallItem)
             and isinstance(i.raw_item, ResponseFunctionToolCall)
             and i.raw_item.call_id in returned]
    return RunOutcome(answer=str(result.final_output), tools_called=tools,
                      model_calls=len(result.raw_responses))


class OpenAIAgentsSystem(SignalApprovals):
    """``PeerOpenAIAgentsWorkflow`` on a worker whose client carries ``OpenAIAgentsPlugin``.
    The approval run is two ``Runner.run`` calls in one workflow: the first stops with the
    tool call as an interruption (its tool ``needs_approval``), the workflow waits for the
    ``approve`` signal, the second resumes from the first's ``RunState`` with it approved."""

    temporal = True

    def __init__(self, client: Client, task_queue: str) -> None:
        self.name = OPENAI_AGENTS
        self.client = client
        self.task_queue = task_queue
        self.workloads = workloads()

    async def _start(self, workload: str, run_id: str, *,
                     approval: bool) -> WorkflowHandle[Any, RunOutcome]:
        if workload not in WORKLOADS:
            raise ValueError(f"{self.name} has no agent for the {workload!r} workload")
        return await self.client.start_workflow(
            WORKFLOW, FrameworkRequest(workload=workload, input=self.workloads[workload].request),
            id=run_id, task_queue=self.task_queue, result_type=RunOutcome)


@contextlib.asynccontextmanager
async def openai_agents_worker(settings: Settings, task_queue: str) -> AsyncIterator[Client]:
    """A worker for ``PeerOpenAIAgentsWorkflow`` and the tool activities: the plain peer's
    options, the plugin on the client (model activity, scripted model provider)."""
    from bench.peers.openai_agents_workflow import PeerOpenAIAgentsWorkflow
    from bench.runner import plain_worker_options

    assert settings.temporal.address is not None
    plugin = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(
            start_to_close_timeout=MODEL_TIMEOUT,
            schedule_to_close_timeout=MODEL_TIMEOUT * 5 + timedelta(seconds=120),
            retry_policy=MODEL_RETRY),
        model_provider=ScriptedModels())
    client = await Client.connect(settings.temporal.address,
                                  namespace=settings.temporal.namespace, plugins=[plugin])
    async with Worker(client, task_queue=task_queue, workflows=[PeerOpenAIAgentsWorkflow],
                      activities=list(TOOL_ACTIVITIES.values()),
                      **plain_worker_options(settings.worker)):
        yield client
