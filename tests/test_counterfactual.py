"""Counterfactual replay against the real dev server and PostgreSQL.

Real refund runs are recorded first (a real worker, the refund agent's planner and policy, a
fake payment world). Each is then replayed as a real ``AgentWorkflow`` with a changed agent;
every pin checks the fake world's side-effect counts, so "served from the recording" means no
refund or notification really happened again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _cli import stead
from temporalio.client import Client

from stead.agents.refund import POLICY_FILE, RefundWorld, refund_agent
from stead.authoring.agent import AgentCatalog
from stead.authoring.tools import ToolContext
from stead.client import start_run
from stead.contracts.models import (
    DecideInput,
    DecideOutcome,
    RunRef,
    RunRequest,
    RunResult,
    RunState,
    StartRun,
)
from stead.contracts.policy import Policy, load_policy
from stead.evals import SYNTHETIC_KEY
from stead.evals.counterfactual import (
    COUNTERFACTUAL_ACTOR,
    COUNTERFACTUAL_OF,
    Change,
    CounterfactualError,
    CounterfactualReport,
    ReplayBook,
    changed_catalog,
    check_model_setting,
    load_catalog,
    load_run,
    parse_since,
    read_instructions,
    run_counterfactual,
    select_runs,
)
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

SMALL = "Refund €30 on ORD-1001, the mugs arrived broken"
LARGE = "Refund €60 on ORD-1005, the headphones arrived broken"


@dataclass
class Recorded:
    workflow_id: str
    result: RunResult


@pytest.fixture
def world(tmp_path: Path) -> RefundWorld:
    return RefundWorld(tmp_path / "refund-world.sqlite")


@pytest.fixture
def catalog(world: RefundWorld) -> AgentCatalog:
    return AgentCatalog([refund_agent(world)])


@pytest.fixture
def tenant() -> str:
    """A tenant of this test alone, so selecting runs by agent sees only this test's runs."""
    return f"t-{uuid.uuid4().hex[:8]}"


def effects(world: RefundWorld) -> tuple[int, int]:
    return world.effects("refund"), world.effects("notification")


def changed_policy(tmp_path: Path, name: str, **replace: str) -> Path:
    """The shipped refund policy with some lines replaced, as a file."""
    text = POLICY_FILE.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("version: 1", "version: 2"))
    return path


def policy(tmp_path: Path, name: str, **replace: str) -> Policy:
    return load_policy(changed_policy(tmp_path, name, **replace))


async def record(client: Client, settings: Settings, text: str, *, tenant: str,
                 decide: tuple[bool, str] | None = None) -> Recorded:
    """Run the refund agent for real; answer its one approval with ``decide`` if given."""
    handle = await start_run(client, RunRequest(agent="refund", input=text, tenant=tenant),
                             temporal=settings.temporal)
    if decide is not None:
        deadline = time.monotonic() + 30
        while True:
            state = await handle.query("state", result_type=RunState)
            if state.pending_approvals:
                break
            assert state.status == "running" and time.monotonic() < deadline, state
            await asyncio.sleep(0.05)
        approved, by = decide
        await handle.execute_update("decide", DecideInput(
            approval_id=state.pending_approvals[0].approval_id, approved=approved, by=by,
            note="checked the photos"), result_type=DecideOutcome)
    result = await asyncio.wait_for(handle.result(), 30)
    return Recorded(handle.id, result)


async def replay(settings: Settings, catalog: AgentCatalog, ledger: Ledger,
                 recorded: list[Recorded], change: Change | None = None) -> CounterfactualReport:
    runs = [await load_run(ledger, r.workflow_id) for r in recorded]
    return await run_counterfactual(settings, catalog, runs, change, run_timeout=60)


def gates(side: Any) -> list[tuple[str, str, str]]:
    return [(g.tool, g.decision, g.rule) for g in side.gates]


def tools(side: Any) -> list[tuple[str, str]]:
    return [(t.tool, t.status) for t in side.tools]


# ---------------------------------------------------------------------------- reproduction


