"""Admission per tenant, on the dev server and PostgreSQL: runs in flight and starts per minute.

What these pin: a tenant at its cap of runs in flight queues the next runs, which start in
the order they queued as runs end (woken by the ending run, not by their re-check); the
starts-per-minute window admits a queued run when its oldest start leaves the minute; a tenant
that refuses over quota ends the run ``refused`` (audited, ``refuse:quota``) and its API start
is a 429 with ``Retry-After`` before any run exists; many racing admissions never pass the
cap; another tenant is unaffected while one is saturated; a queued run survives its worker's
restart; the ``stead quota`` figures and ``GET /v1/quota`` say the same."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from _admission_worker import ADMISSION_WORKER_SCRIPT
from _cli import cli_env, stead
from _graph_agents import Lab, Seen, child_agent, parent_agent
from _procs import WorkerProcess, worker_env
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from stead.activities.admission import AdmissionActivities
from stead.api import create_app, issue_token
from stead.authoring.agent import AgentCatalog
from stead.client import connect, start_run
from stead.contracts.admission import AdmitRun
from stead.contracts.models import RunRef, RunRequest, RunResult, RunState
from stead.contracts.quota import TenantQuota
from stead.evals.replay import production_replayer
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.admission import Admissions, recheck_wait
from stead.storage.ledger import Ledger
from stead.testing.gated_model import GatedModel
from stead.worker import WorkerHost


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _quotas(settings: Settings, quotas: dict[str, dict[str, Any]],
            recheck: float = 30.0) -> Settings:
    return settings.replace(
        tenant_quotas={t: TenantQuota.model_validate(q) for t, q in quotas.items()},
        admission_recheck_seconds=recheck)


@asynccontextmanager
async def _worker(settings: Settings, catalog: AgentCatalog, model: GatedModel,
                  reader: InMemoryMetricReader | None = None) -> AsyncIterator[Client]:
    provider = SdkMeterProvider(metric_readers=[reader]) if reader is not None else None
    async with WorkerHost(settings, catalog, model=model, meter_provider=provider) as host:
        assert host.client is not None
        yield host.client


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, ...], float]:
    """The metric's values by their attribute values (in attribute-name order)."""
    data = reader.get_metrics_data()
    assert data is not None
    return {tuple(str(v) for _, v in sorted((p.attributes or {}).items())): float(p.value)
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points}  # type: ignore[union-attr]


async def _start(client: Client, settings: Settings, tenant: str,
                 text: str) -> WorkflowHandle[Any, RunResult]:
    return await start_run(client, RunRequest(agent="ops", input=text, tenant=tenant),
                           temporal=settings.temporal)


async def _state(h: WorkflowHandle[Any, Any]) -> RunState:
    return await h.query("state", result_type=RunState, rpc_timeout=timedelta(seconds=5))


async def _until_status(h: WorkflowHandle[Any, Any], status: str, *,
                        within: float = 30) -> RunState:
    async with asyncio.timeout(within):
        while True:
            state = await _state(h)
            if state.status == status:
                return state
            await asyncio.sleep(0.05)


