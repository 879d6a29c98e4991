-- Model chains (issue #17): an agent may declare several models, each later one answering a
-- turn only when those before it failed. A model call row says which model of the chain was
-- called: its name (ModelEndpoint.name) and its place (0: the first choice). The first
-- choice's attempts and its fallback's attempts of one step are both numbered from 1, so the
-- place joins the primary key. Rows written before have '' and 0 (no chain).

alter table stead_model_calls
    add column endpoint text not null default '',
    add column fallback integer not null default 0;

alter table stead_model_calls drop constraint stead_model_calls_pkey;
alter table stead_model_calls add primary key (workflow_id, run_id, step, fallback, attempt);
