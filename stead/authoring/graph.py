"""Execution graphs: what one agent run does, declared as nodes and edges.

    g = (Graph("triage", version=1)
         .route("route").model("think").tools("act").guard("check").finish("done")
         .edge("route", "think")
         .edge("think", "act", when=when.tool_calls)
         .edge("think", "check")
         .edge("act", "think")
         .edge("check", "think", when=when.reask)
         .edge("check", "done"))
    Agent(name="triage", ..., graph=g)

``AgentWorkflow`` interprets the graph durably (``workflows/_graph.py``): each node is a step
of the workflow, edges are followed in the order they were declared, and the first edge whose
condition holds wins (an edge without a condition always holds). Conditions and evaluators
run inside the workflow, so they must be deterministic functions of the run's state: no I/O,
clocks or randomness (use a model-as-judge evaluator, an activity, for anything else).

A run pins its graph's ``name@version`` (and digest) in history when it starts and replays
with that graph. Compatible changes keep the version and guard new paths with
``when.patched("change-id")`` (Temporal's patching); an incompatible change bumps the
version, and the old graph stays registered (``Agent(previous_graphs=[...])``) until its
runs are done. ``react()`` is the default graph: the agent loop as it always ran.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stead.contracts.models import GraphPin, JsonObject, Message, ModelTurn
from stead.errors import SpecError

NodeKind = Literal["route", "recall", "model", "tools", "tool", "parallel", "guard",
                   "evaluate", "approval", "branch", "subagent", "remember", "finish"]
FinalStatus = Literal["completed", "failed", "denied", "refused", "escalated"]

_ID = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# Nodes that use the run's step budget: a cycle must pass through one of them (or through
# an edge with a bounded condition), or it could spin without end.
_BUDGETED: frozenset[str] = frozenset({"model", "tools", "tool", "parallel", "subagent"})


# ---------------------------------------------------------------------------- run state


class Score(BaseModel):
    """One evaluator's verdict on a step: a score in [0, 1], pass/fail, and why."""

    model_config = ConfigDict(frozen=True)

    evaluator: str
    value: float = Field(ge=0, le=1)
    passed: bool
    feedback: str = ""


class Evaluation(BaseModel):
    """What an ``evaluate`` node concluded, kept in the run state under the node id."""

    node: str
    passed: bool
    value: float
    scores: list[Score]
    attempt: int
    """1 for the first evaluation at this node, 2 after one retry, ..."""
    action: Literal["continue", "retry", "branch"]


class ToolResult(BaseModel):
    """Outcome of one tool call made by a ``tool`` or ``parallel`` node (or a sub-agent)."""

    ok: bool
    tool: str
    result: JsonObject | None = None
    error: str | None = None


class _Latest(dict[str, "Evaluation"]):
    """Evaluations by node, ordered by when they were made: a re-evaluated node moves last."""

    def __setitem__(self, key: str, value: Evaluation) -> None:
        self.pop(key, None)
        super().__setitem__(key, value)


@dataclass
class GraphState:
    """What conditions, evaluators and argument functions see: the run so far.

    The interpreter owns it; user code reads it and may write ``vars`` (plain JSON values
    only: the state is rebuilt on replay by running the same code again)."""

    input: str
    messages: list[Message]
    step: int = 0
    budget: int = 0
    last_turn: ModelTurn | None = None
    answer: str | None = None
    outcomes: dict[str, Any] = field(default_factory=dict)
    """Outcome per tool/parallel/subagent node id: a ToolResult, or branch -> ToolResult."""
    evaluations: dict[str, Evaluation] = field(default_factory=_Latest)
    approvals: dict[str, str] = field(default_factory=dict)
    """Approval node id -> approved | rejected | expired."""
    visits: dict[str, int] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    """Set by nodes for edges to read: ``reask``, ``escalated``, ``failed_branch``, ..."""
    vars: dict[str, Any] = field(default_factory=dict)
    current: str = ""
    tool_results: list[str] = field(default_factory=list)
    """Text of every tool result the run has seen (for consistency evaluators)."""

    @property
    def last_evaluation(self) -> Evaluation | None:
        if not self.evaluations:
            return None
        return list(self.evaluations.values())[-1]