async def test_a_tenant_at_its_cap_queues_runs_and_starts_them_in_order_as_runs_end(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    """runs_in_flight=2: the third and fourth runs queue; each ending run wakes the oldest
    queued one (the re-check is an hour: only the wake-up can start them)."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 2}}, recheck=3600)
    model = GatedModel()
    reader = InMemoryMetricReader()
    async with _worker(settings, catalog, model, reader) as client:
        first = [await _start(client, settings, tenant, f"job-{i}") for i in (1, 2)]
        for i in (1, 2):
            await model.called(f"job-{i}")
        third = await _start(client, settings, tenant, "job-3")
        state = await _until_status(third, "queued")
        assert state.node == "queued"
        fourth = await _start(client, settings, tenant, "job-4")
        await _until_status(fourth, "queued")
        assert _points(reader, "stead.admission.queued") == {(tenant,): 2}
        assert sorted(model.calls) == ["job-1", "job-2"]  # both admitted at once

        model.open("job-1")
        assert (await first[0].result()).status == "completed"
        await model.called("job-3")  # the oldest queued run, woken by the ending one
        assert (await _state(fourth)).status == "queued"
        model.open("job-2")
        await model.called("job-4")
        assert model.calls[2:] == ["job-3", "job-4"]
        model.open_all()
        results = [await h.result() for h in (first[1], third, fourth)]
        history = await third.fetch_history()  # queued, signalled, admitted, released
        assert _points(reader, "stead.admission.queued") == {(tenant,): 0}
        assert _points(reader, "stead.admission.decisions") == {
            (tenant, "admitted"): 4, (tenant, "queued"): 2}
    assert [r.status for r in results] == ["completed"] * 3
    trail = await ledger.trail(third.id)
    assert [d.decision for d in trail.decisions if d.kind == "admission"] == ["queue", "admit"]
    await production_replayer().replay_workflow(history)
    usage = await Admissions(ledger.pool).usage([tenant])
    assert usage[0].in_flight == 0 and usage[0].queued == 0


async def test_a_tenant_without_caps_asks_nothing(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    tenant, other = _tenant(), _tenant()
    settings = _quotas(settings, {other: {"runs_in_flight": 1}})
    model = GatedModel()
    model.open_all()
    async with _worker(settings, catalog, model) as client:
        h = await _start(client, settings, tenant, "free")
        assert (await h.result()).status == "completed"
    trail = await ledger.trail(h.id)
    assert not [d for d in trail.decisions if d.kind == "admission"]
    assert (await Admissions(ledger.pool).usage([tenant]))[0].started_last_minute == 0


async def test_many_racing_admissions_never_pass_the_cap(ledger: Ledger) -> None:
    """40 runs ask at once, on separate connections: exactly the cap is admitted; releasing
    them admits the next ones in queue order."""
    tenant = _tenant()
    quota = TenantQuota(runs_in_flight=3)
    admissions = Admissions(ledger.pool)

    def ask(i: int) -> AdmitRun:
        return AdmitRun(ref=RunRef(workflow_id=f"{tenant}-{i:02d}", run_id="r", agent="ops",
                                   tenant=tenant), first_run_id="r")

    answers = await asyncio.gather(*(admissions.admit(ask(i), quota) for i in range(40)))
    admitted = [i for i, (a, _) in enumerate(answers) if a.verdict == "admitted"]
    assert len(admitted) == 3
    assert {a.verdict for a, _ in answers} == {"admitted", "queued"}
    # Asking again changes nothing.
    again = await asyncio.gather(*(admissions.admit(ask(i), quota) for i in range(40)))
    assert [a.verdict for a, _ in again] == [a.verdict for a, _ in answers]
    queued = sorted((a.position, i) for i, (a, _) in enumerate(answers)
                    if a.verdict == "queued")
    assert [p for p, _ in queued] == list(range(37))
    woken = await admissions.release(ask(admitted[0]).ref, quota)
    assert [w.workflow_id for w in woken] == [ask(queued[0][1]).ref.workflow_id]
    (usage,) = await admissions.usage([tenant])
    assert (usage.in_flight, usage.queued, usage.started_last_minute) == (3, 36, 4)


async def test_starts_per_minute_queue_until_the_oldest_start_leaves_the_minute(
        ledger: Ledger) -> None:
    tenant = _tenant()
    quota = TenantQuota(starts_per_minute=2)
    admissions = Admissions(ledger.pool)
    refs = [RunRef(workflow_id=f"{tenant}-{i}", run_id="r", agent="ops", tenant=tenant)
            for i in range(3)]
    verdicts = [(await admissions.admit(AdmitRun(ref=r, first_run_id="r"), quota,
                                        recheck_seconds=30))[0] for r in refs]
    assert [v.verdict for v in verdicts] == ["admitted", "admitted", "queued"]
    third = verdicts[2]
    assert third.limit == "starts_per_minute"
    assert third.retry_after is not None and 55 < third.retry_after <= 60
    assert third.wait_seconds == 30
    # Ending a run frees no start of the minute.
    assert await admissions.release(refs[0], quota) == []
    # Refusing tenants: no row, a retry-after.
    refusing = TenantQuota(starts_per_minute=2, over_quota="refuse")
    other = RunRef(workflow_id=f"{tenant}-x", run_id="r", agent="ops", tenant=tenant)
    verdict, _ = await admissions.admit(AdmitRun(ref=other, first_run_id="r"), refusing)
    assert verdict.verdict == "refused" and verdict.retry_after is not None
    assert "2 starts per minute" in verdict.reason


async def test_a_refusing_tenant_over_quota_ends_the_run_refused_and_audited(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    """A raw Temporal start (no API in front): the run itself refuses, before any step."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1, "over_quota": "refuse"}})
    model = GatedModel()
    reader = InMemoryMetricReader()
    async with _worker(settings, catalog, model, reader) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        h = await _start(client, settings, tenant, "one too many")
        r = await h.result()
        model.open_all()
        assert (await holder.result()).status == "completed"
        history = await h.fetch_history()
        assert _points(reader, "stead.admission.decisions") == {
            (tenant, "admitted"): 1, (tenant, "refused"): 1}
    await production_replayer().replay_workflow(history)
    assert r.status == "refused" and r.route == "refuse:quota" and r.steps == 0
    assert r.answer is not None and "1 runs in flight" in r.answer
    assert "one too many" not in model.calls
    trail = await ledger.trail(h.id)
    assert [run.status for run in trail.runs] == ["refused"]
    (row,) = [d for d in trail.decisions if d.kind == "admission"]
    assert row.decision == "refuse" and row.data["limit"] == "runs_in_flight"


async def test_starts_per_minute_refuse_a_third_start_in_real_runs_though_none_is_in_flight(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    """starts_per_minute=2 with ``over_quota: refuse``, on the dev server: two runs start and
    finish; the third within the minute is refused with the cap and when to try again, with
    nothing in flight; the refusal is audited with its retry-after."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"starts_per_minute": 2, "over_quota": "refuse"}})
    model = GatedModel()
    model.open_all()
    async with _worker(settings, catalog, model) as client:
        done = [await (await _start(client, settings, tenant, f"run-{i}")).result()
                for i in (1, 2)]
        h = await _start(client, settings, tenant, "run-3")
        r = await h.result()
        history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert [d.status for d in done] == ["completed", "completed"]
    assert r.status == "refused" and r.route == "refuse:quota" and r.steps == 0
    assert r.answer is not None and "2 starts per minute" in r.answer
    assert "run-3" not in model.calls
    (row,) = [d for d in (await ledger.trail(h.id)).decisions if d.kind == "admission"]
    assert row.decision == "refuse" and row.data["limit"] == "starts_per_minute"
    assert 0 < row.data["retry_after"] <= 60
    (usage,) = await Admissions(ledger.pool).usage([tenant])
    assert (usage.in_flight, usage.started_last_minute) == (0, 2)


async def test_a_run_queued_past_its_queue_timeout_is_refused_and_leaves_the_queue(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    """queue_timeout_seconds=2: the run waits its turn behind a holder for 2 s (the
    re-check is an hour away), then ends ``refused``, saying how long it waited; it takes no
    slot and leaves the queue, and the holder goes on unaffected."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1, "queue_timeout_seconds": 2}},
                       recheck=3600)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        h = await _start(client, settings, tenant, "patient")
        await _until_status(h, "queued")
        r = await asyncio.wait_for(h.result(), 30)
        (usage,) = await Admissions(ledger.pool).usage([tenant])
        model.open_all()
        assert (await holder.result()).status == "completed"
        history = await h.fetch_history()
    await production_replayer().replay_workflow(history)
    assert r.status == "refused" and r.route == "refuse:quota" and r.steps == 0
    assert r.answer is not None and "waited 2 s for a slot" in r.answer
    assert "1 runs in flight" in r.answer
    assert "patient" not in model.calls
    assert (usage.in_flight, usage.queued) == (1, 0)  # the holder's slot only
    rows = [d for d in (await ledger.trail(h.id)).decisions if d.kind == "admission"]
    assert [d.decision for d in rows] == ["queue", "refuse"]
    assert rows[1].data["queue_timeout_seconds"] == 2


async def test_another_tenant_is_unaffected_while_one_is_saturated(
        settings: Settings, catalog: AgentCatalog) -> None:
    busy, other = _tenant(), _tenant()
    settings = _quotas(settings, {"*": {"runs_in_flight": 1}}, recheck=3600)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        await _start(client, settings, busy, "busy-1")
        await model.called("busy-1")
        waiting = [await _start(client, settings, busy, f"busy-{i}") for i in (2, 3, 4)]
        for h in waiting:
            await _until_status(h, "queued")
        h = await _start(client, settings, other, "other-1")
        await model.called("other-1")  # its own slot, at once
        model.open("other-1")
        assert (await h.result()).status == "completed"
        assert (await _state(waiting[0])).status == "queued"
        model.open_all()
        assert [(await w.result()).status for w in waiting] == ["completed"] * 3


async def test_a_queued_run_survives_a_worker_restart_and_a_cancelled_one_leaves_the_queue(
        settings: Settings, catalog: AgentCatalog, ledger: Ledger) -> None:
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1}}, recheck=1)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        queued = await _start(client, settings, tenant, "queued")
        cancelled = await _start(client, settings, tenant, "cancelled")
        await _until_status(queued, "queued")
        await _until_status(cancelled, "queued")
    # No worker: the runs wait in Temporal's history, nothing is lost.
    model2 = GatedModel()
    async with _worker(settings, catalog, model2) as client:
        await cancelled.cancel()
        with pytest.raises(WorkflowFailureError):
            await cancelled.result()
        await production_replayer().replay_workflow(await cancelled.fetch_history())
        (usage,) = await Admissions(ledger.pool).usage([tenant])
        assert usage.queued == 1
        # The holder's model call is retried on the new worker; let it end.
        model2.open("holder")
        assert (await holder.result()).status == "completed"
        await model2.called("queued")
        model2.open_all()
        assert (await queued.result()).status == "completed"
    (usage,) = await Admissions(ledger.pool).usage([tenant])
    assert (usage.in_flight, usage.queued) == (0, 0)


