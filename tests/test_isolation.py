"""Least privilege and tenant isolation.

- An agent runs only the tools it declares: a model asking for another agent's tool (one the
  same worker serves) is refused and audited, and the tool activity itself refuses to run a
  tool for an agent that does not declare it.
- Tenants: the tenant is in the workflow id and the ``SteadTenant`` search attribute; ledger
  reads scoped to a tenant never return another tenant's rows; ``stead show/audit --tenant``
  treat another tenant's run as not found (exit 4), ``stead pending --tenant`` lists only the
  tenant's approvals; memory recall never crosses tenants.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _cli import cli_env, stead
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from stead.activities.tools import ToolActivities
from stead.agents.ops import OpsWorld, ops_agent
from stead.agents.refund import RefundWorld, refund_agent
from stead.authoring.agent import AgentCatalog
from stead.client import WORKFLOW_TYPE, start_run
from stead.contracts.audit import GENESIS, chain_hash
from stead.contracts.models import (
    DecisionRow,
    MemoryOpRecord,
    Message,
    ModelCallRecord,
    ModelTurn,
    RunRef,
    RunRequest,
    RunResult,
    StartRun,
    ToolAttemptReport,
    ToolInvocation,
    ToolSchema,
    Usage,
)
from stead.integrations.llm import FunctionModel, ScriptedModel, call
from stead.settings import Settings
from stead.storage.ledger import Ledger
from stead.storage.memory import MemoryItem
from stead.storage.memory.embedders import HashingEmbedder
from stead.worker import WorkerHost

TENANT_KEY = SearchAttributeKey.for_keyword("SteadTenant")


def _tenants() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"acme-{tag}", f"globex-{tag}"


# ---------------------------------------------------------------------------- least privilege


@pytest.fixture
def refund_world(tmp_path: Path) -> RefundWorld:
    return RefundWorld(tmp_path / "refund-world.sqlite")


async def test_a_model_asking_for_another_agents_tool_is_refused_and_audited(
        settings: Settings, world: OpsWorld, refund_world: RefundWorld, ledger: Ledger) -> None:
    """The worker serves ops and refund; the ops run's model asks for refund's issue_refund."""
    offered: list[list[str]] = []

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        offered.append([t.name for t in tools])
        if len(offered) == 1:
            return ModelTurn(tool_calls=[call("issue_refund", order_id="ORD-1001", amount=10,
                                              reason="make it go away")])
        return ModelTurn(content="I cannot refund orders.")

    catalog = AgentCatalog([ops_agent(world), refund_agent(refund_world)])
    async with WorkerHost(settings, catalog, model=FunctionModel(plan, name="greedy")) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="ops", input="refund ORD-1001"),
                            temporal=settings.temporal)
        r = await h.result()

    ops_tools = sorted(t.name for t in ops_agent(world).tools)
    assert sorted(offered[0]) == ops_tools  # the model is offered the allowlist only
    assert r.status == "completed" and r.rejected_calls == 1
    assert [(c.tool, c.status) for c in r.tool_calls] == [("issue_refund", "rejected")]
    trail = await ledger.trail(h.id)
    (refused,) = [d for d in trail.decisions if d.kind == "call_rejected"]
    assert refused.decision == "unknown_tool"
    assert refused.data["tool"] == "issue_refund"
    assert refused.reason.startswith("unknown tool 'issue_refund'. Available tools: ")
    assert "issue_refund" not in refused.reason.partition("Available tools: ")[2]
    assert trail.tool_calls == [] and trail.tool_attempts == []
    assert refund_world.effects() == 0
    assert await ledger.verify_chain(h.id) == []


async def test_the_tool_activity_refuses_a_tool_the_invoking_agent_does_not_declare(
        world: OpsWorld, refund_world: RefundWorld, ledger: Ledger) -> None:
    """Even an invocation that bypassed the workflow's gate cannot run another agent's tool."""
    catalog = AgentCatalog([ops_agent(world), refund_agent(refund_world)])
    acts = {getattr(a, "__temporal_activity_definition").name: a
            for a in ToolActivities(catalog, ledger).activities()}
    wf = f"wf-{uuid.uuid4().hex}"
    inv = ToolInvocation(ref=RunRef(workflow_id=wf, run_id="r", agent="ops", tenant="t", step=2),
                         call_id="c1", tool="issue_refund", requested_tool="issue_refund",
                         arguments={"order_id": "ORD-1001", "amount": 10, "reason": "why not"},
                         idempotency_key=f"{wf}:r:2:issue_refund")
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts["tool.issue_refund"], inv)
    assert err.value.type == "ToolNotAllowed" and err.value.non_retryable
    assert "not in the allowlist of agent 'ops'" in err.value.message
    (attempt,) = (await ledger.trail(wf)).tool_attempts
    assert (attempt.status, attempt.error_type) == ("error", "ToolNotAllowed")
    assert refund_world.effects() == 0
    # The agent that declares it may run it.
    ok = inv.model_copy(update={"ref": inv.ref.model_copy(update={"agent": "refund"}),
                                "idempotency_key": f"{wf}:r:3:issue_refund"})
    out = await ActivityEnvironment().run(acts["tool.issue_refund"], ok)
    assert out.result["order_id"] == "ORD-1001" and refund_world.effects("refund") == 1


# ---------------------------------------------------------------------------- runs


async def _visible(client: Client, query: str, n: int) -> list[str]:
    """Workflow ids the visibility query lists, once it lists ``n`` (it lags behind writes)."""
    ids: list[str] = []
    for _ in range(100):
        ids = [w.id async for w in client.list_workflows(query)]
        if len(ids) >= n:
            break
        await asyncio.sleep(0.1)
    return ids


async def test_the_tenant_is_in_the_workflow_id_and_the_search_attributes(
        client: Client, settings: Settings) -> None:
    acme, globex = _tenants()
    a = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?",
                                           tenant=acme), temporal=settings.temporal)
    g = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?",
                                           tenant=globex), temporal=settings.temporal)
    # Started the way the `temporal` CLI does: no id scheme, no search attributes.
    bare = await client.start_workflow(
        WORKFLOW_TYPE, RunRequest(agent="ops", input="is auth-service healthy?", tenant=globex),
        id=f"bare-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue)
    for h in (a, g, bare):
        await h.result()
    assert a.id.startswith(f"{acme}-ops-") and g.id.startswith(f"{globex}-ops-")
    assert (await a.describe()).typed_search_attributes.get(TENANT_KEY) == acme
    # The workflow sets the attribute itself when the starter did not.
    assert (await bare.describe()).typed_search_attributes.get(TENANT_KEY) == globex
    assert await _visible(client, f"SteadTenant = '{acme}'", 1) == [a.id]
    assert sorted(await _visible(client, f"SteadTenant = '{globex}'", 2)) == sorted(
        [g.id, bare.id])


async def test_cli_show_and_audit_treat_another_tenants_run_as_not_found(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    acme, globex = _tenants()
    h = await start_run(client, RunRequest(agent="ops", input="is auth-service healthy?",
                                           tenant=acme), temporal=settings.temporal)
    await h.result()
    env = cli_env(settings)

    other = await stead("show", h.id, "--tenant", globex, env=env, cwd=tmp_path)
    assert other.code == 4, other.err
    assert f"no run '{h.id}' for tenant '{globex}'" in other.err
    missing = await stead("show", f"{acme}-ops-000000000000", "--tenant", globex, env=env,
                          cwd=tmp_path)
    assert missing.code == 4  # the same answer as for a run that does not exist
    assert missing.err.replace(f"{acme}-ops-000000000000", h.id) == other.err
    own = await stead("show", h.id, "--tenant", acme, "--json", env=env, cwd=tmp_path)
    assert own.code == 0, own.err
    assert (own.json()["workflow_id"], own.json()["status"]) == (h.id, "completed")

    audit_other = await stead("audit", h.id, "--tenant", globex, env=env, cwd=tmp_path)
    assert audit_other.code == 4
    assert f"the ledger has no run '{h.id}' for tenant '{globex}'" in audit_other.err
    audit_own = await stead("audit", h.id, "--tenant", acme, "--verify", "--json", env=env,
                            cwd=tmp_path)
    assert audit_own.code == 0, audit_own.err
    data = audit_own.json()
    assert data["chain_ok"] is True and [r["tenant"] for r in data["runs"]] == [acme]
    assert data["decisions"] and data["model_calls"]


async def test_cli_pending_lists_only_the_tenants_approvals(
        settings: Settings, world: OpsWorld, tmp_path: Path) -> None:
    acme, globex = _tenants()
    model = ScriptedModel([
        ModelTurn(tool_calls=[call("restart_service", service="search-worker",
                                   reason="OOM loop")]),
        ModelTurn(content="done")])
    async with WorkerHost(settings, AgentCatalog([ops_agent(world)]), model=model) as host:
        assert host.client is not None
        handles = {t: await start_run(host.client, RunRequest(
            agent="ops", input="restart search-worker", tenant=t), temporal=settings.temporal)
            for t in (acme, globex)}
        try:
            waiting = await _visible(
                host.client, f"SteadAwaitingApproval = true AND ExecutionStatus = 'Running' "
                             f"AND SteadTenant IN ('{acme}', '{globex}')", 2)
            assert len(waiting) == 2
            done = await stead("pending", "--tenant", acme, "--json", env=cli_env(settings),
                               cwd=tmp_path)
            assert done.code == 0, done.err
            rows = done.json()
            assert [(r["workflow_id"], r["tenant"], r["tool"]) for r in rows] == [
                (handles[acme].id, acme, "restart_service")]
        finally:
            for h in handles.values():
                await h.terminate("test over")
    assert world.effects("restart") == 0


# ---------------------------------------------------------------------------- ledger


def _decisions(wf: str, run_id: str, n: int) -> list[DecisionRow]:
    rows, head = [], GENESIS
    for i in range(1, n + 1):
        row = {"workflow_id": wf, "run_id": run_id, "seq": i, "step": i, "kind": "gate",
               "decision": "allow", "reason": f"{run_id} #{i}", "actor": "stead",
               "policy": "p@1", "data": {"run": run_id}}
        digest = chain_hash(head, row)
        rows.append(DecisionRow(**row, at=datetime.now(UTC), prev_hash=head, hash=digest))
        head = digest
    return rows


async def _record_run(ledger: Ledger, wf: str, run_id: str, tenant: str, *,
                      head: str | None = None) -> None:
    """One run with a row in every per-run table."""
    ref = RunRef(workflow_id=wf, run_id=run_id, agent="ops", tenant=tenant)
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(
        agent="ops", input=f"input of {run_id}", tenant=tenant)), model="m")
    await ledger.record_model_call(ref.model_copy(update={"step": 1}), ModelCallRecord(
        attempt=1, model="m", status="ok", finish_reason="stop", content=f"answer of {run_id}",
        usage=Usage(input_tokens=1, output_tokens=1), duration_ms=1.0))
    key = f"{wf}:{run_id}:2:t"
    await ledger.claim_tool(ToolInvocation(ref=ref.model_copy(update={"step": 2}), call_id="c",
                                           tool="t", requested_tool="t",
                                           arguments={"run": run_id}, idempotency_key=key),
                            tool="t", attempt=1)
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=1, outcome="ok",
                                               result={"run": run_id}))
    rows = _decisions(wf, run_id, 2)
    await ledger.append_decisions(rows)
    await ledger.record_memory_op(ref.model_copy(update={"step": 1}), MemoryOpRecord(
        op="recall", query=run_id, embedder="e", backend="b", duration_ms=1.0))
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=2,
                                           audit_head=head or rows[-1].hash))


async def test_ledger_reads_scoped_to_a_tenant_never_return_another_tenants_rows(
        ledger: Ledger) -> None:
    """Two runs of one workflow id, one per tenant: every table is scoped through the run."""
    acme, globex = _tenants()
    wf = f"wf-{uuid.uuid4().hex}"
    await _record_run(ledger, wf, "run-a", acme)
    await _record_run(ledger, wf, "run-g", globex, head="f" * 64)  # a chain that fails

    tables = ("runs", "model_calls", "tool_calls", "tool_attempts", "decisions", "memory_ops")
    everything = await ledger.trail(wf)
    assert all({r.run_id for r in getattr(everything, t)} == {"run-a", "run-g"} for t in tables)
    for tenant, run_id in ((acme, "run-a"), (globex, "run-g")):
        scoped = await ledger.trail(wf, tenant=tenant)
        for t in tables:
            assert {r.run_id for r in getattr(scoped, t)} == {run_id}, (tenant, t)
        assert await ledger.run_ids(wf, tenant=tenant) == [run_id]
    nobody = await ledger.trail(wf, tenant=f"nobody-{uuid.uuid4().hex[:6]}")
    assert all(getattr(nobody, t) == [] for t in tables)

    # Verification looks at the tenant's own chain only.
    assert await ledger.verify_chain(wf, tenant=acme) == []
    problems = await ledger.verify_chain(wf, tenant=globex)
    assert problems and all(p.startswith("run run-g") for p in problems), problems
    assert await ledger.verify_chain(wf) == problems


# ---------------------------------------------------------------------------- memory


async def test_memory_recall_in_a_run_never_crosses_tenants(
        settings: Settings, world: OpsWorld, ledger: Ledger) -> None:
    acme, globex = _tenants()
    text = f"search-worker runbook {uuid.uuid4().hex[:6]}: raise the memory limit to 4Gi"
    mem = settings.replace(memory_backend="pgvector")
    async with WorkerHost(mem, AgentCatalog([ops_agent(world)]),
                          embedder=HashingEmbedder(384)) as host:
        assert host.client is not None and host.memory is not None
        [vector] = await host.memory.embedder.embed([text])
        item = MemoryItem(id=f"note-{uuid.uuid4().hex[:8]}", tenant=acme, namespace="runbooks",
                          text=text, created_at=datetime.now(UTC),
                          embedder=host.memory.embedder.name)
        await host.memory.store.upsert([(item, vector)])
        recalled: dict[str, list[str]] = {}
        for tenant in (acme, globex):
            h = await start_run(host.client, RunRequest(agent="ops", input=text, tenant=tenant),
                                temporal=mem.temporal)
            await h.result()
            (op,) = [o for o in (await ledger.trail(h.id)).memory_ops if o.op == "recall"]
            assert op.tenant == tenant
            recalled[tenant] = list(op.item_ids)
    assert recalled == {acme: [item.id], globex: []}
