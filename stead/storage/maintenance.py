"""Owner-side upkeep of the tenant tables: rows that workers leave behind and cannot remove.

    pruned = await prune(owner_dsn, older_than=timedelta(days=7))   # stead db prune --older-than 7d

A tenant with spending windows leaves one ``stead_spend_reservations`` row per model call
(migration 0009), and ``stead_worker`` may not delete there: the rows are the per-call trail
of what a tenant's windows were charged. Once a reservation's money is in the windows
(settled, released, or abandoned: charged at its estimate by migration 0013) and it is older
than the cutoff, it only takes space; the window totals (``stead_tenant_spend``) keep what it
added. A reservation still ``reserved`` stays even when expired: 0013 charges it to its windows
only at its tenant's next reserve (and ``spend_usage`` reads it as spent until then), so
deleting it would drop an idle tenant's unsettled call from its month for good.
Admission rows (migration 0011) of ended runs are pruned by each decision of their tenant, but
a tenant that never runs again keeps its last ones: these go once their counted minute has
passed, whatever the cutoff.
Live rows (a reservation still held or not yet charged, a run queued or admitted) are never
touched.

Run with the owner's DSN (``STEAD_MIGRATE_DATABASE_URL``), e.g. from a nightly job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

__all__ = ["Pruned", "prune"]


@dataclass(frozen=True)
class Pruned:
    """How many rows :func:`prune` removed, by table."""

    spend_reservations: int
    """Settled, released or abandoned (charged) reservations last reserved before the cutoff."""
    admissions: int
    """Ended runs' admission rows whose minute of counted starts has passed."""


async def prune(owner_dsn: str, *, older_than: timedelta) -> Pruned:
    """Delete the tenant rows that no longer count and are older than ``older_than`` (the
    database's clock decides); one transaction."""
    if older_than <= timedelta(0):
        raise ValueError("older_than must be longer than zero")
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            spend = await conn.fetchval(
                "with gone as (delete from stead_spend_reservations "
                " where reserved_at < clock_timestamp() - $1::interval "
                "   and state in ('settled', 'released', 'abandoned') "
                " returning 1) select count(*) from gone", older_than)
            admissions = await conn.fetchval(
                "with gone as (delete from stead_admissions where state = 'ended' "
                " and admitted_at <= clock_timestamp() - interval '60 seconds' "
                " returning 1) select count(*) from gone")
    finally:
        await conn.close()
    return Pruned(spend_reservations=spend, admissions=admissions)
