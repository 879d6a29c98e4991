"""Least privilege in the ledger database: workers run as a login role in ``stead_worker``,
which may append audit rows but never change them; migrations need the owner; ``stead db``
sets roles up. All on the embedded PostgreSQL the suite runs on, whose workers already
connect as ``stead_app``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from _cli import cli_env, stead

from stead.client import start_run
from stead.contracts.audit import GENESIS, chain_hash
from stead.contracts.models import DecisionRow, RunRequest
from stead.errors import SettingsError
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.dbroles import (
    APPEND_ONLY_TABLES,
    EMBEDDED_WORKER_ROLE,
    WORKER_GROUP,
    dsn_with_user,
    grant_worker_role,
    role_privileges,
)
from stead.storage.ledger import Ledger, migrate
from stead.worker import WorkerHost

MEMORY_TABLES = {"stead_memory", "stead_memory_namespaces"}


@pytest.fixture
async def as_worker(stack: EmbeddedStack) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the login role the embedded stack hands its workers."""
    conn = await asyncpg.connect(stack.worker_database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def scratch_db(stack: EmbeddedStack) -> AsyncIterator[str]:
    """An empty database on the stack's server (the owner's DSN), dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'create database "{name}"')
    try:
        yield stack.database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()


@pytest.fixture
async def temp_role(stack: EmbeddedStack) -> AsyncIterator[str]:
    """A role name that is dropped (with its grants) after the test."""
    name = f"stead_test_{uuid.uuid4().hex[:8]}"
    yield name
    admin = await asyncpg.connect(stack.database_url)
    try:
        if await admin.fetchval("select 1 from pg_roles where rolname=$1", name):
            await admin.execute(f'drop owned by "{name}"; drop role "{name}"')
    finally:
        await admin.close()


def _decision(workflow_id: str) -> tuple[object, ...]:
    return (workflow_id, 1, "run-1", 0, "route", "allow", "", "stead", "", "{}",
            f"{workflow_id}:run-1:1", "genesis", "h1")


_INSERT_DECISION = (
    "insert into stead_decisions(workflow_id, seq, run_id, step, kind, decision, reason, actor,"
    " policy, data, dedupe_key, prev_hash, hash) values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,"
    "$13)")


def test_workers_get_the_least_privilege_role(settings: Settings, stack: EmbeddedStack) -> None:
    """Resolved settings: workers connect as stead_app, migrations run as the owner."""
    assert settings.ledger.database_url == dsn_with_user(stack.database_url, EMBEDDED_WORKER_ROLE)
    assert settings.ledger.database_url.startswith("postgresql://stead_app@127.0.0.1:")
    assert settings.ledger.migration_database_url == stack.database_url
    assert stack.database_url.startswith("postgresql://postgres@")


async def test_worker_role_appends_decisions_but_cannot_change_or_remove_them(
        as_worker: asyncpg.Connection) -> None:
    wf = f"roles-{uuid.uuid4().hex[:8]}"
    assert await as_worker.execute(_INSERT_DECISION, *_decision(wf)) == "INSERT 0 1"
    assert await as_worker.fetchval(
        "select decision from stead_decisions where workflow_id=$1", wf) == "allow"

    for sql in ("update stead_decisions set decision='deny' where workflow_id=$1",
                "delete from stead_decisions where workflow_id=$1"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError,
                           match="permission denied for table stead_decisions"):
            await as_worker.execute(sql, wf)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await as_worker.execute("truncate stead_decisions")
    assert await as_worker.fetchval(
        "select decision from stead_decisions where workflow_id=$1", wf) == "allow"


@pytest.mark.parametrize("table", ["stead_model_calls", "stead_memory_ops"])
async def test_other_audit_tables_refuse_update_and_delete_to_the_worker(
        as_worker: asyncpg.Connection, table: str) -> None:
    for sql in (f"update {table} set workflow_id = workflow_id", f"delete from {table}"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError,
                           match=f"permission denied for table {table}"):
            await as_worker.execute(sql)


async def test_append_only_trigger_stops_a_role_granted_too_much(
        stack: EmbeddedStack, temp_role: str) -> None:
    """Privileges are one wall; the trigger is another, for every role but the owner."""
    wf = f"roles-{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(stack.database_url)
    try:
        await owner.execute(f'create role "{temp_role}" login')
        await owner.execute(f'grant all on stead_decisions to "{temp_role}"')  # a mistake
        await owner.execute(_INSERT_DECISION, *_decision(wf))
        careless = await asyncpg.connect(dsn_with_user(stack.database_url, temp_role))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError,
                               match=f"stead_decisions is append-only: UPDATE refused for "
                                     f"role {temp_role}"):
                await careless.execute(
                    "update stead_decisions set decision='deny' where workflow_id=$1", wf)
            with pytest.raises(asyncpg.InsufficientPrivilegeError,
                               match="append-only: DELETE refused"):
                await careless.execute("delete from stead_decisions where workflow_id=$1", wf)
            with pytest.raises(asyncpg.InsufficientPrivilegeError,
                               match="append-only: TRUNCATE refused"):
                await careless.execute("truncate stead_decisions")
        finally:
            await careless.close()
        # The owner still may (retention, repair): the row is there to be removed.
        assert await owner.execute(
            "delete from stead_decisions where workflow_id=$1", wf) == "DELETE 1"
    finally:
        await owner.close()


async def test_every_table_is_granted_and_only_memory_is_deletable(
        stack: EmbeddedStack) -> None:
    """The role model, table by table; a new table without grants for stead_worker fails
    here (grant them in the migration that creates it)."""
    rows = {r.table: r for r in await role_privileges(stack.database_url, EMBEDDED_WORKER_ROLE)}
    assert set(APPEND_ONLY_TABLES) | MEMORY_TABLES | {"stead_runs", "stead_tool_calls"} <= set(
        rows)
    unreadable = [t for t, r in rows.items() if "select" not in r.allowed]
    assert not unreadable, f"stead_worker cannot read {unreadable}: grant it in the migration"
    for table in APPEND_ONLY_TABLES:
        assert rows[table].allowed == ("select", "insert") and rows[table].append_only, table
    for table in ("stead_runs", "stead_tool_calls", "stead_tool_attempts"):
        assert rows[table].allowed == ("select", "insert", "update"), table
    for table in MEMORY_TABLES:
        assert rows[table].allowed == ("select", "insert", "update", "delete"), table
    assert rows["stead_schema_migrations"].allowed == ("select",)
    deletable = {t for t, r in rows.items() if "delete" in r.allowed}
    # The token stream is no audit record: workers prune its old rows.
    assert rows["stead_stream"].allowed == ("select", "insert", "delete")
    # Nor is admission: a run's row goes when its minute of counted starts has passed.
    assert rows["stead_admissions"].allowed == ("select", "insert", "update", "delete")
    assert deletable == MEMORY_TABLES | {"stead_stream", "stead_admissions"}
    assert not [t for t, r in rows.items() if "truncate" in r.allowed]
    # The owner keeps everything.
    owner = {r.table: r for r in await role_privileges(stack.database_url, "postgres")}
    assert "delete" in owner["stead_decisions"].allowed


async def test_a_full_run_works_under_the_worker_role(worker: WorkerHost, settings: Settings,
                                                      ledger: Ledger) -> None:
    assert worker.ledger is not None and worker.client is not None
    async with worker.ledger.pool.acquire() as conn:
        who = await conn.fetchrow("select current_user, r.rolsuper from pg_roles r"
                                  " where r.rolname = current_user")
    assert who is not None and (who["current_user"], who["rolsuper"]) == ("stead_app", False)

    handle = await start_run(worker.client, RunRequest(agent="ops",
                                                       input="is auth-service healthy?"),
                             temporal=settings.temporal)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed" and "auth-service is healthy" in (result.answer or "")
    trail = await ledger.trail(handle.id)
    assert [r.status for r in trail.runs] == ["completed"]  # finish_run's UPDATE
    assert [c.status for c in trail.tool_calls] == ["completed"]
    assert len(trail.model_calls) == 2 and trail.decisions
    assert await ledger.verify_chain(handle.id) == []


async def test_migrations_as_the_worker_role_fail_clearly_and_write_nothing(
        scratch_db: str) -> None:
    as_worker = dsn_with_user(scratch_db, EMBEDDED_WORKER_ROLE)
    with pytest.raises(SettingsError) as caught:
        await migrate(as_worker)
    message = str(caught.value)
    assert "role 'stead_app' may not apply migrations" in message
    assert "permission denied for schema public" in message
    assert "STEAD_MIGRATE_DATABASE_URL" in message
    owner = await asyncpg.connect(scratch_db)
    try:
        assert await owner.fetchval("select to_regclass('stead_schema_migrations')") is None
        applied = await migrate(scratch_db)
        assert "0006_roles.sql" in applied
        # Up to date: the worker role passes through without needing to create anything.
        assert await migrate(as_worker) == []
        # A migration still pending, as when new code meets an old database.
        await owner.execute("delete from stead_schema_migrations where version = 6")
        with pytest.raises(SettingsError, match=r"0006_roles\.sql is pending"):
            await migrate(as_worker)
        assert not await owner.fetchval("select 1 from stead_schema_migrations"
                                        " where version = 6")
    finally:
        await owner.close()


async def test_migrating_without_createrole_names_the_fix(temp_role: str, scratch_db: str,
                                                         stack: EmbeddedStack) -> None:
    """An owner that may create tables but not roles, on a server without stead_worker, is
    told what an administrator must run (simulated: the cluster's group role is renamed)."""
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'create role "{temp_role}" login')
        await admin.execute(f'alter database "{scratch_db.rsplit("/", 1)[1]}" owner to '
                            f'"{temp_role}"')
        scratch = await asyncpg.connect(scratch_db)
        await scratch.execute("create extension vector")  # needs a superuser
        await scratch.close()
        await admin.execute(f"alter role {WORKER_GROUP} rename to {WORKER_GROUP}_away")
        try:
            with pytest.raises(SettingsError,
                               match=f"cannot create the role stead_worker: the migrating "
                                     f"role {temp_role} lacks CREATEROLE\\). Have a superuser "
                                     f"run once: create role stead_worker nologin; then "
                                     f"migrate again"):
                await migrate(dsn_with_user(scratch_db, temp_role))
        finally:
            await admin.execute(f"alter role {WORKER_GROUP}_away rename to {WORKER_GROUP}")
    finally:
        await admin.close()


async def test_grant_creates_a_login_role_that_joins_the_group(
        stack: EmbeddedStack, temp_role: str) -> None:
    result = await grant_worker_role(stack.database_url, temp_role, password="s3cret'; --")
    assert (result.created, result.password_set, result.warnings) == (True, True, [])
    again = await grant_worker_role(stack.database_url, temp_role)
    assert (again.created, again.password_set) == (False, False)
    admin = await asyncpg.connect(stack.database_url)
    try:
        row = await admin.fetchrow(
            "select rolcanlogin, rolpassword is not null as has_pw,"
            " pg_has_role(rolname, $2, 'member') as member from pg_authid where rolname=$1",
            temp_role, WORKER_GROUP)
    finally:
        await admin.close()
    assert row is not None and (row["rolcanlogin"], row["has_pw"], row["member"]) == (
        True, True, True)
    rows = {r.table: r.allowed for r in await role_privileges(stack.database_url, temp_role)}
    assert rows["stead_decisions"] == ("select", "insert")


async def test_grant_refuses_bad_names_and_warns_about_superusers(
        stack: EmbeddedStack) -> None:
    for bad in ("Robert'); drop table stead_runs; --", "pg_monitor", "stead_worker", "9lives"):
        with pytest.raises(SettingsError, match="invalid role name"):
            await grant_worker_role(stack.database_url, bad)
    superuser = await grant_worker_role(stack.database_url, "postgres")
    assert superuser.created is False
    assert any("superuser" in w for w in superuser.warnings)
    assert any("owns stead tables" in w for w in superuser.warnings)
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"revoke {WORKER_GROUP} from postgres")
    finally:
        await admin.close()


