"""The audit hash chain, shared by workflows (which build it) and the ledger (which checks it).

Each run's decisions form a chain: ``hash = sha256(prev_hash + canonical_json(row))``, starting
from ``GENESIS``. The workflow computes it as it decides (deterministically, so replay rebuilds
the same chain) and the ledger stores it; ``Ledger.verify_chain`` recomputes it, so an altered
or deleted row shows. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64

CHAINED_FIELDS = ("workflow_id", "seq", "run_id", "step", "kind", "decision", "reason", "actor",
                  "policy", "data")
"""The fields a row's hash covers."""


def canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    body = {k: row[k] for k in CHAINED_FIELDS}
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()
