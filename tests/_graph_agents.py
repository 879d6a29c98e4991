"""Purpose-built agents for the execution-graph tests (``tests/test_graph_runs.py``).

Every agent works on a :class:`Lab`, a tiny fake world: a table of facts that ``lookup``
reads, a ``broken`` tool whose warehouse is always offline (a non-retryable error), and the
time span of every tool call, so a test can show that fanned-out calls really overlap.
Models are :class:`stead.integrations.llm.FunctionModel` planners that read the transcript like a
real model would, and record what they were shown.

Run as a script, this module plays another deploy of the ``patchable`` and ``pinned`` agents::

    python tests/_graph_agents.py replay patched|unpatched HISTORY.json   # prints the outcome
    python tests/_graph_agents.py                                         # serves pinned@2

A separate process is the point: a graph registry holds every graph its process declared,
and a run replays with the exact graph it pinned when that graph is still there. A new
deploy no longer has the old graph, only its replacement.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from stead.authoring.agent import Agent
from stead.authoring.graph import (
    Branch,
    Graph,
    GraphState,
    Score,
    custom,
    judge,
    when,
)
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import Message, ModelTurn, ToolSchema
from stead.contracts.policy import Policy
from stead.evals.expect import JUDGE_INSTRUCTIONS
from stead.integrations.llm import FunctionModel, call

GRAPH_AGENTS_SCRIPT = Path(__file__).resolve()

JUDGED_LOW = 0.2
"""What the judge model gives an answer that cites no tool result."""


# ---------------------------------------------------------------------------- the fake world


@dataclass
class Span:
    tool: str
    key: str
    start: float
    end: float


@dataclass
class Lab:
    """Facts the tools read, how long each call takes, and when each call ran."""

    facts: dict[str, str] = field(default_factory=lambda: {
        "sky": "blue", "grass": "green", "sun": "yellow", "moon": "grey"})
    delay: float = 0.3
    """Seconds a tool call takes: long enough that concurrent calls overlap visibly."""
    spans: list[Span] = field(default_factory=list)
    _tools: list[Tool[Key, Fact]] = field(default_factory=list)

    def tools(self) -> list[Tool[Key, Fact]]:
        """This lab's tools: the same objects for every agent on it (a worker's agents may
        share a tool, never two tools of one name)."""
        if not self._tools:
            self._tools = lab_tools(self)
        return self._tools


class Key(BaseModel):
    key: str


class Fact(BaseModel):
    key: str
    value: str


def lab_tools(lab: Lab) -> list[Tool[Key, Fact]]:
    """``lookup`` reads a fact; ``broken`` always fails without retries (warehouse offline)."""

    @tool(side_effect="read", risk="low")
    async def lookup(args: Key, ctx: ToolContext) -> Fact:
        """Look up one fact by its key."""
        start = time.monotonic()
        await asyncio.sleep(lab.delay)
        lab.spans.append(Span("lookup", args.key, start, time.monotonic()))
        if args.key not in lab.facts:
            raise ApplicationError(f"no fact {args.key!r}", type="UnknownKey",
                                   non_retryable=True)
        return Fact(key=args.key, value=lab.facts[args.key])

    @tool(side_effect="read", risk="low")
    async def broken(args: Key, ctx: ToolContext) -> Fact:
        """Look up a fact in the warehouse (which is offline)."""
        start = time.monotonic()
        await asyncio.sleep(lab.delay)
        lab.spans.append(Span("broken", args.key, start, time.monotonic()))
        raise ApplicationError("warehouse offline", type="WarehouseOffline", non_retryable=True)

    return [lookup, broken]


# ---------------------------------------------------------------------------- transcripts


def tool_payloads(messages: Sequence[Message]) -> list[dict[str, object]]:
    """Every tool message's JSON payload, in order."""
    return [json.loads(m.content or "{}") for m in messages if m.role == "tool"]


def last_user(messages: Sequence[Message]) -> str:
    return next((m.content or "" for m in reversed(messages) if m.role == "user"), "")


def key_of(text: str) -> str:
    """The fact a request asks about: the last word (``what colour is the sky`` -> sky)."""
    return text.strip().rstrip("?.!").split()[-1].lower()


