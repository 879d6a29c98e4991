"""A worker process serving the ``localkill`` agent, whose policy runs reads locally.

The agent reads (``probe``: a read tool, run as a local activity under its policy's
``execution.local_reads``), then writes (``record``: a write tool, never local), then answers.
Each tool appends a line to ``$LOCAL_EFFECTS_FILE``; while ``$LOCAL_HOLD_FILE`` exists, the
read holds after writing its line, so a test can SIGKILL the worker in the middle of a local
activity::

    python tests/_local_worker.py    # settings from the environment, like worker.py
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from _procs import _append
from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import ModelTurn, Timeouts
from stead.contracts.policy import parse_policy
from stead.integrations.llm import ScriptedModel, call
from stead.settings import load_settings
from stead.worker import WorkerHost, run_until_signal

LOCAL_WORKER_SCRIPT = Path(__file__).resolve()

POLICY = parse_policy("""
id: local-reads
version: 1
execution:
  local_reads: true
  local_max_seconds: 30
""")


class Item(BaseModel):
    item: str


class Done(BaseModel):
    item: str
    lines: int


def local_agent(effects: Path, hold: Path) -> Agent:
    @tool(side_effect="read", timeouts=Timeouts(start_to_close=20))
    async def probe(args: Item, ctx: ToolContext) -> Done:
        """Read an item (holds while the hold file exists)."""
        lines = _append(effects, f"read {args.item}")
        # The test controls the hold across processes through a file, so poll it.
        while hold.exists():  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.05)
        return Done(item=args.item, lines=lines)

    @tool(side_effect="write", idempotent=False)
    async def record(args: Item, ctx: ToolContext) -> Done:
        """Write an item once."""
        return Done(item=args.item, lines=_append(effects, f"write {args.item}"))

    script = [ModelTurn(tool_calls=[call("probe", call_id="c1", item="x")]),
              ModelTurn(tool_calls=[call("record", call_id="c2", item="x")]),
              ModelTurn(content="read and recorded x")]
    return Agent(name="localkill", instructions="Read, then write.", tools=[probe, record],
                 offline_model=ScriptedModel(script), policy=POLICY)


if __name__ == "__main__":
    settings = load_settings()
    agent = local_agent(Path(os.environ["LOCAL_EFFECTS_FILE"]),
                        Path(os.environ["LOCAL_HOLD_FILE"]))
    asyncio.run(run_until_signal(WorkerHost(settings, AgentCatalog([agent]))))
