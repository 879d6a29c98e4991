-- Drift checks recorded by the scheduled DriftWorkflow (`stead drift --schedule`), listed by
-- `stead drift --checks`. One row per check: the windows compared, the scope, the thresholds
-- and every signal (statistic, threshold, p-value, sample sizes, status) as the report had it.

create table stead_drift_checks (
    id                  bigint generated always as identity primary key,
    source              text unique,            -- workflow_id/run_id of the scheduled run:
                                                -- a retried activity updates, never adds
    checked_at          timestamptz not null,
    baseline_since      timestamptz not null,
    baseline_until      timestamptz not null,
    recent_since        timestamptz not null,
    recent_until        timestamptz not null,
    agent               text,                   -- null: every agent
    tenant              text,                   -- null: every tenant
    include_synthetic   boolean not null default false,
    embedder            text,                   -- null: request embeddings were not compared
    thresholds          jsonb not null,
    signals             jsonb not null,
    crossed             boolean not null        -- any signal crossed its threshold
);
create index stead_drift_checks_checked on stead_drift_checks (checked_at desc);