SECRET = "admission-test-secret-" + "x" * 40


def _auth(tenant: str) -> dict[str, str]:
    token = issue_token(SECRET, sub="alice", tenant=tenant, roles=("requester",),
                        ttl=timedelta(minutes=10))
    return {"Authorization": f"Bearer {token}"}


async def test_the_api_answers_429_with_retry_after_and_shows_the_quota(
        settings: Settings, catalog: AgentCatalog) -> None:
    """``over_quota: refuse``: a 429 before any run exists; ``queue``: a 201 and a run that
    shows ``queued``; ``GET /v1/quota`` gives the token's tenant's figures and caps."""
    refusing, queueing = _tenant(), _tenant()
    settings = _quotas(settings.replace(api_secret=SecretStr(SECRET)), {
        refusing: {"runs_in_flight": 1, "over_quota": "refuse"},
        queueing: {"runs_in_flight": 1, "starts_per_minute": 10}}, recheck=7)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        app = create_app(settings, client=client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            for t in (refusing, queueing):  # each tenant's first run holds its slot
                r = await http.post("/v1/runs", json={"agent": "ops", "input": f"first {t}"},
                                    headers=_auth(t))
                assert r.status_code == 201, r.text
                await model.called(f"first {t}")
            r = await http.post("/v1/runs", json={"agent": "ops", "input": "second"},
                                headers=_auth(refusing))
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "7"  # in flight: the re-check interval
            error = r.json()["error"]
            assert error["type"] == "over_quota" and "1 runs in flight" in error["message"]
            r = await http.post("/v1/runs", json={"agent": "ops", "input": "second"},
                                headers=_auth(queueing))
            assert r.status_code == 201, r.text
            queued = client.get_workflow_handle(r.json()["workflow_id"], result_type=RunResult)
            await _until_status(queued, "queued")
            run = await http.get(f"/v1/runs/{queued.id}", headers=_auth(queueing))
            assert run.json()["status"] == "queued", run.text
            async with asyncio.timeout(20):  # visibility catches up in its own time
                while True:
                    listed = await http.get("/v1/runs?status=queued", headers=_auth(queueing))
                    if [r["workflow_id"] for r in listed.json()] == [queued.id]:
                        break
                    await asyncio.sleep(0.1)
            r = await http.get("/v1/quota", headers=_auth(queueing))
            assert r.status_code == 200, r.text
            assert r.json() == {"tenant": queueing, "in_flight": 1, "queued": 1,
                                "started_last_minute": 1,
                                "oldest_queued_at": r.json()["oldest_queued_at"],
                                "runs_in_flight": 1, "starts_per_minute": 10,
                                "over_quota": "queue"}
            model.open_all()
            assert (await queued.result()).status == "completed"
        await app.state.backend.close()


async def test_the_api_frees_a_terminated_runs_slot_instead_of_answering_429_for_good(
        settings: Settings, catalog: AgentCatalog) -> None:
    """The API's 429 check of a refusing tenant looks for closed runs holding its slots (once
    per re-check interval), as the run's own admission does: a terminated holder's slot goes."""
    tenant = _tenant()
    settings = _quotas(settings.replace(api_secret=SecretStr(SECRET)),
                       {tenant: {"runs_in_flight": 1, "over_quota": "refuse"}}, recheck=3600)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        app = create_app(settings, client=client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            r = await http.post("/v1/runs", json={"agent": "ops", "input": "holder"},
                                headers=_auth(tenant))
            assert r.status_code == 201, r.text
            await model.called("holder")
            await client.get_workflow_handle(r.json()["workflow_id"]).terminate("a mistake")
            r = await http.post("/v1/runs", json={"agent": "ops", "input": "after"},
                                headers=_auth(tenant))
            assert r.status_code == 201, r.text
            await model.called("after")
            model.open_all()
            after = client.get_workflow_handle(r.json()["workflow_id"], result_type=RunResult)
            assert (await after.result()).status == "completed"
        await app.state.backend.close()


async def test_stead_quota_shows_each_tenants_figures_and_caps(
        settings: Settings, ledger: Ledger) -> None:
    tenant, idle = _tenant(), _tenant()
    quota = TenantQuota(runs_in_flight=1, starts_per_minute=5)
    admissions = Admissions(ledger.pool)
    for i in range(3):
        ref = RunRef(workflow_id=f"{tenant}-{i}", run_id="r", agent="ops", tenant=tenant)
        await admissions.admit(AdmitRun(ref=ref, first_run_id="r"), quota)
    quotas = f'{{"{tenant}": {{"runs_in_flight": 1, "starts_per_minute": 5}}, ' \
             f'"{idle}": {{"runs_in_flight": 3, "over_quota": "refuse"}}}}'
    env = cli_env(settings, STEAD_TENANT_QUOTAS=quotas)
    done = await stead("quota", "--json", "--tenant", tenant, env=env)
    assert done.code == 0, done.err
    (row,) = done.json()
    assert (row["in_flight"], row["queued"], row["started_last_minute"]) == (1, 2, 1)
    assert (row["runs_in_flight"], row["starts_per_minute"]) == (1, 5)
    done = await stead("quota", env=env)
    assert done.code == 0, done.err
    assert tenant in done.out and idle in done.out and "refuse" in done.out


async def test_a_subagent_runs_in_its_parents_slot(settings: Settings, ledger: Ledger) -> None:
    """runs_in_flight=1: the parent holds the slot; its sub-agent does not ask (it would
    wait for its own parent forever), and the parent completes."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1}}, recheck=3600)
    lab, seen = Lab(), Seen()
    catalog = AgentCatalog([parent_agent(lab, seen), child_agent(lab)])
    async with WorkerHost(settings, catalog) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="parent", input="what colour is "
                                                    "the sky", tenant=tenant),
                            temporal=settings.temporal)
        r = await asyncio.wait_for(h.result(), 60)
    assert r.status == "completed", r
    child = await ledger.trail(f"{h.id}/delegate-1")
    assert not [d for d in child.decisions if d.kind == "admission"]
    parent = await ledger.trail(h.id)
    assert [d.decision for d in parent.decisions if d.kind == "admission"] == ["admit"]


async def test_a_terminated_run_that_held_a_slot_is_found_and_its_slot_freed(
        settings: Settings, catalog: AgentCatalog) -> None:
    """Termination skips the run's own release; the head of the queue, after a re-check,
    finds the closed run holding the slot and takes it."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1}}, recheck=0.5)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        queued = await _start(client, settings, tenant, "next")
        await _until_status(queued, "queued")
        await holder.terminate("an operator's mistake")
        await model.called("next")
        model.open_all()
        assert (await queued.result()).status == "completed"


async def test_a_refusing_tenant_whose_slot_a_terminated_run_holds_admits_the_next_run(
        settings: Settings, catalog: AgentCatalog) -> None:
    """With ``over_quota: refuse`` nothing queues, so no queued run frees closed runs' slots;
    the refusal itself looks for them (once per re-check interval) and decides again."""
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1, "over_quota": "refuse"}},
                       recheck=3600)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        await holder.terminate("an operator's mistake")  # its slot is never released
        after = await _start(client, settings, tenant, "after")
        await model.called("after")
        model.open_all()
        assert (await after.result()).status == "completed"


