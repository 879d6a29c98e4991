"""The ledger: runs, model calls, tool calls and decisions in PostgreSQL (asyncpg).

    ledger = await Ledger.connect(dsn, redactor=Redactor.from_settings(settings))
    claim = await ledger.claim_tool(invocation, tool=invocation.tool, attempt=1)
    trail = await ledger.trail(workflow_id, tenant="acme")   # never another tenant's rows

Writes take the contract objects of ``stead.contracts.models`` and reads return its row models
(``Trail``, ``RunRow``, ``ModelCallRow``, ...). Every text and JSON value is redacted on the way
in (``stead.security.secrets.Redactor``: known secret values, credential and personal-data
patterns), so no table holds a secret. A decision row whose content redaction changed is re-chained
by the ledger (see :meth:`Ledger.append_decisions`). Writes are keyed so that a retried activity
writes once. Operations that fail because the database is unreachable are retried inside the
call for ``retry_seconds`` (the database coming back is an infrastructure matter and must not
use up a tool's own retry budget).

One job per module:

- ``_core``: the pool, redaction and retry wrapper every operation shares
- ``_writes``: runs, model calls, tool claims and outcomes, decisions, memory operations
- ``_reads``: run ids, the typed trail, the chain check
- ``_chain``: re-chaining redacted decisions; what is wrong with a stored chain
- ``_values``: what a write stores (redacted, storable by PostgreSQL); the JSON codec
- ``_migrate``: the migration runner (``migrate``)
- ``_retry``: retry while PostgreSQL is away (``retrying``, also used by ``stead.storage.blobs``)
- ``_stream``: the token stream's rows (``stead_stream``) and the NOTIFY that wakes readers
- ``_spend``: tenant spending windows: reserve, settle and release a model call's cost
"""

from __future__ import annotations

from stead.storage.ledger._ledger import Ledger
from stead.storage.ledger._migrate import migrate
from stead.storage.ledger._retry import TRANSIENT, retrying
from stead.storage.ledger._spend import Reservation, SpendKey, WindowUsage, window_end
from stead.storage.ledger._stream import STREAM_CHANNEL, StreamKind, StreamPiece, StreamRow
from stead.storage.ledger._writes import ABANDONED, Claim, Counted, FinishedRun

__all__ = ["ABANDONED", "STREAM_CHANNEL", "TRANSIENT", "Claim", "Counted", "FinishedRun",
           "Ledger", "Reservation", "SpendKey", "StreamKind", "StreamPiece", "StreamRow",
           "WindowUsage", "migrate", "retrying", "window_end"]
