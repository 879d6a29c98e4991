"""``stead db``: apply migrations and set up least-privilege roles, with the owner's DSN.

    stead db migrate                                  # as STEAD_MIGRATE_DATABASE_URL
    STEAD_APP_PW=... stead db grant --role stead_app --password-env STEAD_APP_PW
    stead db privileges --role stead_app              # what it may do, table by table
    stead db prune --older-than 7d                    # spend reservations that no longer count

The role model is described in :mod:`stead.storage.dbroles`.
"""

from __future__ import annotations

import os

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    cli_settings,
    configure_cli_logging,
    fail,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.errors import SettingsError
from stead.storage.dbroles import WORKER_GROUP, check_role_name, grant_worker_role, role_privileges

db_app = typer.Typer(help="Ledger database: migrations, least-privilege roles, upkeep.",
                     no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


def _owner_dsn() -> str:
    """STEAD_MIGRATE_DATABASE_URL, else DATABASE_URL, else the embedded PostgreSQL's owner.

    A migration job may hold only the owner's DSN (no DATABASE_URL): that must not fall
    back to the embedded database."""
    settings = cli_settings()
    if settings.ledger.migrate_database_url is not None:
        return settings.ledger.migrate_database_url
    dsn = resolved(settings).ledger.migration_database_url
    assert dsn is not None  # resolved() fills in the embedded PostgreSQL
    return dsn


@db_app.command("migrate")
def db_migrate(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Apply pending migrations as the owner (STEAD_MIGRATE_DATABASE_URL, else DATABASE_URL).

    Run it from a deploy job before new workers start, so workers never need the owner's
    password."""
    from stead.storage.ledger import migrate

    configure_cli_logging(cli_settings())
    applied = run_async(migrate(_owner_dsn()))
    if as_json:
        print_json({"applied": applied})
        return
    out.print("applied: " + ", ".join(applied) if applied else "nothing to apply: up to date")


@db_app.command("grant")
def db_grant(
    role: str = typer.Option(..., "--role", help="Login role workers connect as"),
    password_env: str | None = typer.Option(
        None, help="Name of an environment variable holding the role's password "
                   "(never on the command line, where ps and shell history see it)"),
    create: bool = typer.Option(True, help="Create the role if missing (needs CREATEROLE)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Make ROLE a least-privilege worker role: a member of stead_worker (created if missing).

    Workers then connect with DATABASE_URL=postgresql://ROLE:PASSWORD@host/db."""
    try:
        check_role_name(role)
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            fail(f"--password-env {password_env}: that environment variable is not set or "
                 f"empty", EXIT_BAD_INPUT)
    result = run_async(grant_worker_role(_owner_dsn(), role, password=password, create=create))
    if as_json:
        print_json({"role": result.role, "created": result.created,
                    "password_set": result.password_set, "group": WORKER_GROUP,
                    "warnings": result.warnings})
        return
    verb = "created" if result.created else "updated"
    out.print(f"{verb} role {result.role}: member of {WORKER_GROUP}"
              + (", password set" if result.password_set else ""))
    for w in result.warnings:
        out.print(f"[yellow]warning:[/] {w}")


@db_app.command("privileges")
def db_privileges(
    role: str = typer.Option(WORKER_GROUP, "--role", help="Role to inspect"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """What ROLE may do to each stead table (and which tables are append-only)."""
    rows = run_async(role_privileges(_owner_dsn(), role))
    if as_json:
        print_json([{"table": r.table, "allowed": list(r.allowed),
                     "append_only": r.append_only} for r in rows])
        return
    table = Table("table", "select", "insert", "update", "delete", "truncate", "append-only",
                  title=f"privileges of {role}")
    for r in rows:
        table.add_row(r.table, *("yes" if p in r.allowed else "-"
                                 for p in ("select", "insert", "update", "delete", "truncate")),
                      "yes" if r.append_only else "-")
    out.print(table)


@db_app.command("prune")
def db_prune(
    older_than: str = typer.Option("7d", "--older-than",
                                   help="Age of the rows to delete (e.g. 7d, 24h, 30m)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Delete tenant rows workers leave behind, as the owner: spend reservations that no longer
    count any more (settled, released, abandoned and charged) older than --older-than, and
    ended runs' admission rows past their minute. Live rows are never touched; run it from a
    nightly job."""
    from stead.evals.samples import BadWindow, parse_duration
    from stead.storage.maintenance import prune

    try:
        age = parse_duration(older_than)
    except BadWindow as e:
        fail(f"--older-than: {e}", EXIT_BAD_INPUT)
    configure_cli_logging(cli_settings())
    pruned = run_async(prune(_owner_dsn(), older_than=age))
    if as_json:
        print_json({"spend_reservations": pruned.spend_reservations,
                    "admissions": pruned.admissions})
        return
    out.print(f"pruned {pruned.spend_reservations} spend reservations and "
              f"{pruned.admissions} admission rows")
