"""The ``refund`` reference agent: refunds on shop orders (payments)."""

from __future__ import annotations

from pathlib import Path

from stead.agents.refund.planner import RefundPlanner
from stead.agents.refund.tools import refund_tools
from stead.agents.refund.world import RefundWorld
from stead.authoring.agent import Agent
from stead.authoring.evaluation import OnlineEvals, grounded_figures, used_tools
from stead.authoring.graph import grounded_numbers, react
from stead.contracts.models import MemoryPlan
from stead.contracts.policy import load_policy

INSTRUCTIONS = """You are a customer-support assistant who handles refunds on shop orders.
Always look the order up before refunding. Refund what the customer asked for, never more than
is left to refund on the order, and the whole remainder only when no amount is given. After a
refund, notify the customer. If a refund is denied or rejected, say so and why. Answer with what
the tools returned; never invent amounts or ids, and never repeat card or bank numbers."""

POLICY_FILE = Path(__file__).with_name("policy.yaml")
"""Routing, risk and approval rules of the refund agent (small refunds run, large ones ask)."""


def refund_agent(world: RefundWorld) -> Agent:
    return Agent(name="refund", instructions=INSTRUCTIONS, tools=refund_tools(world),
                 offline_model=RefundPlanner().model, max_steps=12,
                 description="Refunds on shop orders: look up, refund, notify the customer.",
                 policy=load_policy(POLICY_FILE),
                 # No recall; completed runs are remembered under the requesting user as
                 # subject, so `stead memory delete --subject USER` erases them.
                 memory=MemoryPlan(recall_top_k=0, summary_ttl_seconds=90 * 24 * 3600),
                 graph=GRAPH, evals=EVALS)


EVALS = OnlineEvals([used_tools(any_of=["lookup_order"], answered=True), grounded_figures()],
                    sample=1.0)
"""Every finished run is graded after it ends: a completed run is a task success when it
looked the order up (and the lookup answered), and every amount and id it states comes from
what it saw."""


GRAPH = react(name="refund", evaluators=[grounded_numbers()], max_retries=1)
"""The ReAct loop plus a step evaluation of every accepted answer: each amount, order id or
count it states must come from a tool result or the request. A failing answer goes back to
the model once with the evaluator's feedback, then to a human (``review``), who approves,
edits or rejects it."""


def default_world(data_dir: Path) -> RefundWorld:
    return RefundWorld(data_dir / "refund-world.sqlite")


__all__ = ["POLICY_FILE", "RefundPlanner", "RefundWorld", "default_world", "refund_agent",
           "refund_tools"]
