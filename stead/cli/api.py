"""``stead api``: serve the HTTP API; ``stead api token``: make a bearer token for it.

    stead api --port 8000
    TOKEN=$(stead api token --sub alice --tenant acme --role approver --ttl 8h)
    curl -H "Authorization: Bearer $TOKEN" localhost:8000/v1/approvals

Exit codes: 0 stopped by Ctrl-C / printed the token; 2 bad input or settings; 3 the port is
taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

import typer

from stead.cli.common import (
    EXIT_BAD_INPUT,
    cli_settings,
    configure_cli_logging,
    fail,
    fail_invalid,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.errors import SettingsError

if TYPE_CHECKING:
    from fastapi import FastAPI

api_app = typer.Typer(help="The HTTP API: serve it (no subcommand), or make a token.",
                      invoke_without_command=True)


def register(app: typer.Typer) -> None:
    """Add ``api`` (and ``api token``) to the ``stead`` app."""
    app.add_typer(api_app, name="api")


@api_app.callback()
def api_cmd(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Interface to listen on "
                                                "(default: STEAD_API_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, min=1, max=65535,
                                    help="Port (default: STEAD_API_PORT or 8000)"),
) -> None:
    """Serve the HTTP API (runs, approvals, audit, metrics, events; /docs, /inbox) on the
    stack of TEMPORAL_ADDRESS / DATABASE_URL (or the embedded defaults) until Ctrl-C. Tokens
    are checked with STEAD_API_SECRET, else this machine's key in the data dir, and with
    STEAD_OIDC_ISSUER also against that identity provider (single sign-on)."""
    if ctx.invoked_subcommand is not None:
        return
    from stead.api import create_app

    settings = resolved(cli_settings())
    configure_cli_logging(settings)
    try:
        app = create_app(settings)
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)
    run_async(_serve(app, host or settings.api.host, port or settings.api.port))


async def _serve(app: FastAPI, host: str, port: int) -> None:
    import asyncio
    import signal

    from stead.api import ApiServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ApiServer(app, host=host, port=port, log_level="info") as server:
        out.print(f"stead API on [bold]{server.url}[/] — docs {server.url}/docs, inbox "
                  f"{server.url}/inbox (Ctrl-C stops)", highlight=False)
        await stop.wait()
    out.print("stopped.")


@api_app.command("token")
def token_cmd(
    sub: str = typer.Option(..., "--sub", help="Who holds the token (recorded as requester "
                                               "or approver)"),
    tenant: str = typer.Option(..., "--tenant", help="The only tenant the token sees"),
    roles: list[str] = typer.Option(..., "--role", help="requester, approver or auditor "
                                                        "(repeatable)"),
    ttl: str = typer.Option("8h", "--ttl", help="Lifetime: 30m, 8h, 7d"),
    approval_role: str | None = typer.Option(
        None, "--approval-role",
        help="Role of the agent's approval policy the holder decides as (e.g. support-lead); "
             "default: whichever level is asked"),
    as_json: bool = typer.Option(False, "--json", help="Print the token with its claims"),
) -> None:
    """Print a bearer token for the HTTP API, signed with STEAD_API_SECRET (else this
    machine's key in the data dir, the one `stead api` and `stead up` check)."""
    from pydantic import ValidationError

    from stead.api import api_secret, issue_token, verify_token
    from stead.api._models import Role
    from stead.evals.samples import BadWindow, parse_duration

    known = get_args(Role)
    unknown = [r for r in roles if r not in known]
    if unknown:
        fail(f"--role {', '.join(unknown)}: use {', '.join(known)}", EXIT_BAD_INPUT)
    try:
        lifetime = parse_duration(ttl)
    except (BadWindow, OverflowError) as e:
        fail(f"--ttl: {e}", EXIT_BAD_INPUT)
    settings = cli_settings()
    try:
        secret = api_secret(settings)
        token = issue_token(secret, sub=sub, tenant=tenant,
                            roles=[r for r in known if r in roles],
                            ttl=lifetime, approval_role=approval_role)
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except OverflowError:
        fail(f"--ttl {ttl} reaches beyond the year 9999", EXIT_BAD_INPUT)
    except ValidationError as e:
        fail_invalid("token claims", e)
    if as_json:
        print_json({"token": token, **verify_token(secret, token).model_dump(mode="json")})
    else:
        typer.echo(token)  # alone on its line: TOKEN=$(stead api token ...)
