"""Tokens streamed out of durable runs: model calls publish their text as it is written, and
followers of a run read it with the run's steps, approvals and result.

    # in the model activity (a TurnSink for a streaming client)
    publisher = TurnPublisher(ledger, ref, attempt=activity.info().attempt)

    # wherever someone watches a run (the HTTP API, `stead run --stream`)
    async with StreamListener(dsn) as listener:
        async for event in follow_run(client, ledger, listener, workflow_id=wid,
                                      run_id=rid, tenant="acme"):
            print(event.name, event.id, event.data)

Nothing of the stream is in Temporal's history. Text travels through PostgreSQL: the rows of
``stead_stream`` (one per batch, numbered per workflow, so a reader resumes from a number and
misses or repeats nothing) and a NOTIFY on ``stead_stream`` that wakes readers at once. The
final message is recorded once, as before (``stead_model_calls`` and the activity's result).
A retried model call starts its message again with ``restart``: readers drop what the earlier
attempt wrote.

- ``_publish``: :class:`TurnPublisher`, batching and redacting one attempt's message
- ``_listen``: :class:`StreamListener`, one LISTEN connection per process, fanned out
- ``_events``: the events a follower receives and the :class:`Cursor` to resume from
- ``_follow``: :func:`follow_run`, the four sources of a run as one stream
"""

from stead.streaming._events import (
    ApprovalEvent,
    Cursor,
    ErrorEvent,
    EventName,
    ResultEvent,
    RunEvent,
    StepEvent,
    TokenEvent,
)
from stead.streaming._follow import follow_run
from stead.streaming._listen import StreamListener, Waker
from stead.streaming._publish import TurnPublisher

__all__ = [
    "ApprovalEvent",
    "Cursor",
    "ErrorEvent",
    "EventName",
    "ResultEvent",
    "RunEvent",
    "StepEvent",
    "StreamListener",
    "TokenEvent",
    "TurnPublisher",
    "Waker",
    "follow_run",
]
