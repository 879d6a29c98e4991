"""Ledger semantics: idempotency claims and the tamper-evident decision chain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from stead.audit import GENESIS, chain_hash
from stead.ledger import Ledger
from stead.models import DecisionRow


def _key() -> str:
    return f"wf-{uuid.uuid4().hex}:run:1:tool"


async def _claim(ledger: Ledger, key: str, attempt: int) -> str:
    c = await ledger.claim_tool(key=key, workflow_id="wf", run_id="run", step=1, call_id="c",
                                tool="t", requested_tool="t", arguments={"a": 1},
                                attempt=attempt)
    return c.kind


async def test_claim_distinguishes_new_clean_retry_unknown_and_completed(ledger: Ledger) -> None:
    key = _key()
    assert await _claim(ledger, key, 1) == "new"
    await ledger.finish_tool(key=key, attempt=1, outcome="error", error_type="Boom", error="x")
    assert await _claim(ledger, key, 2) == "retry"  # the failure was reported: safe to re-run
    assert await _claim(ledger, key, 3) == "unknown"  # attempt 2 never reported back
    await ledger.finish_tool(key=key, attempt=3, outcome="ok", result={"v": 42})
    c = await ledger.claim_tool(key=key, workflow_id="wf", run_id="run", step=1, call_id="c",
                                tool="t", requested_tool="t", arguments={"a": 1}, attempt=4)
    assert (c.kind, c.result) == ("completed", {"v": 42})


async def test_finishing_twice_keeps_the_first_result(ledger: Ledger) -> None:
    key = _key()
    await _claim(ledger, key, 1)
    await ledger.finish_tool(key=key, attempt=1, outcome="ok", result={"v": 1})
    await ledger.finish_tool(key=key, attempt=1, outcome="ok", result={"v": 2})
    c = await ledger.claim_tool(key=key, workflow_id="wf", run_id="run", step=1, call_id="c",
                                tool="t", requested_tool="t", arguments={}, attempt=2)
    assert c.result == {"v": 1}


def _chain(wf: str, n: int) -> list[DecisionRow]:
    rows, head = [], GENESIS
    for i in range(1, n + 1):
        row = {"workflow_id": wf, "run_id": "r", "seq": i, "step": i, "kind": "k",
               "decision": "allow", "reason": f"r{i}", "actor": "stead", "policy": "p@1",
               "data": {"i": i}}
        digest = chain_hash(head, row)
        rows.append(DecisionRow(**row, at=datetime.now(UTC), prev_hash=head, hash=digest))
        head = digest
    return rows


async def test_decision_rows_are_written_once_and_tampering_is_detected(
        ledger: Ledger) -> None:
    wf = f"wf-{uuid.uuid4().hex}"
    rows = _chain(wf, 3)
    await ledger.append_decisions(rows)
    await ledger.append_decisions(rows)  # a retried activity writes nothing new
    trail = await ledger.trail(wf)
    assert [d["seq"] for d in trail["decisions"]] == [1, 2, 3]
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
    await ledger.start_run(workflow_id=wf, run_id="r", agent="a", tenant="t", user=None,
                           input="x", metadata={}, model="m")
    await ledger.finish_run(workflow_id=wf, run_id="r", status="completed", answer="ok",
                            error=None, steps=1, result={"audit_head": rows[-1].hash})
    assert await ledger.verify_chain(wf) == []
    await ledger.pool.execute("delete from stead_decisions where workflow_id=$1 and seq=3", wf)
    assert any("newest decisions missing" in p for p in await ledger.verify_chain(wf))