# ------------------------------------------------------------------------- stead db


async def test_cli_grant_privileges_and_migrate(settings: Settings, stack: EmbeddedStack,
                                                temp_role: str) -> None:
    env = cli_env(settings, STEAD_MIGRATE_DATABASE_URL=stack.database_url,
                  APP_PW="pw-from-env")
    done = await stead("db", "grant", "--role", temp_role, "--password-env", "APP_PW",
                       "--json", env=env)
    assert done.code == 0, done.err
    assert done.json() == {"role": temp_role, "created": True, "password_set": True,
                           "group": WORKER_GROUP, "warnings": []}
    assert "pw-from-env" not in done.out + done.err

    shown = await stead("db", "privileges", "--role", temp_role, "--json", env=env)
    assert shown.code == 0, shown.err
    by_table = {r["table"]: r for r in shown.json()}
    assert by_table["stead_decisions"] == {"table": "stead_decisions",
                                           "allowed": ["select", "insert"], "append_only": True}
    assert by_table["stead_memory"]["allowed"] == ["select", "insert", "update", "delete"]
    table = await stead("db", "privileges", "--role", temp_role, env=env)
    assert table.code == 0, table.err
    assert f"privileges of {temp_role}" in table.out
    line = next(ln for ln in table.out.splitlines() if "stead_decisions" in ln)
    cells = [c.strip() for c in line.strip().strip("│").split("│")]
    assert cells == ["stead_decisions", "yes", "yes", "-", "-", "-", "yes"], line

    migrated = await stead("db", "migrate", "--json", env=env)
    assert migrated.code == 0, migrated.err
    assert migrated.json() == {"applied": []}


