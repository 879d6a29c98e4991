"""A database of its own per peer on the benchmark's PostgreSQL server.

stead's ledger keeps its database; LangGraph's checkpointer and DBOS's system tables get
``bench_langgraph`` and ``bench_dbos`` on the same server (same process, same settings:
``synchronous_commit=off`` as the embedded stack runs it), so no system reads another's
tables and each can be inspected on its own.
"""

from __future__ import annotations

import asyncpg

LANGGRAPH_DB, DBOS_DB = "bench_langgraph", "bench_dbos"


def with_database(owner_dsn: str, database: str) -> str:
    """``owner_dsn`` pointing at ``database`` instead (same server, same user)."""
    base, _, _ = owner_dsn.rpartition("/")
    return f"{base}/{database}"


async def ensure_database(owner_dsn: str, database: str) -> str:
    """Create ``database`` unless it exists; its DSN."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", database):
            await conn.execute(f'create database "{database}"')
    finally:
        await conn.close()
    return with_database(owner_dsn, database)
