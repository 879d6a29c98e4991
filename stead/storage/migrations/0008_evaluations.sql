-- Online evaluation: scores of finished production runs, written by EvaluationWorkflow
-- (workflows/evaluation.py) after the runs ended, read by `stead metrics` (task success) and
-- `stead drift` (the task_success signal).
--
-- One row per run and evaluator version. A row is written once (a retried evaluation finds it
-- and adds nothing); a new version of an evaluator adds its own row beside the old one, and
-- readers take each evaluator's newest row.

create table stead_evaluations (
    workflow_id     text not null,
    run_id          text not null,
    agent           text not null,
    evaluator       text not null,
    version         integer not null,
    digest          text not null default '',   -- hash of the declaration (rubric, options)
    kind            text not null,               -- rule | graph | judge
    status          text not null,               -- scored | skipped | error
    score           double precision,            -- 0..1; null unless scored
    passed          boolean,                     -- null unless scored
    feedback        text not null default '',    -- why it failed, or why it was skipped
    error           text,                        -- what the evaluator raised (status error)
    model           text,                        -- the model a judge asked
    input_tokens    integer not null default 0,
    output_tokens   integer not null default 0,
    duration_ms     double precision not null default 0,
    source          text not null,               -- workflow_id/run_id of the evaluation run
    evaluated_at    timestamptz not null default now(),
    primary key (workflow_id, run_id, evaluator, version)
);
create index stead_evaluations_evaluated on stead_evaluations (evaluated_at desc);

-- The evaluation sweep looks for runs that finished in its look-back window.
create index stead_runs_finished on stead_runs (finished_at) where finished_at is not null;

-- Workers write scores once and read them; they never change one (see 0006_roles.sql).
grant select, insert on stead_evaluations to stead_worker;
