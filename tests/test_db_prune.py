"""``stead db prune``: the owner removes the tenant rows workers leave behind and cannot delete.

What this pins: spend reservations whose money is in the windows (settled, released,
abandoned) and are older than ``--older-than`` go; a live reservation, however old, an expired
one not yet charged (its tenant idle since), and a recent settled one stay;
ended runs' admission rows go once their minute has passed, queued and admitted ones stay; the
worker role itself cannot delete reservations (why this is an owner's command)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from _cli import cli_env, stead

from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger


async def _reservation(ledger: Ledger, tenant: str, name: str, state: str, *,
                       reserved_days_ago: float, expires_in_seconds: float) -> None:
    await ledger.pool.execute(
        "insert into stead_spend_reservations (workflow_id, run_id, step, tenant, usd, "
        " day_start, month_start, state, attempt, expires_at, reserved_at) values "
        "($1, 'r', 1, $2, 0.01, now(), now(), $3, 1, "
        " clock_timestamp() + make_interval(secs => $5), "
        " clock_timestamp() - $4 * interval '1 day')",
        f"{tenant}-{name}", tenant, state, reserved_days_ago, expires_in_seconds)


async def _admission(ledger: Ledger, tenant: str, name: str, state: str, *,
                     admitted_seconds_ago: float | None) -> None:
    await ledger.pool.execute(
        "insert into stead_admissions (workflow_id, run_id, tenant, state, queued_at, "
        " admitted_at) values ($1, 'r', $2, $3, clock_timestamp(), "
        " clock_timestamp() - make_interval(secs => $4))",
        f"{tenant}-{name}", tenant, state, admitted_seconds_ago)


async def test_prune_removes_only_rows_that_no_longer_count_and_are_old(
        settings: Settings, stack: EmbeddedStack, ledger: Ledger) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    await _reservation(ledger, tenant, "old-settled", "settled", reserved_days_ago=9,
                       expires_in_seconds=-8 * 86400)
    await _reservation(ledger, tenant, "old-released", "released", reserved_days_ago=8,
                       expires_in_seconds=-8 * 86400)
    await _reservation(ledger, tenant, "old-expired", "reserved", reserved_days_ago=8,
                       expires_in_seconds=-8 * 86400)
    await _reservation(ledger, tenant, "old-abandoned", "abandoned", reserved_days_ago=8,
                       expires_in_seconds=-8 * 86400)
    await _reservation(ledger, tenant, "old-live", "reserved", reserved_days_ago=8,
                       expires_in_seconds=600)
    await _reservation(ledger, tenant, "new-settled", "settled", reserved_days_ago=1,
                       expires_in_seconds=-86400)
    await _admission(ledger, tenant, "ended-old", "ended", admitted_seconds_ago=120)
    await _admission(ledger, tenant, "ended-new", "ended", admitted_seconds_ago=5)
    await _admission(ledger, tenant, "admitted", "admitted", admitted_seconds_ago=3600)
    await _admission(ledger, tenant, "queued", "queued", admitted_seconds_ago=None)

    env = cli_env(settings, STEAD_MIGRATE_DATABASE_URL=stack.database_url)
    done = await stead("db", "prune", "--older-than", "7d", "--json", env=env)
    assert done.code == 0, done.err
    counts = done.json()
    assert counts["spend_reservations"] >= 3 and counts["admissions"] >= 1

    left = {r["workflow_id"].removeprefix(f"{tenant}-") for r in await ledger.pool.fetch(
        "select workflow_id from stead_spend_reservations where tenant = $1", tenant)}
    assert left == {"old-live", "old-expired", "new-settled"}
    left = {r["workflow_id"].removeprefix(f"{tenant}-") for r in await ledger.pool.fetch(
        "select workflow_id from stead_admissions where tenant = $1", tenant)}
    assert left == {"ended-new", "admitted", "queued"}

    table = await stead("db", "prune", "--older-than", "1d", env=env)
    assert table.code == 0, table.err
    assert table.out.startswith("pruned ") and "spend reservations" in table.out
    left = {r["workflow_id"].removeprefix(f"{tenant}-") for r in await ledger.pool.fetch(
        "select workflow_id from stead_spend_reservations where tenant = $1", tenant)}
    # the settled one of a day ago is older than 1d by now
    assert left == {"old-live", "old-expired"}
    bad = await stead("db", "prune", "--older-than", "soon", env=env)
    assert bad.code == 2 and "--older-than" in bad.err


async def test_an_idle_tenants_expired_reservation_survives_prune_and_counts_in_its_month(
        settings: Settings, stack: EmbeddedStack, ledger: Ledger) -> None:
    """Migration 0013 charges an expired, unsettled reservation to its windows only at its
    tenant's next reserve; a tenant that never calls again has it nowhere else, so pruning it
    would drop that money from the month for good."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    await ledger.pool.execute(
        "insert into stead_spend_reservations (workflow_id, run_id, step, tenant, usd, "
        " day_start, month_start, state, attempt, expires_at, reserved_at) values "
        "($1, 'r', 1, $1, 0.25, date_trunc('day', now() at time zone 'UTC') at time zone 'UTC',"
        " date_trunc('month', now() at time zone 'UTC') at time zone 'UTC', 'reserved', 1, "
        " clock_timestamp() - interval '1 hour', clock_timestamp() - interval '2 hours')",
        tenant)
    env = cli_env(settings, STEAD_MIGRATE_DATABASE_URL=stack.database_url)
    done = await stead("db", "prune", "--older-than", "30m", "--json", env=env)
    assert done.code == 0, done.err
    assert await ledger.pool.fetchval(
        "select count(*) from stead_spend_reservations where tenant = $1", tenant) == 1
    month = [w for w in await ledger.spend_usage({}, tenant=tenant) if w.window == "month"]
    assert len(month) == 1 and month[0].spent_usd == pytest.approx(0.25)


async def test_the_worker_role_cannot_delete_reservations(settings: Settings) -> None:
    """Why pruning is the owner's: stead_worker holds no DELETE on the reservations."""
    assert settings.ledger.database_url is not None
    conn = await asyncpg.connect(settings.ledger.database_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("delete from stead_spend_reservations where false")
    finally:
        await conn.close()
