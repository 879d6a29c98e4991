"""The work every system does, defined once: the scripted model, the tool bodies, the checks.

stead runs these as its agents (``stead_agents``); the peers (plain temporalio, LangGraph,
DBOS) call the very same objects through :class:`Workload`: the planner is the agent's
``FunctionModel`` (``bench/agent.py``'s ``plan`` for the 5-tool run, ``plan_n`` for the long
run, ``bench/approvals.py``'s planner for the approval run) and a tool call is the stead
``Tool`` object's own function. So a difference between systems is the runtime, never the work.

    w = WORKLOADS[FIVE]
    turn = await w.think(messages)                    # one scripted model call
    message = await w.act(turn.tool_calls[0], run_id=..., step=1)   # one tool call
    w.check(answer, tools_called)                     # raises unless the run did the work
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.agent import AGENT, REQUEST, TOOLS, bench_agent, bench_tools
from bench.approvals import REQUEST as APPROVAL_REQUEST
from bench.approvals import approval_agent
from bench.guardrails import POLICY_AGENT, bench_policy
from bench.peers.models import RunOutcome
from stead.authoring.agent import Agent
from stead.authoring.tools import Tool, ToolContext
from stead.contracts.models import Message, ModelTurn, ToolCall, ToolSchema
from stead.contracts.policy import Execution
from stead.integrations.llm import FunctionModel, assistant_turns, call

FIVE: Final = "five"
"""The 5-tool run: 6 model calls, 5 tool calls (``bench/agent.py``)."""
LONG: Final = "long"
"""The long run: ``LONG_TOOLS`` tool calls, one per model turn, cycling through the lookups."""
HITL: Final = "hitl"
"""The approval run: one model call, a human approval, one tool call, one model call."""
LONG_TOOLS: Final = 50

LONG_AGENT, LONG_POLICY_AGENT = "bench-long", "bench-long-policy"
SYSTEM_PROMPT = "Look things up with the tools, then answer."


def plan_n(tools: int) -> Any:
    """A planner like ``bench.agent.plan`` for ``tools`` calls: turn k calls
    ``lookup_{k mod 5 + 1}`` with ``key-{k+1}``, then it answers from the results."""
    def plan_long(messages: Sequence[Message], schemas: Sequence[ToolSchema]) -> ModelTurn:
        k = assistant_turns(messages)
        if k < tools:
            return ModelTurn(tool_calls=[call(f"lookup_{k % TOOLS + 1}", call_id=f"call_{k + 1}",
                                              key=f"key-{k + 1}")])
        values = [str(json.loads(m.content or "{}").get("result", {}).get("value", "?"))
                  for m in messages if m.role == "tool"]
        return ModelTurn(content="Values: " + ", ".join(values))
    return plan_long


def stead_agents(*, policy: bool, local: bool = False) -> list[Agent]:
    """What a stead worker serves for this benchmark. ``policy``: the bench agents under
    ``bench_policy()`` (the reference policies' rules, none of which fires), else under
    stead's built-in allow-all; ``local``: that policy with its ``execution`` section on (the
    lookups and the scripted model run as local activities). The approval agent always has
    its own policy (it must ask)."""
    tools = bench_tools()
    ref = bench_policy() if policy else None
    if ref is not None and local:
        ref = ref.model_copy(update={"execution": Execution(
            local_reads=True, local_model_calls=True, local_max_seconds=30)})
    return [
        bench_agent(name=POLICY_AGENT if policy else AGENT, tools=tools, policy=ref),
        Agent(name=LONG_POLICY_AGENT if policy else LONG_AGENT,
              instructions="Look things up with the tools, then answer.", tools=tools,
              offline_model=FunctionModel(plan_n(LONG_TOOLS), name="scripted:bench-long"),
              max_steps=2 * LONG_TOOLS + 10, policy=ref,
              description=f"Benchmark agent: {LONG_TOOLS} lookups, then an answer."),
        approval_agent(),
    ]


@dataclass(frozen=True)
class Workload:
    """One agent's work, callable from any runtime."""

    name: str
    request: str
    agent: Agent
    tool_calls: int

    @property
    def tools(self) -> dict[str, Tool[Any, Any]]:
        return {t.name: t for t in self.agent.tools}

    @property
    def schemas(self) -> list[ToolSchema]:
        return [t.schema() for t in self.agent.tools]

    def first_messages(self) -> list[Message]:
        return [Message(role="system", content=SYSTEM_PROMPT),
                Message(role="user", content=self.request)]

    async def think(self, messages: Sequence[Message]) -> ModelTurn:
        """One scripted model call (the agent's own ``FunctionModel``)."""
        return await self.agent.offline_model.complete(messages, self.schemas)

    async def act(self, c: ToolCall, *, run_id: str, step: int) -> Message:
        """One tool call through the stead ``Tool`` itself; the result as stead's tool
        message (``{"ok": true, "tool": ..., "result": ...}``)."""
        t = self.tools.get(c.name)
        if t is None:
            raise ValueError(f"{self.name}: the model asked for unknown tool {c.name!r}")
        ctx = ToolContext(idempotency_key=f"{run_id}:{step}", attempt=1, workflow_id=run_id,
                          run_id=run_id, tenant="default")
        out = await t(t.input_model.model_validate_json(c.arguments), ctx)
        return Message(role="tool", tool_call_id=c.id, name=c.name,
                       content=json.dumps({"ok": True, "tool": c.name,
                                           "result": out.model_dump(mode="json")}))

    def expected_tools(self) -> list[str]:
        if self.name == HITL:
            return ["guarded_lookup"]
        return [f"lookup_{k % TOOLS + 1}" for k in range(self.tool_calls)]

    def expected_answer(self) -> str:
        if self.name == HITL:
            return "Value: value-of-bench-1"
        return "Values: " + ", ".join(f"value-{k % TOOLS + 1}-key-{k + 1}"
                                      for k in range(self.tool_calls))

    def check(self, system: str, run_id: str, outcome: RunOutcome) -> None:
        """Raise unless the run called the expected tools in order and answered from them."""
        want_tools, want_answer = self.expected_tools(), self.expected_answer()
        if outcome.tools_called != want_tools or outcome.answer != want_answer \
                or (outcome.model_calls and outcome.model_calls != self.tool_calls + 1):
            raise RuntimeError(
                f"{system} run {run_id} ({self.name}) did not do the bench work: answered "
                f"{outcome.answer[:120]!r} after tools {outcome.tools_called[:8]} "
                f"({len(outcome.tools_called)} calls, {outcome.model_calls} model calls); "
                f"expected {want_answer[:120]!r} after {len(want_tools)} calls")


def workloads() -> dict[str, Workload]:
    """The three workloads, on fresh agent objects (tools are shared within one set)."""
    five, long_, hitl = stead_agents(policy=False)
    return {FIVE: Workload(FIVE, REQUEST, five, TOOLS),
            LONG: Workload(LONG, REQUEST, long_, LONG_TOOLS),
            HITL: Workload(HITL, APPROVAL_REQUEST, hitl, 1)}


def agent_name(workload: str, *, policy: bool) -> str:
    """The stead agent that runs ``workload`` on a worker built from ``stead_agents``."""
    if workload == FIVE:
        return POLICY_AGENT if policy else AGENT
    if workload == LONG:
        return LONG_POLICY_AGENT if policy else LONG_AGENT
    return approval_agent().name