# ---------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """A named, deterministic predicate over the run state; combine with ``&``, ``|``, ``~``.

    ``patch`` is set for ``when.patched``: the interpreter asks Temporal (``workflow.patched``)
    instead of calling ``test``."""

    name: str
    test: Callable[[GraphState], bool]
    patch: str | None = None
    bounded: bool = False
    """True when the condition alone stops a loop (``when.visits_below``)."""

    def __and__(self, other: Condition) -> Condition:
        if self.patch is not None and other.patch is not None:
            raise SpecError(f"{self.name!r} and {other.name!r}: one patch per edge")
        # A patch stays a patch: the interpreter asks workflow.patched once the rest holds.
        return Condition(f"{self.name} and {other.name}", lambda s: self.test(s) and other.test(s),
                         patch=self.patch or other.patch, bounded=self.bounded or other.bounded)

    def __or__(self, other: Condition) -> Condition:
        self._no_patch("or", other)
        return Condition(f"{self.name} or {other.name}", lambda s: self.test(s) or other.test(s),
                         bounded=self.bounded and other.bounded)

    def __invert__(self) -> Condition:
        self._no_patch("not")
        return Condition(f"not {self.name}", lambda s: not self.test(s))

    def _no_patch(self, op: str, other: Condition | None = None) -> None:
        for c in (self, other):
            if c is not None and c.patch is not None:
                raise SpecError(f"{c.name!r} cannot be combined with {op!r}: a patched "
                                f"condition only combines with '&' (patched(id) & condition)")


def _eval_of(s: GraphState, node: str | None) -> Evaluation | None:
    return s.evaluations.get(node) if node else s.last_evaluation


class when:
    """The built-in edge conditions."""

    tool_calls = Condition("tool calls", lambda s: bool(s.last_turn and s.last_turn.tool_calls))
    answer = Condition("answer", lambda s: s.last_turn is not None
                       and not s.last_turn.tool_calls)
    reask = Condition("reask", lambda s: "reask" in s.flags)
    escalated = Condition("escalated", lambda s: "escalated" in s.flags)
    branch_failed = Condition("a branch failed", lambda s: "failed_branch" in s.flags)

    @staticmethod
    def passed(node: str | None = None) -> Condition:
        """The evaluation at ``node`` (default: the latest) passed."""
        return Condition(f"{node or 'evaluation'} passed",
                         lambda s: bool((e := _eval_of(s, node)) and e.passed))

    @staticmethod
    def failed(node: str | None = None) -> Condition:
        return Condition(f"{node or 'evaluation'} failed",
                         lambda s: bool((e := _eval_of(s, node)) and not e.passed))

    @staticmethod
    def score_at_least(threshold: float, node: str | None = None) -> Condition:
        return Condition(f"score >= {threshold:g}",
                         lambda s: bool((e := _eval_of(s, node)) and e.value >= threshold))

    @staticmethod
    def score_below(threshold: float, node: str | None = None) -> Condition:
        return Condition(f"score < {threshold:g}",
                         lambda s: bool((e := _eval_of(s, node)) and e.value < threshold))

    @staticmethod
    def approved(node: str) -> Condition:
        return Condition(f"{node} approved", lambda s: s.approvals.get(node) == "approved")

    @staticmethod
    def visits_below(node: str, limit: int) -> Condition:
        """A bounded loop: holds while ``node`` has run fewer than ``limit`` times."""
        return Condition(f"{node} < {limit}x", lambda s: s.visits.get(node, 0) < limit,
                         bounded=True)

    @staticmethod
    def var(name: str, value: Any = True) -> Condition:
        return Condition(f"{name} = {value!r}", lambda s: s.vars.get(name) == value)

    @staticmethod
    def check(name: str, fn: Callable[[GraphState], bool]) -> Condition:
        """Any deterministic predicate over the state, with a name for pictures and logs."""
        return Condition(name, fn)

    @staticmethod
    def patched(change_id: str) -> Condition:
        """Holds for runs that started after the change ``change_id`` was deployed; runs
        recorded before it replay down the old path (``workflow.patched``)."""
        return Condition(f"patched {change_id}", lambda s: True, patch=change_id)


# ---------------------------------------------------------------------------- evaluators


EvalFn = Callable[[GraphState], Score | bool | float | tuple[bool, str]]


@dataclass(frozen=True)
class Evaluator:
    """Scores a step. ``fn`` runs in the workflow (deterministic); a ``judge`` evaluator
    asks a model through the model activity instead, with ``rubric``."""

    name: str
    fn: EvalFn | None = None
    rubric: str | None = None
    threshold: float = 0.5

    def score(self, state: GraphState) -> Score:
        assert self.fn is not None
        got = self.fn(state)
        if isinstance(got, Score):
            return got
        if isinstance(got, bool):
            return Score(evaluator=self.name, value=1.0 if got else 0.0, passed=got)
        if isinstance(got, tuple):
            ok, why = got
            return Score(evaluator=self.name, value=1.0 if ok else 0.0, passed=bool(ok),
                         feedback=str(why))
        value = min(max(float(got), 0.0), 1.0)
        return Score(evaluator=self.name, value=value, passed=value >= self.threshold,
                     feedback="" if value >= self.threshold
                     else f"score {value:g} below {self.threshold:g}")


def custom(name: str, fn: EvalFn, *, threshold: float = 0.5) -> Evaluator:
    """A Python evaluator: returns a Score, a bool, (bool, feedback) or a number in [0, 1]."""
    return Evaluator(name=name, fn=fn, threshold=threshold)


def judge(rubric: str, *, threshold: float = 0.7) -> Evaluator:
    """Model-as-judge: the run's model grades the step against ``rubric`` (an activity)."""
    return Evaluator(name="judge", rubric=rubric, threshold=threshold)


