"""Determinism replay: the recorded corpus replays against the current code (the CI gate that a
change breaking runs in flight fails), injected non-deterministic changes are reported with
the workflow id and the event, histories come from files (stead's, the ``temporal`` CLI's) or
from the server by query, and bad files stop the command with exit 2 before anything runs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from _cli import STEAD, run_cmd
from _drifted_workflow import AUDIT_ACTIVITY, AuditActivityBeforeTools, ExtraTimerBeforeTools
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from stead.client import connect, start_run
from stead.contracts.models import RunRequest, RunState
from stead.evals.corpus import (
    CONVERSATIONS,
    SCENARIOS,
    SWEEPS,
    history_file_name,
    write_exports,
)
from stead.evals.replay import (
    HistoryFileError,
    HistoryQueryError,
    RecordedHistory,
    ReplayOutcome,
    failure_message,
    fetch_histories,
    load_histories,
    load_history_file,
    named_event,
    production_replayer,
    production_workflows,
    replay,
)
from stead.settings import Settings
from stead.stack.embedded import find_binary
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost, build_worker

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "evals" / "histories"
EARLIER = CORPUS / "before-16"
"""The corpus as recorded before read tools ran locally: every tool call an activity."""
BEFORE_18 = CORPUS / "before-18"
"""The corpus as recorded before run budgets and admission (issue 18)."""
TOOLLESS = {"corpus-ops-refused-card", "corpus-refund-refused-card", "corpus-unknown-agent"}
"""Corpus runs that never reach a tool call (refused by routing, or no such agent)."""


@pytest.fixture(scope="module")
def corpus() -> list[RecordedHistory]:
    """The current recordings (one per recorder scenario)."""
    return load_histories(sorted(CORPUS.glob("*.json")))


@pytest.fixture(scope="module")
def earlier() -> list[RecordedHistory]:
    return load_histories([EARLIER])


@pytest.fixture(scope="module")
def before_18() -> list[RecordedHistory]:
    return load_histories([BEFORE_18])


def first_tool_scheduled(history: WorkflowHistory) -> int:
    """Id of the first ActivityTaskScheduled event of a tool, read from the history itself."""
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and \
                e.activity_task_scheduled_event_attributes.activity_type.name.startswith("tool."):
            return e.event_id
    raise AssertionError(f"{history.workflow_id} schedules no tool")


def by_id(outcomes: Sequence[ReplayOutcome]) -> dict[str, ReplayOutcome]:
    return {o.workflow_id: o for o in outcomes}


# ---------------------------------------------------------------------------- the corpus


async def test_the_recorded_corpus_replays_against_the_current_code(
        corpus: list[RecordedHistory], earlier: list[RecordedHistory],
        before_18: list[RecordedHistory]) -> None:
    """The CI gate: every recorded reference-agent run, finished or in flight, replays: the
    current recordings and those older workflow code made."""
    report = await replay([*corpus, *earlier, *before_18])

    bad = [o for o in report.outcomes if o.status != "ok"]
    assert not bad, "\n".join(f"{o.workflow_id}: {o.status} at event {o.event_id} "
                              f"{o.event_type}: {o.detail}" for o in bad)
    assert len(corpus) == len(SCENARIOS) + 2 * len(CONVERSATIONS) + len(SWEEPS)
    assert earlier and before_18
    assert len(report.outcomes) == len(corpus) + len(earlier) + len(before_18)


def test_the_corpus_holds_one_history_per_recorder_scenario(
        corpus: list[RecordedHistory]) -> None:
    """The committed files and the recorder agree, so re-recording reproduces the corpus and
    every path the recorder names is really in it."""
    assert sorted(r.history.workflow_id for r in corpus) == \
        sorted([*(s.workflow_id for s in SCENARIOS), *(s.workflow_id for s in SWEEPS),
                *(wid for c in CONVERSATIONS for wid in c.workflow_ids)])
    for r in corpus:
        assert Path(r.source).name == history_file_name(r.history.workflow_id)
    types = {r.workflow_type for r in corpus}
    assert types == {"AgentWorkflow", "EvaluationWorkflow", "ConversationWorkflow"}
    events = {r.history.workflow_id: [e.event_type for e in r.history.events] for r in corpus}
    # The in-flight run ends waiting for its approver; the others ended (the sweep's first
    # run by continuing as new).
    closed = {EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
              EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
              EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW}
    assert events["corpus-ops-restart-awaiting-approval"][-1] not in closed
    assert all(ev[-1] in closed for wid, ev in events.items()
               if wid != "corpus-ops-restart-awaiting-approval")
    signalled = [wid for wid, ev in events.items()
                 if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in ev]
    updated = [wid for wid, ev in events.items()
               if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED in ev]
    timers = [wid for wid, ev in events.items() if EventType.EVENT_TYPE_TIMER_FIRED in ev]
    assert "corpus-ops-restart-approved-signal" in signalled
    assert "corpus-ops-restart-rejected" in signalled
    assert set(updated) == {"corpus-ops-restart-approved-update", "corpus-refund-large-edited",
                            "corpus-ops-budget-ask-raised", "corpus-conversation-budget"}
    assert "corpus-ops-admission-queued-admitted" in signalled  # woken by the `admit` signal
    assert "corpus-ops-budget-ask-timed-out" in timers  # the ask's deadline
    assert "corpus-ops-restart-escalated-auto-denied" in timers
    assert "corpus-refund-escalated-finance-approves" in timers
    assert "corpus-ops-admission-queue-timeout" in timers  # the wait it timed out on
    children = {wid: {e for e in ev if e in (
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED)} for wid, ev in events.items()}
    assert children["corpus-ops-subagent-budgeted"] == {
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED}
    assert children["corpus-ops-subagent-terminated"] == {
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED}


async def test_replayer_is_configured_like_the_production_worker(
        settings: Settings, ledger: Ledger, client: Client) -> None:
    """Same workflows, data converter, sandbox passthrough and interceptors as the worker
    ``build_worker`` makes: otherwise replay would pass code the workers then fail on."""
    from stead.agents import reference_catalog

    worker = build_worker(client, settings, reference_catalog(settings.stack.data_dir), ledger,
                          task_queue=f"{settings.temporal.task_queue}-config")  # built, never run
    wc = worker.config()
    rc = production_replayer().config()

    assert list(rc.get("workflows", [])) == list(wc.get("workflows", []))
    assert production_workflows() == list(wc.get("workflows", []))
    assert rc.get("data_converter") is wc["client"].data_converter
    w_runner, r_runner = wc.get("workflow_runner"), rc.get("workflow_runner")
    assert isinstance(w_runner, UnsandboxedWorkflowRunner)  # the default (see the setting)
    assert isinstance(r_runner, UnsandboxedWorkflowRunner)
    assert list(rc.get("interceptors", [])) == list(wc.get("interceptors", []))
    assert list(rc.get("workflow_failure_exception_types", [])) == \
        list(wc.get("workflow_failure_exception_types", []))


async def test_with_the_sandbox_on_worker_and_replayer_share_its_passthrough_modules(
        settings: Settings, ledger: Ledger, client: Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stead.agents import reference_catalog

    monkeypatch.setenv("STEAD_WORKFLOW_SANDBOX", "true")
    sandboxed = settings.replace(workflow_sandbox=True)
    worker = build_worker(client, sandboxed, reference_catalog(settings.stack.data_dir), ledger,
                          task_queue=f"{settings.temporal.task_queue}-sandboxed")
    w_runner = worker.config().get("workflow_runner")
    r_runner = production_replayer().config().get("workflow_runner")
    assert isinstance(w_runner, SandboxedWorkflowRunner)
    assert isinstance(r_runner, SandboxedWorkflowRunner)
    assert "stead.workflows" in w_runner.restrictions.passthrough_modules
    assert w_runner.restrictions.passthrough_modules == r_runner.restrictions.passthrough_modules


async def test_the_corpus_replays_in_the_sandbox_too(
        corpus: list[RecordedHistory], earlier: list[RecordedHistory],
        before_18: list[RecordedHistory], monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs recorded by workers either way replay either way (the setting can be flipped
    on a running fleet)."""
    monkeypatch.setenv("STEAD_WORKFLOW_SANDBOX", "true")
    replayer = production_replayer()
    assert isinstance(replayer.config().get("workflow_runner"), SandboxedWorkflowRunner)
    report = await replay([*corpus, *earlier, *before_18], replayer=replayer)
    assert report.outcomes and report.ok, [
        (o.workflow_id, o.status, o.event_id) for o in report.outcomes if o.status != "ok"]


