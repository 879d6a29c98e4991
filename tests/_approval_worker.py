"""The ``bank`` agent of the approval tests, and a worker process serving it.

The agent's ``transfer`` tool is irreversible and high-risk, so its policy (``BANK_POLICY``)
asks a human before every transfer: on-call first, then a manager, then auto-deny. Each real
transfer appends one line to an effects file, so a test counts side effects, not log lines::

    python tests/_approval_worker.py    # settings from the environment, like worker.py

As a script it serves the agent with a scripted model that proposes one transfer of
``$BANK_AMOUNT`` to ``$BANK_ACCOUNT`` and writes its effects to ``$BANK_EFFECTS_FILE``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.contracts.models import Message, ModelTurn, ToolSchema
from stead.contracts.policy import Policy, parse_policy
from stead.integrations.llm import FunctionModel, ModelClient, ScriptedModel, assistant_turns, call

APPROVAL_WORKER_SCRIPT = Path(__file__).resolve()

BANK_POLICY_YAML = """
id: bank-test
version: 3
thresholds: {approve_at: 0.5, deny_at: 0.9}
risk:
  arguments:
    - {tool: transfer, field: amount, above: 1000, add: 0.1, label: large transfer}
hard_limits:
  - {tool: transfer, field: amount, above: 10000, reason: Transfers above the ceiling}
approvals:
  chain: [oncall, manager]
  timeout_seconds: {timeout}
"""
"""tier:high 0.45 + side_effect:irreversible 0.2 = 0.65: every transfer asks (approve_at 0.5);
above 1000 it is 0.75; above 10000 it is denied whatever the score."""

BASE_RISK = 0.65
"""Score of a transfer of at most 1000 whose arguments come from the request."""


def bank_policy(*, timeout_seconds: float = 600) -> Policy:
    return parse_policy(BANK_POLICY_YAML.replace("{timeout}", f"{timeout_seconds:g}"),
                        source="bank-test.yaml")


class Transfer(BaseModel):
    amount: int
    account: str


class Receipt(BaseModel):
    transfer_id: str


class DocRef(BaseModel):
    doc_id: str


class Document(BaseModel):
    doc_id: str
    text: str


def effects(path: Path) -> list[str]:
    """The transfers that really happened, one line each."""
    return path.read_text().splitlines() if path.exists() else []


def bank_agent(effects_file: Path, model: ModelClient, *, name: str = "bank",
               documents: dict[str, str] | None = None,
               policy: Policy | None = None) -> Agent:
    """The test agent: ``transfer`` (irreversible, high risk) and ``read_document`` (read)."""
    docs = documents or {}

    @tool(side_effect="irreversible", risk="high", idempotent=False)
    async def transfer(args: Transfer, ctx: ToolContext) -> Receipt:
        """Move money to an account. Irreversible."""
        with effects_file.open("a") as f:
            f.write(f"{ctx.idempotency_key} {args.amount} {args.account}\n")
        return Receipt(transfer_id=f"T-{len(effects(effects_file))}")

    @tool(side_effect="read", risk="low")
    async def read_document(args: DocRef, ctx: ToolContext) -> Document:
        """Read a document from the shared drive."""
        return Document(doc_id=args.doc_id, text=docs.get(args.doc_id, "(empty)"))

    return Agent(name=name, instructions="Move money only when the user asks for it.",
                 tools=[transfer, read_document], offline_model=model, max_steps=8,
                 policy=policy or bank_policy())


def last_tool_message(messages: Sequence[Message]) -> Message | None:
    return next((m for m in reversed(messages) if m.role == "tool"), None)


def answer_from_tool_result(messages: Sequence[Message]) -> str:
    """A final answer that says what happened to the last tool call."""
    last = last_tool_message(messages)
    if last is None:
        return "Nothing to do."
    body = json.loads(last.content or "{}")
    if "error" in body:
        return f"The transfer was not made: {body['error']['message']}"
    return f"Done: transfer {body['result'].get('transfer_id', '?')}."


def transfer_model(amount: int, account: str, *, delay: float = 0.0,
                   seen: list[list[Message]] | None = None) -> FunctionModel:
    """Proposes one transfer (after ``delay`` seconds), then reports what became of it.
    Every transcript it is shown goes to ``seen``."""

    async def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if seen is not None:
            seen.append(list(messages))
        if assistant_turns(messages) == 0:
            if delay:
                await asyncio.sleep(delay)
            return ModelTurn(tool_calls=[call("transfer", call_id="c1", amount=amount,
                                              account=account)])
        return ModelTurn(content=answer_from_tool_result(messages))

    return FunctionModel(plan, name="scripted:bank")


def scripted_transfer_model(amount: int, account: str) -> ModelClient:
    return ScriptedModel([ModelTurn(tool_calls=[call("transfer", call_id="c1", amount=amount,
                                                     account=account)]),
                          ModelTurn(content="The transfer is settled.")], name="scripted:bank")


async def _serve() -> None:
    from stead.settings import load_settings
    from stead.worker import WorkerHost, run_until_signal

    agent = bank_agent(Path(os.environ["BANK_EFFECTS_FILE"]),
                       scripted_transfer_model(int(os.environ.get("BANK_AMOUNT", "500")),
                                               os.environ.get("BANK_ACCOUNT", "ACME-1")))
    await run_until_signal(WorkerHost(load_settings(), AgentCatalog([agent])))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve())
