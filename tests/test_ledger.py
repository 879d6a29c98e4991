"""Ledger semantics: idempotency claims, the tamper-evident decision chain, typed rows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

import stead.storage.blobs
import stead.storage.ledger
from bench.profile import _Probe
from stead.contracts.audit import GENESIS, chain_hash
from stead.contracts.budget import Spend
from stead.contracts.models import (
    SYNTHETIC_KEY,
    DecisionRow,
    MemoryOpRecord,
    ModelCallRecord,
    ModelCallRow,
    RunRef,
    RunRequest,
    RunResult,
    StartRun,
    ToolAttemptReport,
    ToolCall,
    ToolInvocation,
    Trail,
    Usage,
)
from stead.storage.ledger import Ledger


def _key() -> str:
    return f"wf-{uuid.uuid4().hex}:run:1:tool"


def _inv(key: str, arguments: dict[str, int]) -> ToolInvocation:
    return ToolInvocation(ref=RunRef(workflow_id="wf", run_id="run", agent="a", tenant="t",
                                     step=1),
                          call_id="c", tool="t", requested_tool="t", arguments=arguments,
                          idempotency_key=key)


async def _claim(ledger: Ledger, key: str, attempt: int) -> str:
    c = await ledger.claim_tool(_inv(key, {"a": 1}), tool="t", attempt=attempt)
    return c.kind


async def test_claim_distinguishes_new_clean_retry_unknown_and_completed(ledger: Ledger) -> None:
    key = _key()
    assert await _claim(ledger, key, 1) == "new"
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=1, outcome="error",
                                               error_type="Boom", error="x"))
    assert await _claim(ledger, key, 2) == "retry"  # the failure was reported: safe to re-run
    assert await _claim(ledger, key, 3) == "unknown"  # attempt 2 never reported back
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=3, outcome="ok",
                                               result={"v": 42}))
    c = await ledger.claim_tool(_inv(key, {"a": 1}), tool="t", attempt=4)
    assert (c.kind, c.result) == ("completed", {"v": 42})


async def test_finishing_twice_keeps_the_first_result(ledger: Ledger) -> None:
    key = _key()
    await _claim(ledger, key, 1)
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=1, outcome="ok",
                                               result={"v": 1}))
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=1, outcome="ok",
                                               result={"v": 2}))
    c = await ledger.claim_tool(_inv(key, {}), tool="t", attempt=2)
    assert c.result == {"v": 1}


def _decided(wf: str, *rows: tuple[str, str, dict[str, object], str]) -> list[DecisionRow]:
    """A chain of (kind, decision, data, reason) rows of run ``r``, a second apart."""
    out, head, start = [], GENESIS, datetime.now(UTC)
    for i, (kind, decision, data, reason) in enumerate(rows, start=1):
        row = {"workflow_id": wf, "run_id": "r", "seq": i, "step": i, "kind": kind,
               "decision": decision, "reason": reason, "actor": "stead", "policy": "p@1",
               "data": data}
        digest = chain_hash(head, row)
        out.append(DecisionRow(**row, at=start + timedelta(seconds=i), prev_hash=head,
                               hash=digest))
        head = digest
    return out


def _chain(wf: str, n: int) -> list[DecisionRow]:
    return _decided(wf, *(("k", "allow", {"i": i}, f"r{i}") for i in range(1, n + 1)))


async def test_decision_rows_are_written_once_and_tampering_is_detected(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _chain(wf, 3)
    await ledger.append_decisions(rows)
    await ledger.append_decisions(rows)  # a retried activity writes nothing new
    trail = await ledger.trail(wf)
    assert [d.seq for d in trail.decisions] == [1, 2, 3]
    assert await ledger.verify_chain(wf) == []
    await ledger.pool.execute("update stead_decisions set decision='deny' where workflow_id=$1"
                              " and seq=2", wf)
    problems = await ledger.verify_chain(wf)
    assert any("seq 2" in p and "altered" in p for p in problems)
    await ledger.pool.execute("delete from stead_decisions where workflow_id=$1 and seq=1", wf)
    assert any("missing" in p for p in await ledger.verify_chain(wf))


async def test_deleting_the_newest_decisions_is_detected_against_the_recorded_head(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _chain(wf, 3)
    await ledger.append_decisions(rows)
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=1,
                                           audit_head=rows[-1].hash))
    assert await ledger.verify_chain(wf) == []
    await ledger.pool.execute("delete from stead_decisions where workflow_id=$1 and seq=3", wf)
    assert any("newest decisions missing" in p for p in await ledger.verify_chain(wf))


def _rechained(trail: Trail) -> dict[int, object]:
    return {d.seq: d.data.get("_ledger", {}).get("redacted") for d in trail.decisions}


async def test_a_batch_that_overlaps_what_an_earlier_attempt_wrote_adds_the_rest(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _chain(wf, 4)
    await ledger.append_decisions(rows[:2])
    await ledger.append_decisions(rows)  # the retry carries rows 1-2 again, and 3-4
    trail = await ledger.trail(wf)
    assert [(d.seq, d.hash) for d in trail.decisions] == [(r.seq, r.hash) for r in rows]
    assert _rechained(trail) == {1: None, 2: None, 3: None, 4: None}  # stored as built
    assert await ledger.verify_chain(wf) == []


async def test_rows_after_a_redacted_row_are_relinked_in_later_batches(ledger: Ledger) -> None:
    """A batch stored as built must link to what is stored: when the row before it was
    re-chained (redaction changed it), the batch is re-linked too."""
    wf = f"wf-{uuid.uuid4().hex}"
    rows, head = [], GENESIS
    for i in range(1, 5):
        row = {"workflow_id": wf, "run_id": "r", "seq": i, "step": i, "kind": "k",
               "decision": "allow", "reason": "mailed ann@example.com" if i == 2 else f"r{i}",
               "actor": "stead", "policy": "p@1", "data": {"i": i}}
        digest = chain_hash(head, row)
        rows.append(DecisionRow(**row, at=datetime.now(UTC), prev_hash=head, hash=digest))
        head = digest
    await ledger.append_decisions(rows[:2])
    await ledger.append_decisions(rows[2:])  # row 3's stored predecessor is not rows[1]
    trail = await ledger.trail(wf)
    assert _rechained(trail) == {1: None, 2: True, 3: False, 4: False}
    assert trail.decisions[1].reason == "mailed [REDACTED:email]"
    assert trail.decisions[2].prev_hash == trail.decisions[1].hash != rows[1].hash
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=4,
                                           audit_head=rows[-1].hash))
    assert await ledger.verify_chain(wf) == []  # ends at the head the workflow recorded


async def test_finishing_a_run_stores_its_last_decisions_with_it(ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _chain(wf, 5)
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.append_decisions(rows[:3])
    key = f"{wf}:r:1:t"
    await ledger.claim_tool(_inv(key, {}).model_copy(update={"ref": ref.model_copy(
        update={"step": 1})}), tool="t", attempt=1)  # its worker died: never reported
    result = RunResult(status="completed", answer="ok", steps=5, audit_head=rows[-1].hash)
    await ledger.finish_run(ref, result, decisions=rows[3:])
    await ledger.finish_run(ref, result, decisions=rows[3:])  # a retried finish adds nothing
    trail = await ledger.trail(wf)
    assert [d.seq for d in trail.decisions] == [1, 2, 3, 4, 5]
    (run,) = trail.runs
    assert (run.status, run.answer, run.steps) == ("completed", "ok", 5)
    (call,) = trail.tool_calls
    assert call.status == "failed" and call.error is not None and "abandoned" in call.error
    assert await ledger.verify_chain(wf) == []


async def test_finishing_a_run_with_a_redacted_last_decision_rechains_it(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    row = {"workflow_id": wf, "run_id": "r", "seq": 1, "step": 1, "kind": "run_finished",
           "decision": "completed", "reason": "told ann@example.com", "actor": "stead",
           "policy": "p@1", "data": {}}
    digest = chain_hash(GENESIS, row)
    last = DecisionRow(**row, at=datetime.now(UTC), prev_hash=GENESIS, hash=digest)
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=1,
                                           audit_head=digest), decisions=[last])
    trail = await ledger.trail(wf)
    assert _rechained(trail) == {1: True}
    assert trail.runs[0].status == "completed"
    assert await ledger.verify_chain(wf) == []


async def test_a_sub_trees_spend_sums_its_answered_calls_and_nothing_beside_it(
        ledger: Ledger) -> None:
    """``subtree_spend``: the workflow and every workflow under it (``id/...``), answered
    calls only; a sibling whose id merely starts the same way is not under it."""
    root = f"wf-{uuid.uuid4().hex}/delegate-1"

    async def answered(wid: str, step: int, cost: float | None, status: str = "ok") -> None:
        await ledger.record_model_call(
            RunRef(workflow_id=wid, run_id="r", agent="a", tenant="t", step=step),
            ModelCallRecord(attempt=1, model="m", status=status,  # type: ignore[arg-type]
                            usage=Usage(input_tokens=10, output_tokens=5), duration_ms=1.0,
                            cost_usd=cost))

    await answered(root, 1, 0.5)
    await answered(root, 2, None)  # unpriced: tokens and a call, no money
    await answered(f"{root}/review-1", 1, 0.25)  # its own sub-agent
    await answered(root, 3, 9.0, status="error")  # not answered
    for beside in (root + "0", root + ".5", root[:-1] + "2"):
        await answered(beside, 1, 100.0)
    assert await ledger.subtree_spend(root) == Spend(usd=0.75, input_tokens=30,
                                                     output_tokens=15, model_calls=3)
    assert await ledger.subtree_spend(f"{root}/nobody") == Spend()


# ------------------------------------------------------- attempts that decided otherwise
#
# A local activity can write rows before Temporal records its workflow task; when the worker
# dies first, the next attempt replays and may decide otherwise under the same seqs, at a later
# workflow time (migration 0014). History's rows are the later ones, whichever write lands last.


def _attempt(base: list[DecisionRow], decisions: list[str], at: datetime) -> list[DecisionRow]:
    """Rows after ``base`` (seq len(base)+1, ...) deciding ``decisions``, all at ``at``."""
    rows, head = [], base[-1].hash if base else GENESIS
    wf = base[0].workflow_id
    for i, decision in enumerate(decisions, start=len(base) + 1):
        row = {"workflow_id": wf, "run_id": "r", "seq": i, "step": i, "kind": "admission",
               "decision": decision, "reason": f"r{i}", "actor": "stead", "policy": "p@1",
               "data": {"i": i}}
        digest = chain_hash(head, row)
        rows.append(DecisionRow(**row, at=at, prev_hash=head, hash=digest))
        head = digest
    return rows


async def _finished(ledger: Ledger, wf: str, head: str) -> None:
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.pool.execute("update stead_runs set result=$2 where workflow_id=$1", wf,
                              {"audit_head": head})


async def test_a_retried_tasks_rows_supersede_what_the_discarded_attempt_wrote(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    base = _chain(wf, 2)
    t1 = datetime.now(UTC)
    discarded = _attempt(base, ["queue", "wait"], t1)
    await ledger.append_decisions(base + discarded)
    history = _attempt(base, ["admit", "route", "answer"], t1 + timedelta(seconds=10))
    await ledger.append_decisions(base + history)  # the retried task's batch: rows 1-5
    await ledger.append_decisions(history)  # a retried write of it adds nothing
    trail = await ledger.trail(wf)
    assert [(d.seq, d.decision) for d in trail.decisions] == [
        (1, "allow"), (2, "allow"), (3, "admit"), (4, "route"), (5, "answer")]
    assert [(s.seq, s.decision, s.hash, s.winner_seq, s.winner_at) for s in trail.superseded] \
        == [(3, "queue", discarded[0].hash, 3, history[0].at),
            (4, "wait", discarded[1].hash, 3, history[0].at)]
    assert trail.superseded[0].created_at == t1  # kept whole: when it was decided
    await _finished(ledger, wf, history[-1].hash)
    assert await ledger.verify_chain(wf) == []


async def test_a_stalled_attempts_late_rows_are_kept_beside_the_chain(ledger: Ledger) -> None:
    """The discarded attempt's worker was slow, not dead: its write lands after history's."""
    wf = f"wf-{uuid.uuid4().hex}"
    base = _chain(wf, 1)
    t1 = datetime.now(UTC)
    history = _attempt(base, ["admit", "route"], t1 + timedelta(seconds=10))
    await ledger.append_decisions(base + history)
    stale = _attempt(base, ["queue", "wait"], t1)
    await ledger.append_decisions(base + stale[:1])
    await ledger.append_decisions(stale[1:])  # links to the stale row 2, not history's
    trail = await ledger.trail(wf)
    assert [d.hash for d in trail.decisions] == [r.hash for r in base + history]
    assert [(s.seq, s.decision, s.winner_seq, s.winner_at) for s in trail.superseded] == [
        (2, "queue", 2, history[0].at), (3, "wait", 2, history[0].at)]
    await _finished(ledger, wf, history[-1].hash)
    assert await ledger.verify_chain(wf) == []


async def test_finishing_with_history_rows_supersedes_a_discarded_attempts_rows(
        ledger: Ledger) -> None:
    """The same through ``finish_run``: its one-statement path notices and falls back."""
    wf = f"wf-{uuid.uuid4().hex}"
    base = _chain(wf, 2)
    t1 = datetime.now(UTC)
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    await ledger.append_decisions(base + _attempt(base, ["refuse"], t1))
    history = _attempt(base, ["admit", "answer"], t1 + timedelta(seconds=10))
    result = RunResult(status="completed", answer="ok", steps=4, audit_head=history[-1].hash)
    await ledger.finish_run(ref, result, decisions=history)
    trail = await ledger.trail(wf)
    assert [d.decision for d in trail.decisions] == ["allow", "allow", "admit", "answer"]
    assert [s.decision for s in trail.superseded] == ["refuse"]
    assert trail.runs[0].status == "completed"
    assert await ledger.verify_chain(wf) == []


async def test_concurrent_attempts_of_one_run_end_with_history_s_rows(ledger: Ledger) -> None:
    """Two attempts' batches racing, many times: whichever lands first, the chain ends as
    the later attempt decided it, and the other attempt's rows are all kept aside."""
    for _ in range(20):
        wf = f"wf-{uuid.uuid4().hex}"
        base = _chain(wf, 1)
        t1 = datetime.now(UTC)
        stale = _attempt(base, ["queue", "wait"], t1)
        history = _attempt(base, ["admit", "route", "answer"], t1 + timedelta(seconds=10))
        await asyncio.gather(ledger.append_decisions(base + stale),
                             ledger.append_decisions(base + history))
        trail = await ledger.trail(wf)
        assert [d.hash for d in trail.decisions] == [r.hash for r in base + history]
        assert sorted(s.hash for s in trail.superseded) == sorted(r.hash for r in stale)


