"""A chaos worker process: ``stead.worker.WorkerHost`` serving the chaos agents.

The harness forks these from a fork server that has imported this module once (see
:mod:`chaos.pool`), so a replacement for a SIGKILLed worker polls within a few hundred
milliseconds instead of paying the interpreter and import start-up again. Standalone::

    CHAOS_WORLD=/path/world.sqlite python -m chaos.worker   # settings from the environment
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from chaos.agent import chaos_catalog
from chaos.governance import FailpointModel
from chaos.world import ChaosWorld
from stead.settings import Settings, load_settings
from stead.worker import WorkerHost, configured_model


async def _serve(settings: Settings, world: ChaosWorld) -> None:
    """Like ``stead.worker.run_until_signal``, and tell the harness once the worker polls.

    A worker of a governed phase (``chaos.governance``: its settings name the suite's fake
    model server with the marker key) calls that server through :class:`FailpointModel`, so
    the ``model:<turn>`` failpoints still kill it — once the server has answered (and billed)
    the call, before its worker settles what it cost."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = FailpointModel.for_settings(settings, world, configured_model(settings.models))
    async with WorkerHost(settings, chaos_catalog(world), model=model):
        world.worker_ready(os.getpid(), time.time())
        await stop.wait()


def serve(settings: Settings, world_path: str, log_path: str) -> None:
    """Entry point of a forked worker: log to ``log_path``, serve until SIGTERM (or until
    a failpoint or the harness SIGKILLs it)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level="WARNING", force=True,
                        format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s")
    world = ChaosWorld(Path(world_path), allow_kill=True)
    asyncio.run(_serve(settings, world))


if __name__ == "__main__":
    logging.basicConfig(level="INFO")
    asyncio.run(_serve(load_settings(), ChaosWorld(Path(os.environ["CHAOS_WORLD"]),
                                                   allow_kill=True)))