async def test_cli_migrate_with_only_the_owner_dsn_migrates_that_database(
        settings: Settings, scratch_db: str) -> None:
    """A deploy job holds STEAD_MIGRATE_DATABASE_URL and no DATABASE_URL (docker-compose's
    stead-migrate): it migrates that database, not an embedded one."""
    env = {k: v for k, v in cli_env(settings).items() if k != "DATABASE_URL"}
    env["STEAD_MIGRATE_DATABASE_URL"] = scratch_db
    done = await stead("db", "migrate", env=env)
    assert done.code == 0, done.err
    assert "applied: 0001_ledger.sql" in done.out and "0006_roles.sql" in done.out
    conn = await asyncpg.connect(scratch_db)
    try:
        assert await conn.fetchval("select count(*) from stead_schema_migrations") >= 6
    finally:
        await conn.close()


async def test_cli_db_bad_input_exits_2(settings: Settings, stack: EmbeddedStack,
                                        scratch_db: str) -> None:
    """Bad names, a missing password variable, and migrating without the owner's DSN."""
    env = cli_env(settings, STEAD_MIGRATE_DATABASE_URL=stack.database_url)
    bad = await stead("db", "grant", "--role", "Bad-Name", env=env)
    assert bad.code == 2 and "invalid role name 'Bad-Name'" in bad.err
    unset = await stead("db", "grant", "--role", "stead_x", "--password-env", "NOPE_UNSET",
                        env=env)
    assert unset.code == 2 and "NOPE_UNSET: that environment variable is not set" in unset.err
    # No owner DSN: migrations would run as the worker's DATABASE_URL, and are refused.
    worker_only = {k: v for k, v in env.items() if k != "STEAD_MIGRATE_DATABASE_URL"}
    worker_only["DATABASE_URL"] = dsn_with_user(scratch_db, EMBEDDED_WORKER_ROLE)
    refused = await stead("db", "migrate", env=worker_only)
    assert refused.code == 2, refused.err
    assert "may not apply migrations" in refused.err
    assert "STEAD_MIGRATE_DATABASE_URL" in refused.err


