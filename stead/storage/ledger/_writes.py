"""Ledger writes: runs, model calls, tool claims and outcomes, decisions, memory operations.

    await ledger.start_run(StartRun(ref=ref, request=request), model="scripted:ops")
    claim = await ledger.claim_tool(inv, tool=inv.tool, attempt=1)    # before the side effect
    await ledger.finish_tool(ToolAttemptReport(key=inv.idempotency_key, attempt=1,
                                               outcome="ok", result={...}))

Each write takes the contract object it records (``stead.contracts.models``) and is keyed so that a
retried activity writes once. Every value is redacted and made storable on the way in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from stead.contracts.audit import canonical
from stead.contracts.models import (
    SYNTHETIC_KEY,
    DecisionRow,
    MemoryOpRecord,
    ModelCallRecord,
    RunRef,
    RunResult,
    StartRun,
    ToolAttemptReport,
    ToolInvocation,
)
from stead.errors import LedgerError
from stead.storage.ledger._chain import Pair, by_run, chained
from stead.storage.ledger._core import LedgerBase
from stead.storage.ledger._retry import TRANSIENT
from stead.storage.ledger._stream import StreamPiece, append_args, append_racing, append_sql

_RECORD = (
    "insert into stead_model_calls(workflow_id, run_id, step, attempt, model, status,"
    " finish_reason, tool_calls, content, error, input_tokens, output_tokens, duration_ms,"
    " endpoint, fallback, cost_usd)"
    " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) on conflict do nothing")
_RECORD_WITH_STREAM = "with call as ({}), {} {}".format(
    _RECORD, *append_sql(17))
"""A model call and its token stream rows (an answer that came whole): one round trip."""

stream_log = logging.getLogger("stead.streaming")
"""Where a stream row that could not be stored with its model call is reported."""

OnWait = Callable[[], None] | None
"""Called while waiting for the database to come back (an activity passes its heartbeat)."""

ABANDONED = ("abandoned: the run ended without an outcome for this call (its last attempt "
             "timed out or its worker was lost)")
"""Error of a tool call that was still unresolved when its run finished."""


@dataclass(frozen=True)
class Claim:
    """Result of claiming an idempotency key before a tool's side effect."""

    kind: Literal["new", "completed", "unknown", "retry", "failed"]
    """``new``: first attempt; ``retry``: an earlier attempt failed cleanly;
    ``completed``: the key already has a result; ``unknown``: an earlier attempt started and
    never reported (its worker died) — the side effect may or may not have happened;
    ``failed``: a final failure is on record (its report to Temporal was lost) — answer with
    it again, never run the tool again."""
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None
    """For ``failed``: the recorded error message."""
    error_type: str | None = None
    """For ``failed``: the recorded error type (e.g. ``ToolOutcomeUnknown``)."""


@dataclass(frozen=True)
class Counted:
    """One decision of a finished run that its metrics count (``FinishedRun.decisions``)."""

    seq: int
    kind: str
    decision: str
    approval_id: str | None
    """``data.approval_id``: pairs an ``approval_requested`` with its ``approval_decided``."""
    at: datetime


@dataclass(frozen=True)
class FinishedRun:
    """What ``finish_run(..., counting=kinds)`` read back in its own statement: what the run's
    metrics are counted from (``SteadMetrics.finished_run``)."""

    agent: str
    seconds: float | None
    """From the run's start to its finish, as the ledger recorded them."""
    synthetic: str | None
    """The request's ``SYNTHETIC_KEY`` metadata (evaluation and counterfactual runs)."""
    decisions: tuple[Counted, ...]
    """The run's stored decisions of the kinds counted, in ``seq`` order."""