# ---------------------------------------------------------------------------- typed rows

_TABLES = {"runs": "stead_runs", "model_calls": "stead_model_calls",
           "tool_calls": "stead_tool_calls", "tool_attempts": "stead_tool_attempts",
           "decisions": "stead_decisions", "memory_ops": "stead_memory_ops",
           "superseded": "stead_decisions_superseded"}


_TRAIL_ORDER = {"runs": ("started_at",), "model_calls": ("step", "fallback", "attempt"),
                "tool_calls": ("step", "claimed_at"),
                "tool_attempts": ("step", "started_at", "attempt"), "decisions": ("seq",),
                "memory_ops": ("created_at",), "superseded": ("run_id", "seq", "created_at")}
"""How ``Ledger.trail`` orders each table's rows."""


def _row_model(name: str) -> type[BaseModel]:
    annotation = Trail.model_fields[name].annotation
    (model,) = getattr(annotation, "__args__", ())
    assert issubclass(model, BaseModel)
    return model


def test_the_package_exports_what_callers_import() -> None:
    """``from stead.storage.ledger import ...`` keeps working for every name it exported before."""
    assert sorted(stead.storage.ledger.__all__) == [
        "ABANDONED", "Claim", "Counted", "FinishedRun", "Ledger", "Reservation",
        "STREAM_CHANNEL", "SpendKey", "StreamKind", "StreamPiece", "StreamRow", "TRANSIENT",
        "WindowUsage", "migrate", "retrying", "window_end"]
    assert all(getattr(stead.storage.ledger, n) is not None for n in stead.storage.ledger.__all__)
    assert stead.storage.blobs.retrying is stead.storage.ledger.retrying  # one helper, shared