def is_judge(messages: Sequence[Message]) -> bool:
    return bool(messages) and messages[0].role == "system" \
        and messages[0].content == JUDGE_INSTRUCTIONS


@dataclass
class Seen:
    """What a FunctionModel was shown, call by call (for tests to assert on)."""

    last_user: list[str] = field(default_factory=list)
    judge_prompts: list[str] = field(default_factory=list)
    transcripts: list[list[Message]] = field(default_factory=list)


# ---------------------------------------------------------------------------- 1. scored


def grounded(s: GraphState) -> Score:
    """1.0 when the answer states a value a tool returned, else 0.3 with feedback."""
    values = {v for t in s.tool_results for v in _result_values(t)}
    if any(v in (s.answer or "") for v in values):
        return Score(evaluator="grounded", value=1.0, passed=True)
    return Score(evaluator="grounded", value=0.3, passed=False,
                 feedback="the answer states no value a tool returned")


def _result_values(text: str) -> list[str]:
    """The ``value`` of a tool result: a tool message payload or a declared call's result."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return []
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        doc = doc["result"]
    return [str(doc["value"])] if isinstance(doc, dict) and doc.get("value") else []


def scored_graph() -> Graph:
    """think <-> act, then grade: a good score finishes, a low one checks again itself."""
    g = (Graph("scored", version=1)
         .route("route").model("think").tools("act")
         .evaluate("grade", [custom("grounded", grounded)])
         .tool("recheck", "lookup", lambda s: {"key": key_of(s.input)})
         .model("rewrite", tools=[])
         .finish("done"))
    g.edge("route", "think")
    g.edge("think", "act", when=when.tool_calls).edge("think", "grade")
    g.edge("act", "think")
    g.edge("grade", "done", when=when.score_at_least(0.8, "grade"))
    g.edge("grade", "recheck")
    g.edge("recheck", "rewrite").edge("rewrite", "done")
    return g


def scored_agent(lab: Lab) -> Agent:
    """Looks the fact up, except when asked to ``guess``: then answers without a tool, scores
    low, and the graph looks the fact up itself before the model writes the answer again."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = messages[1].content or ""
        key = key_of(request)
        done = tool_payloads(messages)
        checked = last_user(messages)
        if checked.startswith("Results of recheck"):
            value = json.loads(checked.split("\n", 1)[1])["call"]["result"]["value"]
            return ModelTurn(content=f"Checked: the {key} is {value}.")
        if "guess" in request:
            return ModelTurn(content=f"The {key} is probably purple.")
        if not done:
            return ModelTurn(tool_calls=[call("lookup", key=key)])
        return ModelTurn(content=f"The {key} is {done[-1]['result']['value']}.")  # type: ignore[index]

    return Agent(name="scored", instructions="Answer with facts you looked up.",
                 tools=lab.tools(), offline_model=FunctionModel(plan, name="fn:scored"),
                 graph=scored_graph())


# ---------------------------------------------------------------------------- 2. retried


def json_answer(s: GraphState) -> tuple[bool, str]:
    try:
        json.loads(s.answer or "")
    except json.JSONDecodeError:
        return False, "the answer must be a JSON object such as {\"colour\": \"...\"}"
    return True, ""


def retried_graph(*, max_retries: int) -> Graph:
    """think, then a JSON check that sends the model back with feedback at most
    ``max_retries`` times, then a human decides."""
    g = (Graph("retried", version=1)
         .route("route").model("think")
         .evaluate("check", [custom("json", json_answer)], retry="think",
                   max_retries=max_retries)
         .approval("review", reason="the answer kept failing the JSON check")
         .finish("done").finish("denied", status="denied"))
    g.edge("route", "think").edge("think", "check")
    g.edge("check", "done", when=when.passed("check"))
    g.edge("check", "review")
    g.edge("review", "done", when=when.approved("review"))
    g.edge("review", "denied")
    return g