class LedgerWrites(LedgerBase):
    """The ledger's writes (see the module docstring)."""

    # ----------------------------------------------------------------------- runs

    async def start_run(self, start: StartRun, *, model: str, on_wait: OnWait = None) -> None:
        """Open the run's row: ids from ``start.ref``, the rest from ``start.request``."""
        red, ref, req = self._store, start.ref, start.request
        user, input, metadata = red.optional(req.user), red.text(req.input), \
            red.value(req.metadata)

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_runs(workflow_id, run_id, agent, tenant, user_id, input,"
                " metadata, model) values($1,$2,$3,$4,$5,$6,$7,$8)"
                " on conflict (workflow_id, run_id) do nothing",
                ref.workflow_id, ref.run_id, req.agent, req.tenant, user, input, metadata, model)
        await self._retrying(op, on_wait)

    async def finish_run(self, ref: RunRef, result: RunResult, *,
                         decisions: Sequence[DecisionRow] = (),
                         counting: Sequence[str] | None = None,
                         on_wait: OnWait = None) -> FinishedRun | None:
        """Close the run's row with its result, and its calls left without an outcome; store
        the run's last ``decisions`` with it (one statement, see ``append_decisions``).

        With ``counting`` (decision kinds), the same statement also reads back what the run's
        metrics are counted from (``FinishedRun``: the run's agent and duration, and its stored
        decisions of those kinds, these last ones included); None if the run has no row."""
        red = self._store
        answer, error = red.optional(result.answer), red.optional(result.error)
        stored = red.value(result.model_dump(mode="json"))
        # A call the run gave up on (its last attempt timed out, or its worker was lost)
        # would read 'running' forever: close it and say why. A late attempt that still
        # finishes records its own outcome over this.
        back = "" if counting is None else " returning agent, started_at, finished_at, metadata"
        close = (
            "update stead_runs set status=$3, answer=$4, error=$5, steps=$6, result=$7,"
            " finished_at=coalesce(finished_at, now())"
            " where workflow_id=$1 and run_id=$2{cond}" + back,
            "update stead_tool_calls set status='failed', finished_at=now(),"
            " error=coalesce(error, $8)"
            " where workflow_id=$1 and run_id=$2 and status in ('running','open'){cond}")
        args: tuple[object, ...] = (ref.workflow_id, ref.run_id, result.status, answer, error,
                                    result.steps, stored, ABANDONED)
        if counting is not None:
            args = (*args, SYNTHETIC_KEY, list(counting))
        pairs = self._redacted(decisions)
        fast = _as_built(pairs, first_param=len(args) + 1)
        if counting is None:
            finish = f"with run as ({close[0].format(cond='')}) {close[1].format(cond='')}"
        else:
            finish = (f"with run as ({close[0].format(cond='')}),"
                      f" calls as ({close[1].format(cond='')}) {_FIGURES}")

        async def op(c: asyncpg.Connection) -> FinishedRun | None:
            if fast is not None:
                ctes, more = fast
                cond = " and (select ok from linked)"
                head = (f"with {ctes}, run as ({close[0].format(cond=cond)}),"
                        f" calls as ({close[1].format(cond=cond)})")
                if counting is None:
                    if await c.fetchval(f"{head} select ok from stored", *args, *more):
                        return None
                else:
                    row = await c.fetchrow(
                        f"{head} select s.ok, f.* from stored s left join ({_FIGURES}) f"
                        " on true", *args, *more)
                    assert row is not None
                    if row["ok"]:
                        # The statement read the decisions stored before it: add the batch's.
                        return _finished(row, pairs, counting) if row["agent"] else None
            if pairs:
                async with c.transaction():
                    await _insert_chained(c, pairs)
                    return await _finish(c, finish, args, counting)
            return await _finish(c, finish, args, counting)
        return await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- model calls

    async def record_model_call(self, ref: RunRef, call: ModelCallRecord, *,
                                stream: Sequence[StreamPiece] = (),
                                on_wait: OnWait = None) -> None:
        """One model call attempt of step ``ref.step``; with ``stream``, the rows of an answer
        that came whole (``TurnPublisher.end``) are stored as the next rows of the run's token
        stream in the same statement, and its readers woken. The stream is best effort: a
        statement that fails for its rows (not for the database being away) is logged, and the
        call is recorded without them."""
        red = self._store
        tool_calls = red.value([c.model_dump() for c in call.tool_calls])
        content, error = red.optional(call.content), red.optional(call.error)
        args = (ref.workflow_id, ref.run_id, ref.step, call.attempt, call.model, call.status,
                call.finish_reason, tool_calls, content, error, call.usage.input_tokens,
                call.usage.output_tokens, call.duration_ms, call.endpoint, call.fallback,
                call.cost_usd)
        rows = (append_args(ref, attempt=call.attempt, fallback=call.fallback, pieces=stream)
                if stream else ())

        async def op(c: asyncpg.Connection) -> None:
            if rows:
                try:
                    await append_racing(c, _RECORD_WITH_STREAM, (*args, *rows), ref.workflow_id)
                    return
                except (asyncpg.PostgresError, LedgerError) as err:
                    if isinstance(err, TRANSIENT):
                        raise
                    stream_log.warning("stream of %s step %d not published: %s: %s",
                                       ref.workflow_id, ref.step, type(err).__name__, err)
            await c.execute(_RECORD, *args)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- tool calls

    async def claim_tool(self, inv: ToolInvocation, *, tool: str, attempt: int,
                         on_wait: OnWait = None) -> Claim:
        """Claim ``inv.idempotency_key`` and log this attempt of ``tool`` (the tool this
        activity runs, whatever the invocation names), in one round trip."""
        arguments = self._store.value(inv.arguments)
        ref = inv.ref

        async def op(c: asyncpg.Connection) -> Claim:
            row = await c.fetchrow(
                "with claim as ("
                " insert into stead_tool_calls(idempotency_key, workflow_id, run_id, step,"
                "  call_id, tool, arguments, status, attempts)"
                " values($1,$2,$3,$4,$5,$6,$7,'running',1)"
                " on conflict (idempotency_key) do update set"
                "  prev_status = stead_tool_calls.status,"
                "  status = case when stead_tool_calls.status in ('completed','failed')"
                "           then stead_tool_calls.status else 'running' end,"
                "  attempts = stead_tool_calls.attempts + 1"
                " returning status, prev_status, attempts, result, error,"
                "  (xmax = 0) as inserted),"
                " att as ("
                " insert into stead_tool_attempts(idempotency_key, attempt, workflow_id, run_id,"
                "  step, tool, requested_tool, status)"
                " values($1,$8,$2,$3,$4,$6,$9,'running') on conflict do nothing)"
                " select claim.*, (select a.error_type from stead_tool_attempts a"
                "  where a.idempotency_key=$1 and a.status='error'"
                "  order by a.attempt desc limit 1) as error_type from claim",
                inv.idempotency_key, ref.workflow_id, ref.run_id, ref.step, inv.call_id, tool,
                arguments, attempt, inv.requested_tool)
            assert row is not None
            if row["inserted"]:
                return Claim("new", 1)
            prev = row["prev_status"]
            if prev == "completed":
                return Claim("completed", row["attempts"], row["result"])
            if prev == "running":
                return Claim("unknown", row["attempts"])
            if prev == "failed":
                return Claim("failed", row["attempts"], error=row["error"],
                             error_type=row["error_type"])
            return Claim("retry", row["attempts"])
        return await self._retrying(op, on_wait)

    async def finish_tool(self, report: ToolAttemptReport, *, on_wait: OnWait = None) -> None:
        """Record an attempt's outcome; ``report.final`` marks a failure that will not be
        retried."""
        if report.outcome in ("ok", "replayed", "reconciled"):
            call_status = "completed"
        else:
            call_status = "failed" if report.final else "open"
        result, error = self._store.value(report.result), self._store.optional(report.error)

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "with call as ("
                " update stead_tool_calls set status=$3,"
                "  result=coalesce($4, result), error=$6,"
                "  finished_at=case when $3 in ('completed','failed') then now() end"
                " where idempotency_key=$1 and status <> 'completed')"
                " update stead_tool_attempts set status=$7, error_type=$5, error=$6,"
                "  duration_ms=$8 where idempotency_key=$1 and attempt=$2",
                report.key, report.attempt, call_status, result, report.error_type, error,
                report.outcome, report.duration_ms)
        await self._retrying(op, on_wait)

    # ----------------------------------------------------------------------- decisions

    async def append_decisions(self, rows: Sequence[DecisionRow],
                               on_wait: OnWait = None) -> None:
        """Store audit rows built by a workflow (idempotent: a retried write adds nothing).

        The workflow hashed each row as it decided, secrets and all. When redaction changes a
        row, the ledger stores the redacted row re-chained: ``prev_hash`` is the stored hash of
        the row before, ``hash`` covers the stored content, and ``data["_ledger"]`` keeps the
        workflow's hash (``source_hash``), so the chain verifies from stored rows alone and
        still ends at the head the run recorded. Rows after a re-chained one are re-linked
        the same way. Deterministic, so concurrent writers of one batch store the same rows.

        Two attempts of one workflow task may write different rows under the same seqs: a
        local activity writes before Temporal records its task, and when the worker dies the
        retried task replays and may decide otherwise. The rows decided later are history's
        (the retried task runs at a later workflow time): they are stored, and the other
        attempt's rows from where the two differ are moved, whole, to
        ``stead_decisions_superseded`` (``Trail.superseded``; migration 0014).

        The usual batch (one run's rows, none changed by redaction, the stored rows before it
        as the workflow built them) is stored as built in one statement; the statement checks
        the stored links itself and stores nothing when one differs, and then the batch is
        compared and re-chained row by row in a transaction."""
        pairs = self._redacted(rows)
        if not pairs:
            return
        fast = _as_built(pairs, first_param=1)

        async def op(c: asyncpg.Connection) -> None:
            if fast is not None:
                ctes, args = fast
                if await c.fetchval(f"with {ctes} select ok from stored", *args):
                    return
            async with c.transaction():
                await _insert_chained(c, pairs)
        await self._retrying(op, on_wait)

    def _redacted(self, rows: Sequence[DecisionRow]) -> list[Pair]:
        """Each row with the row to store: its texts and data redacted."""
        red = self._store
        return [(r, r.model_copy(update={"reason": red.text(r.reason),
                                         "actor": red.text(r.actor),
                                         "data": red.value(r.data)})) for r in rows]

    # ----------------------------------------------------------------------- memory

    async def record_memory_op(self, ref: RunRef, record: MemoryOpRecord, *,
                               on_wait: OnWait = None) -> None:
        """One memory recall or write of step ``ref.step``, for tenant ``ref.tenant``."""
        query = self._store.optional(record.query)

        async def op_(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_memory_ops(workflow_id, run_id, step, op, tenant, namespaces,"
                " query, item_ids, scores, embedder, backend, duration_ms)"
                " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) on conflict do nothing",
                ref.workflow_id, ref.run_id, ref.step, record.op, ref.tenant, record.namespaces,
                query, record.item_ids, record.scores, record.embedder, record.backend,
                record.duration_ms)
        await self._retrying(op_, on_wait)


# ----------------------------------------------------------------------- decision statements

_DECISION_CTES = (
    "expect as (select * from jsonb_to_recordset(${links}::jsonb) as e(seq integer, hash text)),"
    " linked as (select not exists (select 1 from stead_decisions d join expect e using (seq)"
    "  where d.workflow_id=${wf} and d.run_id=${run} and d.hash <> e.hash) as ok,"
    "  (select count(*) from stead_decisions d join expect e using (seq)"
    "   where d.workflow_id=${wf} and d.run_id=${run} and d.hash = e.hash"
    "   and e.seq > (select min(seq) from expect)) as present),"
    " decided as (insert into stead_decisions(workflow_id, seq, run_id, step, kind, decision,"
    "  reason, actor, policy, data, dedupe_key, created_at, prev_hash, hash)"
    "  select ${wf}, r.seq, ${run}, r.step, r.kind, r.decision, r.reason, r.actor, r.policy,"
    "   r.data, ${wf} || ':' || ${run} || ':' || r.seq, r.at, r.prev_hash, r.hash"
    "  from jsonb_to_recordset(${rows}::jsonb) as r(seq integer, step integer, kind text,"
    "   decision text, reason text, actor text, policy text, data jsonb, at timestamptz,"
    "   prev_hash text, hash text)"
    "  where (select ok from linked) on conflict do nothing returning 1),"
    " stored as (select ok and present + (select count(*) from decided)"
    "  = jsonb_array_length(${rows}::jsonb) as ok from linked)")
"""Stores one run's decisions as built when the stored rows they link to (the row before the
batch, and rows of the batch an earlier attempt wrote) have the hashes the batch expects.
``linked.ok`` says whether they had; ``stored.ok`` also that every row of the batch is now
stored as built (false too when a concurrent writer took a seq first: the caller then
compares row by row, ``_insert_chained``)."""


def _as_built(pairs: list[Pair], *, first_param: int) -> tuple[str, tuple[object, ...]] | None:
    """The ``_DECISION_CTES`` (parameters numbered from ``first_param``) and their arguments
    that store ``pairs`` as the workflow built them; None when they must be re-chained (more
    than one run, or redaction changed a row)."""
    if not pairs:
        return None
    rows = sorted((original for original, _ in pairs), key=lambda r: r.seq)
    first = rows[0]
    if any(r.workflow_id != first.workflow_id or r.run_id != first.run_id for r in rows):
        return None
    for original, clean in pairs:
        if (clean.reason != original.reason or clean.actor != original.actor
                or canonical(clean.data) != canonical(original.data)):
            return None
    n = first_param
    ctes = _DECISION_CTES.format(wf=n, run=n + 1, links=n + 2, rows=n + 3)
    links = [{"seq": first.seq - 1, "hash": first.prev_hash},
             *({"seq": r.seq, "hash": r.hash} for r in rows)]
    stored = [{"seq": r.seq, "step": r.step, "kind": r.kind, "decision": r.decision,
               "reason": r.reason, "actor": r.actor, "policy": r.policy, "data": r.data,
               "at": r.at.isoformat(), "prev_hash": r.prev_hash, "hash": r.hash}
              for r in rows]
    return ctes, (first.workflow_id, first.run_id, links, stored)


_FIGURES = (
    "select r.agent, extract(epoch from r.finished_at - r.started_at)::float8 as seconds,"
    " r.metadata->>$9 as synthetic, d.*"
    " from run r, lateral (select array_agg(seq order by seq) as seqs,"
    "  array_agg(kind order by seq) as kinds, array_agg(decision order by seq) as verdicts,"
    "  array_agg(data->>'approval_id' order by seq) as approvals,"
    "  array_agg(created_at order by seq) as ats"
    "  from stead_decisions where workflow_id=$1 and run_id=$2 and kind = any($10::text[])) d")
"""What ``finish_run(..., counting=...)`` reads back from its ``run`` CTE (the updated row)
and the run's decisions of the kinds counted (``$9``: ``SYNTHETIC_KEY``, ``$10``: the kinds).
A data-modifying CTE's rows are not visible to the statement's other parts: the decisions are
those stored before it."""


async def _finish(c: asyncpg.Connection, sql: str, args: tuple[object, ...],
                  counting: Sequence[str] | None) -> FinishedRun | None:
    if counting is None:
        await c.execute(sql, *args)
        return None
    row = await c.fetchrow(sql, *args)
    return None if row is None else _finished(row, [], counting)


def _finished(row: asyncpg.Record, pairs: list[Pair], counting: Sequence[str]) -> FinishedRun:
    """The figures of ``_FIGURES``, plus the rows of the batch the statement stored itself."""
    seen: dict[int, Counted] = {
        seq: Counted(seq=seq, kind=kind, decision=verdict, approval_id=approval, at=at)
        for seq, kind, verdict, approval, at in zip(
            row["seqs"] or (), row["kinds"] or (), row["verdicts"] or (),
            row["approvals"] or (), row["ats"] or (), strict=True)}
    kinds = set(counting)
    for original, _ in pairs:
        if original.kind in kinds and original.seq not in seen:
            approval = original.data.get("approval_id")
            seen[original.seq] = Counted(
                seq=original.seq, kind=original.kind, decision=original.decision,
                approval_id=None if approval is None else str(approval), at=original.at)
    return FinishedRun(agent=row["agent"], seconds=row["seconds"], synthetic=row["synthetic"],
                       decisions=tuple(seen[k] for k in sorted(seen)))


async def _insert_chained(c: asyncpg.Connection, pairs: list[Pair]) -> None:
    """Store ``pairs`` re-chained to what is stored, run by run (inside a transaction); where
    two attempts of a workflow task decided differently, keep history's rows and move the
    other attempt's to ``stead_decisions_superseded`` (migration 0014)."""
    args, stale = [], []
    for group in by_run(pairs):
        plan = await chained(c, group)
        first = group[0][0]
        if plan.supersede_from is not None:
            assert plan.winner is not None
            await c.fetchval("select stead_supersede_decisions($1, $2, $3, $4, $5)",
                             first.workflow_id, first.run_id, plan.supersede_from,
                             plan.winner[1], plan.keep)
        for r in plan.rows:
            args.append((r.workflow_id, r.seq, r.run_id, r.step, r.kind, r.decision,
                         r.reason, r.actor, r.policy, r.data,
                         f"{r.workflow_id}:{r.run_id}:{r.seq}", r.at, r.prev_hash, r.hash))
        for r in plan.stale:
            assert plan.winner is not None
            stale.append((r.workflow_id, r.seq, r.run_id, r.step, r.kind, r.decision,
                          r.reason, r.actor, r.policy, r.data,
                          f"{r.workflow_id}:{r.run_id}:{r.seq}", r.at, r.prev_hash, r.hash,
                          *plan.winner))
    if args:
        await c.executemany(
            "insert into stead_decisions(workflow_id, seq, run_id, step, kind, decision,"
            " reason, actor, policy, data, dedupe_key, created_at, prev_hash, hash)"
            " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
            " on conflict do nothing", args)
    if stale:
        await c.executemany(
            "insert into stead_decisions_superseded(workflow_id, seq, run_id, step, kind,"
            " decision, reason, actor, policy, data, dedupe_key, created_at, prev_hash, hash,"
            " winner_seq, winner_at)"
            " values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
            " on conflict do nothing", stale)
