"""The ``ops`` reference agent: incident work on services."""

from __future__ import annotations

from pathlib import Path

from stead.agents.ops.planner import OpsPlanner
from stead.agents.ops.tools import ops_tools
from stead.agents.ops.world import OpsWorld
from stead.authoring.agent import Agent
from stead.authoring.evaluation import OnlineEvals, grounded_figures, used_tools
from stead.authoring.graph import Graph, react
from stead.contracts.models import MemoryPlan
from stead.contracts.policy import load_policy

INSTRUCTIONS = """You are an SRE assistant for the company's service fleet.
Use the tools to look before you act: check a service's status and logs before opening a
ticket or restarting it. Restart only when the service is down or the user asks for it.
Answer with what the tools returned; never invent numbers."""

POLICY_FILE = Path(__file__).with_name("policy.yaml")
"""Routing, risk and approval rules of the ops agent (restarts need a human)."""


def ops_agent(world: OpsWorld) -> Agent:
    return Agent(name="ops", instructions=INSTRUCTIONS, tools=ops_tools(world),
                 offline_model=OpsPlanner().model, max_steps=16,
                 description="Incident work on services: status, logs, tickets, restarts.",
                 policy=load_policy(POLICY_FILE),
                 # Runbooks are recalled before the first thought; run summaries are kept
                 # for 30 days.
                 memory=MemoryPlan(recall_top_k=3, recall_namespaces=["runbooks"],
                                   min_score=0.3, summary_ttl_seconds=30 * 24 * 3600),
                 graph=GRAPH, evals=EVALS)


EVALS = OnlineEvals([used_tools(answered=True), grounded_figures()], sample=1.0)
"""Every finished run is graded after it ends: a completed run is a task success when a tool
answered it before it answered (an answer that only reports failed tools is not), and every
figure it states comes from what it saw."""


GRAPH = react(name="ops")
"""The ReAct loop: route, recall runbooks, think and act until an answer, check it."""


def _delegating() -> Graph:
    g = Graph("ops-delegating", version=1).route("route").subagent("delegate", "ops") \
        .finish("done")
    g.edge("route", "delegate").edge("delegate", "done")
    return g


DELEGATING_GRAPH = _delegating()
"""Hands the request to the ops agent as a sub-agent (its own run, in the parent's budget and
admission slot), then finishes with its answer: the recorded corpus's sub-agent paths."""


def default_world(data_dir: Path) -> OpsWorld:
    return OpsWorld(data_dir / "ops-world.sqlite")


__all__ = ["DELEGATING_GRAPH", "GRAPH", "POLICY_FILE", "OpsPlanner", "OpsWorld", "default_world",
           "ops_agent", "ops_tools"]