async def test_unchanged_agent_reproduces_recorded_runs_without_side_effects(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, ledger: Ledger,
        tenant: str) -> None:
    """Same policy, same planner: decisions, tools, status and answer all match, a recorded
    human approval is replayed under the approver's name, and nothing is paid twice."""
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        small = await record(host.client, settings, SMALL, tenant=tenant)
        large = await record(host.client, settings, LARGE, tenant=tenant,
                             decide=(True, "alice"))
    assert (small.result.status, large.result.status) == ("completed", "completed")
    assert effects(world) == (2, 2)

    report = await replay(settings, catalog, ledger, [small, large])

    assert effects(world) == (2, 2)  # served from the recording: no refund, no email
    assert report.summary.model_dump() == {
        "runs": 2, "changed": 0, "outcome_changed": 0, "decisions_changed": 0,
        "tools_changed": 0, "answer_changed": 0, "would_wait": 0, "diverged": 0, "errors": 0}
    a, b = report.runs
    for r, original in ((a, small), (b, large)):
        assert r.verdict == "same" and r.differences == [] and r.divergences == []
        assert r.counterfactual.workflow_id.startswith(f"cf-{original.workflow_id}-")
        assert r.counterfactual.answer == original.result.answer
        assert tools(r.counterfactual) == tools(r.original) == [
            ("lookup_order", "ok"), ("issue_refund", "ok"), ("notify_customer", "ok")]
        assert r.served_from_recording == 3
    assert gates(a.counterfactual) == gates(a.original) == [
        ("lookup_order", "allow", "thresholds.approve_at"),
        ("issue_refund", "allow", "thresholds.approve_at"),
        ("notify_customer", "allow", "thresholds.approve_at")]
    assert [g[1] for g in gates(b.counterfactual)] == ["allow", "ask", "allow"]
    (approval,) = b.counterfactual.approvals
    assert (approval.tool, approval.outcome, approval.by, approval.replayed) == (
        "issue_refund", "approved", "alice (replayed)", True)
    assert approval.note == "checked the photos"

    # The counterfactual runs are in the ledger as synthetic runs of their originals, and
    # selecting runs by agent leaves them out.
    trail = await ledger.trail(b.counterfactual.workflow_id)
    (row,) = trail.runs
    assert row.metadata[SYNTHETIC_KEY] == "counterfactual"
    assert row.metadata[COUNTERFACTUAL_OF] == large.workflow_id
    selected = await select_runs(ledger, agent="refund", since=timedelta(hours=1),
                                 tenant=tenant)
    assert sorted(r.workflow_id for r in selected) == sorted([small.workflow_id,
                                                              large.workflow_id])
    assert [r.workflow_id for r in await select_runs(ledger, agent="refund", tenant=tenant,
                                                     limit=1)] == [large.workflow_id]


async def test_recorded_model_replays_the_original_turns(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, ledger: Ledger,
        tenant: str) -> None:
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        small = await record(host.client, settings, SMALL, tenant=tenant)

    report = await replay(settings, catalog, ledger, [small], Change(model="recorded"))

    (r,) = report.runs
    assert r.verdict == "same", r.differences
    assert r.counterfactual.model == "recorded"
    trail = await ledger.trail(r.counterfactual.workflow_id)
    original = await ledger.trail(small.workflow_id)
    assert [(m.model, m.content, m.tool_calls) for m in trail.model_calls] == [
        (f"recorded:{m.model}", m.content, m.tool_calls)
        for m in original.model_calls]
    assert effects(world) == (1, 1)


# ---------------------------------------------------------------------------- changed policy


