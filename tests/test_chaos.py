"""The chaos harness itself (``python -m chaos``): a small bounded run holds every invariant,
and the invariant checker is able to fail — it catches a planted duplicate side effect, a
lost run and a side effect the ledger never heard of. Plus the two bugs the suite found: a
final failure on record whose report to Temporal was lost must be answered again, not re-run;
a call the run gave up on must not read ``running`` in the ledger forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _procs import ROOT, crashy_agent
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from stead.activities.tools import ToolActivities
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import start_run
from stead.contracts.models import (
    ModelTurn,
    RetrySpec,
    RunRef,
    RunRequest,
    Timeouts,
    ToolInvocation,
)
from stead.errors import TOOL_OUTCOME_UNKNOWN
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings
from stead.storage.ledger import ABANDONED, Ledger
from stead.worker import WorkerHost


def test_a_small_chaos_run_kills_workers_and_every_invariant_holds(tmp_path: Path) -> None:
    """5 shop orders, 3 worker SIGKILLs (failpoint, approval wait, random), own stack."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--runs", "5", "--kills", "3", "--only", "kills",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    assert doc["invariants"] == {"lost": 0, "duplicate_effects": 0, "silent_reruns": 0,
                                 "unresolved_unknown": 0, "ledger_gaps": 0, "chain_breaks": 0,
                                 "off_build": 0,
                                 "phase_checks": 0,
                                 "reconciled": doc["invariants"]["reconciled"],
                                 "escalated_unknown": doc["invariants"]["escalated_unknown"]}
    # Aimed at 3 (a failpoint, an approval wait, a random one); a random kill can stop a
    # run before it reaches its failpoint, so allow one fewer.
    assert doc["kills"] >= 2
    assert all(d["exitcode"] == -9 for d in doc["deaths"] if d["cause"] != "stopped")
    assert len(doc["records"]) == 5
    # Governed orders (chaos.governance) may stop at their budget or tenant window.
    assert {r["outcome"] for r in doc["records"]} <= {"completed", "escalated", "denied",
                                                      "budget_exceeded"}
    assert doc["runs"]["kills"]["lost"] == "0"
    gov = [f for f in doc["faults"] if f["group"] == "governance"]
    assert len(gov) == 1 and gov[0]["injected"] >= 1, gov
    assert "Invariants" in proc.stdout and "all invariants hold" in proc.stdout


def test_a_small_rollout_keeps_pinned_runs_on_their_build(tmp_path: Path) -> None:
    """The rollout phase on its own stack: build B promoted mid-load next to build A, workers
    of both SIGKILLed; runs pinned to A finish there, later runs run on B, A drains."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--runs", "5", "--kills", "3", "--only", "rollout",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["invariants"]["off_build"] == 0, doc["problems"]
    records = doc["records"]
    # A SIGKILL inside ship_parcel (not idempotent, no reconcile hook) escalates that run to
    # a person by design; every other run completes.
    outcomes = {r["outcome"] for r in records}
    assert records and "completed" in outcomes and outcomes <= {"completed", "escalated"}
    before = [r for r in records if "after B was promoted" not in r["scenario"]]
    after = [r for r in records if "after B was promoted" in r["scenario"]]
    assert before and after
    # Each record's scenario ends with the builds its workflow tasks ran on, in order.
    assert any(r["scenario"].endswith("[build-a]") for r in before)
    assert all(r["scenario"].endswith("[build-b]") for r in after)
    promo = next(f for f in doc["faults"] if f["group"] == "rollout" and "promoted" in f["kind"])
    assert "build-a drained" in promo["note"], promo["note"]
    assert doc["kills"] >= 2
def test_network_fault_phases_keep_every_invariant(tmp_path: Path) -> None:
    """pgnet and temporalnet, small: 4 runs each through the fault proxy, 2 SIGKILLs each."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--runs", "4", "--kills", "2", "--only", "pgnet",
         "--only", "temporalnet", "--json", str(out)], cwd=ROOT, capture_output=True,
        text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["problems"] == []
    for phase in ("pgnet", "temporalnet"):
        assert doc["runs"][phase]["started"] == "4"
        assert doc["runs"][phase]["lost"] == "0"
    faults = {(f["group"], f["kind"]): f for f in doc["faults"]}
    for group in ("network (PostgreSQL)", "network (Temporal)"):
        kinds = [k for g, k in faults if g == group]
        assert len(kinds) >= 8, kinds  # the 7 faults of the script and the whole-script row
        stall = next(f for (g, k), f in faults.items() if g == group and "stalled" in k)
        assert stall["injected"] == 1
    assert sum(1 for d in doc["deaths"] if d["cause"] == "harness") >= 2  # aimed at 2 each


