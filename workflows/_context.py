"""What the parts of one agent run share: the workflow instance's context and the run's frame.

:class:`Context` exists from the workflow's ``__init__`` (signals, the update and the query may
come before ``run``): the seam, the queryable :class:`RunState`, the run's identity and its
pinned policy. :class:`Frame` is made when ``run`` has the agent's plan: the request, the plan
and the graph it pins, the result being built and the graph state. Parts read both instead of
taking them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow

from stead.workflows._seam import LOCAL_EXECUTION_PATCH, Seam

with workflow.unsafe.imports_passed_through():
    from stead.authoring.graph import DEFAULT, REGISTRY, Graph, GraphState
    from stead.contracts.models import (
        AgentPlan,
        Message,
        RunRef,
        RunRequest,
        RunResult,
        RunState,
        RunStatus,
        StepInfo,
        ToolPlan,
        ToolSchema,
    )
    from stead.contracts.policy import Execution, Policy
    from stead.guardrails.decisions import RouteDecision

BEFORE_EXECUTION = Execution(local_reads=False, local_max_seconds=10)
"""How calls ran before policies said (``Policy.execution``): every one an activity."""
ALLOW_ALL = Policy(id="allow-all", version=1, execution=Execution())
"""The policy of a run before its plan (with the agent's policy) is pinned, and of an agent
that declares none."""
ALLOW_ALL_REMOTE = Policy(id="allow-all", version=1, execution=BEFORE_EXECUTION)
"""``ALLOW_ALL`` as it was before read tools ran locally by default."""


def execution(policy: Policy) -> Execution:
    """How the run's calls run under ``policy``. A policy pinned by a run recorded before
    policies had an ``execution`` section has none in its payload (pydantic leaves the field
    out of ``model_fields_set``): that run called every tool as an activity and replays so.
    Any other policy says for itself, ``Execution``'s defaults included (a plan pinned now
    carries them all)."""
    return policy.execution if "execution" in policy.model_fields_set else BEFORE_EXECUTION


def unpinned_policy(seam: Seam) -> Policy:
    """The policy of an agent that declares none. An agent's own policy is pinned in the run's
    history with its plan; this one is not, so runs recorded before read tools ran locally by
    default (``Execution.local_reads``) replay with every call an activity, as they ran. The
    run's first local activity (``run.start``) has asked the patch already."""
    return ALLOW_ALL if seam.patched(LOCAL_EXECUTION_PATCH) else ALLOW_ALL_REMOTE


@dataclass
class Context:
    """One workflow instance's shared state, set up before ``run`` starts."""

    seam: Seam
    state: RunState
    ref: RunRef
    """Updated when routing hands the request over to another agent."""
    policy: Policy = ALLOW_ALL
    approval_timeout: float = 0.0
    """Seconds each approver level gets (the policy's, possibly shortened by the request)."""
    key_root: str = ""
    """``<workflow id>:<first run id>``: the stem of every tool call's idempotency key."""

    def at(self, node: str, details: str) -> None:
        """The run is now at ``node``; say what it does there in the Web UI."""
        self.state.node = node
        self.seam.set_details(details)

    def log(self, kind: str, name: str, status: str, detail: str = "") -> None:
        """One line of the run's step history (the ``state`` query shows it)."""
        self.state.history.append(StepInfo(step=self.state.step, kind=kind, name=name,
                                           status=status, detail=detail))

    def budget_left(self, plan: AgentPlan) -> bool:
        return self.state.step < plan.max_steps


@dataclass
class Frame:
    """One run of the graph: its inputs and what it has produced so far."""

    request: RunRequest
    plan: AgentPlan
    res: RunResult
    gs: GraphState
    graph: Graph = field(init=False)
    tools: dict[str, ToolPlan] = field(init=False)
    schemas: list[ToolSchema] = field(init=False)
    """What the model is told about the tools: built once per plan, not per model call."""
    untrusted: list[str] = field(default_factory=list)
    """Text the gate treats as untrusted input: tool results and recalled memory."""
    routed: RouteDecision = field(default_factory=lambda: RouteDecision(action="allow"))
    confidence: float | None = None
    """The model's confidence in its last turn (the gate scores it)."""
    max_risk: float = 0.0
    """Highest risk scored so far (the ``SteadRisk`` search attribute)."""
    final: tuple[RunStatus, str | None, str | None] | None = None
    """(status, answer, error) once a node has ended the run."""
    retries: dict[str, int] = field(default_factory=dict)
    """Evaluate node id -> retries taken."""

    @classmethod
    def start(cls, ctx: Context, request: RunRequest, plan: AgentPlan) -> Frame:
        frame = cls(request=request, plan=plan,
                    res=RunResult(status="running", steps=0, model=plan.model,
                                  policy=ctx.policy.ref),
                    gs=GraphState(input=request.input, budget=plan.max_steps, messages=[
                        Message(role="system", content=plan.instructions),
                        Message(role="user", content=request.input)]))
        frame.use_plan(ctx, plan)
        return frame

    def use_plan(self, ctx: Context, plan: AgentPlan) -> None:
        """Follow ``plan`` (the run's, or the agent routing handed the request to)."""
        self.plan = plan
        pin = plan.graph or DEFAULT.ref()
        graph = REGISTRY.find(pin)
        if graph is None:
            # Fails this workflow task (retried): the run waits for a worker that has it.
            raise RuntimeError(
                f"this worker has no graph {pin} (digest {pin.digest}) for agent "
                f"{plan.agent!r}; it has versions {REGISTRY.versions(pin.name) or 'none'}. "
                f"Keep old versions in Agent(previous_graphs=[...]) until their runs finish.")
        self.graph = graph
        self.res.graph = ctx.state.graph = str(pin)
        self.tools = {t.name: t for t in plan.tools}
        self.schemas = [t.schema_for_model() for t in plan.tools]

    def end(self, status: RunStatus, answer: str | None = None,
            error: str | None = None) -> None:
        self.final = (status, answer, error)
