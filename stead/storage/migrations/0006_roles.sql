-- Least privilege: the role workers act as, and append-only audit tables.
--
-- Role model (see stead/dbroles.py):
--   owner         runs the migrations (STEAD_MIGRATE_DATABASE_URL) and owns every table;
--                 the only role that may change or remove audit rows (retention, repair).
--   stead_worker  a NOLOGIN group holding exactly what workers and the CLI need. Login roles
--                 (DATABASE_URL) are made members of it: `stead db grant --role NAME`.
--
-- What stead_worker may do, table by table (derived from what stead/ledger.py,
-- stead/memory/pgvector.py and stead/evals/drift.py execute):
--   read, append, update:   stead_runs (finish), stead_tool_calls (claim, finish),
--                           stead_tool_attempts (finish), stead_drift_checks (retried check)
--   read, append, update, delete:
--                           stead_memory (upsert, delete by id/filter/subject, purge expired),
--                           stead_memory_namespaces (retention set/cleared)
--   read, append only:      stead_decisions, stead_model_calls, stead_memory_ops (audit),
--                           stead_blobs (content-addressed, immutable)
--   read only:              stead_schema_migrations (a worker checks nothing is pending)
--
-- A later migration that adds a table grants stead_worker what it needs on it, in the same
-- file; tests/test_db_roles.py fails for a table the role cannot read.

do $$
begin
    begin
        if not exists (select from pg_roles where rolname = 'stead_worker') then
            create role stead_worker nologin;
        end if;
    exception
        when duplicate_object or unique_violation then
            null;  -- another database of this cluster created it at the same moment
        when insufficient_privilege then
            raise exception 'cannot create the role stead_worker: the migrating role % lacks '
                            'CREATEROLE', current_user
                using errcode = 'insufficient_privilege',
                      hint = 'Have a superuser run once: create role stead_worker nologin; '
                             'then migrate again.';
    end;
    execute format('grant usage on schema %I to stead_worker', current_schema());
end
$$;

grant select on stead_schema_migrations to stead_worker;
grant select, insert, update on stead_runs, stead_tool_calls, stead_tool_attempts,
    stead_drift_checks to stead_worker;
grant select, insert, update, delete on stead_memory, stead_memory_namespaces to stead_worker;
grant select, insert on stead_decisions, stead_model_calls, stead_memory_ops, stead_blobs
    to stead_worker;

-- Privileges already keep stead_worker from changing audit rows; this trigger also stops any
-- other role that is granted too much by mistake (a reporting role with ALL, say). Only the
-- table's owner (and superusers, who could drop the trigger anyway) passes.
create function stead_append_only() returns trigger
language plpgsql as $$
begin
    if pg_has_role(current_user,
                   (select relowner from pg_catalog.pg_class where oid = tg_relid), 'usage') then
        return null;  -- ignored for statement-level triggers: the statement proceeds
    end if;
    raise exception '% is append-only: % refused for role %', tg_table_name, tg_op, current_user
        using errcode = 'insufficient_privilege',
              hint = 'audit rows are never changed; only the table owner may (retention)';
end
$$;

create trigger stead_decisions_append_only
    before update or delete or truncate on stead_decisions
    for each statement execute function stead_append_only();
create trigger stead_model_calls_append_only
    before update or delete or truncate on stead_model_calls
    for each statement execute function stead_append_only();
create trigger stead_memory_ops_append_only
    before update or delete or truncate on stead_memory_ops
    for each statement execute function stead_append_only();
