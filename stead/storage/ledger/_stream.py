"""The token stream's rows: a model call's text as it is written, and the NOTIFY that wakes
readers (table ``stead_stream``, migration 0007).

    last = await ledger.append_stream(ref, attempt=1, pieces=[StreamPiece("text", "Hel")])
    rows = await ledger.stream_rows(workflow_id, run_id=run_id, tenant="acme", after=0)

Unlike the other writes, these do not redact: the publisher (``stead.streaming``) redacts the
whole message so far before it cuts a piece, so that a credential split across two provider
deltas is still found. One statement per batch stores every piece and sends the NOTIFY.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from stead.contracts.models import JsonObject, RunRef, StoredDecision
from stead.errors import LedgerError
from stead.storage.ledger._core import LedgerBase
from stead.storage.ledger._retry import retrying

STREAM_CHANNEL = "stead_stream"
"""The NOTIFY channel; each payload is the workflow id whose stream grew."""
MAX_PAYLOAD_BYTES = 7999
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes and more. A longer workflow id (none
Temporal accepts by default) is sent as an empty payload, which wakes every reader."""
STREAM_RETRY_SECONDS = 5.0
"""How long one stream write waits for an unreachable database: the stream is best effort,
and a long wait would only deliver text that the run's result delivers anyway."""

StreamKind = Literal["start", "text", "reset", "end", "error"]

def append_sql(first: int) -> tuple[str, str]:
    """The statement that stores a batch of pieces as the next rows of one workflow's stream
    and wakes its readers, as a CTE named ``ins`` and the select that ends it. Its eleven
    parameters, in :func:`append_args`'s order, start at ``$first``: the model activity's
    record of a call that came whole puts its own in front (``record_model_call``)."""
    (wf, run, tenant, step, attempt, kinds, texts, data, channel, payload,
     fallback) = (f"${first + i}" for i in range(11))
    cte = ("ins as ("
           " insert into stead_stream(workflow_id, seq, run_id, tenant, step, attempt, fallback,"
           "  kind, text, data)"
           f" select {wf}, coalesce((select max(seq) from stead_stream where workflow_id={wf}),"
           f"  0) + p.n, {run}, {tenant}, {step}, {attempt}, {fallback}, p.kind, p.text, p.data"
           f" from unnest({kinds}::text[], {texts}::text[], {data}::jsonb[])"
           "  with ordinality as p(kind, text, data, n)"
           " order by p.n"
           " returning seq)")
    return cte, f"select max(seq) as last, pg_notify({channel}, {payload}) from ins"


def append_args(ref: RunRef, *, attempt: int, fallback: int,
                pieces: Sequence[StreamPiece]) -> tuple[object, ...]:
    """:func:`append_sql`'s parameters for ``pieces`` of attempt ``attempt`` of ``ref.step``."""
    payload = ref.workflow_id if len(ref.workflow_id.encode()) <= MAX_PAYLOAD_BYTES else ""
    return (ref.workflow_id, ref.run_id, ref.tenant, ref.step, attempt,
            [p.kind for p in pieces], [p.text.replace("\x00", "\ufffd") for p in pieces],
            [p.data for p in pieces], STREAM_CHANNEL, payload, fallback)


async def append_racing(c: asyncpg.Connection, sql: str, args: Sequence[object],
                        workflow_id: str) -> int:
    """Run an appending statement (:func:`append_sql`); return the last row's ``seq``. Another
    writer of the workflow that took the same numbers and committed first (a late attempt
    beside a new one) makes it take the next ones."""
    for _ in range(20):
        try:
            last = await c.fetchval(sql, *args)
        except asyncpg.UniqueViolationError:
            await asyncio.sleep(0)
            continue
        return int(last)
    raise LedgerError(f"stream of {workflow_id!r}: 20 writers raced for its next rows")


_APPEND = "with {} {}".format(*append_sql(1))


@dataclass(frozen=True)
class StreamPiece:
    """One row to append: what happened to the message (``kind``), its text, its facts."""

    kind: StreamKind
    text: str = ""
    data: JsonObject = field(default_factory=dict)


class StreamRow(BaseModel):
    """A stored row of ``stead_stream``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    workflow_id: str
    seq: int
    """Position in the workflow's stream: 1, 2, ... with no gaps and no reordering."""
    run_id: str
    tenant: str
    step: int
    attempt: int
    fallback: int = 0
    """The called model's place in the agent's model chain (0: the first)."""
    kind: StreamKind
    text: str
    data: JsonObject
    created_at: datetime


class LedgerStream(LedgerBase):
    """Appending to and reading the token stream (see the module docstring)."""

    async def append_stream(self, ref: RunRef, *, attempt: int, pieces: Sequence[StreamPiece],
                            fallback: int = 0,
                            on_wait: Callable[[], None] | None = None) -> int:
        """Store ``pieces`` in order as the next rows of the workflow's stream (of model call
        ``attempt`` of step ``ref.step``, the chain's model ``fallback``) and wake its readers;
        return the last row's ``seq``."""
        if not pieces:
            raise ValueError("append_stream needs at least one piece")
        args = append_args(ref, attempt=attempt, fallback=fallback, pieces=pieces)

        async def op(c: asyncpg.Connection) -> int:
            return await append_racing(c, _APPEND, args, ref.workflow_id)
        return await retrying(self.pool, op, seconds=min(self.retry_seconds, STREAM_RETRY_SECONDS),
                              on_wait=on_wait,
                              fail=lambda why: LedgerError(f"ledger unavailable for {why}"))

    async def stream_rows(self, workflow_id: str, *, run_id: str, tenant: str, after: int = 0,
                          limit: int = 500) -> list[StreamRow]:
        """Rows of one run of ``tenant`` after ``seq`` ``after``, oldest first (at most
        ``limit``; ask again from the last one for more)."""
        rows = await self.pool.fetch(
            "select * from stead_stream where workflow_id=$1 and seq>$2 and run_id=$3"
            " and tenant=$4 order by seq limit $5", workflow_id, after, run_id, tenant, limit)
        return [StreamRow.model_validate(dict(r)) for r in rows]

    async def approval_decisions(self, workflow_id: str, *, run_id: str, tenant: str,
                                 after: int = 0) -> list[StoredDecision]:
        """A run's ``approval_requested``/``_escalated``/``_decided`` decisions after ``seq``
        ``after``, in order (what a run's followers hear as ``approval`` events)."""
        rows = await self.pool.fetch(
            "select * from stead_decisions where workflow_id=$1 and run_id=$2 and seq>$3"
            " and kind in ('approval_requested', 'approval_escalated', 'approval_decided')"
            " and run_id in (select run_id from stead_runs where workflow_id=$1 and tenant=$4)"
            " order by seq", workflow_id, run_id, after, tenant)
        return [StoredDecision.model_validate(dict(r)) for r in rows]

    async def prune_stream(self, older_than: timedelta) -> int:
        """Delete rows older than ``older_than``; return how many went."""
        status = await self.pool.execute(
            "delete from stead_stream where created_at < now() - $1::interval", older_than)
        return int(status.rsplit(" ", 1)[-1])
