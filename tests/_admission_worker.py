"""A worker process whose SIGKILL lands right after a queued run's audit rows are written.

It serves the ``holdon`` agent: one read tool that holds while ``$HOLD_FILE`` exists, then
an answer. While ``$KILL_FILE`` exists, the first ledger write that carries an ``admission:
queue`` decision is committed and then the process SIGKILLs itself (removing the file first):
the run's flush before it waits was written by a local activity whose workflow task Temporal
never recorded, which is the window the chaos suite found (migration 0014)::

    python tests/_admission_worker.py    # settings from the environment, like worker.py
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import DecisionRow, ModelTurn, Timeouts
from stead.integrations.llm import ScriptedModel, call
from stead.settings import load_settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost, run_until_signal

ADMISSION_WORKER_SCRIPT = Path(__file__).resolve()


class Wait(BaseModel):
    what: str


class Waited(BaseModel):
    what: str


def holdon_agent(hold: Path) -> Agent:
    @tool(side_effect="read", timeouts=Timeouts(start_to_close=60, heartbeat=1))
    async def hold_on(args: Wait, ctx: ToolContext) -> Waited:
        """Wait while the hold file exists."""
        while hold.exists():  # noqa: ASYNC240 - held across processes by a file
            ctx.heartbeat()
            await asyncio.sleep(0.1)
        return Waited(what=args.what)

    script = [ModelTurn(tool_calls=[call("hold_on", call_id="c1", what="the slot")]),
              ModelTurn(content="held and done")]
    return Agent(name="holdon", instructions="Hold, then answer.", tools=[hold_on],
                 offline_model=ScriptedModel(script, name="scripted:holdon"), max_steps=4)


def die_after_the_queue_row(kill: Path) -> None:
    """Make the first ``admission: queue`` write SIGKILL this process once it committed."""
    write = Ledger.append_decisions

    async def append_then_die(self: Ledger, rows: Sequence[DecisionRow],
                              on_wait: object = None) -> None:
        await write(self, rows, on_wait)  # type: ignore[arg-type]
        queued = any(r.kind == "admission" and r.decision == "queue" for r in rows)
        if queued and kill.exists():  # noqa: ASYNC240 - a test's switch, read once
            kill.unlink()  # noqa: ASYNC240
            os.kill(os.getpid(), signal.SIGKILL)

    Ledger.append_decisions = append_then_die  # type: ignore[method-assign]


if __name__ == "__main__":
    die_after_the_queue_row(Path(os.environ["KILL_FILE"]))
    agent = holdon_agent(Path(os.environ["HOLD_FILE"]))
    asyncio.run(run_until_signal(WorkerHost(load_settings(), AgentCatalog([agent]))))