async def test_each_row_model_is_its_tables_columns_in_order(ledger: Ledger) -> None:
    """``select *`` rows validate without losing a column, and dump in the table's order
    (so ``stead audit --json`` prints what it printed when rows were dicts)."""
    assert list(Trail.model_fields) == list(_TABLES)
    for name, table in _TABLES.items():
        columns = [r["column_name"] for r in await ledger.pool.fetch(
            "select column_name from information_schema.columns where table_name=$1"
            " and table_schema=current_schema() order by ordinal_position", table)]
        assert list(_row_model(name).model_fields) == columns, table


async def test_the_trail_is_every_row_as_stored_with_its_types(ledger: Ledger) -> None:
    """Typed writes store what the loose arguments stored; the typed trail dumps to exactly
    the rows ``select *`` returns."""
    wf = f"wf-{uuid.uuid4().hex}"
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t", step=1)
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(
        agent="a", input="x", tenant="t", user="u", metadata={"k": "v"})), model="m")
    await ledger.record_model_call(ref, ModelCallRecord(
        attempt=1, model="m", status="ok", finish_reason="tool_calls",
        tool_calls=[ToolCall(id="c", name="t", arguments='{"a": 1}')], content=None,
        usage=Usage(input_tokens=3, output_tokens=4), duration_ms=1.5))
    key = f"{wf}:r:2:t"
    inv = ToolInvocation(ref=ref.model_copy(update={"step": 2}), call_id="c", tool="t",
                         requested_tool="t", arguments={"a": 1}, idempotency_key=key)
    assert (await ledger.claim_tool(inv, tool="t", attempt=1)).kind == "new"
    await ledger.finish_tool(ToolAttemptReport(key=key, attempt=1, outcome="ok",
                                               result={"v": 1}, duration_ms=2.0))
    rows = _chain(wf, 2)
    await ledger.append_decisions(rows)
    # A discarded attempt's row 2, decided earlier, lands late: kept beside the chain.
    await ledger.append_decisions(_attempt(rows[:1], ["queue"], rows[1].at - timedelta(1)))
    await ledger.record_memory_op(ref, MemoryOpRecord(
        op="recall", namespaces=["n"], query="q", item_ids=["i"], scores=[0.5], embedder="e",
        backend="b", duration_ms=1.0))
    await ledger.finish_run(ref, RunResult(status="completed", answer="ok", steps=2,
                                           audit_head=rows[-1].hash))

    trail = await ledger.trail(wf)
    dumped = trail.model_dump()
    for name, table in _TABLES.items():
        # In the trail's documented order (a bare select * returns heap order, which an
        # update such as a re-chained decision can change).
        raw = sorted((dict(r) for r in await ledger.pool.fetch(
            f"select * from {table} where workflow_id=$1", wf)),
            key=lambda r, name=name: tuple(r[k] for k in _TRAIL_ORDER[name]))
        assert len(raw) == len(dumped[name]) >= 1, name
        assert [list(r) for r in dumped[name]] == [list(r) for r in raw], name
        assert dumped[name] == raw, name
    (run,) = trail.runs
    assert (run.user_id, run.metadata, run.status, run.steps) == ("u", {"k": "v"},
                                                                   "completed", 2)
    assert run.result is not None and run.result["audit_head"] == rows[-1].hash
    (call,) = trail.model_calls
    assert isinstance(call, ModelCallRow)
    assert (call.step, call.input_tokens, call.output_tokens) == (1, 3, 4)
    assert call.tool_calls == [{"id": "c", "name": "t", "arguments": '{"a": 1}'}]
    assert [(a.status, a.duration_ms) for a in trail.tool_attempts] == [("ok", 2.0)]
    assert [(c.status, c.result) for c in trail.tool_calls] == [("completed", {"v": 1})]
    assert [(m.op, m.tenant, m.scores) for m in trail.memory_ops] == [("recall", "t", [0.5])]
    assert await ledger.verify_chain(wf) == []


