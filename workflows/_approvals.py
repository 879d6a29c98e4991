"""The approval book: what the run asked humans, and what they (or the deadlines) answered.

``ask`` opens an approval and waits, level by level up the policy's escalation chain, until a
decision comes or the last deadline passes (``expired``). Decisions come from the ``approve``
and ``reject`` signals and the ``decide`` update (``apply``; ``validate`` refuses a bad update
before it is accepted). A decision for an approval not yet asked is kept for when it is
(``early``); duplicates, roles the chain does not allow and missing payloads are ignored and
audited at the end of the run (``flush_ignored``).

    a = await book.ask("refund", {"amount": 900}, risk, "amount over limit", step=3)
    if a.status == "approved": ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow

from stead.workflows._context import Context
from stead.workflows._decisions import DecisionLog

with workflow.unsafe.imports_passed_through():
    from stead.contracts.models import ApprovalDecision, DecideInput, DecideOutcome, PendingApproval
    from stead.contracts.search_attributes import AWAITING_KEY
    from stead.guardrails.decisions import RiskAssessment

DECISION_EXAMPLE = '{"approval_id": "a2", "by": "alice"}'
"""What an approval payload looks like, for the messages that refuse a missing one."""

ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "denied_after_edit"]


def short(args: dict[str, object], limit: int = 80) -> str:
    """Arguments as compact JSON, cut to ``limit`` characters (for summaries and details)."""
    text = json.dumps(args, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Approval:
    """One approval the run asked for; decided by signal, update, or its deadlines."""

    approval_id: str
    step: int
    tool: str
    arguments: dict[str, Any]
    risk: RiskAssessment
    reason: str
    deadline: datetime
    level: int = 0
    """Index in the escalation chain of who is asked now (each deadline moves it up)."""
    status: ApprovalStatus = "pending"
    decided_by: str = ""
    role: str | None = None
    note: str | None = None
    edited: dict[str, Any] | None = None
    rescored: float | None = None
    """Risk of the edited arguments, once the gate has re-checked them."""
    log: list[str] = field(default_factory=list)
    """What became of the approval, last entry last (``decide`` answers with it)."""


@dataclass(frozen=True)
class _Early:
    decision: ApprovalDecision
    approved: bool
    via: str


class ApprovalBook:
    """The approvals of one run, their early and ignored decisions."""

    def __init__(self, ctx: Context, decisions: DecisionLog) -> None:
        self._ctx = ctx
        self._decisions = decisions
        self.approvals: dict[str, Approval] = {}
        self._early: dict[str, _Early] = {}
        self._ignored: list[tuple[str, str, str]] = []
        """(approval id, by, why) of every decision that changed nothing."""

    # ------------------------------------------------------------------ reading

    def pending(self) -> list[PendingApproval]:
        """The approvals waiting for a decision, as the ``state`` query shows them."""
        policy = self._ctx.policy
        chain = policy.approvals.chain
        return [PendingApproval(
            approval_id=a.approval_id, tool=a.tool, arguments=a.arguments, risk=a.risk.score,
            deadline=a.deadline, step=a.step, awaiting=chain[min(a.level, len(chain) - 1)],
            level=a.level, reason=a.reason, policy=policy.ref,
            factors=[f"{f.name}={f.weight:g}" for f in a.risk.factors])
            for a in self.approvals.values() if a.status == "pending"]

    # ------------------------------------------------------------------ deciding

    def validate(self, decision: DecideInput | None) -> None:
        """Refuse a ``decide`` update that cannot apply (``ValueError`` says why)."""
        if decision is None:
            raise ValueError(f"decide needs a payload: {DECISION_EXAMPLE}")
        a = self.approvals.get(decision.approval_id)
        if a is None:
            pending = sorted(k for k, v in self.approvals.items() if v.status == "pending")
            raise ValueError(f"unknown approval {decision.approval_id!r}; pending: "
                             f"{', '.join(pending) or 'none'}")
        if a.status != "pending":
            raise ValueError(f"approval {a.approval_id!r} was already decided ({a.status} "
                             f"by {a.decided_by or 'deadline'})")
        problem = self._role_problem(a, decision.role)
        if problem:
            raise ValueError(problem)
        if decision.arguments is not None and not decision.approved:
            raise ValueError("edited arguments only make sense with an approval")
        if decision.arguments is not None and not self._ctx.policy.approvals.allow_edits:
            raise ValueError(f"policy {self._ctx.policy.ref} does not allow edited arguments")

    def apply(self, d: ApprovalDecision | None, *, approved: bool, via: str) -> None:
        """A decision from a signal or the update (``via``); ignored ones are kept for audit."""
        if d is None:
            self._ignored.append(("", "unknown", f"{'approve' if approved else 'reject'} "
                                  f"{via} without a payload; send {DECISION_EXAMPLE}"))
            return
        a = self.approvals.get(d.approval_id)
        if a is None:
            # Not reached yet (or never will be): keep the first decision for when it is.
            self._early.setdefault(d.approval_id, _Early(d, approved, via))
            return
        if a.status != "pending":
            self._ignored.append((a.approval_id, d.by, f"duplicate {via} after {a.status}"))
            return
        policy = self._ctx.policy
        problem = self._role_problem(a, d.role)
        if problem is None and approved and d.arguments is not None \
                and not policy.approvals.allow_edits:
            problem = f"policy {policy.ref} does not allow edited arguments"
        if problem:
            self._ignored.append((a.approval_id, d.by, problem))
            return
        a.status = "approved" if approved else "rejected"
        a.decided_by, a.role, a.note = d.by, d.role, d.note
        a.edited = d.arguments if approved else None

    async def outcome(self, approval_id: str) -> DecideOutcome:
        """What the ``decide`` update answers, once the run has acted on its decision (the
        gate re-checks edited arguments first)."""
        a = self.approvals[approval_id]
        await self._ctx.seam.wait(lambda: a.status != "pending" and bool(a.log))
        outcome = {"approved": "approved", "rejected": "rejected"}.get(a.status,
                                                                      "denied_after_edit")
        return DecideOutcome(approval_id=a.approval_id, outcome=outcome,
                             tool=a.tool, arguments=a.edited or a.arguments,
                             risk=a.rescored if a.rescored is not None else a.risk.score,
                             reason=a.log[-1])

    def _role_problem(self, a: Approval, role: str | None) -> str | None:
        if role is None:
            return None  # the caller acts for the level currently asked
        allowed = self._ctx.policy.approvals.chain[a.level:]
        if role not in allowed:
            return (f"role {role!r} may not decide approval {a.approval_id!r} at level "
                    f"{a.level}; allowed: {', '.join(allowed)}")
        return None

    # ------------------------------------------------------------------ asking

    async def ask(self, tool: str, args: dict[str, Any], risk: RiskAssessment, reason: str,
                  *, step: int, approval_id: str | None = None) -> Approval:
        """Pause this branch until a human decides or the last deadline passes. Each deadline
        that passes moves the approval one level up the chain (``Approval.level``)."""
        ctx, seam, decisions = self._ctx, self._ctx.seam, self._decisions
        approval_id = approval_id or f"a{step}"
        chain = ctx.policy.approvals.chain
        a = Approval(approval_id=approval_id, step=step, tool=tool, arguments=args, risk=risk,
                     reason=reason,
                     deadline=seam.now() + timedelta(seconds=ctx.approval_timeout))
        self.approvals[approval_id] = a
        early = self._early.pop(approval_id, None)
        if early is not None:
            self.apply(early.decision, approved=early.approved,
                       via=early.via + " (before the approval point)")
        decisions.record(step, "approval_requested", chain[0], reason,
                         {"approval_id": approval_id, "tool": tool, "arguments": args,
                          "risk": risk.score, "deadline": a.deadline.isoformat()})
        seam.upsert([AWAITING_KEY.value_set(True)])
        await decisions.flush()  # the request is on record while the run waits
        seam.parked(True)
        while a.status == "pending":
            awaiting = chain[min(a.level, len(chain) - 1)]
            ctx.at(f"approval:{approval_id}",
                   f"Awaiting approval **{approval_id}** from **{awaiting}** until "
                   f"{a.deadline:%Y-%m-%d %H:%M:%S} UTC: {tool} {short(args)} "
                   f"(risk {risk.score:g}). Signal `approve`/`reject` with "
                   f'{{"approval_id": "{approval_id}", "by": "..."}}')
            remaining = (a.deadline - seam.now()).total_seconds()
            if await seam.wait(lambda: a.status != "pending", timeout=max(remaining, 0.001)):
                continue
            if a.level + 1 < len(chain):
                a.level += 1
                a.deadline = seam.now() + timedelta(seconds=ctx.approval_timeout)
                decisions.record(step, "approval_escalated", chain[a.level],
                                 f"deadline passed without a decision; asking "
                                 f"{chain[a.level]}", {"approval_id": approval_id,
                                                       "level": a.level})
            else:
                a.status = "expired"
        decisions.record(step, "approval_decided", a.status,
                         a.note or ("auto-denied: last deadline passed"
                                    if a.status == "expired" else ""),
                         {"approval_id": approval_id, "role": a.role,
                          "edited_arguments": a.edited},
                         actor=a.decided_by or "deadline")
        if not a.log and not (a.status == "approved" and a.edited is not None):
            # (edited arguments are logged once the gate has re-checked them)
            a.log.append(f"{a.status} by {a.decided_by or 'deadline'}")
        if not any(x.status == "pending" for x in self.approvals.values()):
            seam.upsert([AWAITING_KEY.value_set(False)])
            seam.parked(False)
        return a

    def flush_ignored(self, step: int) -> None:
        """Audit the decisions that changed nothing (duplicates, disallowed roles, never
        asked)."""
        for approval_id, by, why in self._ignored:
            self._decisions.record(step, "approval_ignored", "ignored", why,
                                   {"approval_id": approval_id}, actor=by)
        for approval_id, early in sorted(self._early.items()):
            self._decisions.record(step, "approval_ignored", "ignored",
                                   f"{early.via} for approval {approval_id!r}, which this run "
                                   f"never asked", {"approval_id": approval_id},
                                   actor=early.decision.by)
