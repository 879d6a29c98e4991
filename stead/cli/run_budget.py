"""``stead raise-budget``: raise the budget of a run that waits for one (``on_exceed: ask``).

    stead raise-budget ops-1f2e --max-usd 1.50 --as alice --reason "the incident needs more"

Sends the run's ``raise_budget`` update: each limit given must be above the run's (a raise
never lowers or lifts one); who and why are recorded in the audit trail. Exit codes: 0 the
budget was raised; 1 the run refused the raise; 2 bad input; 3 the stack is unreachable;
4 no such run.
"""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    cli_settings,
    fail,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)
from stead.contracts.budget import Budget, RaiseBudget
from stead.errors import RunNotFound, StackError
from stead.settings import Settings


def register(app: typer.Typer) -> None:
    app.command("raise-budget")(raise_budget)


def raise_budget(
    run_id: str = typer.Argument(..., help="Workflow id of the run"),
    by: str = typer.Option(..., "--as", help="Who raises it (recorded in the audit trail)"),
    reason: str = typer.Option(..., help="Why (recorded in the audit trail)"),
    max_usd: float | None = typer.Option(None, help="New money limit, US dollars"),
    max_tokens: int | None = typer.Option(None, help="New limit of input plus output tokens"),
    max_model_calls: int | None = typer.Option(None, help="New limit of model calls"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Raise a run's budget (each given limit only upward); a run waiting for one goes on."""
    if not run_id.strip():
        fail("the run id must not be empty", EXIT_BAD_INPUT)
    try:
        payload = RaiseBudget(max_usd=max_usd, max_tokens=max_tokens,
                              max_model_calls=max_model_calls, by=by, reason=reason)
    except ValidationError as e:
        fail("invalid raise: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                           for x in e.errors()), EXIT_BAD_INPUT)
    limit = run_async(_raise(resolved(cli_settings()), run_id, payload))
    if as_json:
        print_json(limit)
    else:
        said = ", ".join(f"{k} {v}" for k, v in limit.items()) or "no limits"
        out.print(f"{run_id}: budget raised to {said}", highlight=False)


async def _raise(settings: Settings, run_id: str, payload: RaiseBudget) -> dict[str, Any]:
    from temporalio.client import WorkflowUpdateFailedError

    client = await temporal_client(settings)
    handle = client.get_workflow_handle(run_id)
    try:
        limit = await handle.execute_update("raise_budget", payload, result_type=Budget)
    except WorkflowUpdateFailedError as e:
        fail(f"raise refused: {getattr(e.cause, 'message', e.cause)}", EXIT_RUN_NOT_COMPLETED)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise RunNotFound(f"no running run {run_id!r}") from None
        raise StackError(f"cannot reach run {run_id!r}: {e.message}") from None
    dumped: dict[str, Any] = limit.model_dump(mode="json", exclude_none=True)
    return dumped
