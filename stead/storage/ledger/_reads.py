"""Ledger reads: a workflow's runs, its whole trail as typed rows, and its chain check.

    trail = await ledger.trail(workflow_id, tenant="acme")   # never another tenant's rows
    trail.runs[0].status, [d.kind for d in trail.decisions]
    problems = await ledger.verify_chain(workflow_id)        # [] when intact
    spent = await ledger.subtree_spend(child_id)             # a lost sub-agent's spending

Reads take an optional tenant: given, only runs of that tenant (and their rows) exist. Child
tables carry no tenant; they are scoped through their run in ``stead_runs``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from stead.contracts.budget import Spend
from stead.contracts.models import StoredDecision, Trail
from stead.storage.ledger._chain import chain_problems
from stead.storage.ledger._core import LedgerBase

_SCOPED = ("and ($2::text is null or run_id in (select run_id from stead_runs"
           " where workflow_id=$1 and tenant=$2))")
"""Restricts a child table's rows of workflow $1 to runs of tenant $2 (null: every tenant)."""

_TRAIL = {
    "runs": "select * from stead_runs where workflow_id=$1"
            " and ($2::text is null or tenant=$2) order by started_at",
    "model_calls": f"select * from stead_model_calls where workflow_id=$1 {_SCOPED}"
                   " order by step, fallback, attempt",
    "tool_calls": f"select * from stead_tool_calls where workflow_id=$1 {_SCOPED}"
                  " order by step, claimed_at",
    "tool_attempts": f"select * from stead_tool_attempts where workflow_id=$1 {_SCOPED}"
                     " order by step, started_at, attempt",
    "decisions": f"select * from stead_decisions where workflow_id=$1 {_SCOPED}"
                 " order by seq",
    "memory_ops": f"select * from stead_memory_ops where workflow_id=$1 {_SCOPED}"
                  " order by created_at",
    "superseded": f"select * from stead_decisions_superseded where workflow_id=$1 {_SCOPED}"
                  " order by run_id, seq, created_at",
}
"""One statement per ``Trail`` field, in the field's order."""


class LedgerReads(LedgerBase):
    """The ledger's reads (see the module docstring)."""

    async def run_ids(self, workflow_id: str, *, tenant: str | None = None) -> list[str]:
        async def op(c: asyncpg.Connection) -> list[str]:
            rows = await c.fetch(
                "select run_id from stead_runs where workflow_id=$1"
                " and ($2::text is null or tenant=$2) order by started_at",
                workflow_id, tenant)
            return [r["run_id"] for r in rows]
        return await self._retrying(op)

    async def trail(self, workflow_id: str, *, tenant: str | None = None) -> Trail:
        """Everything the ledger holds about a workflow, oldest first (of ``tenant`` only)."""
        async def op(c: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
            return {name: [dict(r) for r in await c.fetch(sql, workflow_id, tenant)]
                    for name, sql in _TRAIL.items()}
        return Trail.model_validate(await self._retrying(op))

    async def subtree_spend(self, workflow_id: str) -> Spend:
        """What the answered model calls of ``workflow_id`` and of every workflow under it
        (sub-agents: ``{workflow_id}/...``) cost, at the prices their runs were pinned to
        (``stead_model_calls.cost_usd``; unpriced calls count tokens and calls, no money)."""
        async def op(c: asyncpg.Connection) -> Any:
            return await c.fetchrow(
                "select coalesce(sum(cost_usd), 0)::float8 as usd,"
                " coalesce(sum(input_tokens), 0)::bigint as input_tokens,"
                " coalesce(sum(output_tokens), 0)::bigint as output_tokens,"
                " count(*) as model_calls from stead_model_calls"
                " where status = 'ok' and (workflow_id = $1 or (workflow_id ~>=~ ($1 || '/')"
                " and workflow_id ~<~ ($1 || '0')))", workflow_id)
        return Spend.model_validate(dict(await self._retrying(op)))

    async def verify_chain(self, workflow_id: str, *, tenant: str | None = None) -> list[str]:
        """Recompute each run's decision hash chain; return the problems (empty: intact).

        Checks links and contents, and that each finished run's chain ends at the head its
        result recorded (so deleting the newest rows shows too). A row the ledger re-chained
        after redaction ends the chain at the head through its ``source_hash``."""
        async def op(c: asyncpg.Connection) -> list[Any]:
            return list(await c.fetch(
                f"select * from stead_decisions where workflow_id=$1 {_SCOPED}"
                " order by run_id, seq", workflow_id, tenant))
        rows = [StoredDecision.model_validate(dict(r)) for r in await self._retrying(op)]
        heads = {r["run_id"]: (r["result"] or {}).get("audit_head")
                 for r in await self._retrying(lambda c: c.fetch(
                     "select run_id, result from stead_runs where workflow_id=$1"
                     " and ($2::text is null or tenant=$2)", workflow_id, tenant))}
        return chain_problems(rows, heads)
