"""Drift monitoring: a synthetic shift is detected on each signal it touches, two samples of
one distribution cross nothing, too little data says so, and the scheduled check records its
report. Runs are written straight into the shared ledger for a tenant unique to each test,
with start times in windows the test chooses (mostly in 2021, far from other tests' runs).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _cli import Done, cli_env, stead
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from stead.evals import SYNTHETIC_KEY
from stead.evals.drift import (
    DriftCheckInput,
    DriftCheckRequest,
    DriftCheckSummary,
    DriftReport,
    DriftThresholds,
    DriftWindows,
    load_check,
    relative_input,
    resolve_windows,
    run_check,
)
from stead.evals.samples import BadWindow, Window, load_runs, parse_duration, parse_when
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger, migrate
from stead.storage.memory.embedders import HashingEmbedder
from stead.worker import WorkerHost
from stead.workflows.drift import DriftWorkflow

# Fixed windows in the past: recent = the day before T0, baseline = the 6 days before that.
T0 = datetime(2021, 3, 8, tzinfo=UTC)
RECENT = Window(since=T0 - timedelta(days=1), until=T0)
BASELINE = Window(since=T0 - timedelta(days=7), until=T0 - timedelta(days=1))
WINDOWS = DriftWindows(baseline=BASELINE, recent=RECENT)
WINDOW_ARGS = ("--since", RECENT.since.isoformat(), "--until", RECENT.until.isoformat(),
               "--baseline-since", BASELINE.since.isoformat(),
               "--baseline-until", BASELINE.until.isoformat())

SERVICES = ["auth-service", "checkout-api", "payments-db", "search-worker", "legacy-batch"]
OPS_REQUESTS = ["is {s} healthy?", "why is {s} slow today", "check the error rate of {s}",
                "what version of {s} is deployed", "{s} latency is high, please look"]
REFUND_REQUESTS = ["refund order {n} for {a} EUR", "customer wants money back for order {n}",
                   "please reverse charge {n} of {a} dollars", "refund request: order {n}"]


# ---------------------------------------------------------------------------- fake runs


@dataclass
class FakeCall:
    tool: str
    failed_first: bool
    """The first attempt failed and a retry succeeded."""
    gate: str = "allow"


@dataclass
class FakeRun:
    status: str
    latency_ms: float
    input: str
    calls: list[FakeCall] = field(default_factory=list)
    output_rejected: bool = False
    synthetic: bool = False


def population(rng: random.Random, n: int, *, shifted: bool = False) -> list[FakeRun]:
    """Runs of an ops agent. ``shifted``: fewer complete, slower, a new restart-heavy tool
    sequence, refund requests mixed in, more gate denials and a flaky service_status."""
    runs = []
    for _ in range(n):
        if shifted and rng.random() < 0.35:
            tools = ["service_status", "restart_service", "service_status"]
        else:
            tools = rng.choices([["service_status"], ["service_status", "recent_logs"], []],
                                weights=[5, 3, 2])[0]
        fail_p, deny_p = (0.3, 0.2) if shifted else (0.04, 0.03)
        calls = [FakeCall(t, failed_first=rng.random() < fail_p,
                          gate="deny" if rng.random() < deny_p
                          else "ask" if rng.random() < 0.1 else "allow") for t in tools]
        if shifted and rng.random() < 0.6:
            text = rng.choice(REFUND_REQUESTS).format(n=rng.randint(1000, 9999),
                                                      a=rng.randint(5, 500))
        else:
            text = rng.choice(OPS_REQUESTS).format(s=rng.choice(SERVICES))
        runs.append(FakeRun(
            status="completed" if rng.random() < (0.65 if shifted else 0.92) else "failed",
            latency_ms=rng.lognormvariate(math.log(1600 if shifted else 800), 0.4),
            input=text, calls=calls, output_rejected=rng.random() < 0.02))
    return runs


async def insert_runs(ledger: Ledger, tenant: str, window: Window, runs: list[FakeRun], *,
                      agent: str = "ops") -> None:
    """Ledger rows as a finished AgentWorkflow leaves them, start times spread over the
    window."""
    span = (window.until - window.since) / (len(runs) + 1)
    run_rows, call_rows, attempt_rows, decision_rows = [], [], [], []
    for i, r in enumerate(runs):
        wid = f"{tenant}-{agent}-{uuid.uuid4().hex[:12]}"
        started = window.since + span * (i + 1)
        meta = {SYNTHETIC_KEY: "eval"} if r.synthetic else {}
        run_rows.append((wid, "r1", agent, tenant, r.input, meta, r.status, started,
                         started + timedelta(milliseconds=r.latency_ms)))
        seq = 0

        def decide(step: int, kind: str, decision: str, wid: str = wid,
                   at: datetime = started) -> None:
            nonlocal seq
            seq += 1
            decision_rows.append((wid, seq, "r1", step, kind, decision, f"{wid}:r1:{seq}",
                                  "x", f"h{seq}", at))

        decide(0, "route", "allow")
        for step, c in enumerate(r.calls, start=1):
            decide(step, "gate", c.gate)
            if c.gate == "deny":
                continue
            key = f"{wid}:{step}"
            at = started + timedelta(milliseconds=step)
            call_rows.append((key, wid, "r1", step, f"c{step}", c.tool, {}, "completed",
                              1 + c.failed_first, at, at))
            outcomes = (["error", "ok"] if c.failed_first else ["ok"])
            for attempt, status in enumerate(outcomes, start=1):
                attempt_rows.append((key, attempt, wid, "r1", step, c.tool, c.tool, status,
                                     at + timedelta(microseconds=attempt), 5.0))
        if r.output_rejected:
            decide(len(r.calls) + 1, "output_rejected", "reask")
    async with ledger.pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "insert into stead_runs(workflow_id, run_id, agent, tenant, input, metadata,"
            " status, started_at, finished_at) values($1,$2,$3,$4,$5,$6,$7,$8,$9)", run_rows)
        await conn.executemany(
            "insert into stead_tool_calls(idempotency_key, workflow_id, run_id, step, call_id,"
            " tool, arguments, status, attempts, claimed_at, finished_at)"
            " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)", call_rows)
        await conn.executemany(
            "insert into stead_tool_attempts(idempotency_key, attempt, workflow_id, run_id,"
            " step, tool, requested_tool, status, started_at, duration_ms)"
            " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)", attempt_rows)
        await conn.executemany(
            "insert into stead_decisions(workflow_id, seq, run_id, step, kind, decision,"
            " dedupe_key, prev_hash, hash, created_at) values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            decision_rows)


@pytest.fixture
async def db(stack: EmbeddedStack, ledger: Ledger) -> Ledger:
    await migrate(stack.database_url)  # 0005 (a worker would apply it when it starts)
    return ledger


@pytest.fixture
async def tenant(db: Ledger) -> AsyncIterator[str]:
    """A tenant of this test alone; its rows leave the shared ledger afterwards."""
    name = f"drift-{uuid.uuid4().hex[:10]}"
    yield name
    like = f"{name}-%"
    async with db.pool.acquire() as conn:
        for table in ("stead_tool_attempts", "stead_tool_calls", "stead_decisions",
                      "stead_runs"):
            await conn.execute(f"delete from {table} where workflow_id like $1", like)
        await conn.execute("delete from stead_drift_checks where tenant = $1", name)


async def check(db: Ledger, tenant: str, *, embedder: HashingEmbedder | None = None,
                thresholds: DriftThresholds | None = None,
                include_synthetic: bool = False) -> DriftReport:
    req = DriftCheckRequest(windows=WINDOWS, tenant=tenant, include_synthetic=include_synthetic,
                            thresholds=thresholds or DriftThresholds())
    return (await run_check(db.pool, req, embedder=embedder)).report


# ---------------------------------------------------------------------------- the statistics


async def test_a_synthetic_shift_crosses_every_signal_it_touches(db: Ledger, tenant: str) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(1), 150))
    await insert_runs(db, tenant, RECENT, population(random.Random(2), 150, shifted=True))

    report = await check(db, tenant, embedder=HashingEmbedder(384))

    crossed = {s.name for s in report.crossed}
    assert {"success_rate", "latency", "tool_sequences", "request_embeddings",
            "guardrail.gate_deny", "tool_failure.service_status"} <= crossed, report.signals
    success = report.signal("success_rate")
    assert success.n_baseline == success.n_recent == 150
    assert success.statistic is not None and success.statistic < -0.15
    assert success.p_value is not None and success.p_value < success.alpha  # type: ignore[operator]
    latency = report.signal("latency")
    assert latency.recent is not None and latency.baseline is not None
    assert latency.recent > 1.5 * latency.baseline  # medians in ms
    assert "restart_service" in report.signal("tool_sequences").detail
    assert "(new)" in report.signal("tool_sequences").detail
    # Untouched by the shift: the output validator's rejection rate.
    assert report.signal("guardrail.output_rejected").status == "ok"
    # A tool seen only in the recent window cannot have a failure-rate change: not judged.
    assert report.signal("tool_failure.restart_service").status == "insufficient data"
    assert report.embedder == "hashing:384"


async def test_two_samples_of_one_distribution_cross_nothing(db: Ledger, tenant: str) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(3), 150))
    await insert_runs(db, tenant, RECENT, population(random.Random(4), 150))

    report = await check(db, tenant, embedder=HashingEmbedder(384))

    assert report.crossed == [], [s for s in report.crossed]
    judged = {s.name for s in report.signals if s.status == "ok"}
    assert {"success_rate", "latency", "tool_sequences", "request_embeddings",
            "guardrail.gate_deny", "guardrail.gate_ask", "tool_failure.service_status",
            "tool_failure.recent_logs"} <= judged


async def test_too_few_runs_are_insufficient_data_never_crossed(db: Ledger,
                                                                tenant: str) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(5), 6))
    await insert_runs(db, tenant, RECENT, population(random.Random(6), 6, shifted=True))

    report = await check(db, tenant, embedder=HashingEmbedder(384))

    assert report.crossed == []
    for name in ("success_rate", "latency", "tool_sequences", "request_embeddings",
                 "guardrail.gate_deny", "guardrail.output_rejected"):
        s = report.signal(name)
        assert s.status == "insufficient data", s
        assert "each needs at least 20" in s.detail
    assert report.signal("success_rate").n_recent == 6

    # Lowering the minimum is a threshold like any other: now the same runs are judged.
    lowered = await check(db, tenant, thresholds=DriftThresholds(min_runs=5, min_calls=5))
    assert lowered.signal("success_rate").status in ("ok", "crossed")


async def test_eval_runs_are_left_out_unless_asked(db: Ledger, tenant: str) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(7), 60))
    await insert_runs(db, tenant, RECENT, population(random.Random(8), 60))
    evals = population(random.Random(9), 80, shifted=True)
    for r in evals:
        r.synthetic = True
    await insert_runs(db, tenant, RECENT, evals)

    plain = await check(db, tenant)
    assert plain.signal("success_rate").n_recent == 60
    assert plain.crossed == []
    mixed = await check(db, tenant, include_synthetic=True)
    assert mixed.signal("success_rate").n_recent == 140
    assert {"latency", "tool_sequences"} <= {s.name for s in mixed.crossed}


async def test_samples_carry_tool_sequence_attempts_and_guardrail_decisions(
        db: Ledger, tenant: str) -> None:
    run = FakeRun(status="completed", latency_ms=1234.0, input="is payments-db healthy?",
                  calls=[FakeCall("service_status", failed_first=True),
                         FakeCall("restart_service", failed_first=False, gate="deny"),
                         FakeCall("recent_logs", failed_first=False, gate="ask")],
                  output_rejected=True)
    await insert_runs(db, tenant, RECENT, [run], agent="ops")
    await insert_runs(db, tenant, RECENT, [run], agent="refund")

    [s] = await load_runs(db.pool, RECENT, tenant=tenant, agent="ops")

    assert s.agent == "ops" and s.succeeded and s.input == "is payments-db healthy?"
    assert s.latency_ms == pytest.approx(1234.0, abs=1)
    assert s.tools == ["service_status", "recent_logs"]  # the denied call never ran
    assert s.sequence == "service_status → recent_logs"
    assert [(a.tool, a.failed) for a in s.attempts] == [
        ("service_status", True), ("service_status", False), ("recent_logs", False)]
    assert [(d.kind, d.decision) for d in s.decisions] == [
        ("route", "allow"), ("gate", "allow"), ("gate", "deny"), ("gate", "ask"),
        ("output_rejected", "reask")]
    assert await load_runs(db.pool, BASELINE, tenant=tenant) == []


def test_windows_default_to_the_last_day_against_the_week_before() -> None:
    now = datetime(2025, 5, 10, 12, tzinfo=UTC)
    w = resolve_windows(now=now)
    assert w.recent == Window(since=now - timedelta(hours=24), until=now)
    assert w.baseline == Window(since=now - timedelta(days=8), until=now - timedelta(days=1))

    w = resolve_windows(since="2h", baseline_since="2025-05-01", now=now)
    assert w.recent.since == now - timedelta(hours=2)
    assert w.baseline == Window(since=datetime(2025, 5, 1, tzinfo=UTC),
                                until=now - timedelta(hours=2))
    assert DriftCheckInput(recent=timedelta(hours=1)).windows_at(now) == DriftWindows(
        baseline=Window(since=now - timedelta(days=7, hours=1), until=now - timedelta(hours=1)),
        recent=Window(since=now - timedelta(hours=1), until=now))
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_when("now", now=now) == now


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"since": "yesterday"}, "neither a duration"),
    ({"since": "1h", "baseline_until": "30m"}, "must end before the recent window starts"),
    ({"since": "1h", "until": "2h"}, "recent window is empty"),
    ({"baseline_since": "1h"}, "baseline window is empty"),
])
def test_bad_windows_say_what_is_wrong(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(BadWindow, match=message):
        resolve_windows(**kwargs)  # type: ignore[arg-type]


def test_thresholds_are_overridable_by_name_and_checked() -> None:
    th = DriftThresholds().with_overrides(["alpha=0.05", "min-runs=50"])
    assert (th.alpha, th.min_runs) == (0.05, 50)
    with pytest.raises(ValueError, match="NAME one of alpha, min_runs"):
        DriftThresholds().with_overrides(["p=0.1"])
    with pytest.raises(ValueError, match="alpha='2'"):
        DriftThresholds().with_overrides(["alpha=2"])
    with pytest.raises(BadWindow, match="needs a duration"):
        relative_input(since="2025-01-01")


# ---------------------------------------------------------------------------- the CLI


async def run_stead(*args: str, settings: Settings, cwd: Path) -> Done:
    return await stead(*args, env=cli_env(settings, STEAD_MEMORY_BACKEND="off", COLUMNS="200"),
                       cwd=cwd, timeout=120)


async def test_cli_exits_1_on_drift_with_json_and_an_html_report(
        db: Ledger, tenant: str, settings: Settings, tmp_path: Path) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(11), 100))
    await insert_runs(db, tenant, RECENT, population(random.Random(12), 100, shifted=True))

    done = await run_stead("drift", *WINDOW_ARGS, "--tenant", tenant, "--embedder", "hashing",
                       "--json", "--html", "drift.html", settings=settings, cwd=tmp_path)

    assert done.code == 1, done.err
    data = json.loads(done.out)
    assert {"success_rate", "latency", "tool_sequences", "request_embeddings"} <= set(
        data["crossed"])
    signal = {s["name"]: s for s in data["signals"]}["success_rate"]
    assert signal["status"] == "crossed" and signal["n_recent"] == 100
    assert {"statistic", "threshold", "p_value", "n_baseline"} <= signal.keys()
    page = (tmp_path / "drift.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # the three plots below
    for heading in ("run latency: baseline vs recent", "success rate",
                    "signals against thresholds"):
        assert f'<h3>{heading}</h3><img alt="{heading}"' in page
    assert "per day" in page  # 100 baseline runs over 6 days: daily points, not hourly noise
    assert '<td class="bad">crossed</td>' in page
    assert "restart_service" in page

    table = await run_stead("drift", *WINDOW_ARGS, "--tenant", tenant, "--embedder", "none",
                        settings=settings, cwd=tmp_path)
    assert table.code == 1
    assert "success_rate" in table.out and "crossed" in table.out
    assert "signal(s) crossed" in table.out
    assert "no embedder" in table.out  # the skipped embedding signal says why


async def test_cli_exits_0_without_drift_and_shows_insufficient_data(
        db: Ledger, tenant: str, settings: Settings, tmp_path: Path) -> None:
    await insert_runs(db, tenant, BASELINE, population(random.Random(13), 60))
    await insert_runs(db, tenant, RECENT, population(random.Random(14), 60))

    done = await run_stead("drift", *WINDOW_ARGS, "--tenant", tenant, "--embedder", "none",
                       "--threshold", "min_calls=1000", settings=settings, cwd=tmp_path)

    assert done.code == 0, done.out + done.err
    assert "no signal crossed its threshold" in done.out
    assert "insufficient data (not judged): guardrail.gate_deny" in done.out


@pytest.mark.parametrize(("args", "message"), [
    (("--since", "last week"), "neither a duration"),
    (("--since", "1h", "--baseline-until", "10m"), "must end before the recent window"),
    (("--threshold", "alpha=7"), "alpha='7'"),
    (("--threshold", "nonsense"), "use NAME=VALUE"),
    (("--checks", "--schedule", "1h"), "cannot be combined"),
    (("--schedule", "soon"), "not a duration"),
    (("--schedule", "1h", "--since", "2021-01-01"), "needs a duration"),
    (("--schedule", "1h", "--until", "1h"), "--until cannot be used with --schedule"),
    (("--embedder", "magic"), "--embedder 'magic'"),
])
async def test_cli_bad_input_exits_2_and_says_why(args: tuple[str, ...], message: str,
                                                  settings: Settings, tmp_path: Path) -> None:
    done = await run_stead("drift", *args, settings=settings, cwd=tmp_path)
    assert done.code == 2, done.out + done.err
    assert message in done.err.replace("\n", " ")


# ---------------------------------------------------------------------------- the schedule


async def test_scheduled_check_records_its_report(
        db: Ledger, tenant: str, settings: Settings, worker: WorkerHost,
        tmp_path: Path) -> None:
    now = datetime.now(UTC)
    await insert_runs(db, tenant, Window(since=now - timedelta(minutes=170),
                                         until=now - timedelta(minutes=70)),
                      population(random.Random(21), 40))
    await insert_runs(db, tenant, Window(since=now - timedelta(minutes=50),
                                         until=now - timedelta(minutes=1)),
                      population(random.Random(22), 40, shifted=True))
    schedule_id = f"drift-{tenant}"
    args = ("drift", "--schedule", "1h", "--schedule-id", schedule_id, "--tenant", tenant,
            "--since", "1h", "--baseline-since", "3h", "--baseline-until", "1h")

    created = await run_stead(*args, "--json", settings=settings, cwd=tmp_path)
    assert created.code == 0, created.err
    assert json.loads(created.out)["action"] == "created"
    again = await run_stead(*args, "--threshold", "min_runs=10", settings=settings, cwd=tmp_path)
    assert again.code == 0, again.err
    assert f"updated schedule {schedule_id}" in again.out

    client: Client = worker.client  # type: ignore[assignment]
    handle = client.get_schedule_handle(schedule_id)
    try:
        desc = await handle.describe()
        spec_input = desc.schedule.action
        assert desc.schedule.spec.intervals[0].every == timedelta(hours=1)
        assert spec_input.task_queue == settings.temporal.task_queue  # type: ignore[attr-defined]
        await handle.trigger()
        # The schedule starts the workflow asynchronously; its id shows up in recent actions.
        for _ in range(150):
            desc = await handle.describe()
            if desc.info.recent_actions:
                break
            await asyncio.sleep(0.2)
        started = desc.info.recent_actions[0].action
        assert isinstance(started, ScheduleActionExecutionStartWorkflow)
    finally:
        await handle.delete()

    run = client.get_workflow_handle(started.workflow_id, result_type=DriftCheckSummary)
    summary = await run.result()

    assert {"latency", "tool_sequences"} <= set(summary.crossed)
    stored = await load_check(db.pool, summary.check_id)
    assert stored is not None and stored.tenant == tenant
    assert stored.thresholds.min_runs == 10  # the update replaced the input
    assert stored.signal("success_rate").n_recent == 40
    assert stored.signal("request_embeddings").status == "skipped"  # this worker has no memory
    assert stored.windows.recent.until - stored.windows.recent.since == timedelta(hours=1)

    listed = await run_stead("drift", "--checks", "--tenant", tenant, "--json", settings=settings,
                         cwd=tmp_path)
    assert listed.code == 0, listed.err
    [row] = json.loads(listed.out)
    assert row["id"] == summary.check_id and row["crossed"] is True
    assert "latency" in row["crossed_signals"]
    assert row["source"].startswith(started.workflow_id)
    table = await run_stead("drift", "--checks", "--tenant", tenant, settings=settings,
                        cwd=tmp_path)
    assert "crossed: " in table.out and str(summary.check_id) in table.out

    # The workflow is deterministic: its history replays against the current code.
    history = await run.fetch_history()
    await Replayer(workflows=[DriftWorkflow],
                   data_converter=pydantic_data_converter).replay_workflow(history)


async def test_the_workflow_refuses_windows_that_overlap(
        settings: Settings, worker: WorkerHost) -> None:
    from temporalio.client import WorkflowFailureError

    client: Client = worker.client  # type: ignore[assignment]
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(
            DriftWorkflow.run, DriftCheckInput(recent=timedelta(hours=2),
                                               baseline_until=timedelta(hours=1)),
            id=f"drift-bad-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue)
    assert "must end before the recent window starts" in str(failure.value.cause)