async def test_the_worker_role_supersedes_a_discarded_attempts_rows_and_nothing_else(
        stack: EmbeddedStack, as_worker: asyncpg.Connection) -> None:
    """stead_worker may not delete decisions, yet history's rows must replace what a
    discarded workflow-task attempt wrote: through stead_supersede_decisions (security
    definer, migration 0014) it moves them, whole, into stead_decisions_superseded."""
    wf = f"wf-{uuid.uuid4().hex}"

    def row(decision: str, at: datetime) -> DecisionRow:
        body = {"workflow_id": wf, "run_id": "r", "seq": 1, "step": 0, "kind": "admission",
                "decision": decision, "reason": "", "actor": "stead", "policy": "",
                "data": {}}
        return DecisionRow(**body, at=at, prev_hash=GENESIS, hash=chain_hash(GENESIS, body))

    t1 = datetime.now(UTC)
    worker = await Ledger.connect(stack.worker_database_url)
    try:
        await worker.append_decisions([row("queue", t1)])
        await worker.append_decisions([row("admit", t1 + timedelta(seconds=10))])
        trail = await worker.trail(wf)
    finally:
        await worker.close()
    assert [d.decision for d in trail.decisions] == ["admit"]
    assert [(s.decision, s.created_at) for s in trail.superseded] == [("queue", t1)]
    # The function is the only way: the role still may not delete, nor change what is kept.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_worker.execute("delete from stead_decisions where workflow_id=$1", wf)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_worker.execute("delete from stead_decisions_superseded where workflow_id=$1",
                                wf)
    owner = await asyncpg.connect(stack.database_url)
    try:
        assert await owner.fetchval(
            "select prosecdef and proconfig::text like '%search_path%' from pg_proc"
            " where proname = 'stead_supersede_decisions'")
        assert not await owner.fetchval(
            "select has_function_privilege('public', oid, 'execute') from pg_proc"
            " where proname = 'stead_supersede_decisions'")
    finally:
        await owner.close()
