-- Audit rows that history does not hold: what a discarded workflow task wrote (issue #18).
--
-- A local activity runs inside a workflow task and may write its rows before Temporal has
-- recorded that task. When the worker dies first (or the task times out), the next attempt
-- replays the run and, where the run asked a local activity something (admission, a local
-- model call), may decide otherwise: a different row under the same seq. Until now the ledger
-- kept whichever row it stored first, so the row history holds was dropped, and the audit
-- trail said what the run never did (seen in chaos: 'admission: queue' for a run history
-- admitted at once).
--
-- Which row is history's: the one decided later. A retried workflow task runs at the time of
-- its own WorkflowTaskStarted event, after the attempt it replaces timed out, so every row it
-- decides past the rows they share carries a later `at` (created_at) than the discarded
-- attempt's. stead/storage/ledger/_chain.py compares the two at the first seq they differ:
--
-- * the stored row is older: stead_supersede_decisions moves the stored rows from that seq on
--   (the discarded attempt's; they chain to the wrong row) into stead_decisions_superseded,
--   and the new rows are stored in their place;
-- * the incoming row is older (a stalled attempt writing after its replacement): the incoming
--   rows from that seq on go to stead_decisions_superseded, stead_decisions is untouched.
--
-- Nothing is lost or changed: a superseded row is kept whole, with when and against which row.
-- stead_decisions stays append-only for every role but its owner; the function below is the
-- one narrow path by which a worker moves rows, and it moves only rows of the run it is given,
-- from a seq on, and only into the superseded table, in one statement.

create table stead_decisions_superseded (
    workflow_id     text not null,
    seq             integer not null,
    run_id          text not null,
    step            integer not null,
    kind            text not null,
    decision        text not null,
    reason          text not null default '',
    actor           text not null default 'stead',
    policy          text not null default '',
    data            jsonb not null default '{}',
    dedupe_key      text not null,
    created_at      timestamptz not null,       -- when the discarded attempt decided it
    prev_hash       text not null,
    hash            text not null,
    superseded_at   timestamptz not null default now(),
    winner_seq      integer not null,           -- the seq where the two attempts differ
    winner_at       timestamptz not null,       -- when history's row at winner_seq was decided
    primary key (workflow_id, run_id, seq, hash)
);

grant select, insert on stead_decisions_superseded to stead_worker;

create trigger stead_decisions_superseded_append_only
    before update or delete or truncate on stead_decisions_superseded
    for each statement execute function stead_append_only();

-- Move the run's stored rows from p_from on that were decided before p_winner_at into
-- stead_decisions_superseded, but for those whose workflow hash is in p_keep (history's own
-- rows, written by a racing batch of the winning attempt); how many moved. Runs as the
-- tables' owner (security definer), the only role stead_decisions_append_only lets delete;
-- callers take the run's decision lock first (stead/storage/ledger/_chain.py). What a worker
-- role can do with it is move rows aside, never delete or change one: `stead audit` lists
-- them, and a superseded row of a run whose worker never died is worth a question.
create function stead_supersede_decisions(
    p_workflow_id text, p_run_id text, p_from integer, p_winner_at timestamptz,
    p_keep text[])
returns integer
language sql volatile security definer as $$
    with gone as (
        delete from stead_decisions
        where workflow_id = p_workflow_id and run_id = p_run_id and seq >= p_from
          and created_at < p_winner_at
          and coalesce(data->'_ledger'->>'source_hash', hash) <> all(p_keep)
        returning *),
    kept as (
        insert into stead_decisions_superseded(workflow_id, seq, run_id, step, kind, decision,
            reason, actor, policy, data, dedupe_key, created_at, prev_hash, hash, winner_seq,
            winner_at)
        select workflow_id, seq, run_id, step, kind, decision, reason, actor, policy, data,
            dedupe_key, created_at, prev_hash, hash, p_from, p_winner_at from gone
        on conflict do nothing
        returning 1)
    select count(*)::integer from gone
$$;

-- A security-definer function resolves names with a search_path of its own, never the
-- caller's: only this schema, then pg_catalog.
do $$
begin
    execute format('alter function stead_supersede_decisions(text, text, integer, timestamptz, text[])'
                   ' set search_path = %I, pg_catalog', current_schema());
end
$$;

revoke execute on function stead_supersede_decisions(text, text, integer, timestamptz, text[])
    from public;
grant execute on function stead_supersede_decisions(text, text, integer, timestamptz, text[])
    to stead_worker;
