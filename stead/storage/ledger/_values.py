"""Value normalisation: what a ledger write stores, and how JSON crosses the connection.

    store = Storable(redactor)
    row_text, row_json = store.text(s), store.value(obj)    # redacted, storable

Every text and JSON value is redacted on the way in (``stead.security.secrets.Redactor``), then made
storable by PostgreSQL (see :class:`Storable`). ``init_connection`` gives each pooled
connection the JSON codec whose output the audit chain hashes.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from stead.contracts.audit import canonical
from stead.security.secrets import Redactor

J = TypeVar("J")


class Storable:
    """What a ledger write stores: redacted (``Redactor``), then storable by PostgreSQL.

    NUL characters, which ``text`` and ``jsonb`` cannot hold, become U+FFFD. JSON numbers take
    the form ``jsonb`` gives them back in (``1e+16`` -> ``10000000000000000``, ``-0.0`` ->
    ``0.0``), and NaN and infinities, which JSON cannot hold, become strings; so a hash over
    what is stored verifies when read back, and no value makes a write fail on every retry."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def text(self, s: str) -> str:
        return self._redactor.text(s).replace("\x00", "\ufffd")

    def optional(self, s: str | None) -> str | None:
        return None if s is None else self.text(s)

    def value(self, v: J) -> J:
        stored: J = _jsonb(self._redactor.value(v))
        return stored


def _jsonb(v: Any) -> Any:
    if isinstance(v, str):
        return v.replace("\x00", "\ufffd")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return 0.0
        text = repr(v)  # PostgreSQL's numeric prints 1e+16 without an exponent, as an integer
        return int(Decimal(text)) if "e+" in text else v
    if isinstance(v, dict):
        return {_jsonb(k): _jsonb(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonb(x) for x in v]
    return v


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON in and out as Python values: written canonically (the form the chain hashes)."""
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=canonical, decoder=json.loads,
                                  schema="pg_catalog")