# ---------------------------------------------------------------------------- injected changes


async def test_an_extra_timer_before_tool_calls_is_reported_with_the_workflow_and_event(
        earlier: list[RecordedHistory]) -> None:
    """A new timer before each tool call breaks every recorded run that called a tool, at the
    event where the tool was scheduled, as Temporal's error names it; runs that never got
    there still replay. (On the runs recorded when every tool call was an activity.)"""
    report = await replay(earlier, replayer=production_replayer(
        workflows=[ExtraTimerBeforeTools]))

    outcomes = by_id(report.outcomes)
    assert not report.ok
    for rec in earlier:
        o = outcomes[rec.history.workflow_id]
        assert o.run_id == rec.history.run_id and o.source == rec.source
        if rec.history.workflow_id in TOOLLESS:
            assert o.status == "ok", o
            continue
        assert o.status == "nondeterministic", o
        assert (o.event_id, o.event_type, o.located) == (
            first_tool_scheduled(rec.history), "ActivityTaskScheduled", "temporal"), o
        assert o.detail is not None and "Nondeterminism error" in o.detail


async def test_a_new_activity_is_located_by_prefix_when_temporal_names_no_event(
        earlier: list[RecordedHistory]) -> None:
    """Temporal's message for a different activity names only the two activity types; the
    replay finds the event by replaying prefixes, and it is the same event as above."""
    report = await replay(earlier, replayer=production_replayer(
        workflows=[AuditActivityBeforeTools]))

    outcomes = by_id(report.outcomes)
    for rec in earlier:
        o = outcomes[rec.history.workflow_id]
        if rec.history.workflow_id in TOOLLESS:
            assert o.status == "ok", o
            continue
        assert o.status == "nondeterministic", o
        assert (o.event_id, o.event_type, o.located) == (
            first_tool_scheduled(rec.history), "ActivityTaskScheduled", "prefix"), o
        assert o.detail is not None and AUDIT_ACTIVITY in o.detail


