-- Every memory recall and write a run makes, for audit and metrics (the items themselves
-- live in the vector store).
create table stead_memory_ops (
    workflow_id     text not null,
    run_id          text not null,
    step            integer not null,
    op              text not null,          -- recall | write
    tenant          text not null,
    namespaces      text[] not null default '{}',
    query           text,
    item_ids        text[] not null default '{}',
    scores          double precision[] not null default '{}',
    embedder        text not null default '',
    backend         text not null default '',
    duration_ms     double precision not null default 0,
    created_at      timestamptz not null default now(),
    primary key (workflow_id, run_id, step, op)
);