async def test_a_cancelled_running_run_gives_its_slot_to_the_next(
        settings: Settings, catalog: AgentCatalog) -> None:
    tenant = _tenant()
    settings = _quotas(settings, {tenant: {"runs_in_flight": 1}}, recheck=3600)
    model = GatedModel()
    async with _worker(settings, catalog, model) as client:
        holder = await _start(client, settings, tenant, "holder")
        await model.called("holder")
        queued = await _start(client, settings, tenant, "next")
        await _until_status(queued, "queued")
        await holder.cancel()
        assert (await holder.result()).status == "failed"  # its model call was cancelled
        await model.called("next")  # woken by the cancelled run's release, not a re-check
        model.open_all()
        assert (await queued.result()).status == "completed"


async def test_a_queued_runs_wait_backs_off_with_its_time_in_the_queue_and_stays_capped(
        settings: Settings, ledger: Ledger) -> None:
    """The re-check the activity answers doubles with how long the database says the run has
    queued (about as long as it has waited, ±25 %), from the interval up to the cap, so a run
    queued for days looks ~288 times a day, not 2,880: its history stays bounded."""
    tenant = _tenant()
    quota = TenantQuota(runs_in_flight=1)
    client = await Client.connect(settings.temporal.address,
                                  namespace=settings.temporal.namespace)
    run = AdmissionActivities(Admissions(ledger.pool), client, quotas={tenant: quota},
                              recheck_seconds=30, recheck_max_seconds=300)

    def ask(name: str) -> AdmitRun:
        return AdmitRun(ref=RunRef(workflow_id=f"{tenant}-{name}", run_id="r", agent="ops",
                                   tenant=tenant), first_run_id="r")

    assert (await run.admit(ask("holder"))).verdict == "admitted"

    async def wait_after(queued_for: timedelta) -> float:
        await ledger.pool.execute(
            "update stead_admissions set queued_at = clock_timestamp() - $2::interval "
            "where workflow_id = $1", ask("next").ref.workflow_id, queued_for)
        answer = await run.admit(ask("next"))
        assert answer.verdict == "queued" and answer.limit == "runs_in_flight"
        return answer.wait_seconds

    assert 22.5 <= await wait_after(timedelta(0)) <= 37.5
    assert 22.5 <= await wait_after(timedelta(seconds=20)) <= 37.5
    assert 75 <= await wait_after(timedelta(seconds=100)) <= 125
    assert 150 <= await wait_after(timedelta(seconds=200)) <= 250
    for days in (1, 3, 30):
        assert 225 <= await wait_after(timedelta(days=days)) <= 375
    assert recheck_wait(10, every=30, cap=300) == 30
    assert recheck_wait(1e6, every=30, cap=300) == 300
    assert recheck_wait(1e6, every=30, cap=5) == 30  # a cap below the interval: no back-off


