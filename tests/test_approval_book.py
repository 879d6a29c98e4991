"""The approval book without a Temporal server: early signals, duplicates, role checks, edits,
escalation up the chain on each deadline, expiry, and what the ``decide`` update validates.

The real-stack behaviour (signals over the wire, time skipping) is in tests/test_approvals.py
and tests/test_approvals_timeskip.py; these pin the book's own rules through a fake seam.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from _fake_seam import FakeSeam, context

from stead.contracts.models import ApprovalDecision, DecideInput, PendingApproval
from stead.contracts.policy import Approvals, Policy
from stead.contracts.search_attributes import AWAITING_KEY
from stead.guardrails.decisions import RiskAssessment
from stead.workflows._approvals import Approval, ApprovalBook
from stead.workflows._context import Context
from stead.workflows._decisions import DecisionLog

RISK = RiskAssessment(score=0.7, factors=[], untrusted=False)


def book_on(seam: FakeSeam, *, allow_edits: bool = True,
            chain: tuple[str, ...] = ("oncall", "manager")) -> tuple[ApprovalBook, DecisionLog,
                                                                   Context]:
    ctx = context(seam, approval_timeout=60)
    ctx.policy = Policy(id="p", version=1,
                        approvals=Approvals(chain=list(chain), allow_edits=allow_edits))
    decisions = DecisionLog(ctx)
    return ApprovalBook(ctx, decisions), decisions, ctx


async def ask(book: ApprovalBook, step: int = 3) -> Approval:
    return await book.ask("refund", {"amount": 900}, RISK, "amount over the line", step=step)


def kinds(seam: FakeSeam, decisions: DecisionLog) -> list[tuple[str, str]]:
    """Every decision recorded: those flushed before a wait, then those still buffered."""
    flushed = [r for c in seam.calls if c.name == "run.decisions"
               for r in c.arg.rows]  # type: ignore[attr-defined]
    return [(r.kind, r.decision) for r in flushed + decisions.take()]


def decision(by: str = "alice", **kw: object) -> ApprovalDecision:
    return ApprovalDecision.model_validate({"approval_id": "a3", "by": by, **kw})


async def test_a_decision_sent_before_the_approval_point_decides_it_without_waiting() -> None:
    seam = FakeSeam()
    book, decisions, _ = book_on(seam)
    book.apply(decision(note="go ahead"), approved=True, via="signal")
    a = await ask(book)
    assert (a.status, a.decided_by, a.note) == ("approved", "alice", "go ahead")
    assert seam.timeouts == []  # never waited
    assert kinds(seam, decisions) == [("approval_requested", "oncall"),
                                ("approval_decided", "approved")]
    assert a.log == ["approved by alice"]


async def test_a_decision_for_an_approval_never_asked_is_audited_as_ignored() -> None:
    seam = FakeSeam()
    book, decisions, _ = book_on(seam)
    book.apply(ApprovalDecision(approval_id="a9", by="bob"), approved=False, via="signal")
    book.flush_ignored(step=5)
    rows = decisions.take()
    assert [(r.kind, r.actor, r.step) for r in rows] == [("approval_ignored", "bob", 5)]
    assert rows[0].reason == "signal for approval 'a9', which this run never asked"


async def test_duplicates_and_missing_payloads_change_nothing_and_are_audited() -> None:
    seam = FakeSeam(during_waits=[lambda: book.apply(decision(), approved=True, via="signal")])
    book, decisions, _ = book_on(seam)
    a = await ask(book)
    assert a.status == "approved"
    book.apply(decision(by="mallory"), approved=False, via="update")
    book.apply(None, approved=True, via="signal")
    assert (a.status, a.decided_by) == ("approved", "alice")
    decisions.take()
    book.flush_ignored(step=4)
    rows = decisions.take()
    assert [(r.actor, r.reason) for r in rows] == [
        ("mallory", "duplicate update after approved"),
        ("unknown", 'approve signal without a payload; send '
                    '{"approval_id": "a2", "by": "alice"}')]


async def test_a_role_the_chain_does_not_allow_at_this_level_is_ignored() -> None:
    """At level 0 both chain roles may decide; a role outside the chain may not."""
    seam = FakeSeam(during_waits=[
        lambda: book.apply(decision(by="eve", role="intern"), approved=True, via="signal"),
        lambda: book.apply(decision(by="carol", role="manager"), approved=True, via="signal")])
    book, decisions, _ = book_on(seam)
    a = await ask(book)
    assert (a.status, a.decided_by, a.role, a.level) == ("approved", "carol", "manager", 1)
    book.flush_ignored(step=3)
    ignored = [r for r in decisions.take() if r.kind == "approval_ignored"]
    assert [r.reason for r in ignored] == [
        "role 'intern' may not decide approval 'a3' at level 0; allowed: oncall, manager"]


async def test_each_deadline_moves_the_approval_up_the_chain_then_it_expires() -> None:
    seam = FakeSeam()
    book, decisions, _ = book_on(seam, chain=("oncall", "manager", "director"))
    start = seam.clock
    a = await ask(book)
    assert a.status == "expired"
    assert a.level == 2
    assert seam.timeouts == [60, 60, 60]
    assert a.deadline == start + timedelta(seconds=180)
    assert kinds(seam, decisions) == [("approval_requested", "oncall"),
                                ("approval_escalated", "manager"),
                                ("approval_escalated", "director"),
                                ("approval_decided", "expired")]
    assert a.log == ["expired by deadline"]
    assert [u.value for u in seam.upserts if u.key == AWAITING_KEY] == [True, False]
    # Parked on a person from the request to the decision, through every escalation.
    assert seam.parks == [True, False]


async def test_a_decision_at_the_second_level_comes_from_the_escalated_approver() -> None:
    def two_answers() -> None:
        book.apply(decision(by="oncall-bob", role="oncall"), approved=True, via="signal")
        book.apply(decision(by="mgr", role="manager"), approved=False, via="signal")

    seam = FakeSeam(during_waits=[None, two_answers])  # None: the first deadline passes
    book, decisions, _ = book_on(seam)
    a = await ask(book)
    assert (a.status, a.decided_by, a.level) == ("rejected", "mgr", 1)
    book.flush_ignored(step=3)
    assert [r.reason for r in decisions.take() if r.kind == "approval_ignored"] == [
        "role 'oncall' may not decide approval 'a3' at level 1; allowed: manager"]


async def test_edited_arguments_are_kept_for_the_gate_unless_the_policy_forbids_them() -> None:
    seam = FakeSeam(during_waits=[
        lambda: book.apply(decision(arguments={"amount": 90}), approved=True, via="signal")])
    book, _, _ = book_on(seam)
    a = await ask(book)
    assert (a.status, a.edited) == ("approved", {"amount": 90})
    assert a.log == []  # the gate re-checks the edit and logs the outcome

    seam = FakeSeam(during_waits=[
        lambda: strict.apply(decision(arguments={"amount": 90}), approved=True, via="signal"),
        lambda: strict.apply(decision(by="bob"), approved=True, via="signal")])
    strict, decisions, _ = book_on(seam, allow_edits=False)
    a = await ask(strict)
    assert (a.status, a.decided_by, a.edited) == ("approved", "bob", None)
    strict.flush_ignored(step=3)
    assert [r.reason for r in decisions.take() if r.kind == "approval_ignored"] == [
        "policy p@1 does not allow edited arguments"]


async def test_the_decide_validator_refuses_what_cannot_apply() -> None:
    seam = FakeSeam(during_waits=[lambda: checks(book)])
    book, _, _ = book_on(seam, allow_edits=False)

    def refused(d: DecideInput | None, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            book.validate(d)

    def checks(book: ApprovalBook) -> None:
        refused(None, "decide needs a payload")
        refused(DecideInput(approval_id="a7", by="x", approved=True),
                "unknown approval 'a7'; pending: a3")
        refused(DecideInput(approval_id="a3", by="x", approved=True, role="intern"),
                "role 'intern' may not decide")
        refused(DecideInput(approval_id="a3", by="x", approved=False, arguments={"a": 1}),
                "edited arguments only make sense with an approval")
        refused(DecideInput(approval_id="a3", by="x", approved=True, arguments={"a": 1}),
                "policy p@1 does not allow edited arguments")
        ok = DecideInput(approval_id="a3", by="x", approved=True)
        book.validate(ok)
        book.apply(ok, approved=True, via="update")

    refused(DecideInput(approval_id="a3", by="x", approved=True), "pending: none")
    a = await ask(book)
    assert a.status == "approved"
    refused(DecideInput(approval_id="a3", by="y", approved=True),
            r"already decided \(approved by x\)")


async def test_the_state_query_and_the_update_outcome() -> None:
    """``pending()`` shows who is asked now; ``outcome()`` answers once the run acted."""
    seen: list[PendingApproval] = []

    def look_then_approve() -> None:
        seen.extend(book.pending())
        book.apply(decision(), approved=True, via="update")

    seam = FakeSeam(during_waits=[None, look_then_approve])
    book, _, _ = book_on(seam)
    a = await ask(book)
    assert [(p.approval_id, p.awaiting, p.level, p.tool, p.risk) for p in seen] == [
        ("a3", "manager", 1, "refund", 0.7)]
    assert book.pending() == []
    out = await book.outcome("a3")
    assert (out.outcome, out.reason, out.arguments) == ("approved", "approved by alice",
                                                        a.arguments)
