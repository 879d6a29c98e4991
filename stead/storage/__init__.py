"""Durable state in PostgreSQL: the ledger, payload blobs, database roles, migrations, and semantic
memory (pgvector or Pinecone)."""
