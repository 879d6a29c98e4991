"""Declarations and pure judges, no server: ``@tool``, ``ToolRegistry``, ``AgentCatalog``,
``stead.guardrails.check_call``, ``ScriptedModel`` and the ops agent's offline planner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from stead.agents.ops import OpsPlanner, OpsWorld, ops_tools
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import Tool, ToolContext, ToolRegistry, tool
from stead.contracts.models import Message, ModelTurn, Timeouts, ToolCall, ToolPlan
from stead.errors import SpecError
from stead.guardrails.calls import CallVerdict, check_call
from stead.integrations.llm import ScriptedModel, call, raw_call

# ---------------------------------------------------------------------------- small tools


class Query(BaseModel):
    service: str = Field(min_length=1, description="Service name")
    limit: int = Field(10, ge=1, le=100)


class OtherQuery(BaseModel):
    host: str


class NoArgs(BaseModel):
    pass


class Answer(BaseModel):
    text: str


async def _answer(args: Query, ctx: ToolContext) -> Answer:
    return Answer(text=args.service)


def _tool(name: str, *, args: type[BaseModel] = Query, **options: Any) -> Tool[Any, Any]:
    """A distinct tool object named ``name`` taking ``args``."""

    async def fn(a: Any, ctx: ToolContext) -> Answer:
        return Answer(text=str(a))

    fn.__annotations__ = {"a": args, "ctx": ToolContext, "return": Answer}
    options.setdefault("description", f"The {name} tool.")
    made: Tool[Any, Any] = tool(name=name, **options)(fn)
    return made


def _agent(name: str, tools: list[Tool[Any, Any]], **kw: Any) -> Agent:
    return Agent(name=name, instructions=kw.pop("instructions", "Be useful."), tools=tools,
                 offline_model=ScriptedModel([ModelTurn(content="ok")]), **kw)


# ---------------------------------------------------------------------------- @tool


def test_tool_rejects_a_sync_function() -> None:
    def lookup(args: Query, ctx: ToolContext) -> Answer:
        return Answer(text="x")

    with pytest.raises(SpecError, match=r"'lookup'.*must be an async function"):
        tool(lookup)  # type: ignore[arg-type]


def test_tool_rejects_a_non_pydantic_input_annotation() -> None:
    async def lookup(args: dict[str, str], ctx: ToolContext) -> Answer:
        return Answer(text="x")

    with pytest.raises(SpecError, match=r"'lookup'.*input must be annotated with a pydantic"):
        tool(lookup)  # type: ignore[type-var]


def test_tool_rejects_a_non_pydantic_return_annotation() -> None:
    async def lookup(args: Query, ctx: ToolContext) -> str:
        return "x"

    with pytest.raises(SpecError, match=r"'lookup'.*output must be annotated with a pydantic"):
        tool(lookup)  # type: ignore[type-var]


def test_tool_rejects_a_signature_without_context() -> None:
    async def lookup(args: Query) -> Answer:
        return Answer(text="x")

    with pytest.raises(SpecError, match=r"signature must be \(args: InputModel, ctx"):
        tool(lookup)  # type: ignore[arg-type]


def test_tool_defaults_come_from_the_function_and_side_effect() -> None:
    """Name and description from the function; read tools idempotent, write tools not."""

    @tool
    async def service_lookup(args: Query, ctx: ToolContext) -> Answer:
        """Look a service up."""
        return Answer(text=args.service)

    @tool(side_effect="write")
    async def service_change(args: Query, ctx: ToolContext) -> Answer:
        """Change a service."""
        return Answer(text=args.service)

    assert (service_lookup.name, service_lookup.description) == ("service_lookup",
                                                                 "Look a service up.")
    assert (service_lookup.input_model, service_lookup.output_model) == (Query, Answer)
    assert service_lookup.idempotent is True
    assert service_change.idempotent is False
    assert service_lookup.activity_name == "tool.service_lookup"


def test_openai_schema_is_the_function_calling_shape_with_the_input_json_schema() -> None:
    t = _tool("service_lookup", description="Look a service up.")

    schema = t.openai_schema()

    assert schema == {
        "type": "function",
        "function": {
            "name": "service_lookup",
            "description": "Look a service up.",
            "parameters": {
                "type": "object",
                "properties": {
                    "service": {"type": "string", "minLength": 1, "title": "Service",
                                "description": "Service name"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10,
                              "title": "Limit"},
                },
                "required": ["service"],
            },
        },
    }
    # What the model is told and what the workflow pins agree.
    assert t.schema().parameters == schema["function"]["parameters"] == t.plan().parameters


# ---------------------------------------------------------------------------- ToolRegistry


def test_registry_validate_lists_every_problem_in_one_error() -> None:
    registry = ToolRegistry([
        _tool("primary", fallbacks=["missing", "primary", "other_args", "stronger"]),
        _tool("other_args", args=OtherQuery),
        _tool("stronger", side_effect="irreversible"),
        _tool("undocumented", description=" "),
        _tool("bad name!"),
        _tool("slow_heart", timeouts=Timeouts(start_to_close=5, heartbeat=10)),
    ])

    with pytest.raises(SpecError) as info:
        registry.validate()

    msg = str(info.value)
    expected = [
        "tool 'primary': fallback 'missing' is not a registered tool",
        "tool 'primary': lists itself as a fallback",
        "tool 'primary': fallback 'other_args' takes different arguments",
        "tool 'primary': fallback 'stronger' has a stronger side effect (irreversible > read)",
        "tool 'undocumented': needs a description",
        "tool 'bad name!': name must match",
        "tool 'slow_heart': timeouts.heartbeat exceeds timeouts.start_to_close",
    ]
    for problem in expected:
        assert problem in msg
    assert msg.count("\n  - ") == len(expected)


def test_registry_accepts_a_valid_fallback_chain() -> None:
    registry = ToolRegistry([_tool("primary", fallbacks=["backup"]), _tool("backup")])

    registry.validate()

    assert registry.names() == ["backup", "primary"]
    assert "primary" in registry and len(registry) == 2


def test_registry_refuses_two_tools_with_one_name() -> None:
    with pytest.raises(SpecError, match="'dup' is declared twice"):
        ToolRegistry([_tool("dup"), _tool("dup")])


# ---------------------------------------------------------------------------- AgentCatalog


def test_catalog_rejects_duplicate_agent_names_and_lists_other_problems_too() -> None:
    with pytest.raises(SpecError) as info:
        AgentCatalog([_agent("ops", [_tool("a")]), _agent("ops", [_tool("b")]),
                      _agent("empty", [_tool("c")], instructions="  ")])

    assert "agent 'ops' is declared twice" in str(info.value)
    assert "agent 'empty': instructions are empty" in str(info.value)


def test_catalog_reports_an_agent_whose_tools_are_invalid() -> None:
    with pytest.raises(SpecError, match=r"(?s)agent 'ops': invalid tool declarations.*'ghost'"):
        AgentCatalog([_agent("ops", [_tool("a", fallbacks=["ghost"])])])


def test_catalog_rejects_two_different_tools_with_one_name_across_agents() -> None:
    """Tool names are activity types: two agents may share a tool object, not a name."""
    with pytest.raises(SpecError,
                       match=r"two different tools are named 'lookup' \(agents 'a' and 'b'\)"):
        AgentCatalog([_agent("a", [_tool("lookup")]), _agent("b", [_tool("lookup")])])


def test_catalog_lets_agents_share_one_tool_object() -> None:
    shared = _tool("lookup")
    catalog = AgentCatalog([_agent("a", [shared]), _agent("b", [shared, _tool("extra")])])

    assert catalog.names() == ["a", "b"]
    assert [t.name for t in catalog.tools()] == ["lookup", "extra"]


# ---------------------------------------------------------------------------- check_call


def _plans(*tools: Tool[Any, Any]) -> dict[str, ToolPlan]:
    return {t.name: t.plan() for t in tools}


PLANS = _plans(_tool("service_lookup"), _tool("host_lookup", args=OtherQuery))


def test_check_call_accepts_valid_arguments_and_treats_empty_text_as_empty_object() -> None:
    ok = check_call(call("service_lookup", service="api", limit=5), PLANS)
    assert ok == CallVerdict(arguments={"service": "api", "limit": 5})

    no_args = _plans(_tool("ping", args=NoArgs))
    assert check_call(raw_call("ping", "  "), no_args) == CallVerdict(arguments={})


def test_check_call_unknown_tool_lists_available_tools() -> None:
    v = check_call(call("restart_everything"), PLANS)

    assert (v.kind, v.arguments) == ("unknown_tool", None)
    assert v.error == ("unknown tool 'restart_everything'. Available tools: host_lookup, "
                       "service_lookup.")


def test_check_call_invalid_json_says_where() -> None:
    v = check_call(raw_call("service_lookup", '{"service": "api"'), PLANS)

    assert v.kind == "malformed_arguments"
    assert v.error is not None and "not valid JSON" in v.error and "at char" in v.error


@pytest.mark.parametrize("text", ['["api"]', '"api"', "42", "null"])
def test_check_call_rejects_arguments_that_are_not_an_object(text: str) -> None:
    v = check_call(raw_call("service_lookup", text), PLANS)

    assert v.kind == "malformed_arguments"
    assert v.error is not None and "must be a JSON object" in v.error


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ({"service": 5}, "service: 5 is not of type 'string'"),
        ({"limit": 3}, "(arguments): 'service' is a required property"),
        ({"service": "api", "limit": 1000}, "limit: 1000 is greater than the maximum of 100"),
        ({"service": ""}, "service: '' should be non-empty"),
    ],
    ids=["wrong-type", "missing-required", "out-of-range", "too-short"],
)
def test_check_call_schema_violation_names_the_field(arguments: dict[str, Any],
                                                     where: str) -> None:
    v = check_call(raw_call("service_lookup", json.dumps(arguments)), PLANS)

    assert v.kind == "invalid_arguments"
    assert v.error is not None and v.error.startswith("invalid arguments for 'service_lookup': ")
    assert where in v.error


def test_check_call_is_deterministic() -> None:
    """The gate runs in workflow code: replaying the same call must give the same verdict."""
    calls = [call("service_lookup", service="api"), call("nope"),
             raw_call("service_lookup", "{bad"), raw_call("service_lookup", '{"service": 1}'),
             raw_call("host_lookup", '{"host": "h", "extra": 1}')]
    first = [check_call(c, PLANS) for c in calls]
    again = [check_call(c.model_copy(), dict(reversed(PLANS.items()))) for c in calls]

    assert first == again
    assert [v.kind for v in first] == ["ok", "unknown_tool", "malformed_arguments",
                                       "invalid_arguments", "ok"]


# ---------------------------------------------------------------------------- ScriptedModel


async def test_scripted_model_picks_the_turn_by_assistant_turn_count() -> None:
    turns = [ModelTurn(content="first"), ModelTurn(content="second"),
             ModelTurn(content="last", model="explicit")]
    model = ScriptedModel(turns, name="script")
    sys_user = [Message(role="system", content="s"), Message(role="user", content="u")]
    assistant = Message(role="assistant", content="a")
    tool_msg = Message(role="tool", tool_call_id="c", content="{}")

    seen = [
        (await model.complete([*sys_user], [])).content,
        # Tool and user messages do not move the script; assistant turns do.
        (await model.complete([*sys_user, tool_msg, Message(role="user", content="more")],
                              [])).content,
        (await model.complete([*sys_user, assistant, tool_msg], [])).content,
        (await model.complete([*sys_user, assistant, tool_msg, assistant], [])).content,
        (await model.complete([*sys_user, *[assistant] * 7], [])).content,
    ]

    assert seen == ["first", "first", "second", "last", "last"]
    assert (await model.complete(sys_user, [])).model == "script"
    assert (await model.complete([*sys_user, assistant, assistant], [])).model == "explicit"


def test_scripted_model_needs_a_turn() -> None:
    with pytest.raises(ValueError, match="at least one turn"):
        ScriptedModel([])


# ---------------------------------------------------------------------------- ops planner


@pytest.fixture
def ops(tmp_path: Path) -> tuple[OpsWorld, list[Tool[Any, Any]]]:
    world = OpsWorld(tmp_path / "world.sqlite")
    world.set_knobs(flaky_logs_failures=0)
    return world, ops_tools(world)


def _first_turn(request: str, tools: Sequence[Tool[Any, Any]]) -> ModelTurn:
    return OpsPlanner().next_turn(
        [Message(role="system", content="ops"), Message(role="user", content=request)],
        [t.schema() for t in tools])


@pytest.mark.parametrize(
    ("request_text", "first_call"),
    [
        ("is checkout-api healthy?", ("service_status", {"service": "checkout-api"})),
        ("restart search-worker", ("service_status", {"service": "search-worker"})),
        ("show me the logs of payments-db", ("recent_logs", {"service": "payments-db",
                                                             "limit": 20})),
        ("Can you look at the Auth Service?", ("list_services", {})),
        ("what's wrong with payments db", ("list_services", {})),
    ],
)
def test_planner_first_call_uses_exact_names_and_lists_services_for_loose_ones(
        request_text: str, first_call: tuple[str, dict[str, Any]],
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    turn = _first_turn(request_text, ops[1])

    assert turn.content is None
    (c,) = turn.tool_calls
    assert (c.name, json.loads(c.arguments)) == first_call


async def _drive(request: str, tools: list[Tool[Any, Any]],
                 max_turns: int = 12) -> tuple[list[Message], list[ToolCall]]:
    """Run the planner against the real tools the way AgentWorkflow does, minus Temporal:
    gate each call, run the tool (then its fallbacks), feed the payload back."""
    by_name = {t.name: t for t in tools}
    plans = {t.name: t.plan() for t in tools}
    schemas = [t.schema() for t in tools]
    planner = OpsPlanner()
    messages = [Message(role="system", content="ops"), Message(role="user", content=request)]
    made: list[ToolCall] = []
    for step in range(max_turns):
        turn = planner.next_turn(messages, schemas)
        messages.append(Message(role="assistant", content=turn.content,
                                tool_calls=turn.tool_calls))
        if not turn.tool_calls:
            return messages, made
        for c in turn.tool_calls:
            made.append(c)
            verdict = check_call(c, plans)
            payload: dict[str, Any]
            if verdict.arguments is None:
                payload = {"error": {"type": verdict.kind, "message": verdict.error}}
            else:
                payload = {"error": {"type": "ToolFailed", "message": f"{c.name} failed"}}
                for name in [c.name, *by_name[c.name].fallbacks]:
                    t = by_name[name]
                    ctx = ToolContext(idempotency_key=f"wf:{step}:{name}", attempt=1,
                                      workflow_id="wf", run_id="run", tenant="default")
                    try:
                        out = await t(t.input_model.model_validate(verdict.arguments), ctx)
                    except Exception:  # the workflow would retry, then try the fallback
                        continue
                    payload = {"ok": True, "tool": name, "result": out.model_dump(mode="json")}
                    break
            messages.append(Message(role="tool", tool_call_id=c.id, name=c.name,
                                    content=json.dumps(payload)))
    raise AssertionError(f"no answer after {max_turns} turns: {messages}")


async def test_planner_answers_a_health_question_from_the_status_result(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    messages, made = await _drive("is auth-service healthy?", ops[1])

    assert [c.name for c in made] == ["service_status"]
    assert messages[-1].content == ("auth-service is healthy: error rate 0.1%, p95 45 ms, "
                                    "version 3.2.1.")


async def test_planner_recovers_from_its_loose_name_slip(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    """"the Auth Service": list services, pass the wording under the wrong field, read the
    schema error, call again correctly, answer from the result."""
    messages, made = await _drive("Can you look at the Auth Service?", ops[1])

    assert [(c.name, json.loads(c.arguments)) for c in made] == [
        ("list_services", {}),
        ("service_status", {"name": "Auth Service"}),
        ("service_status", {"service": "auth-service"}),
    ]
    assert messages[-1].content is not None
    assert messages[-1].content.startswith("auth-service is healthy: error rate 0.1%")


async def test_planner_checks_status_then_restarts_when_asked(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    world, tools = ops
    messages, made = await _drive("restart search-worker", tools)

    assert [c.name for c in made] == ["service_status", "restart_service"]
    answer = messages[-1].content or ""
    assert answer.startswith("search-worker is down: error rate 100.0%")
    assert "I restarted search-worker (restart #1)" in answer
    assert world.effects("restart") == 1


async def test_planner_diagnoses_a_loosely_named_service_from_its_status(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    messages, made = await _drive("what's wrong with payments db", ops[1])

    assert [c.name for c in made] == ["list_services", "service_status", "service_status"]
    assert json.loads(made[-1].arguments) == {"service": "payments-db"}
    answer = messages[-1].content or ""
    assert "payments-db is degraded" in answer
    assert "p95 2300 ms" in answer


async def test_planner_says_which_services_exist_when_none_is_named(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    messages, made = await _drive("is the thing broken?", ops[1])

    assert [c.name for c in made] == ["list_services"]
    assert messages[-1].content == (
        "I could not tell which service you mean. Known services: auth-service, checkout-api, "
        "legacy-batch, payments-db, search-worker. Please name one.")


def test_planner_turn_is_a_pure_function_of_the_transcript(
        ops: tuple[OpsWorld, list[Tool[Any, Any]]]) -> None:
    """A retried or replayed model call must see the same turn."""
    transcript = [Message(role="system", content="ops"),
                  Message(role="user", content="Checkout API is slow, open a ticket")]
    schemas = [t.schema() for t in ops[1]]

    assert OpsPlanner().next_turn(transcript, schemas) == \
        OpsPlanner().next_turn(list(transcript), schemas)
