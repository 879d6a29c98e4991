"""Worker processes the reliability tests can kill.

:class:`WorkerProcess` starts a worker command as a child process (always stop it in a
``finally``). Run as a script, this module is a worker serving the ``crashy`` test agent,
whose only tool is irreversible, not idempotent and has no reconcile hook::

    python tests/_procs.py     # settings from the environment, like worker.py

The tool appends one line to ``$CRASHY_EFFECTS_FILE`` and then holds for
``$CRASHY_HOLD_SECONDS`` while heartbeating, so a test can SIGKILL the worker mid-call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import BaseModel
from temporalio.client import Client

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import ModelTurn, RetrySpec, Timeouts
from stead.integrations.llm import ScriptedModel, call
from stead.settings import Settings, load_settings
from stead.worker import WorkerHost

ROOT = Path(__file__).resolve().parent.parent
CRASHY_SCRIPT = Path(__file__).resolve()


def worker_env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker process on ``settings``' servers and task queue."""
    assert settings.temporal.address is not None and settings.ledger.database_url is not None
    env = dict(os.environ)
    env.update({
        "TEMPORAL_ADDRESS": settings.temporal.address,
        "DATABASE_URL": settings.ledger.database_url,
        "STEAD_TASK_QUEUE": settings.temporal.task_queue,
        "STEAD_DATA_DIR": str(data_dir),
        "STEAD_LOG_LEVEL": "INFO",
        # A killed worker's cached runs move to a live worker after 2 s instead of 10 s.
        "STEAD_STICKY_SCHEDULE_TO_START_SECONDS": "2",
        "STEAD_MEMORY_BACKEND": "off",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@asynccontextmanager
async def serving(settings: Settings, *agents: Agent) -> AsyncIterator[Client]:
    """An in-process worker for ``agents`` on this test's task queue; yields its client."""
    async with WorkerHost(settings, AgentCatalog(agents)) as host:
        assert host.client is not None
        yield host.client


class WorkerProcess:
    """One worker child process; its output goes to ``log``."""

    def __init__(self, script: Path, env: dict[str, str], log: Path) -> None:
        self.script = script
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(self.script)], cwd=ROOT,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, in-flight activities are lost."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- crashy agent

class Note(BaseModel):
    text: str


class Written(BaseModel):
    lines: int


def _append(path: Path, line: str) -> int:
    """Append ``line``; return how many lines the file has now."""
    with path.open("a+") as f:
        f.write(line + "\n")
        f.seek(0)
        return len(f.read().splitlines())


def crashy_agent(effects: Path, hold_seconds: float) -> Agent:
    """An agent whose one tool writes a line and then holds, heartbeating."""

    @tool(side_effect="irreversible", risk="low", idempotent=False,
          retry=RetrySpec(initial_interval=0.2, max_interval=1, max_attempts=3),
          timeouts=Timeouts(start_to_close=60, heartbeat=1))
    async def append_line(args: Note, ctx: ToolContext) -> Written:
        """Append a line to the effects file. Irreversible, and nothing can tell afterwards
        whether a given call wrote its line."""
        lines = _append(effects, f"{ctx.idempotency_key} attempt={ctx.attempt} {args.text}")
        remaining = hold_seconds
        while remaining > 0:
            ctx.heartbeat()
            await asyncio.sleep(min(0.2, remaining))
            remaining -= 0.2
        return Written(lines=lines)

    model = ScriptedModel([ModelTurn(tool_calls=[call("append_line", call_id="c1",
                                                      text="written once")]),
                           ModelTurn(content="I wrote the line.")], name="scripted:crashy")
    return Agent(name="crashy", instructions="Write the line once.", tools=[append_line],
                 offline_model=model, max_steps=4)


async def _serve() -> None:
    from stead.worker import WorkerHost, run_until_signal

    settings = load_settings()
    agent = crashy_agent(Path(os.environ["CRASHY_EFFECTS_FILE"]),
                         float(os.environ.get("CRASHY_HOLD_SECONDS", "30")))
    await run_until_signal(WorkerHost(settings, AgentCatalog([agent])))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve())