COUNTED = ("gate", "route", "approval_requested", "approval_decided")


async def test_finishing_a_run_reads_back_what_its_metrics_count_in_the_same_statement(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _decided(wf, ("route", "allow", {}, "r"), ("k", "x", {}, "not counted"),
                    ("approval_requested", "ask", {"approval_id": "a1"}, "big"),
                    ("approval_decided", "approved", {"approval_id": "a1"}, "ok"),
                    ("gate", "deny", {}, "no"))
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(
        agent="a", input="x", tenant="t", metadata={SYNTHETIC_KEY: "eval"})), model="m")
    await ledger.append_decisions(rows[:3])
    result = RunResult(status="completed", answer="ok", steps=5, audit_head=rows[-1].hash)
    probe = _Probe()  # the statement counter bench.profile reports round trips with
    with probe.installed(profile=False):
        got = await ledger.finish_run(ref, result, decisions=rows[3:], counting=COUNTED)
    assert probe.round_trips == 1  # the close and the read back in one round trip
    assert got is not None
    assert (got.agent, got.synthetic) == ("a", "eval")
    assert got.seconds is not None and got.seconds >= 0
    # Rows stored earlier and the rows of this batch, in seq order; kind "k" is not counted.
    assert [(d.seq, d.kind, d.decision, d.approval_id) for d in got.decisions] == [
        (1, "route", "allow", None), (3, "approval_requested", "ask", "a1"),
        (4, "approval_decided", "approved", "a1"), (5, "gate", "deny", None)]
    assert [d.at for d in got.decisions] == [rows[i].at for i in (0, 2, 3, 4)]
    # A retried finish (its batch now stored) reads each row once.
    again = await ledger.finish_run(ref, result, decisions=rows[3:], counting=COUNTED)
    assert again == got
    assert await ledger.verify_chain(wf) == []


