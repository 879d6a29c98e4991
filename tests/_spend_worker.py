"""A worker process serving the ``spender`` agent, whose one model is gpt-4o-mini on the fake
OpenAI server at ``$SPEND_BASE_URL`` (key in ``$STEAD_TEST_SPEND_KEY``), so a test can SIGKILL
it in the middle of a model call of a tenant with spending windows::

    python tests/_spend_worker.py    # settings from the environment, like worker.py
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from stead.authoring.agent import Agent, AgentCatalog
from stead.contracts.models import ModelEndpoint, ModelTurn
from stead.integrations.llm import ScriptedModel
from stead.settings import load_settings
from stead.worker import WorkerHost, run_until_signal

SPEND_WORKER_SCRIPT = Path(__file__).resolve()
KEY_VAR = "STEAD_TEST_SPEND_KEY"


def spender_agent(base_url: str) -> Agent:
    """One model call, then the answer: the agent's only model is on the fake server."""
    ep = ModelEndpoint.model_validate({"model": "gpt-4o-mini", "base_url": base_url,
                                       "api_key_env": KEY_VAR})
    return Agent(name="spender", instructions="Answer.", tools=[], models=[ep],
                 offline_model=ScriptedModel([ModelTurn(content="offline")]))


async def _serve() -> None:
    settings = load_settings()
    agent = spender_agent(os.environ["SPEND_BASE_URL"])
    await run_until_signal(WorkerHost(settings, AgentCatalog([agent])))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve())
