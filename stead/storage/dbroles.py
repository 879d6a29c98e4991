"""Database roles: who may do what to the ledger.

    await migrate(settings.ledger.migration_database_url)                    # as the owner
    await grant_worker_role(owner_dsn, "stead_app", password=secret)  # once per login role
    await role_privileges(owner_dsn, "stead_app")                     # what it may do

Three kinds of role touch the ledger database:

``owner`` (``STEAD_MIGRATE_DATABASE_URL``; unset: ``DATABASE_URL``)
    Runs the migrations, so it owns every table. The only role allowed to change or remove
    audit rows, e.g. for retention. Workers never need its password.
``stead_worker`` (created by migration ``0006_roles.sql``)
    A ``NOLOGIN`` group holding exactly what a worker and the CLI need — table by table, see
    that migration: read everything; append and update runs, tool calls and attempts, drift
    checks, tenant spending windows and reservations (0009); also delete memory items and
    retention rules (erasure, purge); append only to the
    audit tables ``stead_decisions``, ``stead_model_calls`` and ``stead_memory_ops``, which a
    trigger also keeps append-only for every role but the owner.
login roles (``DATABASE_URL``)
    What workers connect as: members of ``stead_worker``, made so by
    :func:`grant_worker_role` (``stead db grant --role NAME``) or by an administrator's
    ``grant stead_worker to NAME``. Several login roles (one per deployment, or two while a
    password rotates) can share the group.

The embedded stack does the same on its own PostgreSQL: the superuser ``postgres`` is the
owner and workers get ``stead_app`` (:data:`EMBEDDED_WORKER_ROLE`), so every ``make test`` and
``stead up`` runs least-privilege too. Role names are cluster-wide in PostgreSQL: two stead
databases on one server share ``stead_worker``, so give each deployment its own server, or
revoke ``CONNECT`` on each database from ``PUBLIC`` and grant it per login role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from stead.errors import LedgerError, SettingsError

__all__ = [
    "APPEND_ONLY_TABLES",
    "EMBEDDED_WORKER_ROLE",
    "PRIVILEGES",
    "WORKER_GROUP",
    "GrantResult",
    "Privilege",
    "TablePrivileges",
    "dsn_with_user",
    "grant_worker_role",
    "role_privileges",
]

WORKER_GROUP = "stead_worker"
"""The group role holding the worker's privileges (created by migration 0006)."""
EMBEDDED_WORKER_ROLE = "stead_app"
"""The login role the embedded stack hands its workers."""
APPEND_ONLY_TABLES = ("stead_decisions", "stead_decisions_superseded", "stead_model_calls",
                      "stead_memory_ops")
"""Audit tables: INSERT and SELECT for the worker; a trigger refuses changes by anyone but the
owner."""

Privilege = Literal["select", "insert", "update", "delete", "truncate"]
PRIVILEGES: tuple[Privilege, ...] = ("select", "insert", "update", "delete", "truncate")

_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class TablePrivileges:
    """What one role may do to one stead table."""

    table: str
    allowed: tuple[Privilege, ...]
    """Privileges the role holds, directly or through a group (``has_table_privilege``)."""
    append_only: bool
    """A trigger refuses UPDATE, DELETE and TRUNCATE to all but the table's owner."""


@dataclass(frozen=True)
class GrantResult:
    role: str
    created: bool
    """The login role did not exist and was created."""
    password_set: bool
    warnings: list[str] = field(default_factory=list)
    """Why the role may still be more powerful than ``stead_worker`` (superuser, owner)."""


def check_role_name(role: str) -> str:
    """A plain lower-case identifier, so it reads the same quoted or not; ``SettingsError``."""
    if not _ROLE_NAME.fullmatch(role):
        raise SettingsError(f"invalid role name {role!r}: use lower-case letters, digits and "
                            f"underscores (at most 63, not starting with a digit)")
    if role.startswith("pg_") or role in (WORKER_GROUP, "public"):
        raise SettingsError(f"invalid role name {role!r}: reserved (pg_* and public belong to "
                            f"PostgreSQL; {WORKER_GROUP} is the group login roles join)")
    return role


