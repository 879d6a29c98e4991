"""Evaluation that never stops: behaviour suites, determinism and counterfactual replay,
metrics from the ledger, drift monitoring and the reports people read.

Each concern has its own module here; its commands are in :mod:`stead.cli`.
"""

from __future__ import annotations

from stead.contracts.models import SYNTHETIC_KEY

__all__ = ["SYNTHETIC_KEY"]
