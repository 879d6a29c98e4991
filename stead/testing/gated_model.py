"""A model that answers a run only when its gate opens: runs that stay in flight on cue.

    model = GatedModel()
    async with WorkerHost(settings, catalog, model=model) as host:
        h = await start_run(host.client, RunRequest(agent="ops", input="job-1"), ...)
        await model.called("job-1")     # the run got past admission and called its model
        model.open("job-1")             # now it answers, and the run completes

Keyed by the run's request text (its first user message), so a test holds any number of runs
at their first model call and lets each go in the order it chooses; admission tests use it to
keep a tenant at its cap. ``calls`` is the order in which runs reached the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from stead.contracts.models import Message, ModelTurn, ToolSchema


class GatedModel:
    """Answers ``done: <request>`` once ``open(request)`` was called (or ``open_all``)."""

    def __init__(self, *, name: str = "gated") -> None:
        self._name = name
        self._gates: dict[str, asyncio.Event] = {}
        self._called: dict[str, asyncio.Event] = {}
        self._all_open = False
        self.calls: list[str] = []
        """Requests in the order they first reached the model."""

    @property
    def name(self) -> str:
        return self._name

    def _event(self, table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    def open(self, key: str) -> None:
        """Let the run whose request is ``key`` have its answer (now or when it asks)."""
        self._event(self._gates, key).set()

    def open_all(self) -> None:
        """Every run, present and future, gets its answer at once."""
        self._all_open = True
        for gate in self._gates.values():
            gate.set()

    async def called(self, key: str, *, within: float = 30.0) -> None:
        """Until the run whose request is ``key`` has called the model."""
        await asyncio.wait_for(self._event(self._called, key).wait(), within)

    async def complete(self, messages: Sequence[Message],
                       tools: Sequence[ToolSchema]) -> ModelTurn:
        key = next((m.content or "" for m in messages if m.role == "user"), "")
        if key not in self._called or not self._called[key].is_set():
            self.calls.append(key)
        self._event(self._called, key).set()
        gate = self._event(self._gates, key)
        if self._all_open:
            gate.set()
        await gate.wait()
        return ModelTurn(content=f"done: {key}", model=self._name)
