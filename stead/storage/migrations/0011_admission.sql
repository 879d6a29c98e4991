-- Admission per tenant (issue 18): a row per run of a tenant whose quota caps runs in flight
-- or starts per minute (stead/storage/admission.py). A run waits 'queued' for its turn (FIFO
-- per tenant, by queued_at), holds its slot 'admitted' until it ends, and stays 'ended' for a
-- minute after its start so that the starts of the last minute can be counted. Every decision
-- is taken under a per-tenant transaction advisory lock, so racing workers never admit more
-- than the caps. Tenants without such a quota have no rows (and cost no round trip).

create table stead_admissions (
    workflow_id text primary key,
    run_id text not null,
    -- first execution run id: a row left by an earlier run of a reused workflow id is replaced
    tenant text not null,
    state text not null check (state in ('queued', 'admitted', 'ended')),
    queued_at timestamptz not null,
    admitted_at timestamptz,
    ended_at timestamptz
);

create index stead_admissions_queue on stead_admissions (tenant, state, queued_at, workflow_id);
create index stead_admissions_starts on stead_admissions (tenant, admitted_at);

-- Workers admit, release and prune (rows of ended runs after their minute) as stead_worker.
grant select, insert, update, delete on stead_admissions to stead_worker;
