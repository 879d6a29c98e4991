-- Semantic memory (pgvector backend): what an agent should recall, kept apart from the ledger.
--
-- One row per item; every query filters on tenant in SQL. The embedding column's dimension
-- (384: all-MiniLM-L6-v2) is checked against the embedder at start by PgVectorStore.ensure and
-- changed only by PgVectorStore.reset_dimension, on the way to re-embedding everything
-- (`stead memory reembed`).

create extension if not exists vector;

create table stead_memory (
    tenant      text not null,
    namespace   text not null,
    id          text not null,
    agent       text,                   -- null: every agent of the tenant recalls it
    subject     text,                   -- the person it is about, for delete-a-subject
    text        text not null,
    metadata    jsonb not null default '{}',
    embedding   vector(384),            -- null only between reset_dimension and re-embedding
    embedder    text not null default '',
    created_at  timestamptz not null,
    expires_at  timestamptz,
    primary key (tenant, namespace, id)
);

-- Approximate nearest neighbours by cosine distance (<=>); ef_search is set per query.
create index stead_memory_embedding on stead_memory
    using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64);
create index stead_memory_tenant_namespace on stead_memory (tenant, namespace);
create index stead_memory_tenant_subject on stead_memory (tenant, subject)
    where subject is not null;
create index stead_memory_expires on stead_memory (expires_at) where expires_at is not null;

-- Retention per namespace: items written without expires_at get created_at + ttl_seconds.
create table stead_memory_namespaces (
    tenant      text not null,
    namespace   text not null,
    ttl_seconds integer not null check (ttl_seconds > 0),
    updated_at  timestamptz not null default now(),
    primary key (tenant, namespace)
);
