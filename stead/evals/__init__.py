"""Evaluation that never stops: behaviour suites, determinism and counterfactual replay,
metrics from the ledger, drift monitoring and the reports people read.

Each concern has its own module and its own CLI module (``_cli_<concern>.py``) registered on
the ``stead`` app by :func:`register_commands`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stead.models import SYNTHETIC_KEY

if TYPE_CHECKING:
    import typer


def register_commands(app: typer.Typer) -> None:
    from stead.evals import _cli_counterfactual, _cli_metrics, _cli_replay, _cli_suites

    for module in (_cli_suites, _cli_replay, _cli_counterfactual, _cli_metrics):
        module.register(app)


__all__ = ["SYNTHETIC_KEY", "register_commands"]
