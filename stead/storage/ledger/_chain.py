"""The decision hash chain as the ledger keeps it: re-chaining redacted rows, checking a chain.

    rows = await chained(conn, group)            # what to insert for one run's batch
    problems = chain_problems(decisions, heads)  # [] when every run's chain is intact

The workflow hashes each decision as it decides (``stead.contracts.audit``). When redaction changes
a row, the ledger stores it re-chained and keeps the workflow's hash as
``data["_ledger"]["source_hash"]``, so a chain verifies from stored rows alone and still ends
at the head the run recorded.
"""

from __future__ import annotations

import asyncpg

from stead.contracts.audit import GENESIS, canonical, chain_hash
from stead.contracts.models import DecisionRow, StoredDecision

Pair = tuple[DecisionRow, DecisionRow]
"""A decision as the workflow built it and as it is to be stored (redacted)."""


def by_run(pairs: list[Pair]) -> list[list[Pair]]:
    """(original, redacted) pairs grouped by run, each group in seq order."""
    groups: dict[tuple[str, str], list[Pair]] = {}
    for pair in pairs:
        groups.setdefault((pair[0].workflow_id, pair[0].run_id), []).append(pair)
    return [sorted(g, key=lambda p: p[0].seq) for g in groups.values()]


async def chained(c: asyncpg.Connection, group: list[Pair]) -> list[DecisionRow]:
    """The rows of one run to insert, linked to what is stored (see
    ``Ledger.append_decisions``)."""
    first, last = group[0][0], group[-1][0]
    stored = {r["seq"]: r["hash"] for r in await c.fetch(
        "select seq, hash from stead_decisions where workflow_id=$1 and run_id=$2"
        " and seq between $3 and $4", first.workflow_id, first.run_id, first.seq - 1, last.seq)}
    prev = GENESIS if first.seq == 1 else stored.get(first.seq - 1)
    out: list[DecisionRow] = []
    for original, clean in group:
        if original.seq in stored:  # written by an earlier attempt: keep it, link to it
            prev = stored[original.seq]
            continue
        # A missing predecessor (a gap chain_problems reports) keeps the workflow's own link.
        link = original.prev_hash if prev is None else prev
        # Compared as stored JSON, not as Python values: 1e16 == 10000000000000000 in Python,
        # but jsonb gives back the integer, so the hash must cover that.
        same = canonical(clean.model_dump()) == canonical(original.model_dump())
        if same and link == original.prev_hash:
            row = original
        else:
            data = {**clean.data, "_ledger": {"source_hash": original.hash,
                                              "redacted": not same}}
            row = clean.model_copy(update={"data": data, "prev_hash": link})
            row = row.model_copy(update={"hash": chain_hash(link, row.model_dump())})
        out.append(row)
        prev = row.hash
    return out


def chain_problems(rows: list[StoredDecision], heads: dict[str, str | None]) -> list[str]:
    """What is wrong with the stored chains: ``rows`` ordered by run and seq, ``heads`` the
    ``audit_head`` each run recorded (None: the run has not finished)."""
    problems: list[str] = []
    by_run_id: dict[str, list[StoredDecision]] = {run_id: [] for run_id, h in heads.items() if h}
    for r in rows:
        by_run_id.setdefault(r.run_id, []).append(r)
    for run_id, chain in by_run_id.items():
        prev = GENESIS
        for i, r in enumerate(chain, start=1):
            where = f"run {run_id[:8]} seq {r.seq}"
            if r.seq != i:
                problems.append(f"{where}: expected seq {i} (a decision is missing)")
            if r.prev_hash != prev:
                problems.append(f"{where}: prev_hash does not match the previous hash")
            if chain_hash(r.prev_hash, r.model_dump()) != r.hash:
                problems.append(f"{where}: hash mismatch (row altered)")
            prev = r.hash
        head = heads.get(run_id)
        if head and prev != head and _source_hash(chain[-1] if chain else None) != head:
            problems.append(f"run {run_id[:8]}: chain ends at {prev[:12]}, but the run "
                            f"recorded head {head[:12]} (newest decisions missing)")
    return problems


def _source_hash(row: StoredDecision | None) -> str | None:
    """The workflow's hash of a row the ledger re-chained (None for rows stored as built)."""
    meta = row.data.get("_ledger") if row is not None else None
    value = meta.get("source_hash") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None
