-- First-boot setup of the stack's PostgreSQL: one server, three databases, four roles.
--
-- The image's entrypoint runs this once, as the superuser, only when the data volume is empty
-- (psql with ON_ERROR_STOP, so any failure aborts the first boot instead of leaving half a
-- setup behind). Passwords come from the postgresql service's environment via \getenv, so
-- none is written here; see docker-compose.yml for the variables and their defaults.
--
--   temporal, temporal_visibility  owned by role temporal  (Temporal persistence + visibility)
--   stead                          owned by role stead     (audit ledger, payloads, memory)
--
-- The ledger's role model (stead/migrations/0006_roles.sql, README "Deployment"):
--   stead         owner of the stead database and its tables; runs the migrations
--                 (STEAD_MIGRATE_DATABASE_URL, the stead-migrate job). Not a superuser.
--   stead_worker  NOLOGIN group; the migrations grant it exactly what workers need (no DDL,
--                 audit tables append-only). Created here so the owner needs no CREATEROLE.
--   stead_app     what workers log in as (DATABASE_URL): a member of stead_worker, nothing more.

\getenv temporal_password TEMPORAL_DB_PASSWORD
\getenv stead_password STEAD_DB_PASSWORD
\getenv stead_app_password STEAD_APP_DB_PASSWORD

\if :{?temporal_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'init.sql: TEMPORAL_DB_PASSWORD is not set'; END $$;
\endif
\if :{?stead_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'init.sql: STEAD_DB_PASSWORD is not set'; END $$;
\endif
\if :{?stead_app_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'init.sql: STEAD_APP_DB_PASSWORD is not set'; END $$;
\endif

-- Temporal's schema tool creates the tables (the temporal-schema job, deploy/temporal/
-- setup-schema.sh); it needs no CREATE DATABASE right because the databases exist here.
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
-- The visibility schema creates btree_gin itself: a trusted extension since PostgreSQL 13, so
-- the database owner may, and temporal needs no superuser rights.
CREATE DATABASE temporal_visibility OWNER temporal;

CREATE ROLE stead LOGIN PASSWORD :'stead_password';
CREATE DATABASE stead OWNER stead;
CREATE ROLE stead_worker NOLOGIN;
CREATE ROLE stead_app LOGIN PASSWORD :'stead_app_password' IN ROLE stead_worker;

-- pgvector backs semantic memory. Only a superuser may create it, so it is created here and
-- stead's own migrations find it present.
\connect stead
CREATE EXTENSION IF NOT EXISTS vector;
