"""``GET /v1/runs/{workflow_id}/events``: one run as server-sent events, resumable.

    curl -N -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/v1/runs/$WID/events

Events (``data`` is JSON; see :mod:`stead.streaming` for the models):

- ``step``: a line of the run's step history (:class:`~stead.streaming.StepEvent`)
- ``token``: the message a model call is writing (:class:`~stead.streaming.TokenEvent`):
  ``start`` (with ``restart``: drop what an earlier attempt of the step wrote), ``text``
  (append), ``reset`` (replace the attempt's text), ``end``, ``error``
- ``approval``: requested, escalated, decided (:class:`~stead.streaming.ApprovalEvent`)
- ``result``: the run ended (:class:`~stead.streaming.ResultEvent`); the stream ends with it
- ``error``: something could not be read just now; the stream goes on

Every event but ``error`` has an ``id``; a client that reconnects with ``Last-Event-ID`` (a
browser's EventSource does so by itself) gets exactly the events after it. After the
``result`` there is nothing more: reconnecting with its id answers 204, which tells an
EventSource to stop. Comments (``: keepalive``) keep idle connections open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from stead.api._backend import Backend
from stead.streaming import Cursor, RunEvent, follow_run

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.5
"""Most seconds between two looks at the run's steps and approvals (tokens come at once)."""


def sse(event: RunEvent) -> str:
    """One event in the ``text/event-stream`` format (JSON data holds no raw newlines)."""
    head = f"event: {event.name}\n" + (f"id: {event.id}\n" if event.id is not None else "")
    return f"{head}data: {event.data.model_dump_json()}\n\n"


async def run_event_stream(backend: Backend, *, tenant: str, workflow_id: str, run_id: str,
                           cursor: Cursor, poll_seconds: float,
                           closing: asyncio.Event) -> AsyncIterator[str]:
    """The stream of one client (the run is known to be the tenant's); ends after the
    ``result``, when the client goes away, or when the server stops (``closing``)."""
    client = await backend.temporal()
    ledger = await backend.ledger()
    listener = await backend.stream_listener()
    yield "retry: 2000\n\n"  # how long a browser waits before reconnecting
    async for event in follow_run(client, ledger, listener, workflow_id=workflow_id,
                                  run_id=run_id, tenant=tenant, cursor=cursor,
                                  poll_seconds=min(poll_seconds, POLL_SECONDS),
                                  keepalive=KEEPALIVE_SECONDS, closing=closing):
        yield ": keepalive\n\n" if event is None else sse(event)