async def test_lower_approval_line_turns_a_recorded_allow_into_ask_that_would_wait(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, ledger: Ledger,
        tenant: str, tmp_path: Path) -> None:
    """The recorded €30 refund was allowed (risk 0.65 < 0.7); with the line at 0.6 it needs
    an approver the original run never asked, so the replay records that it would wait."""
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        small = await record(host.client, settings, SMALL, tenant=tenant)
    stricter = policy(tmp_path, "stricter", **{"approve_at: 0.7": "approve_at: 0.6"})

    report = await replay(settings, catalog, ledger, [small], Change(policy=stricter))

    (r,) = report.runs
    assert effects(world) == (1, 1)
    assert gates(r.original)[1] == ("issue_refund", "allow", "thresholds.approve_at")
    assert gates(r.counterfactual)[1] == ("issue_refund", "ask", "thresholds.approve_at")
    assert r.counterfactual.policy == "refund@2"
    assert (r.original.status, r.counterfactual.status) == ("completed", "denied")
    assert r.waits_for_approval and r.outcome_changed and r.decisions_changed
    (approval,) = r.counterfactual.approvals
    assert (approval.tool, approval.outcome, approval.by, approval.would_wait) == (
        "issue_refund", "rejected", COUNTERFACTUAL_ACTOR, True)
    assert tools(r.counterfactual) == [("lookup_order", "ok"), ("issue_refund", "rejected")]
    assert r.tools_changed and r.answer_changed and r.divergences == []
    assert "status: completed → denied (would wait for approval)" in r.differences
    assert ('gate issue_refund({"amount":30.0,"order_id":"ORD-1001","reason":"the mugs '
            'arrived broken"}): allow [thresholds.approve_at] → ask [thresholds.approve_at]'
            in r.differences)
    assert report.summary.changed == report.summary.would_wait == 1


async def test_a_call_the_original_run_never_made_is_a_divergence(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, ledger: Ledger,
        tenant: str, tmp_path: Path) -> None:
    """The recorded €60 refund was rejected by a human, so it never ran; a looser policy
    allows it, and the replay cannot (and does not) pay it out: it reports a divergence."""
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        rejected = await record(host.client, settings, LARGE, tenant=tenant,
                                decide=(False, "bob"))
    assert rejected.result.status == "denied" and effects(world) == (0, 0)
    looser = policy(tmp_path, "looser", **{"approve_at: 0.7": "approve_at: 0.9"})

    report = await replay(settings, catalog, ledger, [rejected], Change(policy=looser))

    (r,) = report.runs
    assert effects(world) == (0, 0)
    assert gates(r.original)[1][:2] == ("issue_refund", "ask")
    assert gates(r.counterfactual)[1][:2] == ("issue_refund", "allow")
    assert r.counterfactual.approvals == []
    assert r.verdict == "diverged"
    (d,) = r.divergences
    assert d.kind == "tool_not_recorded"
    assert d.detail == ('not in the recording: the changed agent would call issue_refund('
                        '{"amount":60.0,"order_id":"ORD-1005","reason":"the headphones '
                        'arrived broken"})')
    assert ("issue_refund", "error") in tools(r.counterfactual)
    assert report.summary.diverged == 1


async def test_recorded_model_diverges_when_the_changed_run_needs_another_turn(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, ledger: Ledger,
        tenant: str, tmp_path: Path) -> None:
    """With refunds denied, the recorded final answer quotes a refund that no tool returned,
    so output validation asks again, and the recording has no fifth turn."""
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        small = await record(host.client, settings, SMALL, tenant=tenant)
    no_refunds = policy(tmp_path, "no-refunds", **{"hard_limits:": "deny_tools: [issue_refund]"
                                                                   "\nhard_limits:"})

    report = await replay(settings, catalog, ledger, [small],
                          Change(policy=no_refunds, model="recorded"))

    (r,) = report.runs
    assert gates(r.counterfactual)[1] == ("issue_refund", "deny", "deny_tools")
    assert r.counterfactual.status == "failed"
    (d,) = r.divergences
    assert d.kind == "model_turn_missing"
    assert d.detail == ("diverged: the recording has no turn 5 (the original run made 4 model "
                        "turns)")
    assert r.counterfactual.error == f"model call failed: {d.detail}"
    assert effects(world) == (1, 1)


# ---------------------------------------------------------------------------- bad input


async def test_unknown_or_unfinished_runs_are_refused(ledger: Ledger, settings: Settings,
                                                      catalog: AgentCatalog) -> None:
    with pytest.raises(CounterfactualError, match=r"the ledger has no run 'no-such-run'"):
        await load_run(ledger, "no-such-run")
    wf = f"unfinished-{uuid.uuid4().hex[:8]}"
    await ledger.start_run(StartRun(
        ref=RunRef(workflow_id=wf, run_id="r1", agent="refund", tenant="default"),
        request=RunRequest(agent="refund", input="refund ORD-1001")), model="m")
    with pytest.raises(CounterfactualError, match=r"has not finished \(status running\)"):
        await load_run(ledger, wf)

    # A finished run of an agent the catalog does not serve.
    ops = f"ops-run-{uuid.uuid4().hex[:8]}"
    ref = RunRef(workflow_id=ops, run_id="r1", agent="ops", tenant="default")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="ops",
                                                                input="is api healthy?")),
                           model="m")
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=1))
    with pytest.raises(CounterfactualError, match=r"does not serve agent\(s\) ops"):
        await run_counterfactual(settings, catalog, [await load_run(ledger, ops)])


