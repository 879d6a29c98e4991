"""A real model server for tests/real_model/ (``make test-real-model``, not part of
``make test``: pytest does not recurse into this folder, see ``norecursedirs``).

One llama.cpp ``llama-server`` per session, serving SmolLM2-135M-Instruct on 127.0.0.1, always
stopped at the end. Environment variables (read only here, not stead settings):

- ``REAL_MODEL_URL``: use a server that is already running (its OpenAI base URL, ``.../v1``)
  instead of starting one; ``REAL_MODEL_NAME`` is then the model to ask for.
- ``REAL_MODEL_GGUF``: serve this GGUF file instead of SmolLM2 (e.g. Gemma 3 270M).
- ``REAL_MODEL_THREADS``: llama-server's threads (default: all cores).

How long the server took to load and each run took is printed at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _served import Served

from stead.testing.llama_server import DEFAULT_MODEL_NAME, LlamaServer

TIMINGS: list[Served] = []


def _threads() -> int | None:
    raw = os.environ.get("REAL_MODEL_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"REAL_MODEL_THREADS={raw!r}: expected a positive integer")
    return int(raw)


@pytest.fixture(scope="session")
async def real_model(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    url = os.environ.get("REAL_MODEL_URL", "").strip()
    if url:
        served = Served(base_url=url.rstrip("/"),
                        model=os.environ.get("REAL_MODEL_NAME", "").strip() or DEFAULT_MODEL_NAME,
                        started_here=False)
        TIMINGS.append(served)
        yield served
        return
    gguf = os.environ.get("REAL_MODEL_GGUF", "").strip()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    async with LlamaServer(model=Path(gguf) if gguf else None, threads=_threads(),
                           log=log) as server:
        served = Served(base_url=server.base_url, model=server.model, started_here=True,
                        timings=server.timings)
        TIMINGS.append(served)
        yield served


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for served in TIMINGS:
        tr = terminalreporter
        tr.section("real model")
        where = "started here" if served.started_here else "already running"
        tr.write_line(f"server: {served.base_url} ({where}), model {served.model}")
        if served.timings is not None:
            tr.write_line(f"server up: {served.timings.started:.2f} s, model loaded: "
                          f"{served.timings.ready:.2f} s (from process start)")
        for r in served.runs:
            tr.write_line(f"run {r.agent:<7} {r.status:<10} {r.seconds:7.2f} s  {r.steps:>2} "
                          f"steps, {r.model_turns} model turns, {r.proposed} calls proposed, "
                          f"{r.rejected} rejected, {r.ran} ran")
            if r.error:
                tr.write_line(f"    {r.error[:300]}")
        if served.runs:
            total = sum(r.seconds for r in served.runs)
            tr.write_line(f"runs: {len(served.runs)}, {total:.1f} s in all, "
                          f"{total / len(served.runs):.2f} s per run on average")
        for note in served.notes:
            tr.write_line(note)
