"""``Ledger``: the ledger's writes and reads over one connection pool."""

from __future__ import annotations

from stead.storage.ledger._reads import LedgerReads
from stead.storage.ledger._spend import LedgerSpend
from stead.storage.ledger._stream import LedgerStream
from stead.storage.ledger._writes import LedgerWrites


class Ledger(LedgerWrites, LedgerReads, LedgerStream, LedgerSpend):
    """A connection pool plus the ledger's operations: writes (``LedgerWrites``), reads
    (``LedgerReads``), the token stream (``LedgerStream``) and tenant spending windows
    (``LedgerSpend``)."""
