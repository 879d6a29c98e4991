"""The run's decision buffer: every decision becomes an audit row on a hash chain.

A row is appended here (``record``) and written by an activity that carries it (``carry``):
the next tool call with a side effect (its gate decision is on record before it acts), any
activity once ``CARRY_AT`` rows wait, ``flush()`` before the run waits, and the run's finish.
Model calls and read tools carry nothing otherwise: writing their few rows with every call
cost a ledger round trip each. A row is in the workflow's state from the moment it is
decided, so one that waits is never lost, only written later. An activity that failed gives
its rows back (``give_back``); writes are idempotent.

What an activity carries is its input, not a command: replay does not compare it, so runs
recorded when every activity carried its rows replay unchanged.
"""

from __future__ import annotations

from typing import Any, Final

from temporalio import workflow

from stead.workflows._context import Context
from stead.workflows._seam import bookkeeping

with workflow.unsafe.imports_passed_through():
    from stead.activities.runs import RunActivities
    from stead.contracts.audit import GENESIS, chain_hash
    from stead.contracts.models import DecisionBatch, DecisionRow

CARRY_AT: Final = 64
"""Waiting rows that any activity carries, so the live audit trail never lags far behind."""


class DecisionLog:
    """The audit rows of one run not yet written, and the chain's head."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.seq = 0
        """Rows recorded so far (``RunResult.decisions``)."""
        self.head = GENESIS
        """Hash of the last row (``RunResult.audit_head``)."""
        self._unsent: list[DecisionRow] = []

    def record(self, step: int, kind: str, decision: str, reason: str, data: dict[str, Any],
               *, actor: str = "stead") -> None:
        """Append a decision to the run's audit chain."""
        ref = self._ctx.ref
        self.seq += 1
        row = {"workflow_id": ref.workflow_id, "run_id": ref.run_id, "seq": self.seq,
               "step": step, "kind": kind, "decision": decision, "reason": reason,
               "actor": actor, "policy": self._ctx.policy.ref, "data": data}
        digest = chain_hash(self.head, row)
        self._unsent.append(DecisionRow(**row, at=self._ctx.seam.now(), prev_hash=self.head,
                                        hash=digest))
        self.head = digest

    def take(self) -> list[DecisionRow]:
        """The rows not yet written, for the next activity to carry."""
        rows, self._unsent = self._unsent, []
        return rows

    def carry(self, *, side_effect: bool) -> list[DecisionRow]:
        """What the next activity carries: every waiting row before a ``side_effect``, or
        once ``CARRY_AT`` rows wait; else nothing (a later activity writes them)."""
        return self.take() if side_effect or len(self._unsent) >= CARRY_AT else []

    def give_back(self, rows: list[DecisionRow]) -> None:
        """An activity that carried rows failed: they may be unwritten, send them again."""
        self._unsent = rows + self._unsent

    async def flush(self) -> None:
        """Write the rows not yet written now (before the run waits)."""
        rows = self.take()
        if rows:
            await self._ctx.seam.activity(bookkeeping(RunActivities.record_decisions,
                                                      DecisionBatch(rows=rows)))