def retried_agent(seen: Seen, *, max_retries: int = 2) -> Agent:
    """A model that never learns: it answers in prose every time (recording what it saw)."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        seen.last_user.append(last_user(messages))
        return ModelTurn(content=f"The sky is blue (attempt {len(seen.last_user)}).")

    return Agent(name="retried", instructions="Answer in JSON.", tools=[],
                 offline_model=FunctionModel(plan, name="fn:retried"),
                 graph=retried_graph(max_retries=max_retries))


# ---------------------------------------------------------------------------- 3. judged


def judged_graph() -> Graph:
    g = (Graph("judged", version=1)
         .route("route").model("think")
         .evaluate("judge", [judge("The answer cites a looked-up fact.", threshold=0.7)])
         .finish("done").finish("flagged", status="escalated"))
    g.edge("route", "think").edge("think", "judge")
    g.edge("judge", "done", when=when.passed("judge"))
    g.edge("judge", "flagged")
    return g


def judged_agent(seen: Seen) -> Agent:
    """Answers ``cited: ...`` when the request says ``cite``; the judge (the same model, shown
    JUDGE_INSTRUCTIONS) scores cited answers 0.9 and others JUDGED_LOW."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if is_judge(messages):
            prompt = messages[-1].content or ""
            seen.judge_prompts.append(prompt)
            good = "Answer:\ncited:" in prompt
            return ModelTurn(content=json.dumps(
                {"score": 0.9 if good else JUDGED_LOW,
                 "reason": "cites a fact" if good else "the answer cites nothing"}))
        request = messages[1].content or ""
        return ModelTurn(content="cited: the sky is blue" if "cite" in request
                         else "the sky is blue, trust me")

    return Agent(name="judged", instructions="Answer briefly.", tools=[],
                 offline_model=FunctionModel(plan, name="fn:judged"), graph=judged_graph())


# ---------------------------------------------------------------------------- 4. fan-out


def fanout_graph(on_error: str) -> Graph:
    assert on_error in ("continue", "fail")
    g = (Graph(f"fanout-{on_error}", version=1)
         .route("route").model("think")
         .tools("act", parallel=True, on_error="continue" if on_error == "continue" else "fail")
         .finish("done"))
    g.edge("route", "think")
    g.edge("think", "act", when=when.tool_calls).edge("think", "done")
    g.edge("act", "think")
    return g


def join_report(messages: Sequence[Message]) -> str:
    """What a model makes of the joined results: the values, and how many calls failed."""
    payloads = tool_payloads(messages)
    values = sorted(str(p["result"]["value"]) for p in payloads  # type: ignore[index]
                    if p.get("ok"))
    errors = [str(p["error"]["message"]) for p in payloads if "error" in p]  # type: ignore[index]
    return f"{len(values)} results ({', '.join(values)}), {len(errors)} error(s): " \
           f"{'; '.join(errors)}"


def fanout_agent(lab: Lab, seen: Seen, *, on_error: str) -> Agent:
    """Proposes three independent calls at once (one to the broken warehouse), then reports."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        seen.transcripts.append(list(messages))
        if not tool_payloads(messages):
            return ModelTurn(tool_calls=[call("lookup", call_id="c-sky", key="sky"),
                                         call("broken", call_id="c-moon", key="moon"),
                                         call("lookup", call_id="c-sun", key="sun")])
        return ModelTurn(content=join_report(messages))

    return Agent(name=f"fanout-{on_error}", instructions="Look facts up in parallel.",
                 tools=lab.tools(), offline_model=FunctionModel(plan, name="fn:fanout"),
                 graph=fanout_graph(on_error))


def asked_key(s: GraphState) -> dict[str, object]:
    """Argument function of the ``gather`` branch ``asked``: the fact the request names."""
    return {"key": key_of(s.input)}


def gather_graph() -> Graph:
    g = (Graph("gather", version=1)
         .route("route")
         .parallel("fetch", {"asked": Branch("lookup", asked_key),
                             "grass": ("lookup", {"key": "grass"}),
                             "warehouse": ("broken", {"key": "moon"})})
         .model("think", tools=[])
         .finish("done"))
    g.edge("route", "fetch").edge("fetch", "think").edge("think", "done")
    return g


def gather_agent(lab: Lab, seen: Seen) -> Agent:
    """The graph fans out three declared calls; the model writes up the joined results."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        joined = last_user(messages)
        seen.last_user.append(joined)
        results = json.loads(joined.split("\n", 1)[1])
        ok = sorted(f"{k}={r['result']['value']}" for k, r in results.items() if r["ok"])
        bad = sorted(f"{k}: {r['error']}" for k, r in results.items() if not r["ok"])
        return ModelTurn(content=f"{', '.join(ok)}; failed {', '.join(bad)}")

    return Agent(name="gather", instructions="Summarise the fetched facts.",
                 tools=lab.tools(), offline_model=FunctionModel(plan, name="fn:gather"),
                 graph=gather_graph())


