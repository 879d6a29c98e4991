"""Running the ``stead`` script (or any command) as a subprocess, the way users do."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stead.settings import Settings

STEAD = Path(sys.executable).parent / "stead"


@dataclass(frozen=True)
class Done:
    """A finished command: exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_cmd(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                  timeout: float = 90) -> Done:
    """Run ``argv`` to completion; a command that outlives ``timeout`` is killed and the test
    fails with TimeoutError instead of hanging."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def stead(*args: str, env: dict[str, str], cwd: Path | None = None,
                timeout: float = 90) -> Done:
    """``stead ARGS...`` with ``env`` (see :func:`cli_env`)."""
    return await run_cmd(str(STEAD), *args, env=env, cwd=cwd, timeout=timeout)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a CLI process pointed at the test stack and this test's queue."""
    assert settings.temporal.address is not None and settings.ledger.database_url is not None
    return {**os.environ, "TEMPORAL_ADDRESS": settings.temporal.address,
            "DATABASE_URL": settings.ledger.database_url,
            "STEAD_TASK_QUEUE": settings.temporal.task_queue,
            **extra}