def test_options_are_parsed_or_refused_with_a_clear_message(tmp_path: Path) -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("12h") == timedelta(hours=12)
    for bad in ("7", "0d", "a week", "-1d"):
        with pytest.raises(CounterfactualError, match="expected a positive number and a unit"):
            parse_since(bad)
    assert [check_model_setting(m) for m in ("agent", "recorded", "openai:gpt-4o-mini")] == [
        "agent", "recorded", "openai:gpt-4o-mini"]
    for bad in ("gpt-4o", "openai:", "anthropic:claude"):
        with pytest.raises(CounterfactualError, match="expected agent, recorded or openai"):
            check_model_setting(bad)
    notes = tmp_path / "instructions.md"
    notes.write_text("Refund only after checking photos.")
    assert read_instructions(f"@{notes}") == "Refund only after checking photos."
    assert read_instructions("Be brief.") == "Be brief."
    with pytest.raises(CounterfactualError, match="cannot read instructions from"):
        read_instructions(f"@{tmp_path / 'missing.md'}")
    with pytest.raises(CounterfactualError, match="instructions are empty"):
        read_instructions("  ")
    with pytest.raises(CounterfactualError, match="expected module:function"):
        load_catalog("agents", tmp_path)
    with pytest.raises(CounterfactualError, match="cannot import no_such_module"):
        load_catalog("no_such_module:catalog", tmp_path)
    with pytest.raises(CounterfactualError, match="has no function 'nope'"):
        load_catalog("stead.agents:nope", tmp_path)
    assert load_catalog("stead.agents:reference_catalog", tmp_path).names() == ["ops", "refund"]


async def test_changed_catalog_changes_one_agent_and_serves_every_tool_from_recordings(
        tmp_path: Path) -> None:
    """Policy and instructions change for the replayed agent only; no tool of any agent
    reaches its world (a call outside a replay is refused, not run)."""
    base = load_catalog("stead.agents:reference_catalog", tmp_path)
    stricter = policy(tmp_path, "stricter", **{"approve_at: 0.7": "approve_at: 0.6"})
    changed = changed_catalog(base, ReplayBook(), agent="refund",
                              change=Change(policy=stricter, instructions="Be careful."))

    refund, ops = changed["refund"], changed["ops"]
    assert (refund.instructions, refund.policy) == ("Be careful.", stricter)
    assert (ops.instructions, ops.policy) == (base["ops"].instructions, base["ops"].policy)
    assert [t.name for t in refund.tools] == [t.name for t in base["refund"].tools]
    assert all(t.fn is not b.fn for t, b in zip(refund.tools, base["refund"].tools,
                                                  strict=True))
    issue = refund.registry["issue_refund"]
    ctx = ToolContext(idempotency_key="wf:run:2:issue_refund", attempt=1, workflow_id="wf",
                      run_id="run", tenant="default")
    args = issue.input_model.model_validate({"order_id": "ORD-1001", "amount": 30,
                                             "reason": "broken"})
    with pytest.raises(Exception, match="not a counterfactual run of this replay"):
        await issue.fn(args, ctx)
    assert RefundWorld(tmp_path / "refund-world.sqlite").effects() == 0


# ---------------------------------------------------------------------------- the CLI


def cli_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    assert settings.temporal.address is not None and settings.ledger.database_url is not None
    return {**os.environ, "TEMPORAL_ADDRESS": settings.temporal.address,
            "DATABASE_URL": settings.ledger.database_url, "STEAD_DATA_DIR": str(data_dir),
            "STEAD_MEMORY_BACKEND": "off"}


