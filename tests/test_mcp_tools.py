"""MCP tools, against real MCP servers (``stead.testing.mcp_servers``, written with the ``mcp``
SDK) over stdio subprocesses and streamable HTTP on loopback, with the real dev server and
PostgreSQL.

Pinned here: an MCP tool call is a stead tool call (gate, ledger claim/attempt/decision rows, the
idempotency key reaching the server in ``_meta``); undeclared tools ask for approval; arguments
that break the pinned schema never reach the server; a server that crashes mid-call is never
blindly re-run (escalated, reconciled, or retried when idempotent); malformed and ``isError``
results are reported to the model without retries; a tool list that changes mid-run leaves the
run's pinned list alone and the history replays; an agent cannot call the tools of a server it
did not declare; bad declarations fail with messages that name what to fix. Every count here is
of real server calls and effects (files the servers write), not of log lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _cli import cli_env, stead
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from stead.activities.tools import ToolActivities
from stead.authoring.agent import Agent, AgentCatalog
from stead.client import start_run
from stead.contracts.models import (
    ApprovalDecision,
    Message,
    ModelTurn,
    RunRef,
    RunRequest,
    RunResult,
    RunState,
    ToolInvocation,
    ToolSchema,
)
from stead.contracts.policy import Policy
from stead.errors import SettingsError, SpecError
from stead.integrations.llm import FunctionModel, assistant_turns, call, tool_history
from stead.integrations.mcp import (
    McpServer,
    McpTools,
    McpToolSpec,
    parse_mcp_servers,
    stead_tool_name,
)
from stead.settings import Settings, load_settings
from stead.storage.ledger import Ledger
from stead.testing.mcp_servers import McpHttpServer, calls, effects, stdio_command
from stead.worker import WorkerHost
from stead.workflows.agent import AgentWorkflow

READ = McpToolSpec(side_effect="read", risk="low")
WRITE = McpToolSpec(side_effect="write", risk="low")

Turn = list[tuple[str, dict[str, Any]]]


# ---------------------------------------------------------------------------- helpers


class Script:
    """A model that makes the scripted calls turn by turn, then answers with what the tools
    said, and remembers which tools it was offered each turn."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = list(turns)
        self.offered: list[list[str]] = []
        self.model = FunctionModel(self._plan, name="mcp-script")

    def _plan(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        self.offered.append(sorted(t.name for t in tools))
        k = assistant_turns(messages)
        if k < len(self.turns):
            return ModelTurn(tool_calls=[call(name, **args) for name, args in self.turns[k]])
        h = tool_history(messages)
        return ModelTurn(content=json.dumps({"results": h.results, "errors": h.errors},
                                            sort_keys=True, default=str))


def agent(name: str, model: FunctionModel, *servers: McpServer) -> Agent:
    return Agent(name=name, instructions="Use the MCP tools to help.", tools=[],
                 offline_model=model, mcp=list(servers), max_steps=12)


@asynccontextmanager
async def serving(settings: Settings, *agents: Agent) -> AsyncIterator[Client]:
    async with WorkerHost(settings, AgentCatalog(agents)) as host:
        assert host.client is not None
        yield host.client


async def run(client: Client, settings: Settings, agent_name: str,
              text: str = "help") -> tuple[WorkflowHandle[Any, RunResult], RunResult]:
    h = await start_run(client, RunRequest(agent=agent_name, input=text),
                        temporal=settings.temporal)
    return h, await asyncio.wait_for(h.result(), 90)


def answer(r: RunResult) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(r.answer or "{}")
    return out


async def pending(h: WorkflowHandle[Any, RunResult]) -> RunState:
    for _ in range(300):
        state: RunState = await h.query("state", result_type=RunState)
        if state.pending_approvals:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError("the run never asked for approval")


# ---------------------------------------------------------------------------- calls


async def test_a_run_calls_an_mcp_tool_over_stdio_with_ledger_rows_and_the_key_in_meta(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """Declared in Python; the model is offered the server's tools under ``desk__``; each call
    is gated, claimed and recorded like a native one, and the server sees the ledger's key."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state),
                     tools={"lookup_ticket": READ, "create_ticket": WRITE})
    script = Script([[("desk__lookup_ticket", {"ticket_id": "T-1001"})],
                     [("desk__create_ticket", {"title": "Printer jammed", "priority": "low"})]])
    async with serving(settings, agent("helpdesk", script.model, desk)) as client:
        h, r = await run(client, settings, "helpdesk")

    assert r.status == "completed", r
    assert script.offered[0] == ["desk__create_ticket", "desk__find_ticket",
                                 "desk__lookup_ticket"]
    assert [(c.tool, c.status) for c in r.tool_calls] == [("desk__lookup_ticket", "ok"),
                                                          ("desk__create_ticket", "ok")]
    results = answer(r)["results"]
    assert results["desk__lookup_ticket"]["status"] == "investigating"
    assert results["desk__create_ticket"]["ticket_id"] == "T-2000"

    trail = await ledger.trail(h.id)
    rows = {row.tool: row for row in trail.tool_calls}
    assert set(rows) == {"desk__lookup_ticket", "desk__create_ticket"}
    assert all(row.status == "completed" for row in rows.values())
    assert rows["desk__create_ticket"].result["ticket_id"] == "T-2000"
    assert [(a.tool, a.attempt, a.status) for a in trail.tool_attempts] == [
        ("desk__lookup_ticket", 1, "ok"), ("desk__create_ticket", 1, "ok")]
    gates = [(d.data["tool"], d.decision) for d in trail.decisions if d.kind == "gate"]
    assert gates == [("desk__lookup_ticket", "allow"), ("desk__create_ticket", "allow")]
    assert await ledger.verify_chain(h.id) == []
    # The idempotency key the ledger claimed is the one the server received in _meta.
    (created,) = calls(state, "create_ticket")
    assert created["key"] == rows["desk__create_ticket"].idempotency_key
    assert created["key"].startswith(h.id) and created["attempt"] == 1
    assert len(effects(state, "create_ticket")) == 1


async def test_a_server_declared_in_settings_is_called_over_streamable_http(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """``STEAD_MCP_SERVERS`` grants an agent a server it does not declare itself."""
    script = Script([[("desk__create_ticket", {"title": "Disk full", "priority": "low"})]])
    with McpHttpServer("desk", tmp_path / "desk") as srv:
        servers = parse_mcp_servers(json.dumps({"desk": {
            "transport": "http", "url": srv.url, "agents": ["helpdesk"],
            "tools": {"create_ticket": {"side_effect": "write", "risk": "low"}}}}))
        configured = settings.replace(mcp_servers=servers)
        async with serving(configured, agent("helpdesk", script.model)) as client:
            h, r = await run(client, configured, "helpdesk")

    assert r.status == "completed", r
    assert answer(r)["results"]["desk__create_ticket"]["title"] == "Disk full"
    (row,) = (await ledger.trail(h.id)).tool_calls
    (created,) = calls(tmp_path / "desk", "create_ticket")
    assert created["key"] == row.idempotency_key and row.status == "completed"
    assert len(effects(tmp_path / "desk")) == 1


async def test_an_undeclared_mcp_tool_counts_as_irreversible_and_waits_for_approval(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """No declaration: irreversible, high risk, not idempotent -> the gate asks; nothing
    reaches the server until a human approves, then it runs once."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state))
    script = Script([[("desk__create_ticket", {"title": "Refund everyone", "priority": "high"})]])
    async with serving(settings, agent("helpdesk", script.model, desk)) as client:
        h = await start_run(client, RunRequest(agent="helpdesk", input="open it"),
                            temporal=settings.temporal)
        waiting = await pending(h)
        (ask,) = waiting.pending_approvals
        assert ask.tool == "desk__create_ticket" and ask.risk >= 0.5
        assert "side_effect:irreversible=0.2" in ask.factors and "tier:high=0.45" in ask.factors
        assert calls(state, "create_ticket") == []
        await h.signal("approve", ApprovalDecision(approval_id=ask.approval_id, by="ana"))
        r = await asyncio.wait_for(h.result(), 60)

    assert r.status == "completed" and r.approvals == 1
    assert len(calls(state, "create_ticket")) == 1 and len(effects(state)) == 1
    kinds = [(d.kind, d.decision) for d in (await ledger.trail(h.id)).decisions]
    assert ("gate", "ask") in kinds and ("approval_decided", "approved") in kinds


async def test_arguments_that_break_the_servers_schema_are_rejected_before_the_call(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """The pinned input schema (an enum, a required field) is checked by the workflow's gate:
    the model hears why, and the server never sees the call."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state),
                     tools={"create_ticket": WRITE})
    script = Script([[("desk__create_ticket", {"priority": "urgent"})]])
    async with serving(settings, agent("helpdesk", script.model, desk)) as client:
        h, r = await run(client, settings, "helpdesk")

    assert r.status == "completed" and r.rejected_calls == 1
    assert [(c.tool, c.status) for c in r.tool_calls] == [("desk__create_ticket", "rejected")]
    error = answer(r)["errors"]["desk__create_ticket"]
    assert error["type"] == "invalid_arguments"
    assert "'urgent' is not one of ['low', 'high']" in error["message"]
    assert "'title' is a required property" in error["message"]
    trail = await ledger.trail(h.id)
    assert trail.tool_calls == [] and calls(state) == []


# ---------------------------------------------------------------------------- failures


def _pay(name: str, state: Path, spec: McpToolSpec) -> McpServer:
    return McpServer(name=name, stdio=stdio_command("pay", state), tools={"charge": spec})


async def test_a_server_that_crashes_mid_call_is_never_blindly_re_run(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """``charge`` takes effect, then its server dies before answering. Not idempotent: the run
    escalates (ToolOutcomeUnknown) or, with a reconcile tool, finds the charge; idempotent: it
    is retried with the same key. In every case the card is charged exactly once."""
    plain = _pay("pay", tmp_path / "plain", WRITE)
    checked = _pay("payrec", tmp_path / "rec", WRITE.model_copy(update={
        "reconcile": "find_charge"}))
    retried = _pay("payidem", tmp_path / "idem", WRITE.model_copy(update={"idempotent": True}))

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if assistant_turns(messages) == 0:
            server = next(m.content for m in messages if m.role == "user")
            return ModelTurn(tool_calls=[call(f"{server}__charge", amount=42)])
        h = tool_history(messages)
        return ModelTurn(content=json.dumps({"results": h.results, "errors": h.errors}))

    model = FunctionModel(plan, name="payer")
    with McpHttpServer("pay", tmp_path / "http") as srv:
        over_http = McpServer(name="payhttp", url=srv.url, tools={"charge": WRITE})
        async with serving(settings, agent("cashier", model, plain, checked, retried,
                                           over_http)) as client:
            outcomes = {s: await run(client, settings, "cashier", s)
                        for s in ("pay", "payrec", "payidem", "payhttp")}
        assert not srv.alive  # it really crashed

    for server, state in (("pay", tmp_path / "plain"), ("payhttp", tmp_path / "http")):
        h, r = outcomes[server]
        assert r.status == "escalated", (server, r)
        assert "ToolOutcomeUnknown" not in (r.answer or "") and "not re-running" in (r.error or "")
        assert len(calls(state, "charge")) == 1 and len(effects(state, "charge")) == 1
        trail = await ledger.trail(h.id)
        assert [(a.attempt, a.status, a.error_type) for a in trail.tool_attempts] \
            == [(1, "error", "ToolOutcomeUnknown")]
        assert trail.tool_calls[0].status == "failed"
        assert ("outcome_unknown", "escalate") in [(d.kind, d.decision)
                                                   for d in trail.decisions]

    h, r = outcomes["payrec"]
    assert r.status == "completed", r
    (charged,) = effects(tmp_path / "rec", "charge")
    assert answer(r)["results"]["payrec__charge"] == {"charge_id": charged["charge_id"],
                                                      "amount": 42}
    assert len(calls(tmp_path / "rec", "charge")) == 1  # found, not charged again
    (asked,) = calls(tmp_path / "rec", "find_charge")
    assert asked["arguments"]["idempotency_key"] == charged["key"]
    trail = await ledger.trail(h.id)
    assert [a.status for a in trail.tool_attempts] == ["reconciled"]

    h, r = outcomes["payidem"]
    assert r.status == "completed" and r.retries == 1, r
    sent = calls(tmp_path / "idem", "charge")
    assert len(sent) == 2 and sent[0]["key"] == sent[1]["key"]  # the same key, twice
    assert [s["attempt"] for s in sent] == [1, 2]
    assert len(effects(tmp_path / "idem", "charge")) == 1  # the server deduplicated
    trail = await ledger.trail(h.id)
    assert [(a.attempt, a.status, a.error_type) for a in trail.tool_attempts] == [
        (1, "error", "CallLost"), (2, "ok", None)]


async def test_a_server_gone_before_the_call_is_retried_per_policy_and_never_reached(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """The HTTP server lists its tools at run start and is gone when the call comes: each
    attempt fails to connect (McpUnavailable, retryable: nothing was sent), the declared two
    attempts are made, and the model hears that the tool failed."""
    state = tmp_path / "desk"
    with McpHttpServer("desk", state) as srv:
        desk = McpServer(name="desk", url=srv.url, connect_timeout_seconds=3,
                         tools={"create_ticket": WRITE.model_copy(update={"max_attempts": 2})})

        def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
            if assistant_turns(messages) == 0:
                srv.stop()  # after discovery, before the call
                return ModelTurn(tool_calls=[call("desk__create_ticket", title="Printer jammed",
                                                  priority="low")])
            return ModelTurn(content=json.dumps(tool_history(messages).errors))

        async with serving(settings, agent("helpdesk", FunctionModel(plan, name="p"),
                                           desk)) as client:
            h, r = await run(client, settings, "helpdesk")

    assert r.status == "completed" and r.retries == 1
    assert [(c.tool, c.status, c.attempts) for c in r.tool_calls] == [
        ("desk__create_ticket", "error", 2)]
    assert "is unavailable" in (r.answer or "")
    trail = await ledger.trail(h.id)
    assert [(a.attempt, a.error_type) for a in trail.tool_attempts] == [
        (1, "McpUnavailable"), (2, "McpUnavailable")]
    assert calls(state, "create_ticket") == [] and effects(state) == []


async def test_malformed_and_error_results_are_reported_to_the_model_without_retries(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """A result that breaks its output schema, HTML where JSON was promised, a line that is
    not JSON-RPC, and ``isError``: each fails its call once (no retry) with a message the model
    reads; the session recovers for the next call."""
    state = tmp_path / "odd"
    idempotent = McpToolSpec(side_effect="read", risk="low", max_attempts=3)
    odd = McpServer(name="odd", stdio=stdio_command("odd", state),
                    tools={t: idempotent for t in ("bad_shape", "html_page", "garbage", "fails",
                                                   "fine")})
    script = Script([[("odd__bad_shape", {})], [("odd__html_page", {})], [("odd__garbage", {})],
                     [("odd__fails", {})], [("odd__fine", {})]])
    async with serving(settings, agent("prober", script.model, odd)) as client:
        h, r = await run(client, settings, "prober")

    assert r.status == "completed", r
    assert [(c.tool, c.status, c.attempts) for c in r.tool_calls] == [
        ("odd__bad_shape", "error", 1), ("odd__html_page", "error", 1),
        ("odd__garbage", "error", 1), ("odd__fails", "error", 1), ("odd__fine", "ok", 1)]
    assert r.retries == 0
    said = {tool: json.dumps(err) for tool, err in answer(r)["errors"].items()}
    assert "malformed result" in said["odd__bad_shape"] and "'seven'" in said["odd__bad_shape"]
    assert "did not return structured content" in said["odd__html_page"]
    assert "not JSON-RPC" in said["odd__garbage"]
    assert "disk full on /var" in said["odd__fails"]
    assert answer(r)["results"]["odd__fine"] == {"text": "all good"}
    trail = await ledger.trail(h.id)
    assert [(a.tool, a.error_type) for a in trail.tool_attempts] == [
        ("odd__bad_shape", "McpMalformedResult"), ("odd__html_page", "McpMalformedResult"),
        ("odd__garbage", "McpMalformedResult"), ("odd__fails", "McpToolError"),
        ("odd__fine", None)]
    assert [c["tool"] for c in calls(state)] == ["bad_shape", "html_page", "garbage", "fails",
                                                 "fine"]


async def test_a_tool_list_that_changes_mid_run_keeps_the_pinned_list_and_replays(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """``step_one`` makes the server drop ``step_two`` and add ``step_three``. The run keeps
    offering what it pinned at start; ``step_two`` fails clearly (removed, not called),
    ``step_three`` is unknown to the run; the next run pins the new list; and the first run's
    history replays against the workflow code with no server at all."""
    state = tmp_path / "shift"
    shift = McpServer(name="shift", stdio=stdio_command("shift", state),
                      tools={t: READ for t in ("step_one", "step_two", "step_three")})
    script = Script([[("shift__step_one", {})], [("shift__step_two", {})],
                     [("shift__step_three", {})]])
    async with serving(settings, agent("stepper", script.model, shift)) as client:
        h, r = await run(client, settings, "stepper")
        offered_first = list(script.offered)
        script.turns = []
        _, again = await run(client, settings, "stepper")
    history = await h.fetch_history()

    pinned = ["shift__step_one", "shift__step_two"]
    assert offered_first == [pinned] * 4
    assert script.offered[-1] == ["shift__step_one", "shift__step_three"]
    assert again.status == "completed"
    assert [(c.tool, c.status) for c in r.tool_calls] == [
        ("shift__step_one", "ok"), ("shift__step_two", "error"),
        ("shift__step_three", "rejected")]
    errors = answer(r)["errors"]
    assert "no longer offers this tool" in json.dumps(errors["shift__step_two"])
    assert errors["shift__step_three"]["type"] == "unknown_tool"
    assert [c["tool"] for c in calls(state)] == ["step_one"]  # step_two was never sent
    attempts = (await ledger.trail(h.id)).tool_attempts
    assert [(a.tool, a.error_type) for a in attempts] == [
        ("shift__step_one", None), ("shift__step_two", "McpToolRemoved")]

    replayer = Replayer(workflows=[AgentWorkflow], data_converter=pydantic_data_converter)
    replayed = await replayer.replay_workflow(history)
    assert replayed.replay_failure is None


async def test_a_server_that_cannot_be_reached_at_run_start_contributes_no_tools(
        settings: Settings, tmp_path: Path) -> None:
    """One integration being down does not stop a run: its tools are simply not offered."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state),
                     tools={"lookup_ticket": READ})
    gone = McpServer(name="gone", url="http://127.0.0.1:9/mcp", connect_timeout_seconds=3)
    script = Script([[("desk__lookup_ticket", {"ticket_id": "T-1"})]])
    async with serving(settings, agent("helpdesk", script.model, desk, gone)) as client:
        _, r = await run(client, settings, "helpdesk")
    assert r.status == "completed"
    assert script.offered[0] == ["desk__create_ticket", "desk__find_ticket",
                                 "desk__lookup_ticket"]


# ---------------------------------------------------------------------------- least privilege


async def test_an_agent_cannot_call_the_tools_of_a_server_it_did_not_declare(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """The worker serves both agents; ``outsider`` is not offered ``desk__*``, its model's call
    is refused as unknown, and the server is never called."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state),
                     tools={"lookup_ticket": READ})
    insider = Script([])
    outsider = Script([[("desk__lookup_ticket", {"ticket_id": "T-1"})]])
    async with serving(settings, agent("helpdesk", insider.model, desk),
                       agent("outsider", outsider.model)) as client:
        h, r = await run(client, settings, "outsider")

    assert outsider.offered[0] == []
    assert [(c.tool, c.status) for c in r.tool_calls] == [("desk__lookup_ticket", "rejected")]
    assert answer(r)["errors"]["desk__lookup_ticket"]["type"] == "unknown_tool"
    assert (await ledger.trail(h.id)).tool_calls == []
    assert calls(state) == []


async def test_the_tool_activity_refuses_an_mcp_tool_to_an_agent_without_its_server(
        ledger: Ledger, tmp_path: Path) -> None:
    """Even an invocation that bypassed the workflow's gate: the dynamic tool activity runs a
    server's tool only for an agent granted that server."""
    state = tmp_path / "desk"
    desk = McpServer(name="desk", stdio=stdio_command("desk", state),
                     tools={"lookup_ticket": READ})
    noop = FunctionModel(lambda m, t: ModelTurn(content="-"), name="noop")
    catalog = AgentCatalog([agent("helpdesk", noop, desk), agent("outsider", noop)])
    mcp = McpTools.from_catalog(catalog, Settings().integrations)
    assert mcp is not None
    acts = ToolActivities(catalog, ledger, dynamic=mcp).activities()
    (dynamic,) = [a for a in acts if getattr(a, "__temporal_activity_definition").name is None]

    async def invoke(agent_name: str) -> Any:
        wf = f"wf-{uuid.uuid4().hex}"
        inv = ToolInvocation(
            ref=RunRef(workflow_id=wf, run_id="r", agent=agent_name, tenant="t", step=2),
            call_id="c1", tool="desk__lookup_ticket", requested_tool="desk__lookup_ticket",
            arguments={"ticket_id": "T-7"}, idempotency_key=f"{wf}:r:2:desk__lookup_ticket")
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, activity_type="tool.desk__lookup_ticket")
        env.payload_converter = pydantic_data_converter.payload_converter
        payload = env.payload_converter.to_payload(inv)
        return wf, await env.run(dynamic, [RawValue(payload)])

    try:
        with pytest.raises(ApplicationError) as err:
            await invoke("outsider")
        assert err.value.type == "ToolNotAllowed" and err.value.non_retryable
        assert "not in the allowlist of agent 'outsider'" in err.value.message
        assert calls(state) == []
        wf, out = await invoke("helpdesk")
        assert out.result["ticket_id"] == "T-7"
        (sent,) = calls(state)
        assert sent["key"] == f"{wf}:r:2:desk__lookup_ticket"
    finally:
        await mcp.close()


# ---------------------------------------------------------------------------- declarations


@pytest.mark.parametrize(("value", "expected"), [
    ("{not json", "must be JSON"),
    ('["desk"]', "must be a JSON object of server name"),
    ('{"desk": {"transport": "pipe", "command": ["x"], "agents": ["ops"]}}',
     "server 'desk': transport: Input should be 'stdio' or 'http'"),
    ('{"desk": {"transport": "stdio", "agents": ["ops"]}}',
     "server 'desk': transport \"stdio\" needs \"command\""),
    ('{"desk": {"transport": "http", "agents": ["ops"]}}',
     "server 'desk': transport \"http\" needs \"url\""),
    ('{"desk": {"transport": "http", "url": "ftp://x/mcp", "agents": ["ops"]}}',
     "server 'desk': url: must be an http(s) URL with a host"),
    ('{"desk": {"transport": "stdio", "command": ["x"]}}', "server 'desk': agents: Field required"),
    ('{"desk": {"transport": "stdio", "command": ["x"], "agents": ["ops"],'
     ' "tools": {"rm": {"side_effect": "delete"}}}}',
     "server 'desk': tools.rm.side_effect: Input should be 'read', 'write' or 'irreversible'"),
    ('{"desk": {"transport": "stdio", "command": ["x"], "agents": ["ops"],'
     ' "tools": {"rm": {"max_attempts": 0}}}}',
     "server 'desk': tools.rm.max_attempts: Input should be greater than or equal to 1"),
    ('{"my__desk": {"transport": "stdio", "command": ["x"], "agents": ["ops"]}}',
     "server 'my__desk': name must start with a letter"),
    ('{"desk": {"transport": "stdio", "command": ["x"], "agents": ["ops"], "colour": "red"}}',
     "server 'desk': colour: Extra inputs are not permitted"),
])
def test_bad_mcp_settings_fail_naming_the_variable_the_server_and_the_field(
        monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("STEAD_MCP_SERVERS", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "STEAD_MCP_SERVERS" in str(err.value) and expected in str(err.value), str(err.value)


def test_good_mcp_settings_parse_with_conservative_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_MCP_SERVERS", json.dumps({
        "desk": {"transport": "http", "url": "https://desk.internal/mcp",
                 "headers": {"Authorization": "Bearer ${secret:desk_token}"},
                 "agents": ["ops"], "tools": {"lookup": {"side_effect": "read"}}}}))
    s = load_settings()
    server = s.integrations.mcp_servers["desk"].server("desk")
    assert server.transport == "http" and server.secret_refs() == ["desk_token"]
    assert server.tools["lookup"].is_idempotent and server.tools["lookup"].risk == "high"
    unknown = McpToolSpec()
    assert (unknown.side_effect, unknown.risk, unknown.is_idempotent) == (
        "irreversible", "high", False)


def test_worker_declarations_that_cannot_work_fail_before_the_worker_starts() -> None:
    """Unknown agents, two different servers under one name, and secrets the worker lacks."""
    noop = FunctionModel(lambda m, t: ModelTurn(content="-"), name="noop")
    desk = McpServer(name="desk", stdio=["desk-server"])
    catalog = AgentCatalog([agent("helpdesk", noop, desk)])
    settings = Settings(mcp_servers=parse_mcp_servers({
        "desk": {"transport": "stdio", "command": ["other-desk"], "agents": ["helpdesk"]},
        "wiki": {"transport": "stdio", "command": ["wiki"], "agents": ["opz"]}}))
    with pytest.raises(SpecError) as err:
        McpTools.from_catalog(catalog, settings.integrations)
    text = str(err.value)
    assert "server 'wiki' names agent 'opz', which this worker does not serve" in text
    assert "two different MCP servers are named 'desk'" in text

    secretive = McpServer(name="wiki", url="http://127.0.0.1:1/mcp",
                          headers={"Authorization": "Bearer ${secret:wiki_token}"})
    with pytest.raises(SpecError, match="STEAD_SECRET_WIKI_TOKEN"):
        McpTools.from_catalog(AgentCatalog([agent("helpdesk", noop, secretive)]),
                              Settings().integrations)

    with pytest.raises(ValueError, match="exactly one of stdio"):
        McpServer(name="both", stdio=["x"], url="http://127.0.0.1:1/mcp")
    with pytest.raises(ValueError, match="cannot reconcile itself"):
        McpServer(name="pay", stdio=["x"], tools={"charge": McpToolSpec(reconcile="charge")})


@pytest.mark.parametrize(("value", "expected"), [
    ('{"desk": {"transport": "stdio", "agents": ["ops"]}}',
     "STEAD_MCP_SERVERS={'desk': {'transport': 'stdio', 'agents': ['ops']}}: server 'desk': "
     "transport \"stdio\" needs \"command\""),
    ('{"desk": {"transport": "stdio", "command": ["desk-server"], "agents": ["opz"]}}',
     "server 'desk' names agent 'opz', which this worker does not serve (it serves: ops, "
     "refund)"),
])
async def test_stead_worker_refuses_bad_mcp_servers_with_exit_code_2(
        settings: Settings, tmp_path: Path, value: str, expected: str) -> None:
    done = await stead("worker", env=cli_env(settings, STEAD_MCP_SERVERS=value,
                                             STEAD_DATA_DIR=str(tmp_path)))
    assert done.code == 2, done
    assert expected in done.err, done.err


def test_policies_may_name_declared_mcp_tools_and_tool_names_are_model_safe() -> None:
    assert stead_tool_name("desk", "tickets.create/v2") == "desk__tickets_create_v2"
    long = stead_tool_name("desk", "x" * 100)
    assert len(long) == 64 and long != stead_tool_name("desk", "x" * 99)
    desk = McpServer(name="desk", stdio=["desk-server"], tools={"create_ticket": WRITE})
    noop = FunctionModel(lambda m, t: ModelTurn(content="-"), name="noop")
    strict = Policy(id="strict", version=1, deny_tools=["desk__create_ticket"])
    AgentCatalog([dataclasses.replace(agent("helpdesk", noop, desk), policy=strict)])
    with pytest.raises(SpecError, match="unknown tool 'desk__delete_all'"):
        AgentCatalog([dataclasses.replace(agent("helpdesk", noop, desk), policy=Policy(
            id="strict", version=1, deny_tools=["desk__delete_all"]))])
