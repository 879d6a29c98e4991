"""The decision hash chain as the ledger keeps it: re-chaining redacted rows, checking a chain.

    plan = await chained(conn, group)            # what to store for one run's batch
    problems = chain_problems(decisions, heads)  # [] when every run's chain is intact

The workflow hashes each decision as it decides (``stead.contracts.audit``). When redaction changes
a row, the ledger stores it re-chained and keeps the workflow's hash as
``data["_ledger"]["source_hash"]``, so a chain verifies from stored rows alone and still ends
at the head the run recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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


@dataclass
class Chained:
    """What to store for one run's batch (see ``chained``)."""

    rows: list[DecisionRow] = field(default_factory=list)
    """For ``stead_decisions``, linked to what is stored."""
    supersede_from: int | None = None
    """The seq from which the stored rows are a discarded attempt's (but for rows of this
    batch a racing write stored already): moved out first."""
    keep: list[str] = field(default_factory=list)
    """The batch's workflow hashes: stored rows with one of them are not superseded."""
    stale: list[DecisionRow] = field(default_factory=list)
    """The batch's own rows (redacted) that a later attempt already replaced, for
    ``stead_decisions_superseded``."""
    winner: tuple[int, datetime] | None = None
    """The seq where the attempts differ, and when history's row there was decided."""


RUN_LOCK = 1937007972
"""Advisory lock class of a run's decision chain (``pg_advisory_xact_lock(RUN_LOCK, hash)``):
writers that must compare with the stored rows take it, so two attempts' batches of one run
are resolved one after the other."""


async def chained(c: asyncpg.Connection, group: list[Pair]) -> Chained:
    """The rows of one run to store, linked to what is stored (see
    ``Ledger.append_decisions``); call inside a transaction.

    A stored row with the same seq and hash as a batch row is an earlier write of that row:
    kept, and linked to. At the first seq where stored and batch rows differ (or where the
    stored row before the batch is not the one the batch links to) two attempts of a workflow
    task decided differently, and the row decided later is history's (migration 0014): the
    stored rows from there on are superseded, or the batch's rows from there on are."""
    first = group[0][0]
    await c.execute("select pg_advisory_xact_lock($1, hashtext($2 || ':' || $3))",
                    RUN_LOCK, first.workflow_id, first.run_id)
    stored = {r["seq"]: r for r in await c.fetch(
        "select seq, hash, coalesce(data->'_ledger'->>'source_hash', hash) as source,"
        " created_at from stead_decisions where workflow_id=$1 and run_id=$2 and seq >= $3"
        " order by seq", first.workflow_id, first.run_id, first.seq - 1)}
    ours = {original.seq: original.hash for original, _ in group}
    out = Chained(keep=list(ours.values()))
    before = stored.get(first.seq - 1)
    if before is not None and before["source"] != first.prev_hash:
        # The batch links to a row other than the stored one before it.
        if first.at > before["created_at"]:
            out.supersede_from, out.winner = first.seq - 1, (first.seq - 1, first.at)
            stored = {seq: r for seq, r in stored.items() if r["source"] == ours.get(seq)}
            before = None
        else:
            out.stale = [_kept(p) for p in group]
            out.winner = (first.seq - 1, before["created_at"])
            return out
    for original, _ in group:
        row = stored.get(original.seq)
        if row is None or row["source"] == original.hash:
            continue
        if original.at > row["created_at"]:  # the stored rows from here on are discarded
            out.supersede_from, out.winner = original.seq, (original.seq, original.at)
            stored = {seq: r for seq, r in stored.items()
                      if seq < original.seq or r["source"] == ours.get(seq)}
        else:  # the batch's rows from here on are: a later attempt's replaced them
            out.stale = [_kept(p) for p in group if p[0].seq >= original.seq]
            out.winner = (original.seq, row["created_at"])
            group = [p for p in group if p[0].seq < original.seq]
        break
    prev = GENESIS if first.seq == 1 else (before["hash"] if before is not None else None)
    for original, clean in group:
        if original.seq in stored:  # written by an earlier attempt: keep it, link to it
            prev = stored[original.seq]["hash"]
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
        out.rows.append(row)
        prev = row.hash
    return out


def _kept(pair: Pair) -> DecisionRow:
    """A superseded batch row as kept: redacted, under the workflow's hash (it is in no
    chain any more), marked when redaction changed it."""
    original, clean = pair
    if canonical(clean.model_dump()) == canonical(original.model_dump()):
        return original
    return clean.model_copy(update={"data": {**clean.data, "_ledger": {
        "source_hash": original.hash, "redacted": True}}})


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
