"""``stead budget``: each tenant's spending windows (the UTC day and month) from the ledger:
spent, reserved by model calls in flight, the cap from ``STEAD_TENANT_QUOTAS``, what is left
and when the window resets.

    stead budget
    stead budget --tenant acme --json

Tenants shown: those that spent or hold reservations in the current windows, and those with
a quota of their own. Exit codes: 0 success; 3 the ledger is unreachable or has no tables yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    NO_LEDGER_TABLES,
    cli_ledger,
    cli_settings,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.settings import Settings

if TYPE_CHECKING:  # imported when the command runs, to keep `stead --help` fast
    from stead.storage.ledger import WindowUsage


def register(app: typer.Typer) -> None:
    """Add ``budget`` to the ``stead`` app."""
    app.command("budget")(budget_cmd)


def budget_cmd(
    tenant: str | None = typer.Option(None, help="Only this tenant"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Spending windows per tenant: spent, reserved, cap, left, and when each resets."""
    settings = resolved(cli_settings())
    rows = run_async(_usage(settings, tenant))
    if as_json:
        print_json({"windows": [usage_json(r) for r in rows]})
        return
    if not rows:
        out.print("no tenant has spent anything in the current windows, and none has a quota "
                  "(STEAD_TENANT_QUOTAS)")
        return
    t = Table("tenant", "window", "spent (USD)", "reserved (USD)", "cap (USD)", "left (USD)",
              "resets at (UTC)", title="tenant spending windows")
    for r in rows:
        t.add_row(r.tenant, r.window, _usd(r.spent_usd), _usd(r.reserved_usd),
                  "no cap" if r.cap_usd is None else _usd(r.cap_usd),
                  "–" if r.left_usd is None else _usd(r.left_usd),
                  f"{r.resets_at:%Y-%m-%d %H:%M}")
    out.print(t)


def usage_json(r: WindowUsage) -> dict[str, object]:
    """One window as ``--json`` and ``GET /v1/budget`` give it (``left_usd`` included)."""
    return {**r.model_dump(mode="json"), "left_usd": r.left_usd}


async def _usage(settings: Settings, tenant: str | None) -> list[WindowUsage]:
    async with cli_ledger(settings, missing_tables=NO_LEDGER_TABLES) as ledger:
        return await ledger.spend_usage(settings.tenants.quotas, tenant=tenant)


def _usd(v: float) -> str:
    return f"{v:.4f}" if v >= 0.01 or v == 0 else f"{v:.6f}"