def test_core_error_messages_are_parsed_for_the_event() -> None:
    wrapped = RuntimeError(
        'Workflow activation completion failed: Failure { failure: Some(Failure { message: '
        '"[TMPRL1100] Nondeterminism error: Timer machine does not handle this event: '
        'HistoryEvent(id: 19, ActivityTaskScheduled)", source: "", stack_trace: "" }) }')
    message = failure_message(wrapped)
    assert message == ("[TMPRL1100] Nondeterminism error: Timer machine does not handle this "
                       "event: HistoryEvent(id: 19, ActivityTaskScheduled)")
    assert named_event(message) == (19, "ActivityTaskScheduled")
    assert named_event("No command scheduled for event HistoryEvent(id: 7, TimerStarted)") == \
        (7, "TimerStarted")
    assert named_event("Activity type of scheduled event 'tool.a' does not match activity "
                       "type of activity command 'tool.b'") is None
    assert failure_message(ValueError("plain")) == "plain"


# ---------------------------------------------------------------------------- files


def test_bad_history_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    good = (CORPUS / "corpus-ops-healthy-check.json").read_text()
    cases = {
        "truncated.json": good[: len(good) // 2],
        "not-json.json": "this is not json",
        "list.json": "[1, 2, 3]",
        "no-events.json": json.dumps({"workflowId": "x"}),
        "empty-events.json": json.dumps({"events": []}),
        "bad-event.json": json.dumps({"events": [{"eventId": "1", "eventType": "Nope"}]}),
    }
    doc = json.loads(good)
    cases["starts-late.json"] = json.dumps({"events": doc["events"][1:]})
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(HistoryFileError) as info:
            load_history_file(path)
        assert str(info.value).startswith(f"{path}: "), info.value
    with pytest.raises(HistoryFileError, match="no such file"):
        load_histories([tmp_path / "missing.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoryFileError, match=r"no \*\.json history files"):
        load_histories([tmp_path / "empty"])


def test_a_file_without_workflow_id_takes_it_from_its_name(tmp_path: Path) -> None:
    doc = json.loads((CORPUS / "corpus-ops-healthy-check.json").read_text())
    del doc["workflowId"]
    path = tmp_path / "from-the-web-ui.json"
    path.write_text(json.dumps(doc))
    assert load_history_file(path).history.workflow_id == "from-the-web-ui"


def test_exports_are_named_from_workflow_ids_and_keep_runs_apart(
        corpus: list[RecordedHistory], tmp_path: Path) -> None:
    """One file per run: unsafe characters are replaced in the name but the exact id is kept
    inside; two runs of one workflow id get their run ids appended instead of overwriting."""
    a, b, c = (r.history for r in corpus[:3])
    same = [WorkflowHistory("tenant/ops:run 1", a.events), WorkflowHistory("tenant/ops:run 1",
                                                                           b.events)]
    written = write_exports([(same[0], "completed"), (same[1], "completed"),
                             (c, "running")], tmp_path / "out")

    names = [e.path.name for e in written]
    assert names == [f"tenant_ops_run_1__{a.run_id}.json", f"tenant_ops_run_1__{b.run_id}.json",
                     f"{c.workflow_id}.json"]
    back = [load_history_file(e.path).history for e in written]
    assert [h.workflow_id for h in back] == ["tenant/ops:run 1", "tenant/ops:run 1",
                                            c.workflow_id]
    assert [h.events for h in back] == [a.events, b.events, c.events]
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(HistoryFileError, match="is not a directory"):
        write_exports([(c, "running")], written[0].path)


# ---------------------------------------------------------------------------- the server


async def run_ops(client: Client, settings: Settings, *texts: str) -> list[str]:
    handles = [await start_run(client, RunRequest(agent="ops", input=t), temporal=settings.temporal)
               for t in texts]
    for h in handles:
        await asyncio.wait_for(h.result(), 60)
    return [h.id for h in handles]


async def listed(client: Client, query: str, n: int, within: float = 20) -> None:
    """Visibility is eventually consistent: wait (bounded) until ``n`` runs are listed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if len([w async for w in client.list_workflows(query)]) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {n} runs listed for {query!r} after {within:.0f}s")


def queue_query(settings: Settings) -> str:
    return f"WorkflowType='AgentWorkflow' AND TaskQueue='{settings.temporal.task_queue}'"


async def test_a_run_queried_as_it_runs_answers_even_when_the_query_replays_it(
        settings: Settings, worker: WorkerHost) -> None:
    """``stead run`` watches a run by query from a client that serves no worker (so no eager
    start). A query that reaches a run its first workflow task has just closed (an unknown
    agent) is answered by replaying the run, which has left the cache. It once failed as
    non-deterministic: the local-execution patch was asked only after a local activity had
    failed, and its marker followed that activity's."""
    watcher = await connect(settings)
    for agent, text in [("billing", "refund order 42"), ("ops", "How is auth-service doing?")]:
        for _ in range(5):
            handle = await start_run(watcher, RunRequest(agent=agent, input=text),
                                     temporal=settings.temporal)
            states = [await handle.query("state", result_type=RunState) for _ in range(3)]
            assert [s.agent for s in states] == [agent] * 3
            try:
                outcome = (await asyncio.wait_for(handle.result(), 60)).status
            except WorkflowFailureError:
                outcome = "failed"
            assert outcome == ("failed" if agent == "billing" else "completed")


async def test_runs_on_the_server_replay_by_visibility_query(
        settings: Settings, client: Client) -> None:
    ids = await run_ops(client, settings, "How is auth-service doing?", "check payments-db")
    query = queue_query(settings)
    await listed(client, query, 2)

    report = await replay(fetch_histories(client, query, limit=10))
    assert sorted(o.workflow_id for o in report.outcomes) == sorted(ids)
    assert all(o.status == "ok" and o.source == "server" for o in report.outcomes)

    drifted = await replay(fetch_histories(client, query, limit=10),
                           replayer=production_replayer(workflows=[ExtraTimerBeforeTools]))
    assert [o.status for o in drifted.outcomes] == ["nondeterministic"] * 2
    # The timer stands where the first tool call was recorded: a marker (the ops agent's first
    # call is a read, run locally).
    assert all(o.event_type == "MarkerRecorded" and o.event_id for o in drifted.outcomes)

    one = await replay(fetch_histories(client, query, limit=1))
    assert len(one.outcomes) == 1

    with pytest.raises(HistoryQueryError, match="rejected the query"):
        await replay(fetch_histories(client, "WorkflowType = = 'x'", limit=1))


# ---------------------------------------------------------------------------- the CLI


def cli_env(settings: Settings | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TEMPORAL_ADDRESS", "DATABASE_URL")}
    if settings is not None:
        assert settings.temporal.address is not None and settings.ledger.database_url is not None
        env.update(TEMPORAL_ADDRESS=settings.temporal.address,
                   DATABASE_URL=settings.ledger.database_url)
    return env


async def test_cli_replays_the_corpus_table_and_json() -> None:
    n = len(list(CORPUS.rglob("*.json")))  # the current recordings and the earlier ones
    table = await run_cmd(str(STEAD), "replay", "evals/histories", env=cli_env())
    assert table.code == 0, table.err
    assert "corpus-ops-restart-awaiting-approval" in table.out
    assert f"{n} histories replayed" in table.out
    assert f"{n} ok, 0 non-deterministic, 0 failed" in table.out

    as_json = await run_cmd(str(STEAD), "replay", "evals/histories", "--json", env=cli_env())
    assert as_json.code == 0, as_json.err
    doc = as_json.json()
    assert doc["ok"] is True and doc["histories"] == n
    assert {o["status"] for o in doc["outcomes"]} == {"ok"}


async def test_cli_reports_a_history_the_current_code_cannot_replay(tmp_path: Path) -> None:
    """A history recorded by older code (here: its first tool had another activity name)
    fails replay: exit 1, with the workflow id, run id and event in table and JSON."""
    doc = json.loads((EARLIER / "corpus-ops-healthy-check.json").read_text())
    event = next(e for e in doc["events"]
                 if e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {})
                 .get("name", "").startswith("tool."))
    event["activityTaskScheduledEventAttributes"]["activityType"]["name"] = "tool.status_v0"
    doc["workflowId"] = "older-code-run"
    (tmp_path / "older.json").write_text(json.dumps(doc))
    (tmp_path / "fine.json").write_text((CORPUS / "corpus-ops-refused-card.json").read_text())

    done = await run_cmd(str(STEAD), "replay", str(tmp_path), "--json", env=cli_env())
    assert done.code == 1, done.err
    outcomes = {o["workflow_id"]: o for o in done.json()["outcomes"]}
    bad = outcomes["older-code-run"]
    assert (bad["status"], bad["event_id"], bad["event_type"]) == (
        "nondeterministic", int(event["eventId"]), "ActivityTaskScheduled")
    assert "tool.status_v0" in bad["detail"]
    assert outcomes["corpus-ops-refused-card"]["status"] == "ok"

    table = await run_cmd(str(STEAD), "replay", str(tmp_path), env=cli_env())
    assert table.code == 1
    assert "NON-DETERMINISTIC" in table.out
    assert (f"older-code-run run {bad['run_id']} ({tmp_path / 'older.json'}): "
            f"nondeterministic at event {event['eventId']} (ActivityTaskScheduled)") in \
        " ".join(table.out.split())
    assert "1 ok, 1 non-deterministic, 0 failed" in table.out


async def test_cli_exit_2_for_unreadable_files_before_replaying_any(tmp_path: Path) -> None:
    good = (CORPUS / "corpus-ops-healthy-check.json").read_text()
    (tmp_path / "a-good.json").write_text(good)
    (tmp_path / "b-truncated.json").write_text(good[:5000])

    done = await run_cmd(str(STEAD), "replay", str(tmp_path), env=cli_env())
    assert done.code == 2
    assert f"{tmp_path / 'b-truncated.json'}: not valid JSON" in " ".join(done.err.split())
    assert "replayed" not in done.out  # nothing half-way: the good file was not replayed

    missing = await run_cmd(str(STEAD), "replay", str(tmp_path / "nope.json"), env=cli_env())
    assert missing.code == 2 and "no such file or directory" in missing.err
    nothing = await run_cmd(str(STEAD), "replay", env=cli_env())
    assert nothing.code == 2 and "nothing to replay" in nothing.err


async def test_cli_exports_runs_and_replays_them_and_the_temporal_cli_format(
        settings: Settings, client: Client, tmp_path: Path) -> None:
    """`stead histories export` writes one file per run; `stead replay` reads those, the
    `temporal workflow show --output json` format, and runs on the server by query."""
    ids = await run_ops(client, settings, "How is auth-service doing?",
                        "search-worker logs please")
    query = queue_query(settings)
    await listed(client, query, 2)
    env = cli_env(settings)
    out = tmp_path / "corpus"

    exported = await run_cmd(str(STEAD), "histories", "export", "--query", query, "--out",
                             str(out), "--json", env=env)
    assert exported.code == 0, exported.err
    rows = exported.json()["histories"]
    assert sorted(r["workflow_id"] for r in rows) == sorted(ids)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.json" for i in ids)
    assert {r["status"] for r in rows} == {"completed"}

    shown = await run_cmd(str(find_binary("temporal")), "workflow", "show", "--workflow-id",
                          ids[0], "--output", "json", "--address",
                          str(settings.temporal.address), env=env)
    assert shown.code == 0, shown.err
    (out / "temporal-cli.json").write_text(shown.out)

    files = await run_cmd(str(STEAD), "replay", str(out), "--json", env=env)
    assert files.code == 0, files.err
    doc = files.json()
    assert doc["histories"] == 3 and doc["ok"] is True
    assert {o["workflow_id"] for o in doc["outcomes"]} == {*ids, "temporal-cli"}

    by_query = await run_cmd(str(STEAD), "replay", "--query", query, "--json", env=env)
    assert by_query.code == 0, by_query.err
    assert sorted(o["workflow_id"] for o in by_query.json()["outcomes"]) == sorted(ids)

    bad_query = await run_cmd(str(STEAD), "replay", "--query", "WorkflowType = = 1", env=env)
    assert bad_query.code == 2 and "rejected the query" in bad_query.err
    bad_out = await run_cmd(str(STEAD), "histories", "export", "--out",
                            str(out / "temporal-cli.json"), env=env)
    assert bad_out.code == 2 and "is not a directory" in bad_out.err
