"""Agent declarations and the catalog a worker serves.

    ops = Agent(name="ops", instructions="...", tools=ops_tools(world), offline_model=planner,
                models=[ModelEndpoint(model="gpt-5-mini", api="responses"),   # first choice
                        ModelEndpoint(model="gpt-4o-mini", max_attempts=2)])  # its fallback
    catalog = AgentCatalog([ops])        # validated: raises SpecError listing every problem
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stead.authoring.evaluation import OnlineEvals
from stead.authoring.graph import DEFAULT, REGISTRY, Graph
from stead.authoring.tools import Tool, ToolRegistry
from stead.contracts.models import AgentPlan, GraphPin, MemoryPlan, ModelEndpoint, ToolPlan
from stead.contracts.policy import Policy
from stead.errors import SpecError
from stead.integrations.llm import ModelClient
from stead.integrations.mcp_spec import McpServer


@dataclass(frozen=True, kw_only=True)
class Agent:
    """An agent: instructions, the tools it may call, and its offline model."""

    name: str
    instructions: str
    tools: list[Tool[Any, Any]]
    offline_model: ModelClient
    """Used when no model server is configured (the reference agents' scripted planners)."""
    models: Sequence[ModelEndpoint] = ()
    """The agent's models, first choice first: each later one answers a turn only when those
    before it are down, rate limited past their attempts, or time out. Checked when the worker
    starts (``stead.integrations.model_endpoints``) and pinned in each run's plan;
    ``STEAD_AGENT_MODELS`` replaces it. Empty: the worker's ``OPENAI_*`` model, else
    ``offline_model``."""
    max_steps: int = 16
    """Budget of model turns plus tool calls per run."""
    description: str = ""
    policy: Policy | None = None
    """Routing, risk, approval and output rules (``load_policy(path)``); None: allow all."""
    output_schema: dict[str, Any] | None = None
    """JSON schema the final answer must satisfy, for agents that answer in JSON."""
    memory: MemoryPlan | None = None
    """Recall before thinking / remember after a run, when the worker has a memory store."""
    mcp: Sequence[McpServer] = ()
    """MCP servers whose tools this agent may call (listed and pinned when a run starts, as
    ``<server>__<tool>``; see ``stead.integrations.mcp``). ``STEAD_MCP_SERVERS`` can add more."""
    graph: Graph = DEFAULT
    """What a run does, node by node (``stead.authoring.graph``); the default is the ReAct loop."""
    previous_graphs: Sequence[Graph] = ()
    """Older versions of ``graph`` that runs still in flight were started with."""
    evals: OnlineEvals | None = None
    """Evaluators of finished production runs (``stead.authoring.evaluation``): what makes a
    completed run a task success. Scored after the run, never in it."""
    registry: ToolRegistry = field(init=False)
    _tool_plans: list[ToolPlan] = field(init=False, repr=False)
    _graph_pin: GraphPin = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", ToolRegistry(self.tools))
        # Tool schemas are fixed once declared; building them per run cost ~1 ms at run start.
        object.__setattr__(self, "_tool_plans", [t.plan() for t in self.tools])
        # The graph's digest serialises its structure: once per agent, not per run start.
        object.__setattr__(self, "_graph_pin", self.graph.ref())
        for g in (*self.previous_graphs, self.graph):
            REGISTRY.add(g)

    def plan(self, *, model: str, max_steps: int | None = None,
             models: Sequence[ModelEndpoint] = ()) -> AgentPlan:
        """``models``: the model chain as the worker resolved it (its first names ``model``)."""
        return AgentPlan(agent=self.name, instructions=self.instructions,
                         model=models[0].name if models else model,
                         max_steps=max_steps or self.max_steps,
                         tools=self._tool_plans, policy=self.policy,
                         output_schema=self.output_schema, memory=self.memory,
                         graph=self._graph_pin, models=list(models))


class AgentCatalog:
    """The agents one worker serves, validated as a whole at construction."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        self._agents: dict[str, Agent] = {}
        problems: list[str] = []
        first_tool: dict[str, tuple[str, Tool[Any, Any]]] = {}
        for a in agents:
            if a.name in self._agents:
                problems.append(f"agent {a.name!r} is declared twice")
            self._agents[a.name] = a
            for t in a.tools:
                owner, seen = first_tool.setdefault(t.name, (a.name, t))
                if seen is not t:
                    problems.append(
                        f"two different tools are named {t.name!r} (agents {owner!r} and "
                        f"{a.name!r}); tool names are activity types and must be unique across "
                        f"the worker's agents")
            if not a.instructions.strip():
                problems.append(f"agent {a.name!r}: instructions are empty")
            if a.max_steps < 1:
                problems.append(f"agent {a.name!r}: max_steps must be at least 1")
            try:
                a.registry.validate()
            except SpecError as err:
                problems.append(f"agent {a.name!r}: {err}")
            tool_names = {*a.registry.names(), *(n for s in a.mcp for n in s.tool_names())}
            for g in (a.graph, *a.previous_graphs):
                # MCP tools are only known once a run lists them: check names only offline.
                problems.extend(f"agent {a.name!r}: graph {g.name}@{g.version}: {p}"
                                for p in g.problems(tools=tool_names if not a.mcp else None,
                                                    memory=a.memory is not None))
            if a.evals is not None:
                problems.extend(f"agent {a.name!r}: {p}" for p in a.evals.problems())
            if a.policy is not None:
                problems.extend(f"agent {a.name!r}: policy {a.policy.ref}: {p}"
                                for p in a.policy.check_references(
                                    {*a.registry.names(), *(n for s in a.mcp
                                                            for n in s.tool_names())}))
        for a in self._agents.values():
            for n in a.graph.nodes.values():
                if n.kind == "subagent" and n.agent not in self._agents:
                    problems.append(f"agent {a.name!r}: graph node {n.id!r} runs agent "
                                    f"{n.agent!r}, which this worker does not serve")
            for r in a.policy.routing if a.policy else []:
                if r.action == "agent" and r.agent is not None and (
                        r.agent not in self._agents or r.agent == a.name):
                    problems.append(f"agent {a.name!r}: routing rule {r.name!r} hands over to "
                                    f"{r.agent!r}, which is not another agent of this worker")
        if problems:
            raise SpecError("invalid agent catalog:\n  - " + "\n  - ".join(problems))

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __getitem__(self, name: str) -> Agent:
        return self._agents[name]

    def names(self) -> list[str]:
        return sorted(self._agents)

    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    def tools(self) -> list[Tool[Any, Any]]:
        """Every distinct tool across agents (a tool object shared by agents counts once)."""
        seen: dict[str, Tool[Any, Any]] = {}
        for a in self._agents.values():
            for t in a.tools:
                other = seen.get(t.name)
                if other is not None and other is not t:
                    raise SpecError(
                        f"two different tools are named {t.name!r}; tool names are activity "
                        f"types and must be unique across the worker's agents")
                seen[t.name] = t
        return list(seen.values())
