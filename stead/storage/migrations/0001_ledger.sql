-- The ledger: a queryable, auditable projection of runs, plus what Temporal does not keep
-- (idempotency records, decision rationale, a per-run hash chain).

create extension if not exists vector;

create table stead_runs (
    workflow_id     text not null,
    run_id          text not null,
    agent           text not null,
    tenant          text not null,
    user_id         text,
    input           text not null,
    metadata        jsonb not null default '{}',
    model           text not null default '',
    status          text not null default 'running',
    answer          text,
    error           text,
    steps           integer not null default 0,
    result          jsonb,
    started_at      timestamptz not null default now(),
    finished_at     timestamptz,
    primary key (workflow_id, run_id)
);
create index stead_runs_started on stead_runs (started_at desc);
create index stead_runs_agent on stead_runs (agent, started_at desc);

-- One row per model call attempt.
create table stead_model_calls (
    workflow_id     text not null,
    run_id          text not null,
    step            integer not null,
    attempt         integer not null,
    model           text not null,
    status          text not null,          -- ok | error
    finish_reason   text,
    tool_calls      jsonb not null default '[]',
    content         text,
    error           text,
    input_tokens    integer not null default 0,
    output_tokens   integer not null default 0,
    duration_ms     double precision not null,
    created_at      timestamptz not null default now(),
    primary key (workflow_id, run_id, step, attempt)
);

-- One row per tool call and tool: the idempotency record, claimed before the side effect.
create table stead_tool_calls (
    idempotency_key text primary key,
    workflow_id     text not null,
    run_id          text not null,
    step            integer not null,
    call_id         text not null,
    tool            text not null,
    arguments       jsonb not null,
    status          text not null,          -- running | open | completed | failed
    prev_status     text,
    attempts        integer not null default 1,
    result          jsonb,
    error           text,
    claimed_at      timestamptz not null default now(),
    finished_at     timestamptz
);
create index stead_tool_calls_run on stead_tool_calls (workflow_id, run_id, step);

-- One row per tool activity attempt, failed and lost attempts included.
create table stead_tool_attempts (
    idempotency_key text not null,
    attempt         integer not null,
    workflow_id     text not null,
    run_id          text not null,
    step            integer not null,
    tool            text not null,
    requested_tool  text not null,
    status          text not null,          -- running | ok | error | replayed | reconciled
    error_type      text,
    error           text,
    started_at      timestamptz not null default now(),
    duration_ms     double precision,
    primary key (idempotency_key, attempt)
);
create index stead_tool_attempts_run on stead_tool_attempts (workflow_id, run_id);

-- Every decision the runtime made, chained by hash per workflow so tampering is detectable.
create table stead_decisions (
    workflow_id     text not null,
    seq             integer not null,
    run_id          text not null,
    step            integer not null,
    kind            text not null,          -- e.g. call_rejected, fallback, run_finished
    decision        text not null,
    reason          text not null default '',
    actor           text not null default 'stead',
    policy          text not null default '',
    data            jsonb not null default '{}',
    dedupe_key      text not null,
    created_at      timestamptz not null default now(),
    prev_hash       text not null,
    hash            text not null,
    primary key (workflow_id, seq),
    unique (dedupe_key)
);

-- Large payloads by content hash (model context, tool outputs), referenced from history.
create table stead_blobs (
    digest          text primary key,
    size_bytes      integer not null,
    body            bytea not null,
    created_at      timestamptz not null default now()
);
