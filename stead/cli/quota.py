"""``stead quota``: each tenant's admission now — runs in flight, queued, started in the last
minute — next to its caps (``STEAD_TENANT_QUOTAS``).

    stead quota                      # every tenant with a quota or with runs counted
    stead quota --tenant acme --json

The figures come from the ledger's admission table, shared by every worker; the caps from this
process's settings (the workers' must be the same). Exit 3 when the ledger is unreachable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import cli_ledger, cli_settings, out, print_json, resolved, run_async

if TYPE_CHECKING:
    from stead.contracts.admission import TenantUsage
    from stead.settings import Settings


def register(app: typer.Typer) -> None:
    """Add ``quota`` to the ``stead`` app."""
    app.command("quota")(quota_cmd)


def quota_cmd(
    tenant: list[str] = typer.Option([], "--tenant", "-t",
                                     help="Only this tenant (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Per tenant: runs in flight, queued and started in the last minute, and the caps
    (runs in flight, starts per minute, queue or refuse over quota)."""
    settings = resolved(cli_settings())
    rows = run_async(_usage(settings, tenant or None))
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    if not rows:
        out.print("no tenant has a quota on runs (STEAD_TENANT_QUOTAS) and none is counted")
        return
    t = Table("tenant", "in flight", "queued", "started (1 min)", "oldest queued",
              "cap in flight", "cap per minute", "over quota", title="admission")
    for r in rows:
        t.add_row(r.tenant, str(r.in_flight), str(r.queued), str(r.started_last_minute),
                  r.oldest_queued_at.isoformat(timespec="seconds") if r.oldest_queued_at
                  else "-", _cap(r.runs_in_flight), _cap(r.starts_per_minute), r.over_quota)
    out.print(t)


def _cap(value: int | None) -> str:
    return "-" if value is None else str(value)


async def _usage(settings: Settings, tenants: list[str] | None) -> list[TenantUsage]:
    from stead.contracts.quota import ANY_TENANT, quota_for
    from stead.storage.admission import Admissions, with_caps

    quotas = settings.tenants.quotas
    async with cli_ledger(settings, missing_tables=(
            "the ledger has no admission table yet ({error}); run `stead db migrate`")) as ledger:
        rows = await Admissions(ledger.pool, retry_seconds=ledger.retry_seconds).usage(tenants)
    if tenants is None:  # tenants named in the quotas show even with nothing counted
        named = {r.tenant for r in rows}
        rows += [_nothing_counted(name) for name in quotas
                 if name != ANY_TENANT and name not in named
                 and quotas[name].limits_admission]
        rows.sort(key=lambda r: r.tenant)
    return [with_caps(r, quota_for(quotas, r.tenant)) for r in rows]


def _nothing_counted(tenant: str) -> TenantUsage:
    from stead.contracts.admission import TenantUsage

    return TenantUsage(tenant=tenant)
