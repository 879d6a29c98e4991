"""Activities do: every side effect of a run (model calls, tool calls, memory, ledger writes).

Each activity is defined once, by its ``@activity.defn`` on a method of a class built with
what it needs (``RunActivities(catalog, ledger)``). Workflows call it through that definition
(``RunActivities.start_run``) and the worker registers it through the same one:

    worker_activities = [*defined(runs, models, drift), *tools.activities()]

Per-tool activities are the exception: one activity type per tool, named by
``stead.authoring.tools.activity_name`` and built by ``ToolActivities.activities()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

__all__ = ["defined"]


def defined(*owners: object) -> list[Callable[..., Any]]:
    """The activities defined on ``owners``: each ``@activity.defn`` method, bound to it."""
    return [getattr(owner, name) for owner in owners for name, attr in vars(type(owner)).items()
            if callable(attr) and activity._Definition.from_callable(attr) is not None]