async def test_a_finish_that_rechains_its_batch_still_reads_it_back(ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _decided(wf, ("gate", "allow", {}, "r"),
                    ("route", "refuse", {}, "told ann@example.com"))  # redaction changes it
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    got = await ledger.finish_run(ref, RunResult(status="refused", steps=2,
                                                 audit_head=rows[-1].hash),
                                  decisions=rows, counting=COUNTED)
    assert got is not None and got.synthetic is None
    assert [(d.kind, d.decision) for d in got.decisions] == [("gate", "allow"),
                                                             ("route", "refuse")]
    assert _rechained(await ledger.trail(wf)) == {1: None, 2: True}
    assert await ledger.verify_chain(wf) == []


async def test_a_finish_reads_back_nothing_when_not_asked_or_the_run_has_no_row(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    ref = RunRef(workflow_id=wf, run_id="r", agent="a", tenant="t")
    rows = _decided(wf, ("gate", "allow", {}, "r"))
    result = RunResult(status="completed", answer="ok", steps=1, audit_head=rows[-1].hash)
    assert await ledger.finish_run(ref, result, decisions=rows, counting=COUNTED) is None
    assert await ledger.finish_run(ref, result, counting=COUNTED) is None
    await ledger.start_run(StartRun(ref=ref, request=RunRequest(agent="a", input="x",
                                                                tenant="t")), model="m")
    assert await ledger.finish_run(ref, result) is None  # counting not asked
    got = await ledger.finish_run(ref, result, counting=COUNTED)  # no batch: plain close
    assert got is not None and [d.kind for d in got.decisions] == ["gate"]