async def test_one_admission_decision_is_one_round_trip(stack: EmbeddedStack) -> None:
    """Admit, queue, ask again and release each send one statement (a SQL function of
    migration 0012), where the transaction of migration 0011's code sent 9 to 13; the pool's
    reset on release is asyncpg's own and not counted."""
    sent: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: sent.append(q.query))

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1,
                                     init=log_queries)
    try:
        admissions = Admissions(pool)
        tenant = _tenant()
        quota = TenantQuota(runs_in_flight=1, starts_per_minute=10)

        def ref(i: int) -> RunRef:
            return RunRef(workflow_id=f"{tenant}-{i}", run_id="r", agent="ops", tenant=tenant)

        calls = [lambda: admissions.admit(AdmitRun(ref=ref(1), first_run_id="r"), quota),
                 lambda: admissions.admit(AdmitRun(ref=ref(2), first_run_id="r"), quota),
                 lambda: admissions.admit(AdmitRun(ref=ref(2), first_run_id="r"), quota),
                 lambda: admissions.release(ref(1), quota)]
        for call in calls:
            sent.clear()
            await call()
            ours = [q for q in sent if "pg_advisory_unlock_all" not in q]
            assert len(ours) == 1, ours
        (usage,) = await admissions.usage([tenant])
        assert (usage.in_flight, usage.queued) == (1, 0)  # the release admitted run 2
    finally:
        await pool.close()