async def test_cli_replays_selected_runs_with_a_deny_rule_as_json_table_and_html(
        settings: Settings, catalog: AgentCatalog, world: RefundWorld, tenant: str,
        tmp_path: Path) -> None:
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        small = await record(host.client, settings, SMALL, tenant=tenant)
    deny = changed_policy(tmp_path, "deny", **{"hard_limits:": "deny_tools: [issue_refund]"
                                                                "\nhard_limits:"})
    env = cli_env(settings, tmp_path / "data")

    done = await stead("counterfactual", "--agent", "refund", "--tenant", tenant, "--since",
                       "1h", "--policy", str(deny), "--json", "--html",
                       str(tmp_path / "cf.html"), env=env, cwd=tmp_path)

    assert done.code == 0, done.err
    data = json.loads(done.out)
    assert data["change"] == {"policy": "refund@2", "policy_source": str(deny),
                              "instructions": False, "model": "agent"}
    (run,) = data["runs"]
    assert run["original"]["workflow_id"] == small.workflow_id
    assert [(g["tool"], g["decision"]) for g in run["original"]["gates"]][1] == (
        "issue_refund", "allow")
    assert [(g["tool"], g["decision"], g["rule"]) for g in run["counterfactual"]["gates"]][1] \
        == ("issue_refund", "deny", "deny_tools")
    assert (run["original"]["status"], run["counterfactual"]["status"], run["verdict"]) == (
        "completed", "denied", "changed")
    assert data["summary"]["decisions_changed"] == 1
    assert effects(world) == (1, 1)
    page = (tmp_path / "cf.html").read_text()
    assert small.workflow_id in page and "deny [deny_tools]" in page

    table = await stead("counterfactual", "--run", small.workflow_id, env=env, cwd=tmp_path)

    assert table.code == 0, table.err
    assert f"{small.workflow_id} (refund) → cf-{small.workflow_id}-" in table.out
    assert re.search(r"│ gates +│ lookup_order allow \[thresholds\.approve_at\]", table.out)
    assert "no differences" in table.out
    assert "3 tool call(s) served from the recording" in table.out
    assert effects(world) == (1, 1)

    # --policy DIR: the directory holding the one policy file stands for it.
    folder = tmp_path / "policies"
    folder.mkdir()
    moved = deny.rename(folder / deny.name)
    from_dir = await stead("counterfactual", "--run", small.workflow_id, "--policy",
                           str(folder), "--json", env=env, cwd=tmp_path)

    assert from_dir.code == 0, from_dir.err
    data = json.loads(from_dir.out)
    assert data["change"]["policy_source"] == str(moved)
    assert data["runs"][0]["counterfactual"]["status"] == "denied"
    assert effects(world) == (1, 1)


async def test_cli_bad_input_exits_2_with_a_clear_message(settings: Settings,
                                                          tmp_path: Path) -> None:
    env = cli_env(settings, tmp_path / "data")
    unknown = await stead("counterfactual", "--run", "no-such-run", env=env, cwd=tmp_path)
    assert unknown.code == 2, unknown
    assert "the ledger has no run 'no-such-run'" in unknown.err

    broken = tmp_path / "broken.yaml"
    broken.write_text("id: refund\nversion: 2\nthresholds:\n  approve_at: 2\n")
    bad_policy = await stead("counterfactual", "--run", "x", "--policy", str(broken), env=env,
                             cwd=tmp_path)
    assert bad_policy.code == 2, bad_policy
    assert f"{broken}:4: thresholds.approve_at" in bad_policy.err

    neither = await stead("counterfactual", "--policy", str(broken), env=env, cwd=tmp_path)
    assert neither.code == 2
    assert "give recorded runs with --run ID" in neither.err

    two = await stead("counterfactual", "--run", "x", "--policy", str(POLICY_FILE.parent.parent),
                      env=env, cwd=tmp_path)
    assert two.code == 2, two
    assert "holds 2 policy files (ops/policy.yaml, refund/policy.yaml)" in " ".join(
        two.err.split())
    (tmp_path / "no-policies").mkdir()
    none = await stead("counterfactual", "--run", "x", "--policy",
                       str(tmp_path / "no-policies"), env=env, cwd=tmp_path)
    assert none.code == 2, none
    assert "no *.yaml or *.yml policy files in this directory" in " ".join(none.err.split())