# ---------------------------------------------------------------------------- 5. sub-agents


CHILD_POLICY = Policy(id="child-no-lookups", version=2, deny_tools=["lookup"])
"""The child may not look anything up; its parent (allow-all) may."""


def child_agent(lab: Lab) -> Agent:
    """Tries a lookup (its policy denies it) and reports what it could not do."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        key = key_of(messages[1].content or "")
        done = tool_payloads(messages)
        if not done:
            return ModelTurn(tool_calls=[call("lookup", key=key)])
        return ModelTurn(content=f"child could not look up {key}: "
                                 f"{done[-1]['error']['type']}")  # type: ignore[index]

    return Agent(name="child", instructions="Look the fact up.", tools=lab.tools(),
                 offline_model=FunctionModel(plan, name="fn:child"), policy=CHILD_POLICY)


def parent_graph(*, child_steps: int | None = None) -> Graph:
    """Delegate to the child (with a budget of ``child_steps``, default its own); if it
    fails, look the fact up here, then answer."""
    g = (Graph("parent", version=1)
         .route("route")
         .subagent("delegate", "child", input=lambda s: f"find the {key_of(s.input)}",
                   max_steps=child_steps)
         .tool("myself", "lookup", asked_key)
         .model("think", tools=[])
         .finish("done"))
    g.edge("route", "delegate")
    g.edge("delegate", "myself", when=when.branch_failed)
    g.edge("delegate", "think")
    g.edge("myself", "think").edge("think", "done")
    return g


def parent_agent(lab: Lab, seen: Seen, *, child_steps: int | None = None) -> Agent:
    """Answers from what its sub-agent reported and from its own lookup."""

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        seen.transcripts.append(list(messages))
        report = next(m.content or "" for m in messages
                      if (m.content or "").startswith("Sub-agent child"))
        child = json.loads(report.split("\n", 1)[1])
        mine = json.loads(last_user(messages).split("\n", 1)[1])["call"]
        return ModelTurn(content=f"child said {child['error']!r}; "
                                 f"I found {mine['result']['value']}")

    return Agent(name="parent", instructions="Delegate, then answer.", tools=lab.tools(),
                 offline_model=FunctionModel(plan, name="fn:parent"),
                 graph=parent_graph(child_steps=child_steps))


def holding_child_agent() -> Agent:
    """A child that asks a human before anything else (so it waits until cancelled)."""
    g = (Graph("holding", version=1).route("route").approval("hold", reason="hold the line")
         .finish("done").finish("denied", status="denied"))
    g.edge("route", "hold").edge("hold", "done", when=when.approved("hold"))
    g.edge("hold", "denied")
    return Agent(name="holder", instructions="Wait for a human.", tools=[],
                 offline_model=FunctionModel(lambda m, t: ModelTurn(content="held"),
                                             name="fn:holder"), graph=g)


def waiting_parent_agent() -> Agent:
    g = (Graph("waiting-parent", version=1).route("route").subagent("delegate", "holder")
         .finish("done"))
    g.edge("route", "delegate").edge("delegate", "done")
    return Agent(name="waiting-parent", instructions="Delegate.", tools=[],
                 offline_model=FunctionModel(lambda m, t: ModelTurn(content="unused"),
                                             name="fn:waiting-parent"), graph=g)


# ---------------------------------------------------------------------------- 6. versions


def patchable_graph(variant: str) -> Graph:
    """``v1``: think <-> act, done. ``patched``: v1 plus a judge after the answer, reached
    through ``when.patched("add-judge")``. ``unpatched``: the same judge, unguarded."""
    g = Graph("patchable", version=1).route("route").model("think").tools("act")
    if variant != "v1":
        g.evaluate("judge", [judge("The answer states the looked-up fact.")])
    g.finish("done")
    g.edge("route", "think").edge("think", "act", when=when.tool_calls)
    if variant == "patched":
        g.edge("think", "judge", when=when.patched("add-judge"))
    elif variant == "unpatched":
        g.edge("think", "judge")
    g.edge("act", "think")
    if variant != "v1":
        g.edge("judge", "done")
    if variant != "unpatched":
        g.edge("think", "done")
    return g


def patchable_agent(lab: Lab, variant: str) -> Agent:
    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if is_judge(messages):
            return ModelTurn(content='{"score": 0.9, "reason": "states the fact"}')
        done = tool_payloads(messages)
        if not done:
            return ModelTurn(tool_calls=[call("lookup", key=key_of(messages[1].content or ""))])
        return ModelTurn(content=f"It is {done[-1]['result']['value']}.")  # type: ignore[index]

    return Agent(name="patchable", instructions="Look it up.", tools=lab.tools(),
                 offline_model=FunctionModel(plan, name="fn:patchable"),
                 graph=patchable_graph(variant))


def pinned_graph(version: int) -> Graph:
    """Version 2 asks a human first; version 1 does not (an incompatible change)."""
    g = Graph("pinned", version=version).route("route")
    if version == 2:
        g.approval("hold", reason="v2 asks first")
    g.model("think", tools=[]).finish("done")
    if version == 2:
        g.edge("route", "hold").edge("hold", "think")
    else:
        g.edge("route", "think")
    g.edge("think", "done")
    return g


def pinned_agent(*, graph: Graph, previous: Sequence[Graph] = ()) -> Agent:
    return Agent(name="pinned", instructions="Answer.", tools=[],
                 offline_model=FunctionModel(lambda m, t: ModelTurn(content="pinned answer"),
                                             name="fn:pinned"),
                 graph=graph, previous_graphs=list(previous))


# ---------------------------------------------------------------------------- 7. reviewed


def reviewed_agent() -> Agent:
    g = (Graph("reviewed", version=3).route("route").model("think", tools=[])
         .approval("review", reason="every answer is reviewed")
         .finish("done").finish("denied", status="denied"))
    g.edge("route", "think").edge("think", "review")
    g.edge("review", "done", when=when.approved("review")).edge("review", "denied")
    return Agent(name="reviewed", instructions="Answer.", tools=[],
                 offline_model=FunctionModel(lambda m, t: ModelTurn(content="reviewed answer"),
                                             name="fn:reviewed"), graph=g)


# ---------------------------------------------------------------------------- other deploys


async def _replay(variant: str, path: Path) -> None:
    from stead.evals.replay import load_history_file, production_replayer, replay
    from stead.settings import load_settings

    patchable_agent(Lab(), variant)  # declaring the agent registers its graph, as a deploy does
    report = await replay([load_history_file(path)],
                          replayer=production_replayer(codec=load_settings().codec))
    print(report.outcomes[0].model_dump_json())


async def _serve() -> None:
    from stead.authoring.agent import AgentCatalog
    from stead.settings import load_settings
    from stead.worker import WorkerHost, run_until_signal

    await run_until_signal(WorkerHost(load_settings(),
                                      AgentCatalog([pinned_agent(graph=pinned_graph(2))])))


if __name__ == "__main__":
    if sys.argv[1:2] == ["replay"] and len(sys.argv) == 4:
        asyncio.run(_replay(sys.argv[2], Path(sys.argv[3])))
        # The report is printed; skip interpreter finalization, where the Temporal runtime's
        # threads once aborted the process (PyGILState_Release) after a successful replay.
        sys.stdout.flush()
        os._exit(0)
    elif len(sys.argv) == 1:
        asyncio.run(_serve())
    else:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} [replay VARIANT FILE]")
