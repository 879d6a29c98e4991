-- First-boot setup of the stack's PostgreSQL: one server, three databases, two roles.
--
-- The image's entrypoint runs this once, as the superuser, only when the data volume is empty
-- (psql with ON_ERROR_STOP, so any failure aborts the first boot instead of leaving half a
-- setup behind). Passwords come from the postgresql service's environment via \getenv, so
-- none is written here; see docker-compose.yml for the variables and their defaults.
--
--   temporal, temporal_visibility  owned by role temporal  (Temporal persistence + visibility)
--   stead                          owned by role stead     (audit ledger, payloads, memory)

\getenv temporal_password TEMPORAL_DB_PASSWORD
\getenv stead_password STEAD_DB_PASSWORD

\if :{?temporal_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'init.sql: TEMPORAL_DB_PASSWORD is not set'; END $$;
\endif
\if :{?stead_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'init.sql: STEAD_DB_PASSWORD is not set'; END $$;
\endif

-- Temporal's schema tool creates the tables; auto-setup runs with SKIP_DB_CREATE=true
-- because the databases already exist here.
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
-- The visibility schema creates btree_gin itself: a trusted extension since PostgreSQL 13, so
-- the database owner may, and temporal needs no superuser rights.
CREATE DATABASE temporal_visibility OWNER temporal;

CREATE ROLE stead LOGIN PASSWORD :'stead_password';
CREATE DATABASE stead OWNER stead;

-- pgvector backs semantic memory. Only a superuser may create it, so it is created here and
-- stead's own migrations find it present.
\connect stead
CREATE EXTENSION IF NOT EXISTS vector;