def dsn_with_user(dsn: str, user: str, password: str | None = None) -> str:
    """``dsn`` with its user (and password) replaced: the worker's DSN from the owner's."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        raise SettingsError(f"not a postgresql:// URL with a host: {_redact(dsn)}")
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


async def grant_worker_role(owner_dsn: str, role: str, *, password: str | None = None,
                            create: bool = True) -> GrantResult:
    """Make ``role`` a member of ``stead_worker``; create it as a login role first if missing.

    Run with the owner's DSN after the migrations (they create ``stead_worker``). Idempotent:
    an existing member stays one; ``password`` (re)sets the role's password. Creating a role
    needs ``CREATEROLE``; ``create=False`` only grants, for a role an administrator made.
    """
    check_role_name(role)
    conn = await _connect(owner_dsn)
    try:
        async with conn.transaction():
            if not await conn.fetchval("select 1 from pg_roles where rolname=$1", WORKER_GROUP):
                raise LedgerError(f"role {WORKER_GROUP} does not exist: apply the migrations "
                                  f"first (`stead db migrate`)")
            exists = bool(await conn.fetchval("select 1 from pg_roles where rolname=$1", role))
            if not exists and not create:
                raise LedgerError(f"role {role!r} does not exist (create it, or drop "
                                  f"--no-create)")
            # Role statements take no bind parameters: let the server quote them (format %I/%L).
            if not exists:
                await conn.execute(await conn.fetchval(
                    "select format('create role %I login', $1::text)", role))
            if password is not None:
                await conn.execute(await conn.fetchval(
                    "select format('alter role %I login password %L', $1::text, $2::text)",
                    role, password))
            await conn.execute(await conn.fetchval(
                "select format('grant %I to %I', $1::text, $2::text)", WORKER_GROUP, role))
            warnings = await _excess_power(conn, role)
    except asyncpg.InsufficientPrivilegeError as err:
        raise LedgerError(f"cannot set up role {role!r}: {err}. Run this with the owner's DSN "
                          f"(STEAD_MIGRATE_DATABASE_URL); creating a role needs CREATEROLE") \
            from None
    finally:
        await conn.close()
    return GrantResult(role=role, created=not exists, password_set=password is not None,
                       warnings=warnings)


async def _excess_power(conn: asyncpg.Connection, role: str) -> list[str]:
    row = await conn.fetchrow(
        "select rolsuper, rolbypassrls,"
        " exists(select from pg_tables where tableowner = $1 and tablename like 'stead\\_%')"
        "  as owns from pg_roles where rolname = $1", role)
    assert row is not None
    warnings = []
    if row["rolsuper"]:
        warnings.append(f"{role} is a superuser: privileges do not limit it")
    if row["owns"]:
        warnings.append(f"{role} owns stead tables: it may change audit rows; use a separate "
                        f"login role for workers")
    return warnings


async def role_privileges(dsn: str, role: str) -> list[TablePrivileges]:
    """What ``role`` may do to each ``stead_*`` table of the database ``dsn`` points at."""
    conn = await _connect(dsn)
    try:
        if not await conn.fetchval("select 1 from pg_roles where rolname=$1", role):
            raise LedgerError(f"role {role!r} does not exist")
        rows = await conn.fetch(
            "select c.relname as table,"
            + ",".join(f" has_table_privilege($1::name, c.oid, '{p}') as {p}" for p in PRIVILEGES)
            + ", exists(select from pg_trigger t where t.tgrelid = c.oid"
              "   and t.tgname = c.relname || '_append_only') as append_only"
              " from pg_class c where c.relkind = 'r' and c.relname like 'stead\\_%'"
              " and c.relnamespace = current_schema()::regnamespace"
              " order by c.relname", role)
    finally:
        await conn.close()
    return [TablePrivileges(table=r["table"], allowed=tuple(p for p in PRIVILEGES if r[p]),
                            append_only=r["append_only"]) for r in rows]


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as err:
        raise LedgerError(f"cannot connect to {_redact(dsn)}: {err}") from err


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return urlunsplit(parts._replace(
        netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))