def test_bad_arguments_exit_2_with_a_message() -> None:
    proc = subprocess.run([sys.executable, "-m", "chaos", "--runs", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "must not be negative" in proc.stderr


async def test_the_checker_passes_real_runs_and_catches_planted_violations(
        settings: Settings, ledger: Ledger, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real orders check clean; then a second shipment for one of them, a charge with a
    key the ledger never claimed, and a run without a result are all reported."""
    monkeypatch.syspath_prepend(str(ROOT))
    from chaos.agent import SHOP, chaos_catalog, order_request
    from chaos.invariants import RunRecord, check, collect, tool_facts
    from chaos.world import ChaosWorld

    world = ChaosWorld(tmp_path / "world.sqlite")
    catalog = chaos_catalog(world)
    records: list[RunRecord] = []
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        for n in (1, 2):
            h = await start_run(host.client, RunRequest(agent=SHOP, input=order_request(
                n, qty=1, sku="sku-1", amount=20.0)), temporal=settings.temporal)
            rec = RunRecord(workflow_id=h.id, phase="test", scenario="plain",
                            started_at=time.time())
            rec.result = await h.result()
            rec.ended_at = time.time()
            records.append(rec)
    facts = tool_facts(catalog)

    clean = check(await collect(records, world=world, ledger=ledger, tools=facts))
    assert clean.ok, clean.problems()
    assert clean.statuses == {"completed": 2}
    assert {e.kind for e in world.all_effects()} == {"reserve", "charge", "ship"}

    first, second = records
    ship_key = next(e.key for e in world.all_effects()
                    if e.kind == "ship" and e.key.startswith(first.workflow_id))
    world.plant_effect("ship", ship_key)  # the carrier shipped run 1's parcel twice
    world.plant_effect("charge", f"{second.workflow_id}:x:99:charge_card")  # unclaimed key
    never = RunRecord(workflow_id=f"chaos-test-{uuid.uuid4().hex[:8]}", phase="test",
                      scenario="plain", started_at=time.time(),
                      lost_reason="no result within 0s")

    first.versioning = "pinned to build-a but workflow tasks ran on ['build-a', 'build-b']"
    v = check(await collect([*records, never], world=world, ledger=ledger, tools=facts))

    assert not v.ok
    assert sorted((f.workflow_id, f.detail) for f in v.duplicates) == sorted([
        (first.workflow_id, "2 ship effects for one run"),
        (second.workflow_id, "2 charge effects for one run")])
    assert v.duplicate_effects == 2
    assert [f.workflow_id for f in v.lost] == [never.workflow_id]
    assert [(f.workflow_id, f.detail) for f in v.versioning] == [
        (first.workflow_id, first.versioning)]
    assert [f.detail for f in v.ledger_gaps] == [
        f"charge effect for key {second.workflow_id}:x:99:charge_card has no stead_tool_calls "
        f"row"]

async def test_the_governance_checks_pass_governed_runs_and_catch_planted_violations(
        settings: Settings, ledger: Ledger, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three governed orders (chaos.governance: one as the capped tenant, one with
    max_model_calls 3, one plain) against the priced fake model server check clean; then a
    second settle of one call, an answer neither settled nor charged at its estimate, more
    runs admitted than the cap and a run counting a fourth call are each reported."""
    monkeypatch.syspath_prepend(str(ROOT))
    from chaos.agent import SHOP, chaos_catalog, order_request
    from chaos.governance import RUNS_IN_FLIGHT, FailpointModel, Governance, tenant_of
    from chaos.harness import ChaosConfig, Harness
    from chaos.invariants import RunRecord
    from chaos.world import ChaosWorld
    from stead.storage.ledger import SpendKey
    from stead.worker import configured_model

    world = ChaosWorld(tmp_path / "world.sqlite")
    h = Harness(ChaosConfig(runs=4, phases=("kills",)), None, settings,  # type: ignore[arg-type]
                world, ledger, None, tmp_path, print)  # type: ignore[arg-type]
    async with Governance(h) as gov:
        s = h.settings_for("kills")
        assert s.tenants.quotas[tenant_of("kills")].runs_in_flight == RUNS_IN_FLIGHT
        model = FailpointModel.for_settings(s, world, configured_model(s.models))
        assert model is not None and model.name == "openai:gpt-4o-mini"
        records: list[RunRecord] = []
        async with WorkerHost(s, chaos_catalog(world), model=model) as host:
            assert host.client is not None
            handles = []
            for n in (1, 2, 3):
                req = gov.shape("kills", RunRequest(agent=SHOP, input=order_request(
                    n, qty=1, sku="sku-1", amount=20.0)))
                hd = await start_run(host.client, req, temporal=s.temporal)
                records.append(RunRecord(workflow_id=hd.id, phase="kills", scenario="plain",
                                         started_at=time.time()))
                handles.append(hd)
            for rec, hd in zip(records, handles, strict=True):
                rec.result = await asyncio.wait_for(hd.result(), 120)
                rec.ended_at = time.time()
        tenant_run, budget_run, plain_run = records
        assert tenant_run.result is not None and budget_run.result is not None
        assert tenant_run.result.status == "completed"
        assert tenant_run.result.spend.usd > 0  # priced: the server reported usage
        assert budget_run.result.status == "budget_exceeded"
        assert budget_run.result.spend.model_calls == 3
        assert await gov.check(records) == []

        async with ledger.pool.acquire() as c:
            row = await c.fetchrow("select workflow_id, run_id, step, settled_usd::float8 as"
                                   " usd from stead_spend_reservations where workflow_id = $1"
                                   " order by step limit 1", tenant_run.workflow_id)
        assert row is not None
        # The same call settled by a second attempt the server never answered.
        assert await ledger.settle_spend(SpendKey(row["workflow_id"], row["run_id"],
                                                  row["step"]), usd=row["usd"], attempt=99)
        # An answer of the tenant's second call that no attempt settled nor was charged for
        # (a killed attempt the window did not count).
        order = next(o for o, p in gov.plans.items() if p.kind == "tenant")
        second = next(x for x in gov.served if x.order == order and x.turn == 2 and x.usage)
        gov.served.append(dataclasses.replace(second))
        step2 = await ledger.pool.fetchval(
            "select step from stead_spend_reservations where workflow_id = $1 order by step"
            " offset 1 limit 1", tenant_run.workflow_id)
        gov.probes[tenant_of("kills")].max_admitted = RUNS_IN_FLIGHT + 1
        res = budget_run.result
        budget_run.result = res.model_copy(update={
            "spend": res.spend.model_copy(update={"model_calls": 4})})
        found = {(f.workflow_id, f.detail) for f in await gov.check(records)}

    assert (tenant_run.workflow_id, f"step {row['step']}: 2 attempt(s) settled, the server "
                                    f"answered turn 1 1 time(s)") in found
    assert (tenant_run.workflow_id, f"step {step2}: the server answered turn 2 2 time(s), 1 "
            f"attempt(s) settled and only 0 charged at their estimate: the window "
            f"undercounts") in found
    # The sampler runs until the Governance context ends, so its count of samples may have
    # grown between the check and here: the finding is matched up to that count.
    over = f"{RUNS_IN_FLIGHT + 1} runs admitted at once, cap {RUNS_IN_FLIGHT} (probe, "
    assert any(wid == f"kills/{tenant_of('kills')}" and detail.startswith(over)
               and detail.endswith(" samples)") for wid, detail in found), found
    assert (budget_run.workflow_id, "4 model calls, limit 3") in found
    assert (budget_run.workflow_id, "RunResult.spend counts 4 model calls; the server "
                                    "answered 3 distinct turns") in found
    assert not any(wid == plain_run.workflow_id for wid, _ in found)


async def test_a_final_failure_on_record_is_answered_again_and_the_tool_never_reruns(
        ledger: Ledger, tmp_path: Path) -> None:
    """Found by the chaos suite: attempt 1 of a non-idempotent tool without a reconcile hook
    dies mid-call; attempt 2 records ToolOutcomeUnknown, then its worker dies before Temporal
    hears of it; attempt 3 must answer ToolOutcomeUnknown again — not ship a second parcel."""
    effects = tmp_path / "effects.txt"
    agent = crashy_agent(effects, hold_seconds=0)
    acts = {getattr(a, "__temporal_activity_definition").name: a
            for a in ToolActivities(AgentCatalog([agent]), ledger).activities()}
    wf = f"wf-{uuid.uuid4().hex}"
    key = f"{wf}:r:2:append_line"
    inv = ToolInvocation(ref=RunRef(workflow_id=wf, run_id="r", agent="crashy", tenant="t",
                                    step=2),
                         call_id="c1", tool="append_line", requested_tool="append_line",
                         arguments={"text": "once"}, idempotency_key=key)
    # Attempt 1 claims the key and is lost mid-call: nothing reports.
    await ledger.claim_tool(inv, tool="append_line", attempt=1)
    env = ActivityEnvironment()
    for attempt in (2, 3):
        env.info = dataclasses.replace(env.info, attempt=attempt)
        with pytest.raises(ApplicationError) as err:
            await env.run(acts["tool.append_line"], inv)
        assert (err.value.type, err.value.non_retryable) == (TOOL_OUTCOME_UNKNOWN, True)
        assert "not re-running" in err.value.message

    assert not effects.exists(), "the tool ran again"
    trail = await ledger.trail(wf)
    assert [(a.attempt, a.status, a.error_type) for a in trail.tool_attempts] == [
        (1, "running", None), (2, "error", TOOL_OUTCOME_UNKNOWN),
        (3, "error", TOOL_OUTCOME_UNKNOWN)]
    assert [c.status for c in trail.tool_calls] == ["failed"]


class Label(BaseModel):
    text: str


async def test_a_call_the_run_gave_up_on_is_closed_in_the_ledger(
        settings: Settings, ledger: Ledger) -> None:
    """Found by the chaos suite: a tool whose only attempt timed out stayed ``running`` in
    stead_tool_calls after its run had ended. Finishing the run closes it, saying why."""
    release = asyncio.Event()

    @tool(timeouts=Timeouts(start_to_close=1), retry=RetrySpec(max_attempts=1))
    async def never_answers(args: Label, ctx: ToolContext) -> Label:
        """Wait for a dependency that does not answer."""
        await release.wait()
        raise RuntimeError("released after the run ended")

    agent = Agent(name="hangs", instructions="Call it once, then answer.",
                  tools=[never_answers],
                  offline_model=ScriptedModel([
                      ModelTurn(tool_calls=[call("never_answers", call_id="c1", text="x")]),
                      ModelTurn(content="it did not answer")]))
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="hangs", input="call it"),
                            temporal=settings.temporal)
        r = await asyncio.wait_for(h.result(), 60)
        trail = await ledger.trail(h.id)
        release.set()  # let the abandoned attempt end, so the worker stops at once

    assert r.status == "completed"
    assert [(c.status, c.error) for c in r.tool_calls] == [("error",
                                                            "timed out (start_to_close)")]
    [row] = trail.tool_calls
    assert (row.status, row.error) == ("failed", ABANDONED)
    assert row.finished_at is not None
    # The attempt itself stays as the ledger saw it: started, never reported.
    assert [(a.attempt, a.status) for a in trail.tool_attempts] == [(1, "running")]


def test_a_phase_check_finding_fails_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook budget and quota checks plug into (chaos.netfaults.EXTRA_CHECKS): what they
    find counts like any invariant."""
    monkeypatch.syspath_prepend(str(ROOT))
    from chaos.invariants import Finding, Verdict
    from chaos.netfaults import EXTRA_CHECKS, REQUEST_HOOKS

    assert set(EXTRA_CHECKS) == set(REQUEST_HOOKS) == {"pgnet", "temporalnet"}
    v = Verdict()
    assert v.ok
    v.phase_checks.append(Finding("chaos-pgnet-1", "tenant t1 spent 2.10 USD, window says 2.00"))
    assert not v.ok
    assert v.problems() == [("phase check", Finding("chaos-pgnet-1",
                                                    "tenant t1 spent 2.10 USD, window says 2.00"))]