def answer_schema(schema: Mapping[str, Any] | type[BaseModel]) -> Evaluator:
    """The answer is a JSON document valid against ``schema`` (a JSON schema or a model)."""
    from jsonschema import Draft202012Validator

    doc = schema.model_json_schema() if isinstance(schema, type) else dict(schema)
    validator = Draft202012Validator(doc)

    def check(s: GraphState) -> tuple[bool, str]:
        try:
            data = json.loads(s.answer or "")
        except json.JSONDecodeError as err:
            return False, f"the answer is not JSON ({err.msg} at {err.pos})"
        problems = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        if problems:
            where = "/".join(str(p) for p in problems[0].path) or "(root)"
            return False, f"the answer does not match the schema at {where}: " \
                          f"{problems[0].message}"
        return True, ""
    return Evaluator(name="schema", fn=check)


_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def grounded_numbers(*, ignore: Iterable[str] = ()) -> Evaluator:
    """Tool-result consistency: every number in the answer appears in a tool result (or in
    the request). Catches an answer that invents an amount, an id or a count."""
    skip = set(ignore)

    def values(text: str) -> dict[Decimal, str]:
        # By value, so "25", "25.0" and "25.00" are one number (tools and models format
        # amounts differently).
        return {Decimal(n.replace(",", "")): n for n in _NUMBER.findall(text)}

    def check(s: GraphState) -> tuple[bool, str]:
        seen: set[Decimal] = set()
        for text in [s.input, *s.tool_results]:
            seen.update(values(text))
        unknown = sorted({text for value, text in values(s.answer or "").items()
                          if value not in seen and text not in skip})
        if unknown:
            return False, (f"the answer states {', '.join(unknown)}, which no tool result "
                           f"or the request contains; use only numbers the tools returned")
        return True, ""
    return Evaluator(name="grounded-numbers", fn=check)


# ---------------------------------------------------------------------------- nodes


ArgsFn = Callable[[GraphState], JsonObject]
InputFn = Callable[[GraphState], str]


@dataclass(frozen=True)
class Branch:
    """One call of a ``parallel`` node (or the single call of a ``tool`` node)."""

    tool: str
    args: ArgsFn | JsonObject


@dataclass(frozen=True)
class Node:
    id: str
    kind: NodeKind
    label: str = ""
    # model
    tools_offered: tuple[str, ...] | None = None
    # tools / parallel
    parallel: bool = False
    on_error: Literal["continue", "fail", "escalate"] = "continue"
    branches: Mapping[str, Branch] = field(default_factory=dict)
    # evaluate
    evaluators: tuple[Evaluator, ...] = ()
    retry: str | None = None
    max_retries: int = 0
    # approval
    reason: str = ""
    # subagent
    agent: str | None = None
    input: InputFn | None = None
    max_steps: int | None = None
    # finish
    status: FinalStatus = "completed"

    def describe(self) -> dict[str, Any]:
        """Structure only (for the digest and pictures): names, never function identity."""
        d: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.tools_offered is not None:
            d["tools"] = list(self.tools_offered)
        if self.kind in ("tools", "parallel"):
            d["parallel"], d["on_error"] = self.parallel, self.on_error
        if self.branches:
            d["branches"] = {k: {"tool": b.tool, "args": _fn_name(b.args)}
                             for k, b in sorted(self.branches.items())}
        if self.evaluators:
            d["evaluators"] = [{"name": e.name, "fn": _fn_name(e.fn), "rubric": e.rubric,
                                "threshold": e.threshold} for e in self.evaluators]
            d["retry"], d["max_retries"] = self.retry, self.max_retries
        if self.kind == "subagent":
            d["agent"], d["input"] = self.agent, _fn_name(self.input)
            d["max_steps"] = self.max_steps
        if self.kind == "finish":
            d["status"] = self.status
        return d


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    when: Condition | None = None

    @property
    def label(self) -> str:
        return self.when.name if self.when is not None else ""


