"""The run's decision buffer: every decision becomes an audit row on a hash chain.

A row is appended here (``record``) and written by the next activity the run schedules (it
carries ``take()``'s rows and writes them before it acts), or by ``flush()`` before the run
waits. An activity that failed gives its rows back (``give_back``); writes are idempotent.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from stead.workflows._context import Context
from stead.workflows._seam import bookkeeping

with workflow.unsafe.imports_passed_through():
    from stead.activities.runs import RunActivities
    from stead.contracts.audit import GENESIS, chain_hash
    from stead.contracts.models import DecisionBatch, DecisionRow


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

    def give_back(self, rows: list[DecisionRow]) -> None:
        """An activity that carried rows failed: they may be unwritten, send them again."""
        self._unsent = rows + self._unsent

    async def flush(self) -> None:
        """Write the rows not yet written now (before the run waits)."""
        rows = self.take()
        if rows:
            await self._ctx.seam.activity(bookkeeping(RunActivities.record_decisions,
                                                      DecisionBatch(rows=rows)))