@pytest.mark.slow
async def test_a_queue_row_written_before_the_worker_died_gives_way_to_the_replayed_admit(
        settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """A run queues, its flush writes ``admission: queue`` with a local activity, and the
    worker is SIGKILLed before Temporal records that workflow task. Meanwhile the slot frees,
    so the retried task is admitted at once. History holds ``admit``, so must the audit trail:
    the ``queue`` row is kept aside as superseded (the chaos suite's governance check found
    the trail saying ``queue`` for such runs)."""
    tenant = _tenant()
    hold, kill = tmp_path / "hold", tmp_path / "kill"
    hold.touch()
    kill.touch()
    env = worker_env(settings, tmp_path, HOLD_FILE=str(hold), KILL_FILE=str(kill),
                     STEAD_TENANT_QUOTAS=json.dumps({tenant: {"runs_in_flight": 1}}),
                     STEAD_ADMISSION_RECHECK_SECONDS="3600")
    first = WorkerProcess(ADMISSION_WORKER_SCRIPT, env, tmp_path / "worker-1.log").start()
    second: WorkerProcess | None = None
    try:
        client = await connect(settings)
        holder = await start_run(client, RunRequest(agent="holdon", input="hold",
                                                    tenant=tenant), temporal=settings.temporal)
        await _until_status(holder, "running")
        queued = await start_run(client, RunRequest(agent="holdon", input="wait",
                                                    tenant=tenant), temporal=settings.temporal)
        deadline = time.monotonic() + 30
        while first.alive:
            assert time.monotonic() < deadline, f"the queue row was never written:\n" \
                                                f"{first.output()}"
            await asyncio.sleep(0.05)
        assert not kill.exists()  # it died where it was meant to
        trail = await ledger.trail(queued.id)
        assert [d.decision for d in trail.decisions if d.kind == "admission"] == ["queue"]
        # The holder ends while no worker runs (it releases its slot as its run would).
        ref = RunRef(workflow_id=holder.id, run_id=holder.result_run_id or "",
                     agent="holdon", tenant=tenant)
        await Admissions(ledger.pool).release(ref, TenantQuota(runs_in_flight=1))
        hold.unlink()
        second = WorkerProcess(ADMISSION_WORKER_SCRIPT, env, tmp_path / "worker-2.log").start()
        result: RunResult = await asyncio.wait_for(queued.result(), 90)
        # The holder's model call died with worker 1 and waits out its timeout: not needed.
        try:
            await holder.terminate("the test is over")
        except RPCError as err:  # its retry may have finished it on worker 2 already
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
    finally:
        first.kill()
        if second is not None:
            second.kill()

    assert result.status == "completed", result
    # In history the run was admitted at its first ask: it never waited (no timer).
    history = await queued.fetch_history()
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    trail = await ledger.trail(queued.id)
    assert [d.decision for d in trail.decisions if d.kind == "admission"] == ["admit"]
    (gone,) = trail.superseded
    admit = next(d for d in trail.decisions if d.kind == "admission")
    assert (gone.kind, gone.decision, gone.seq) == ("admission", "queue", admit.seq)
    assert (gone.winner_seq, gone.winner_at) == (admit.seq, admit.created_at)
    assert gone.created_at < admit.created_at
    assert await ledger.verify_chain(queued.id) == []
    # What an auditor sees: the chain intact, the other attempt's row beside it.
    env = cli_env(settings, COLUMNS="200")
    shown = await stead("audit", queued.id, "--verify", env=env)
    assert shown.code == 0, shown.err
    assert "1 superseded beside it" in shown.out, shown.out
    assert re.search(r"superseded:admission +│ queue +│ seq \d+: decided by a discarded", shown.out)
    as_json = await stead("audit", queued.id, "--json", env=env)
    assert [(s["decision"], s["winner_seq"]) for s in as_json.json()["superseded"]] == [
        ("queue", admit.seq)]