def _fn_name(fn: object) -> str | None:
    """A stable name for a callable: module, qualified name and first line (lambdas)."""
    if fn is None:
        return None
    if isinstance(fn, dict):
        return json.dumps(fn, sort_keys=True, default=str)
    code = getattr(fn, "__code__", None)
    line = f":{code.co_firstlineno}" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}{line}"


class Graph:
    """A typed builder: add nodes (the first one added is the start), then edges."""

    def __init__(self, name: str, *, version: int = 1, description: str = "") -> None:
        if not _ID.match(name):
            raise SpecError(f"graph name {name!r}: use lowercase letters, digits, '-' or '_'")
        if version < 1:
            raise SpecError(f"graph {name!r}: version must be at least 1, got {version}")
        self.name, self.version, self.description = name, version, description
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, version={self.version}, nodes={list(self.nodes)})"

    @property
    def start(self) -> str:
        if not self.nodes:
            raise SpecError(f"graph {self.name!r} has no nodes")
        return next(iter(self.nodes))

    def _add(self, node: Node) -> Graph:
        if not _ID.match(node.id):
            raise SpecError(f"graph {self.name!r}: node id {node.id!r}: use lowercase "
                            f"letters, digits, '-' or '_' (at most 40)")
        if node.id in self.nodes:
            raise SpecError(f"graph {self.name!r}: node {node.id!r} is declared twice")
        self.nodes[node.id] = node
        return self

    # -- node kinds

    def route(self, id: str = "route") -> Graph:
        """Policy routing: refuse, hand over to another agent, ask a human, or go on."""
        return self._add(Node(id, "route"))

    def recall(self, id: str = "recall") -> Graph:
        """Semantic memory recall into the conversation (when the agent uses memory)."""
        return self._add(Node(id, "recall"))

    def model(self, id: str = "think", *, tools: Sequence[str] | None = None,
              label: str = "") -> Graph:
        """One model call (one step of the budget). ``tools``: offer only these."""
        return self._add(Node(id, "model", label=label,
                              tools_offered=tuple(tools) if tools is not None else None))

    def tools(self, id: str = "act", *, parallel: bool = False,
              on_error: Literal["continue", "fail", "escalate"] = "continue") -> Graph:
        """Run the calls the last model turn proposed, each through the guardrail gate.
        ``parallel``: fan out and join; ``on_error``: what a failed call means for the run."""
        return self._add(Node(id, "tools", parallel=parallel, on_error=on_error))

    def tool(self, id: str, tool: str, args: ArgsFn | JsonObject | None = None, *,
             on_error: Literal["continue", "fail", "escalate"] = "continue") -> Graph:
        """A call the graph makes itself (not the model), gated like any other."""
        return self._add(Node(id, "tool", on_error=on_error,
                              branches={"call": Branch(tool, args or {})}))

    def parallel(self, id: str, branches: Mapping[str, Branch | tuple[str, ArgsFn | JsonObject]],
                 *, on_error: Literal["continue", "fail", "escalate"] = "continue") -> Graph:
        """Fan out independent tool calls, join when all are done. Each branch fails on its
        own; ``on_error`` says whether a failed branch fails the run."""
        got = {k: b if isinstance(b, Branch) else Branch(*b) for k, b in branches.items()}
        return self._add(Node(id, "parallel", parallel=True, on_error=on_error, branches=got))

    def guard(self, id: str = "check") -> Graph:
        """Output guardrails on the answer: pass, reask (``when.reask``), or end the run."""
        return self._add(Node(id, "guard"))

    def evaluate(self, id: str, evaluators: Sequence[Evaluator], *, retry: str | None = None,
                 max_retries: int = 0) -> Graph:
        """Score the step; on failure retry ``retry`` with the feedback (at most
        ``max_retries`` times), then follow the edges (``when.passed``/``when.failed``)."""
        return self._add(Node(id, "evaluate", evaluators=tuple(evaluators), retry=retry,
                              max_retries=max_retries))

    def approval(self, id: str, *, reason: str = "") -> Graph:
        """Ask a human to accept the run so far (signals/update like tool approvals)."""
        return self._add(Node(id, "approval", reason=reason))

    def branch(self, id: str, *, label: str = "") -> Graph:
        """A decision point: does nothing but follow its edges."""
        return self._add(Node(id, "branch", label=label))

    def subagent(self, id: str, agent: str, *, input: InputFn | None = None,
                 max_steps: int | None = None) -> Graph:
        """Run another agent as a child workflow, with its own policy and ``max_steps``
        budget; cancelling this run cancels it."""
        return self._add(Node(id, "subagent", agent=agent, input=input, max_steps=max_steps))

    def remember(self, id: str = "remember") -> Graph:
        """Write the answer so far to semantic memory (when the agent uses memory)."""
        return self._add(Node(id, "remember"))

    def finish(self, id: str = "done", *, status: FinalStatus = "completed") -> Graph:
        return self._add(Node(id, "finish", status=status))

    def edge(self, src: str, dst: str, *, when: Condition | None = None) -> Graph:
        self.edges.append(Edge(src, dst, when))
        return self

    # -- reading

    def out(self, node: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node]

    def digest(self) -> str:
        doc = {"name": self.name, "version": self.version,
               "nodes": [n.describe() for n in self.nodes.values()],
               "edges": [[e.src, e.dst, e.label, e.when.patch if e.when else None]
                         for e in self.edges]}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def ref(self) -> GraphPin:
        return GraphPin(name=self.name, version=self.version, digest=self.digest())

    # -- validation

    def problems(self, *, tools: Iterable[str] | None = None,
                 agents: Iterable[str] | None = None, memory: bool = True) -> list[str]:
        """Everything wrong with the graph, as sentences (empty: valid). ``tools`` /
        ``agents``: the names the graph may use (None: not checked)."""
        known_tools = set(tools) if tools is not None else None
        out: list[str] = []
        if not self.nodes:
            return ["the graph has no nodes"]
        for e in self.edges:
            for end in (e.src, e.dst):
                if end not in self.nodes:
                    out.append(f"edge {e.src} -> {e.dst}: no node {end!r}")
        for n in self.nodes.values():
            edges = self.out(n.id)
            if n.kind == "finish":
                if edges:
                    out.append(f"finish node {n.id!r} has outgoing edges")
                continue
            if not edges:
                out.append(f"node {n.id!r} ({n.kind}) has no outgoing edge")
            elif edges[-1].when is not None:
                out.append(f"node {n.id!r}: its last edge needs no condition (a default), "
                           f"or a run could stop there with nowhere to go")
            defaults = [e for e in edges[:-1] if e.when is None]
            if defaults:
                out.append(f"node {n.id!r}: edge to {defaults[0].dst!r} has no condition but "
                           f"is not the last, so the edges after it never run")
            for b in n.branches.values():
                if known_tools is not None and b.tool not in known_tools:
                    out.append(f"node {n.id!r}: unknown tool {b.tool!r}; the agent has "
                               f"{', '.join(sorted(known_tools)) or 'no tools'}")
            for t in n.tools_offered or ():
                if known_tools is not None and t not in known_tools:
                    out.append(f"node {n.id!r} offers unknown tool {t!r}")
            if n.kind == "evaluate":
                if not n.evaluators:
                    out.append(f"evaluate node {n.id!r} has no evaluators")
                if n.retry is not None and n.retry not in self.nodes:
                    out.append(f"evaluate node {n.id!r} retries unknown node {n.retry!r}")
                if n.max_retries < 0:
                    out.append(f"evaluate node {n.id!r}: max_retries must be >= 0")
            if n.kind == "subagent" and agents is not None and n.agent not in set(agents):
                out.append(f"subagent node {n.id!r}: no agent {n.agent!r} in this worker")
            if n.kind == "subagent" and n.max_steps is not None and n.max_steps < 1:
                out.append(f"subagent node {n.id!r}: max_steps must be at least 1")
            if n.kind == "remember" and not memory:
                out.append(f"node {n.id!r} uses memory, but the agent declares none")
        if out:
            return out
        if not any(n.kind == "finish" for n in self.nodes.values()):
            out.append("no finish node: the run could never complete")
        reach = self._reachable(self.start)
        for nid in self.nodes:
            if nid not in reach:
                out.append(f"node {nid!r} is unreachable from the start node {self.start!r}")
        out.extend(self._unbounded_cycles())
        return out

    def validate(self, **kwargs: Any) -> Graph:
        problems = self.problems(**kwargs)
        if problems:
            raise SpecError(f"graph {self.name}@{self.version} is invalid:\n  - "
                            + "\n  - ".join(problems))
        return self

    def _reachable(self, start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            n = todo.pop()
            retry = self.nodes[n].retry
            for dst in [e.dst for e in self.out(n)] + ([retry] if retry else []):
                if dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
        return seen

    def _unbounded_cycles(self) -> list[str]:
        """Cycles that neither use the step budget nor pass a bounded edge."""
        free = {n for n, node in self.nodes.items() if node.kind not in _BUDGETED}
        adj: dict[str, list[str]] = {n: [] for n in free}
        for e in self.edges:
            if e.src in free and e.dst in free and not (e.when and e.when.bounded):
                adj[e.src].append(e.dst)
        out: list[str] = []
        state: dict[str, int] = {}

        def visit(n: str, trail: list[str]) -> None:
            state[n] = 1
            trail.append(n)
            for m in adj[n]:
                if state.get(m) == 1:
                    cyc = [*trail[trail.index(m):], m]
                    out.append(f"cycle {' -> '.join(cyc)} has no step budget (no model, "
                               f"tool or subagent node) and no bounded edge "
                               f"(when.visits_below)")
                elif m not in state:
                    visit(m, trail)
            trail.pop()
            state[n] = 2

        for n in sorted(free):
            if n not in state:
                visit(n, [])
        return out


def react(*, evaluators: Sequence[Evaluator] = (), max_retries: int = 1,
          name: str = "react", version: int = 1) -> Graph:
    """The default agent graph: route, recall, think, act, check the answer, done.

    With ``evaluators``, an ``evaluate`` node scores each answer that passed the output
    guardrails; a failed score sends the model back with the feedback (``max_retries``
    times), then escalates to a human."""
    g = (Graph(name, version=version,
               description="route -> recall -> think <-> act -> check -> done")
         .route("route").recall("recall").model("think").tools("act").guard("check"))
    g.edge("route", "recall").edge("recall", "think")
    g.edge("think", "act", when=when.tool_calls).edge("think", "check")
    g.edge("act", "think")
    g.edge("check", "think", when=when.reask)
    if evaluators:
        g.evaluate("evaluate", evaluators, retry="think", max_retries=max_retries)
        g.approval("review", reason="the answer failed step evaluation")
        g.edge("check", "evaluate")
        g.edge("evaluate", "done", when=when.passed("evaluate"))
        g.edge("evaluate", "review")
        g.edge("review", "done", when=when.approved("review"))
        g.edge("review", "denied")
        g.finish("denied", status="denied")
    else:
        g.edge("check", "done")
    return g.finish("done")


# ---------------------------------------------------------------------------- registry


class GraphRegistry:
    """Graphs this process can run, found by what a run pinned: exact digest first, else
    the latest registered graph with the same name and version (a compatible change)."""

    def __init__(self) -> None:
        self._by_digest: dict[tuple[str, int, str], Graph] = {}
        self._by_version: dict[tuple[str, int], Graph] = {}

    def add(self, graph: Graph) -> None:
        ref = graph.ref()
        self._by_digest.setdefault((ref.name, ref.version, ref.digest), graph)
        self._by_version[(ref.name, ref.version)] = graph

    def find(self, ref: GraphPin) -> Graph | None:
        return self._by_digest.get((ref.name, ref.version, ref.digest)) \
            or self._by_version.get((ref.name, ref.version))

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self._by_version if n == name)


REGISTRY = GraphRegistry()
"""Filled by ``Agent`` declarations; read by the workflow (which shares this module with the
host: ``stead`` passes through Temporal's sandbox)."""

DEFAULT = react()
REGISTRY.add(DEFAULT)


__all__ = [
    "DEFAULT", "REGISTRY", "Branch", "Condition", "Edge", "Evaluation", "Evaluator",
    "Graph", "GraphPin", "GraphRegistry", "GraphState", "Node", "Score", "ToolResult",
    "answer_schema", "custom", "grounded_numbers", "judge", "react", "when",
]
