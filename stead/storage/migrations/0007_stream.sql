-- The token stream: what a model call writes while the provider is still answering, for
-- subscribers (`stead run --stream`, GET /v1/runs/{workflow_id}/events, the inbox page).
-- Nothing here is in Temporal's history; the final message is recorded once, as before, in
-- stead_model_calls and in the activity's result.
--
-- One row per batch of one model call attempt (never one per token), numbered per workflow:
-- seq is max(seq)+1 under the primary key, so a second writer of the same workflow waits for
-- the first to commit and then takes the next number. Readers therefore never see seq n+1
-- before seq n, and `seq > cursor` resumes without gaps or repeats. Each write also sends a
-- NOTIFY on channel stead_stream whose payload is the workflow id, to wake readers.
--
-- kind:  start  an attempt begins the message of its step (data: model, restart)
--        text   more text of the message (already redacted like every ledger row)
--        reset  the message's whole text so far, replacing what this attempt sent before
--        end    the attempt finished (data: finish_reason, tool_calls)
--        error  the attempt failed (data: error); a later attempt of the step restarts
--
-- A message is (step, attempt, fallback): fallback is the called model's place in the agent's
-- model chain (0: the first), since a fallback model's call starts its attempts at 1 again.
-- Readers show, per step, the message of the latest start row.
--
-- Rows are a convenience for live readers, not audit: stead_worker may delete old ones
-- (the worker prunes rows past their retention).

create table stead_stream (
    workflow_id     text not null,
    seq             bigint not null,
    run_id          text not null,
    tenant          text not null,
    step            integer not null,
    attempt         integer not null,
    fallback        integer not null default 0,
    kind            text not null check (kind in ('start', 'text', 'reset', 'end', 'error')),
    text            text not null default '',
    data            jsonb not null default '{}',
    created_at      timestamptz not null default now(),
    primary key (workflow_id, seq)
);
create index stead_stream_created on stead_stream (created_at);

grant select, insert, delete on stead_stream to stead_worker;
