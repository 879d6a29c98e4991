"""``GET /v1/events``: server-sent events that keep an inbox current without reloading.

Events (``event:`` name, ``data:`` one JSON document):

- ``approvals``: the tenant's pending approvals, the same list ``GET /v1/approvals`` returns;
  sent on connect and whenever the list changes (tokens with the ``approver`` role only).
- ``run``: a :class:`~stead.api.RunEvent` when one of the tenant's recent runs appears or
  changes status (or starts/stops waiting for a person). The state at connect time is the
  baseline: ask ``GET /v1/runs`` for it.
- ``error``: an :class:`~stead.api.ErrorResponse` when Temporal or the ledger cannot be read;
  the stream goes on and recovers by itself.

The server polls (every ``poll_seconds``) rather than subscribing: Temporal's visibility is the
one place that knows about every run, workers included or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
from temporalio.service import RPCError

from stead.api._auth import Principal
from stead.api._backend import Backend
from stead.api._errors import ApiError
from stead.api._models import ErrorDetail, ErrorResponse, RunEvent
from stead.errors import LedgerError, StackError

RECENT_RUNS = 50
"""How many of the tenant's most recent runs the ``run`` events follow."""
KEEPALIVE_SECONDS = 15.0


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


async def event_stream(backend: Backend, principal: Principal, *, poll_seconds: float,
                       closing: asyncio.Event) -> AsyncIterator[str]:
    """The stream of one client; ends when the client goes away (the response is
    cancelled) or when the server stops (``closing`` is set)."""
    tenant = principal.tenant
    approvals_sent: str | None = None
    runs_seen: dict[str, RunEvent] | None = None
    error_sent: str | None = None
    quiet = 0.0
    yield "retry: 3000\n\n"  # how long a browser waits before reconnecting
    while not closing.is_set():
        sent = False
        try:
            if "approver" in principal.roles:
                rows = await backend.approvals(tenant)
                data = json.dumps([r.model_dump(mode="json") for r in rows])
                if data != approvals_sent:
                    approvals_sent = data
                    sent = True
                    yield _event("approvals", data)
            current = {r.workflow_id: RunEvent(
                workflow_id=r.workflow_id, agent=r.agent, status=r.status,
                temporal_status=r.temporal_status, awaiting_approval=r.awaiting_approval)
                for r in await backend.runs(tenant, limit=RECENT_RUNS)}
            if runs_seen is not None:
                for wid, ev in current.items():
                    if runs_seen.get(wid) != ev:
                        sent = True
                        yield _event("run", ev.model_dump_json())
            runs_seen = current
            error_sent = None
        except (ApiError, StackError, LedgerError, RPCError, OSError,
                asyncpg.PostgresError) as e:
            message = e.message if isinstance(e, ApiError) else f"{type(e).__name__}: {e}"
            if message != error_sent:
                error_sent = message
                sent = True
                yield _event("error", ErrorResponse(error=ErrorDetail(
                    type="unavailable", message=message)).model_dump_json())
        quiet = 0.0 if sent else quiet + poll_seconds
        if quiet >= KEEPALIVE_SECONDS:
            quiet = 0.0
            yield ": keepalive\n\n"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), poll_seconds)
