"""The migration runner: applies the versioned SQL files in ``stead/migrations`` once each.

    applied = await migrate(settings.migration_database_url)   # as the ledger's owner

One migrator at a time across processes (an advisory lock); a file changed after it was
applied is refused (checksums); a role that may not migrate gets the fix in the error.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg

from stead.errors import LedgerError, SettingsError

_LOCK = 7265616401
"""Advisory lock key held while migrating."""


async def migrate(dsn: str) -> list[str]:
    """Apply the versioned SQL files in ``stead/migrations`` once each; return those applied."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    pending = "every migration"
    try:
        # One migrator at a time across processes.
        await conn.execute(f"select pg_advisory_lock({_LOCK})")
        # Created only when missing, so that a least-privilege worker role (which may not
        # create tables) passes through an up-to-date database.
        if await conn.fetchval("select to_regclass('stead_schema_migrations')") is None:
            await conn.execute(
                "create table stead_schema_migrations ("
                " version integer primary key, name text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
        done = {r["version"]: r["checksum"] for r in
                await conn.fetch("select version, checksum from stead_schema_migrations")}
        files = sorted(
            (f for f in resources.files("stead.storage.migrations").iterdir()
             if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        for f in files:
            version = int(f.name.split("_", 1)[0])
            sql = f.read_text()
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise LedgerError(
                        f"migration {f.name} changed after it was applied "
                        f"(checksum {done[version][:12]} -> {checksum[:12]}); "
                        f"add a new migration file instead"
                    )
                continue
            pending = f.name
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "insert into stead_schema_migrations(version, name, checksum)"
                    " values($1, $2, $3)", version, f.name, checksum)
            applied.append(f.name)
    except asyncpg.InsufficientPrivilegeError as err:
        role = await conn.fetchval("select current_user")
        # A migration's own hint (0006: the owner lacks CREATEROLE) knows the fix better.
        fix = err.hint or (
            "Apply them as the ledger's owner: set STEAD_MIGRATE_DATABASE_URL to the owner's "
            "DSN (DATABASE_URL stays the worker's), or run `stead db migrate` with it")
        raise SettingsError(f"role {role!r} may not apply migrations ({pending} is pending: "
                            f"{err.message}). {fix}") from None
    finally:
        await conn.execute(f"select pg_advisory_unlock({_LOCK})")
        await conn.close()
    return applied
