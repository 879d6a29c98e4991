"""Execution graphs as declarations, no server: what ``Graph.problems`` refuses and how it
says so, the digest that pins a run to its graph, the built-in ``when`` conditions and the
evaluators, read on hand-built ``GraphState`` objects the way the interpreter fills them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.graph import (
    REGISTRY,
    Condition,
    Evaluation,
    Graph,
    GraphPin,
    GraphState,
    Score,
    answer_schema,
    custom,
    grounded_numbers,
    react,
    when,
)
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import ModelTurn, ToolCall
from stead.errors import SpecError
from stead.integrations.llm import ScriptedModel

# ---------------------------------------------------------------------------- helpers


class Query(BaseModel):
    service: str


class Reply(BaseModel):
    text: str


def _tool(name: str) -> Tool[Any, Any]:
    async def fn(args: Query, ctx: ToolContext) -> Reply:
        return Reply(text=args.service)

    made: Tool[Any, Any] = tool(name=name, description=f"The {name} tool.")(fn)
    return made


def _agent(name: str, graph: Graph, tools: list[Tool[Any, Any]] | None = None) -> Agent:
    return Agent(name=name, instructions="Be useful.", tools=tools or [],
                 offline_model=ScriptedModel([ModelTurn(content="ok")]), graph=graph)


def _loop() -> Graph:
    """think <-> act, then done: the smallest valid graph with a loop."""
    return (Graph("loop").model("think").tools("act").finish("done")
            .edge("think", "act", when=when.tool_calls).edge("think", "done")
            .edge("act", "think"))


def _state(**kw: Any) -> GraphState:
    return GraphState(input=kw.pop("input", "refund order 1001"), messages=[], **kw)


def _evaluation(node: str, *, passed: bool, value: float) -> Evaluation:
    return Evaluation(node=node, passed=passed, value=value, scores=[], attempt=1,
                      action="continue" if passed else "branch")


# ---------------------------------------------------------------------------- problems


def test_a_valid_graph_has_no_problems_and_validate_returns_it() -> None:
    g = _loop()
    assert g.problems(tools=["lookup"]) == []
    assert g.validate() is g
    assert g.start == "think"  # the first node declared


def test_an_unreachable_node_is_named_with_the_start_node() -> None:
    g = _loop().model("orphan").edge("orphan", "done")
    assert g.problems() == ["node 'orphan' is unreachable from the start node 'think'"]


def test_a_node_without_an_outgoing_edge_is_named_with_its_kind() -> None:
    g = Graph("g").model("think").guard("check").finish("done").edge("think", "check")
    assert g.problems() == ["node 'check' (guard) has no outgoing edge"]


def test_a_conditional_last_edge_is_refused_because_a_run_could_stop_there() -> None:
    g = Graph("g").model("think").finish("done").edge("think", "done", when=when.answer)
    (problem,) = g.problems()
    assert problem.startswith("node 'think': its last edge needs no condition")
    assert "nowhere to go" in problem


def test_a_default_edge_before_other_edges_is_refused_since_they_never_run() -> None:
    g = (Graph("g").model("think").tools("act").finish("done")
         .edge("think", "done").edge("think", "act").edge("act", "think"))
    assert g.problems() == ["node 'think': edge to 'done' has no condition but is not the "
                            "last, so the edges after it never run"]


def test_a_finish_node_with_an_outgoing_edge_is_refused() -> None:
    g = _loop().edge("done", "think")
    assert g.problems() == ["finish node 'done' has outgoing edges"]


def test_a_graph_without_a_finish_node_could_never_complete() -> None:
    g = Graph("g").model("think").tools("act").edge("think", "act").edge("act", "think")
    assert g.problems() == ["no finish node: the run could never complete"]


def test_unknown_tools_are_named_with_the_tools_the_agent_has() -> None:
    g = (Graph("g").model("think", tools=["lookup", "nope"]).tool("call", "missing")
         .finish("done").edge("think", "call").edge("call", "done"))
    assert g.problems(tools=["lookup", "restart"]) == [
        "node 'think' offers unknown tool 'nope'",
        "node 'call': unknown tool 'missing'; the agent has lookup, restart"]
    # Without a list of tools (an agent with MCP servers) names cannot be checked offline.
    assert g.problems() == []


def test_an_edge_to_or_from_an_unknown_node_names_the_missing_end() -> None:
    g = _loop().edge("act", "nowhere").edge("ghost", "done")
    problems = g.problems()
    assert "edge act -> nowhere: no node 'nowhere'" in problems
    assert "edge ghost -> done: no node 'ghost'" in problems


def test_a_cycle_of_branches_without_a_budget_is_refused_and_named() -> None:
    g = (Graph("g").branch("a").branch("b").finish("done")
         .edge("a", "b").edge("b", "a", when=when.var("again")).edge("b", "done"))
    assert g.problems() == ["cycle a -> b -> a has no step budget (no model, tool or subagent "
                            "node) and no bounded edge (when.visits_below)"]


def test_the_same_cycle_bounded_by_visits_below_is_accepted() -> None:
    g = (Graph("g").branch("a").branch("b").finish("done")
         .edge("a", "b").edge("b", "a", when=when.visits_below("a", 3)).edge("b", "done"))
    assert g.problems() == []
    # A bound survives `and` (the conjunction stops too) but not `or`.
    assert (when.visits_below("a", 3) & when.var("again")).bounded
    assert not (when.visits_below("a", 3) | when.var("again")).bounded


def test_a_cycle_through_a_model_node_uses_the_step_budget_and_is_accepted() -> None:
    g = (Graph("g").branch("a").model("think").finish("done")
         .edge("a", "think").edge("think", "a", when=when.tool_calls).edge("think", "done"))
    assert g.problems() == []


def test_an_evaluate_node_retrying_an_unknown_node_is_refused() -> None:
    g = (Graph("g").model("think").evaluate("score", [grounded_numbers()], retry="thnik",
                                            max_retries=1).finish("done")
         .edge("think", "score").edge("score", "done"))
    assert g.problems() == ["evaluate node 'score' retries unknown node 'thnik'"]


def test_an_evaluate_node_needs_evaluators_and_a_non_negative_retry_count() -> None:
    g = (Graph("g").model("think").evaluate("score", [], retry="think", max_retries=-1)
         .finish("done").edge("think", "score").edge("score", "done"))
    assert g.problems() == ["evaluate node 'score' has no evaluators",
                            "evaluate node 'score': max_retries must be >= 0"]


def test_a_retry_target_counts_as_reachable() -> None:
    g = (Graph("g").branch("start").evaluate("score", [grounded_numbers()], retry="redo",
                                             max_retries=1)
         .model("redo").finish("done")
         .edge("start", "score").edge("score", "done").edge("redo", "score"))
    assert g.problems() == []


def test_a_node_declared_twice_is_refused_at_once() -> None:
    with pytest.raises(SpecError, match="graph 'g': node 'think' is declared twice"):
        Graph("g").model("think").model("think")


@pytest.mark.parametrize("bad", ["Think", "1st", "has space", "", "x" * 41, "a.b"])
def test_bad_node_ids_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(SpecError, match=r"use lowercase letters, digits, '-' or '_'"):
        Graph("g").model(bad)


def test_bad_graph_names_and_versions_are_refused() -> None:
    with pytest.raises(SpecError, match="graph name 'My Graph'"):
        Graph("My Graph")
    with pytest.raises(SpecError, match="graph 'g': version must be at least 1, got 0"):
        Graph("g", version=0)
    with pytest.raises(SpecError, match="graph 'empty' has no nodes"):
        _ = Graph("empty").start
    assert Graph("empty").problems() == ["the graph has no nodes"]


def test_validate_lists_every_problem_in_one_error() -> None:
    g = (Graph("g", version=3).model("think").guard("check").finish("done")
         .edge("think", "check", when=when.answer).edge("check", "nowhere"))
    with pytest.raises(SpecError) as info:
        g.validate()
    text = str(info.value)
    assert text.startswith("graph g@3 is invalid:\n  - ")
    assert "edge check -> nowhere: no node 'nowhere'" in text
    assert "node 'think': its last edge needs no condition" in text


def test_memory_nodes_need_an_agent_with_memory() -> None:
    g = (Graph("g").model("think").remember("remember").finish("done")
         .edge("think", "remember").edge("remember", "done"))
    assert g.problems(memory=False) == ["node 'remember' uses memory, but the agent declares "
                                        "none"]
    assert g.problems(memory=True) == []


def test_the_catalog_refuses_a_subagent_naming_an_agent_it_does_not_serve() -> None:
    g = (Graph("delegate").subagent("ask", "helper").finish("done").edge("ask", "done"))
    with pytest.raises(SpecError) as info:
        AgentCatalog([_agent("boss", g)])
    assert ("agent 'boss': graph node 'ask' runs agent 'helper', which this worker does not "
            "serve") in str(info.value)
    # With the helper served, the same graph is fine.
    catalog = AgentCatalog([_agent("boss", g), _agent("helper", _loop())])
    assert catalog.names() == ["boss", "helper"]


def test_the_catalog_checks_graph_tools_against_the_agent_and_old_versions_too() -> None:
    lookup = _tool("graphspec_lookup")
    current = (Graph("calls", version=2).tool("call", "graphspec_lookup").finish("done")
               .edge("call", "done"))
    old = (Graph("calls", version=1).tool("call", "graphspec_gone").finish("done")
           .edge("call", "done"))
    with pytest.raises(SpecError) as info:
        AgentCatalog([Agent(name="caller", instructions="Call.", tools=[lookup],
                            offline_model=ScriptedModel([ModelTurn(content="ok")]), graph=current,
                            previous_graphs=[old])])
    assert ("agent 'caller': graph calls@1: node 'call': unknown tool 'graphspec_gone'; the "
            "agent has graphspec_lookup") in str(info.value)
    assert "calls@2" not in str(info.value)


def test_the_catalog_refuses_a_tool_node_in_an_agent_without_tools() -> None:
    g = Graph("notools").tool("call", "graphspec_missing").finish("done").edge("call", "done")
    with pytest.raises(SpecError, match="unknown tool 'graphspec_missing'"):
        AgentCatalog([_agent("toolless", g)])


# ---------------------------------------------------------------------------- digest


def test_the_digest_is_the_same_for_equal_graphs_and_changes_with_the_structure() -> None:
    a, b = _loop(), _loop()
    assert a is not b and a.digest() == b.digest()
    assert a.ref() == GraphPin(name="loop", version=1, digest=a.digest())
    assert str(a.ref()) == "loop@1"
    changed = {
        "a node added": _loop().guard("check"),
        "an edge condition": (Graph("loop").model("think").tools("act").finish("done")
                              .edge("think", "act", when=when.reask).edge("think", "done")
                              .edge("act", "think")),
        "a node kind": (Graph("loop").model("think").tools("act", parallel=True)
                        .finish("done").edge("think", "act", when=when.tool_calls)
                        .edge("think", "done").edge("act", "think")),
        "the version": (Graph("loop", version=2).model("think").tools("act").finish("done")
                        .edge("think", "act", when=when.tool_calls).edge("think", "done")
                        .edge("act", "think")),
    }
    digests = {what: g.digest() for what, g in changed.items()}
    assert a.digest() not in digests.values(), digests
    assert len(set(digests.values())) == len(digests)


def test_react_digest_is_stable_and_evaluators_change_it() -> None:
    assert react().digest() == react().digest()
    assert react(evaluators=[grounded_numbers()]).digest() != react().digest()
    assert react(evaluators=[grounded_numbers()], max_retries=2).digest() != \
        react(evaluators=[grounded_numbers()], max_retries=1).digest()


def test_the_registry_finds_the_exact_digest_else_the_latest_of_that_version() -> None:
    first = (Graph("registry-probe").model("think").finish("done").edge("think", "done"))
    second = (Graph("registry-probe").model("think").guard("check").finish("done")
              .edge("think", "check").edge("check", "done"))
    REGISTRY.add(first)
    REGISTRY.add(second)
    assert REGISTRY.find(first.ref()) is first
    assert REGISTRY.find(second.ref()) is second
    # A compatible change kept the version: an unknown digest gets the latest graph.
    assert REGISTRY.find(GraphPin(name="registry-probe", version=1, digest="0" * 16)) is second
    assert REGISTRY.find(GraphPin(name="registry-probe", version=2, digest="0" * 16)) is None
    assert REGISTRY.versions("registry-probe") == [1]


# ---------------------------------------------------------------------------- react()


def test_the_default_react_graph_validates_with_its_nodes_and_edges() -> None:
    g = react()
    assert g.problems(tools=["lookup"], memory=False) == []
    assert list(g.nodes) == ["route", "recall", "think", "act", "check", "done"]
    assert [(e.src, e.dst, e.label) for e in g.edges] == [
        ("route", "recall", ""), ("recall", "think", ""), ("think", "act", "tool calls"),
        ("think", "check", ""), ("act", "think", ""), ("check", "think", "reask"),
        ("check", "done", "")]


def test_react_with_evaluators_validates_and_escalates_after_bounded_retries() -> None:
    g = react(evaluators=[grounded_numbers(), custom("short", lambda s: len(s.answer or "") < 80)],
              max_retries=2)
    assert g.problems() == []
    score = g.nodes["evaluate"]
    assert (score.kind, score.retry, score.max_retries) == ("evaluate", "think", 2)
    assert [e.name for e in score.evaluators] == ["grounded-numbers", "short"]
    assert [(e.dst, e.label) for e in g.out("evaluate")] == [
        ("done", "evaluate passed"), ("review", "")]
    assert g.nodes["review"].kind == "approval"
    assert g.nodes["denied"].status == "denied"


# ---------------------------------------------------------------------------- conditions


def test_tool_calls_and_answer_read_the_last_model_turn() -> None:
    calls = _state(last_turn=ModelTurn(tool_calls=[ToolCall(id="c1", name="lookup",
                                                            arguments="{}")]))
    answer = _state(last_turn=ModelTurn(content="done"))
    nothing = _state()
    assert (when.tool_calls.test(calls), when.answer.test(calls)) == (True, False)
    assert (when.tool_calls.test(answer), when.answer.test(answer)) == (False, True)
    assert (when.tool_calls.test(nothing), when.answer.test(nothing)) == (False, False)


def test_flag_conditions_read_the_flags_nodes_set() -> None:
    s = _state(flags={"reask", "failed_branch"})
    assert when.reask.test(s) and when.branch_failed.test(s)
    assert not when.escalated.test(s)
    assert when.escalated.test(_state(flags={"escalated"}))


def test_evaluation_conditions_read_a_named_node_or_the_latest() -> None:
    s = _state(evaluations={"first": _evaluation("first", passed=False, value=0.2),
                            "second": _evaluation("second", passed=True, value=0.9)})
    assert when.passed().test(s) and not when.failed().test(s)  # latest: second
    assert when.failed("first").test(s) and not when.passed("first").test(s)
    assert when.score_at_least(0.9).test(s) and not when.score_below(0.9).test(s)
    assert when.score_below(0.5, "first").test(s)
    assert not when.score_at_least(0.5, "first").test(s)
    # No evaluation yet: neither passed nor failed, no score either way.
    empty = _state()
    assert not any(c.test(empty) for c in (when.passed(), when.failed(),
                                           when.score_at_least(0), when.score_below(1)))
    assert not when.passed("missing").test(s)
    assert (when.score_at_least(0.75).name, when.score_below(0.5, "x").name) == (
        "score >= 0.75", "score < 0.5")


def test_the_latest_evaluation_is_the_one_made_last_even_by_an_earlier_node() -> None:
    s = _state()
    # What the interpreter does: evaluations[node.id] = Evaluation(...) at each visit.
    s.evaluations["first"] = _evaluation("first", passed=True, value=1.0)
    s.evaluations["second"] = _evaluation("second", passed=True, value=1.0)
    s.evaluations["first"] = _evaluation("first", passed=False, value=0.0)
    assert when.failed().test(s)


def test_approved_visits_var_check_and_patched_conditions() -> None:
    s = _state(approvals={"review": "approved", "other": "rejected"}, visits={"think": 2},
               vars={"tier": "gold", "flag": True})
    assert when.approved("review").test(s) and not when.approved("other").test(s)
    assert not when.approved("never").test(s)
    assert when.visits_below("think", 3).test(s) and not when.visits_below("think", 2).test(s)
    assert when.visits_below("never", 1).test(s)
    assert when.var("tier", "gold").test(s) and not when.var("tier", "silver").test(s)
    assert when.var("flag").test(s) and not when.var("missing").test(s)
    long_input = when.check("long input", lambda st: len(st.input) > 10)
    assert long_input.name == "long input" and long_input.test(s)
    patched = when.patched("fan-out")
    assert (patched.name, patched.patch) == ("patched fan-out", "fan-out")


def test_conditions_combine_with_and_or_not_and_keep_readable_names() -> None:
    s = _state(flags={"reask"}, visits={"think": 5})
    both = when.reask & when.visits_below("think", 3)
    either = when.reask | when.escalated
    assert (both.name, either.name) == ("reask and think < 3x", "reask or escalated")
    assert not both.test(s) and either.test(s)
    negated = ~when.reask
    assert negated.name == "not reask" and not negated.test(s)
    assert negated.test(_state())


def test_a_patched_condition_combined_with_another_stays_a_patch_or_is_refused() -> None:
    combine: list[Callable[[Condition], Condition]] = [
        lambda p: p & when.reask, lambda p: p | when.reask, lambda p: ~p]
    for how in combine:
        try:
            combined = how(when.patched("fan-out"))
        except SpecError:
            continue
        assert combined.patch == "fan-out", combined.name


# ---------------------------------------------------------------------------- evaluators


def test_grounded_numbers_passes_numbers_from_tool_results_and_the_request() -> None:
    ev = grounded_numbers()
    ok = ev.score(_state(answer="Refunded 1,200.50 on order 1001.",
                         tool_results=['{"amount": 1200.50, "order": "1001"}']))
    assert ok == Score(evaluator="grounded-numbers", value=1.0, passed=True, feedback="")


def test_grounded_numbers_names_each_invented_number() -> None:
    ev = grounded_numbers()
    bad = ev.score(_state(answer="Refunded 75 and 30 on order 1001 (ticket 9).",
                          tool_results=['{"refunded": 30}']))
    assert (bad.passed, bad.value) == (False, 0.0)
    assert bad.feedback.startswith("the answer states 75, 9, which no tool result or the "
                                   "request contains")
    assert grounded_numbers(ignore=["9", "75"]).score(
        _state(answer="Refunded 75 (ticket 9).")).passed


class Refund(BaseModel):
    order: str
    amount: float = Field(ge=0)


def test_answer_schema_accepts_a_matching_document_and_says_where_one_fails() -> None:
    ev = answer_schema(Refund)
    assert ev.score(_state(answer='{"order": "1001", "amount": 5}')).passed
    wrong = ev.score(_state(answer='{"order": "1001", "amount": -5}'))
    assert not wrong.passed
    assert wrong.feedback.startswith("the answer does not match the schema at amount:")
    missing = ev.score(_state(answer='{"amount": 5}'))
    assert missing.feedback.startswith("the answer does not match the schema at (root):")
    assert "'order' is a required property" in missing.feedback
    not_json = ev.score(_state(answer="I refunded it."))
    assert not not_json.passed and not_json.feedback.startswith("the answer is not JSON")
    plain = answer_schema({"type": "array"})
    assert plain.score(_state(answer="[1, 2]")).passed
    assert not plain.score(_state(answer=None)).passed


def test_custom_evaluators_may_return_bool_tuple_number_or_score() -> None:
    s = _state(answer="short")
    assert custom("b", lambda st: True).score(s) == Score(evaluator="b", value=1.0, passed=True)
    assert custom("b", lambda st: False).score(s).value == 0.0
    failed = custom("t", lambda st: (False, "say more")).score(s)
    assert (failed.passed, failed.value, failed.feedback) == (False, 0.0, "say more")
    high = custom("n", lambda st: 0.8, threshold=0.7).score(s)
    assert (high.passed, high.value, high.feedback) == (True, 0.8, "")
    low = custom("n", lambda st: 0.4, threshold=0.7).score(s)
    assert (low.passed, low.value, low.feedback) == (False, 0.4, "score 0.4 below 0.7")
    # Out-of-range numbers are clamped into [0, 1].
    assert custom("n", lambda st: 7).score(s).value == 1.0
    assert custom("n", lambda st: -2.5).score(s).value == 0.0
    mine = Score(evaluator="mine", value=0.3, passed=True, feedback="lenient")
    assert custom("ignored", lambda st: mine).score(s) is mine
