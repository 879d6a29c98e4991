"""Records the corpus of reference-agent histories that ``stead replay`` and CI replay.

    python -m stead.evals.corpus --out evals/histories

Starts a throwaway embedded stack (own ports and data directory), runs one scenario per
distinct path of the reference agents through the production worker (``WorkerHost``, memory on
with the hashing embedder), plays the human where a path needs one (approve or reject by
signal or by the ``decide`` update, or nobody at all until the deadlines pass), checks that
each run really took the path it is named for, then sweeps those runs with online evaluation
(``EvaluationWorkflow``, :data:`SWEEPS`), and writes one history per run as
``<workflow id>.json`` plus a ``README.md`` index. A scenario that does not take its path
fails the recording: a corpus file must show what its name says.

Budgets and admission (issue 18) need settings and policies the reference agents must not
have in the other scenarios: those scenarios (``governed=True``) and the recorded
conversation (:data:`CONVERSATIONS`) run on a second worker of their own task queue, with
tenant quotas (:data:`GOVERNED_QUOTAS`), a price for the ops planner
(:data:`GOVERNED_PRICES`), and two variants of the ops agent under budget policies
(:func:`governed_agents`; the ``cheaper_model`` one's chain is served by
``FakeOpenAIServer``, answering with the ops planner).

The histories are what ``temporal workflow show --output json`` writes, plus a top-level
``workflowId`` (which Temporal's JSON leaves out and replay reports need).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from stead.contracts.budget import Budget, BudgetRules, Price, RaiseBudget
from stead.contracts.evaluation import (
    EVALUATION_WORKFLOW,
    EvaluationSweep,
    EvaluationSweepSummary,
)
from stead.contracts.models import (
    ApprovalDecision,
    DecideInput,
    DecideOutcome,
    Message,
    ModelEndpoint,
    ModelTurn,
    RunRequest,
    RunResult,
    RunState,
    ToolSchema,
)
from stead.conversation import ConversationStart, TurnOutcome
from stead.integrations.llm import FunctionModel
from stead.settings import Settings

if TYPE_CHECKING:
    from stead.authoring.agent import Agent
    from stead.contracts.policy import Policy

Human = Literal["none", "approve_signal", "approve_update", "edit_update", "reject_signal",
                "escalate_then_approve", "snapshot_pending", "raise_budget",
                "queued_then_admitted", "terminate_subagent"]
"""What the recorder does while a run waits for an approval:

- ``none``: nobody answers (the run must not ask, or its deadlines pass);
- ``approve_signal`` / ``reject_signal``: every pending approval by the public signals;
- ``approve_update`` / ``edit_update``: by the ``decide`` update, as is or with smaller
  arguments (re-checked by the gate);
- ``escalate_then_approve``: wait until the first deadline moved the approval up the chain,
  then approve as the second role;
- ``snapshot_pending``: record the history while the run waits (an in-flight run), then
  approve so the run finishes;
- ``raise_budget``: once the run waits for a person at its budget (``on_exceed: ask``), raise
  it by the ``raise_budget`` update;
- ``queued_then_admitted``: once the run is queued behind its ``blocker`` (its tenant at its
  cap of runs in flight), approve the blocker's restart so that it ends and its ``admit``
  signal lets the queued run in;
- ``terminate_subagent``: once the run's sub-agent (``<workflow id>/delegate-1``) waits for
  an approval, terminate it, as an operator would: the parent reads what it spent from the
  ledger and goes on."""

LEAK = " Paid back to IBAN DE89 3704 0044 0532 0130 00."
"""What the leaky model adds to its first answer: an IBAN, which output validation rejects."""


@dataclass(frozen=True)
class CorpusScenario:
    """One recorded run: the path it takes and how the recorder checks it took it."""

    name: str
    """Becomes the workflow id (``corpus-<name>``) and the file name."""
    shows: str
    request: RunRequest
    check: Callable[[RunResult], bool]
    human: Human = "none"
    leaky_model: bool = False
    """Served by the agent's planner wrapped so its first answer leaks an IBAN (the reference
    agents answer cleanly, so this is how a reask path gets into the corpus)."""
    governed: bool = False
    """Run on the governed worker (:data:`GOVERNED_QUOTAS`, :data:`GOVERNED_PRICES`, the
    budget-variant agents of :func:`governed_agents`): the budget and admission paths of
    issue 18, whose settings and policies the other scenarios must not see."""
    blocker: RunRequest | None = None
    """Started first and held in flight (its restart waits for an approver) so that the
    scenario's run finds its tenant at its cap; approved once the scenario has its answer
    (or, for ``queued_then_admitted``, once the scenario is queued). Not recorded."""

    @property
    def workflow_id(self) -> str:
        return f"corpus-{self.name}"


def _ok_tool(r: RunResult, tool: str) -> bool:
    return any(c.tool == tool and c.status == "ok" for c in r.tool_calls)


def _req(agent: str, text: str, *, tenant: str = "default", budget: Budget | None = None,
         **metadata: str) -> RunRequest:
    return RunRequest(agent=agent, input=text, user="corpus", metadata=metadata, tenant=tenant,
                      budget=budget)


ASK_AGENT = "ops-budget-ask"
"""The ops agent under a policy variant whose budget asks a person at the limit (the limit
itself comes from the request). Served by the governed worker only."""
ASK_TIMEOUT_SECONDS = 3.0
CHEAPER_AGENT = "ops-budget-cheaper"
"""The ops agent under a policy variant whose money limit steps down to a cheaper model of
its chain (two endpoints on ``FakeOpenAIServer``, which answers with the ops planner)."""
CHAIN_KEY_VAR = "STEAD_CORPUS_FAKE_MODEL_KEY"
"""Where the chain's endpoints read the fake server's key from (set by the recorder)."""
CHAIN_KEY = "sk-corpus-fake-0123456789abcdef"
"""The key the fake server accepts: not a credential, it opens nothing but the fake."""
DELEGATE_AGENT = "ops-delegating"
"""A graph that hands the request to the ops agent as a sub-agent, under a money budget:
the sub-agent's spending counts against it. Served by the governed worker only."""
CAPPED_TENANT = "corpus-capped"
"""One run in flight; the next queues."""
REFUSING_TENANT = "corpus-refusing"
"""One run in flight; the next is refused."""
IMPATIENT_TENANT = "corpus-impatient"
"""One run in flight; the next queues for at most 2 s, then is refused."""
BROKE_TENANT = "corpus-broke"
"""A daily spending window smaller than one call's estimate."""
GOVERNED_QUOTAS: dict[str, dict[str, Any]] = {
    CAPPED_TENANT: {"runs_in_flight": 1},
    REFUSING_TENANT: {"runs_in_flight": 1, "over_quota": "refuse"},
    IMPATIENT_TENANT: {"runs_in_flight": 1, "queue_timeout_seconds": 2},
    BROKE_TENANT: {"usd_per_day": 0.001},
}
"""``STEAD_TENANT_QUOTAS`` of the governed worker."""
GOVERNED_PRICES: dict[str, dict[str, float]] = {
    "scripted:ops": {"input": 5.0, "output": 20.0}}
"""``STEAD_MODEL_PRICES`` of the governed worker: the ops planner priced like a real model,
so that runs' plans pin a price and money limits and windows have something to count."""


SCENARIOS: list[CorpusScenario] = [
    # ------------------------------------------------------------------------ ops
    CorpusScenario(
        "ops-healthy-check", "status check of a healthy service: one read tool, answer",
        _req("ops", "How is auth-service doing?"),
        lambda r: r.status == "completed" and r.approvals == 0 and _ok_tool(r, "service_status")),
    CorpusScenario(
        "ops-fallback-retry-ticket",
        "model slip corrected, metrics down -> fallback tool, flaky logs -> retry, ticket",
        _req("ops", "Checkout API is throwing 500s. Check its status and recent logs, then "
                    "open a ticket."),
        lambda r: r.status == "completed" and r.rejected_calls >= 1 and r.fallbacks >= 1
        and r.retries >= 1 and _ok_tool(r, "create_ticket")),
    CorpusScenario(
        "ops-unknown-tool", "model calls a tool that does not exist, then files a ticket",
        _req("ops", "payments-db is very slow, page the on-call"),
        lambda r: r.status == "completed" and r.rejected_calls == 1
        and _ok_tool(r, "create_ticket")),
    CorpusScenario(
        "ops-tool-and-fallback-fail",
        "a tool and its fallback both fail: failure reported to the model, clear answer",
        _req("ops", "How is legacy-batch doing?"),
        lambda r: r.status == "completed" and "could not determine" in (r.answer or "")),
    CorpusScenario(
        "ops-restart-approved-signal", "restart needs approval; approved by the `approve` signal",
        _req("ops", "search-worker is down, restart it"),
        lambda r: r.status == "completed" and r.approvals == 1
        and _ok_tool(r, "restart_service"), human="approve_signal"),
    CorpusScenario(
        "ops-restart-approved-update", "restart approved through the `decide` update",
        _req("ops", "Restart checkout-api please, it keeps timing out"),
        lambda r: r.status == "completed" and r.approvals == 1
        and _ok_tool(r, "restart_service"), human="approve_update"),
    CorpusScenario(
        "ops-restart-rejected", "restart rejected by the `reject` signal: denied, model told",
        _req("ops", "restart payments-db"),
        lambda r: r.status == "denied" and r.denials == 1 and r.approvals == 0,
        human="reject_signal"),
    CorpusScenario(
        "ops-restart-escalated-auto-denied",
        "nobody approves: deadline escalates oncall -> manager, then auto-denies",
        _req("ops", "restart auth-service now", approval_timeout_seconds="1"),
        lambda r: r.status == "escalated" and r.escalations >= 2 and r.approvals == 0),
    CorpusScenario(
        "ops-restart-awaiting-approval",
        "in flight: recorded while the restart waits for its approver",
        _req("ops", "restart search-worker, it is flapping"),
        lambda r: r.status == "completed" and r.approvals == 1, human="snapshot_pending"),
    CorpusScenario(
        "ops-viewer-needs-human",
        "routing hands a viewer's restart to a human; approved, then the restart is approved",
        _req("ops", "restart search-worker", role="viewer"),
        lambda r: r.status == "completed" and r.approvals >= 1
        and r.route.startswith("human"), human="approve_signal"),
    CorpusScenario(
        "ops-security-strict-deny",
        "security incident: strict profile, the restart is denied by score",
        _req("ops", "Credentials leaked from auth-service, restart it immediately"),
        lambda r: r.status == "denied" and r.denials >= 1 and r.route.startswith("profile")),
    CorpusScenario(
        "ops-refused-card", "request with a card number: refused by routing, no model call",
        _req("ops", "restart checkout-api, charge it to card 4111 1111 1111 1111"),
        lambda r: r.status == "refused" and r.model_turns == 0),
    # ------------------------------------------------------------------------ refund
    CorpusScenario(
        "refund-small-allowed", "small refund: allowed without a human, customer notified",
        _req("refund", "Refund €30 on ORD-1001, the mug arrived broken"),
        lambda r: r.status == "completed" and r.approvals == 0
        and _ok_tool(r, "issue_refund") and _ok_tool(r, "notify_customer")),
    CorpusScenario(
        "refund-large-approved", "refund above 50 EUR: support lead approves by signal",
        _req("refund", "Please refund 200 EUR on ORD-1005, the headphones stopped working"),
        lambda r: r.status == "completed" and r.approvals == 1 and _ok_tool(r, "issue_refund"),
        human="approve_signal"),
    CorpusScenario(
        "refund-large-edited",
        "approver lowers the amount through the update; the gate re-checks the edit",
        _req("refund", "Refund 300 EUR for ORD-1004, the e-bike battery is dead"),
        lambda r: r.status == "completed" and r.approvals == 1 and _ok_tool(r, "issue_refund"),
        human="edit_update"),
    CorpusScenario(
        "refund-escalated-finance-approves",
        "support lead does not answer in time; finance approves after the escalation",
        _req("refund", "Refund 120 EUR on ORD-1002 for the damaged desks",
             approval_timeout_seconds="1"),
        lambda r: r.status == "completed" and r.escalations == 1 and r.approvals == 1
        and _ok_tool(r, "issue_refund"), human="escalate_then_approve"),
    CorpusScenario(
        "refund-very-large-denied", "refund above the hard limit: denied, the model is told",
        _req("refund", "Refund 4,000 EUR for order ORD-1004"),
        lambda r: r.status == "denied" and r.denials >= 1),
    CorpusScenario(
        "refund-refused-card", "card number in the request: refused by routing",
        _req("refund", "Refund ORD-1002 to my card 4111 1111 1111 1111"),
        lambda r: r.status == "refused" and r.model_turns == 0),
    CorpusScenario(
        "refund-output-reask", "answer leaks an IBAN: output validation asks again",
        _req("refund", "Refund 20 EUR on ORD-1003, wrong colour"),
        lambda r: r.status == "completed" and r.reasks == 1 and "IBAN" not in (r.answer or ""),
        leaky_model=True),
    # ------------------------------------------------------------------------ graphs
    CorpusScenario(
        "refund-graph-evaluated",
        "a run pinned to the refund@1 graph: the answer passes the grounded-numbers evaluation",
        _req("refund", "Refund 15 EUR on ORD-1001, the handle is chipped"),
        lambda r: r.status == "completed" and r.graph == "refund@1"
        and r.path[-2:] == ["evaluate", "done"]),
    CorpusScenario(
        "ops-graph-pinned", "a run pinned to the ops@1 graph (route, recall, think/act, check)",
        _req("ops", "How is search-worker doing?"),
        lambda r: r.status == "completed" and r.graph == "ops@1" and r.path[:3] == [
            "route", "recall", "think"]),
    # ------------------------------------------------------------------------ budgets
    CorpusScenario(
        "ops-budget-calls-stopped",
        "a request's budget of one model call: stopped budget_exceeded before the second",
        _req("ops", "How is auth-service doing?", budget=Budget(max_model_calls=1)),
        lambda r: r.status == "budget_exceeded" and r.model_turns == 1
        and "max_model_calls" in (r.error or ""), governed=True),
    CorpusScenario(
        "ops-budget-usd-stopped",
        "a request's money limit below the first call's estimate at the pinned price: stopped "
        "before any model call",
        _req("ops", "How is auth-service doing?", budget=Budget(max_usd=0.001)),
        lambda r: r.status == "budget_exceeded" and r.model_turns == 0
        and "max_usd" in (r.error or ""), governed=True),
    CorpusScenario(
        "ops-budget-ask-raised",
        "on_exceed ask: the run waits at its one-call budget; raised by the `raise_budget` "
        "update, it completes",
        _req(ASK_AGENT, "How is auth-service doing?", budget=Budget(max_model_calls=1)),
        lambda r: r.status == "completed" and r.spend.model_calls == 2
        and _ok_tool(r, "service_status"), human="raise_budget", governed=True),
    CorpusScenario(
        "ops-budget-ask-timed-out",
        "on_exceed ask: nobody raises the budget in time, the run ends budget_exceeded",
        _req(ASK_AGENT, "How is auth-service doing?", budget=Budget(max_model_calls=1)),
        lambda r: r.status == "budget_exceeded" and "nobody raised it" in (r.error or ""),
        governed=True),
    CorpusScenario(
        "ops-budget-cheaper-model",
        "on_exceed cheaper_model: the first chain model's estimate passes max_usd, the run "
        "goes on with the cheaper one (both served by the fake OpenAI server)",
        _req(CHEAPER_AGENT, "How is auth-service doing?"),
        lambda r: r.status == "completed" and r.model == "small" and r.models == ["small"]
        and _ok_tool(r, "service_status"), governed=True),
    CorpusScenario(
        "ops-tenant-window-refused",
        "the tenant's daily spending window refuses the model call: the run ends "
        "budget_exceeded, no fallback",
        _req("ops", "How is auth-service doing?", tenant=BROKE_TENANT),
        lambda r: r.status == "budget_exceeded" and "window" in (r.error or ""),
        governed=True),
    # ------------------------------------------------------------------------ admission
    CorpusScenario(
        "ops-admission-queued-admitted",
        "the tenant is at its cap of runs in flight: queued, admitted by the `admit` signal "
        "when the run ahead ends",
        _req("ops", "How is auth-service doing?", tenant=CAPPED_TENANT),
        lambda r: r.status == "completed" and _ok_tool(r, "service_status"),
        human="queued_then_admitted", governed=True,
        blocker=_req("ops", "search-worker is down, restart it", tenant=CAPPED_TENANT)),
    CorpusScenario(
        "ops-admission-refused",
        "the tenant is at its cap and refuses over quota: refused (refuse:quota), no model call",
        _req("ops", "How is auth-service doing?", tenant=REFUSING_TENANT),
        lambda r: r.status == "refused" and r.route == "refuse:quota" and r.model_turns == 0,
        governed=True,
        blocker=_req("ops", "search-worker is down, restart it", tenant=REFUSING_TENANT)),
    CorpusScenario(
        "ops-admission-queue-timeout",
        "the tenant is at its cap: queued, and refused once it waited its queue_timeout_seconds",
        _req("ops", "How is auth-service doing?", tenant=IMPATIENT_TENANT),
        lambda r: r.status == "refused" and r.route == "refuse:quota"
        and "waited 2 s" in (r.answer or ""), governed=True,
        blocker=_req("ops", "search-worker is down, restart it", tenant=IMPATIENT_TENANT)),
    # ------------------------------------------------------------------------ sub-agents
    CorpusScenario(
        "ops-subagent-budgeted",
        "a graph hands the request to the ops agent as a sub-agent under the parent's budget: "
        "its spending counts in the parent's",
        _req(DELEGATE_AGENT, "How is auth-service doing?"),
        lambda r: r.status == "completed" and r.spend.usd > 0 and r.spend.model_calls >= 2,
        governed=True),
    CorpusScenario(
        "ops-subagent-terminated",
        "the sub-agent waits for an approval and is terminated: the parent reads what it spent "
        "from the ledger (subagent_counted) and goes on",
        _req(DELEGATE_AGENT, "search-worker is down, restart it"),
        lambda r: r.status == "completed" and r.spend.usd > 0,
        human="terminate_subagent", governed=True),
    CorpusScenario(
        "unknown-agent", "a request for an agent the worker does not serve: the run fails",
        _req("billing", "What is my balance?"),
        lambda r: False),  # never returns a result: the workflow fails (checked separately)
]


@dataclass(frozen=True)
class CorpusConversation:
    """A recorded conversation (``ConversationWorkflow``) on the governed worker: its messages
    said one by one (the ``say`` update), then the ``end`` signal. Two files: the
    conversation's history and its last turn's (a child ``AgentWorkflow``)."""

    name: str
    shows: str
    start: ConversationStart
    messages: tuple[str, ...]
    check: Callable[[Sequence[TurnOutcome]], bool]

    @property
    def workflow_id(self) -> str:
        return f"corpus-{self.name}"

    @property
    def last_turn_id(self) -> str:
        return f"{self.workflow_id}/turn-{len(self.messages)}"

    @property
    def workflow_ids(self) -> tuple[str, str]:
        return self.workflow_id, self.last_turn_id


CONVERSATIONS: list[CorpusConversation] = [
    CorpusConversation(
        "conversation-budget",
        "a conversation's budget of two model calls: turn one spends both, turn two (its "
        "request carries what turn one spent) is stopped before its first call",
        ConversationStart(agent="ops", user="corpus", budget=Budget(max_model_calls=2)),
        ("How is auth-service doing?", "How is search-worker doing?"),
        lambda t: [o.status for o in t] == ["completed", "budget_exceeded"]
        and t[0].spend.model_calls == 2 and t[1].spend.model_calls == 0),
]


@dataclass(frozen=True)
class CorpusSweep:
    """A recorded online-evaluation sweep (``EvaluationWorkflow``), run after the agent
    scenarios so that it grades their finished runs. The file holds the sweep's first run."""

    name: str
    shows: str
    sweep: EvaluationSweep
    agents: str = "ops, refund"

    @property
    def workflow_id(self) -> str:
        return f"corpus-{self.name}"


SWEEPS: list[CorpusSweep] = [
    CorpusSweep("evaluation-sweep",
                "online evaluation grades the finished runs, 10 per round in batches of 4, then "
                "continues as new", EvaluationSweep(limit=10, batch=4)),
]


def leaky(model: FunctionModel) -> FunctionModel:
    """``model`` whose first answer (before any reask) leaks an IBAN."""
    async def turn(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        t = await model.complete(messages, tools)
        reasked = any(m.role == "user" and (m.content or "").startswith("Your answer was not")
                      for m in messages)
        if t.tool_calls or reasked:
            return t
        return t.model_copy(update={"content": (t.content or "") + LEAK})
    return FunctionModel(turn, name=f"{model.name}+leaky")


def governed_agents(ops: Agent, chain_url: str) -> list[Agent]:
    """The governed worker's agents: the reference ops agent as it is, and three variants of
    it under policies with a budget: ``ASK_AGENT`` (``on_exceed: ask``) and ``CHEAPER_AGENT``
    (``on_exceed: cheaper_model``, its chain of two priced models at ``chain_url``), with its
    tools, planner and graph, and ``DELEGATE_AGENT``, whose graph hands the request to the ops
    agent as a sub-agent."""
    assert ops.policy is not None
    ask = BudgetRules(on_exceed="ask", ask_timeout_seconds=ASK_TIMEOUT_SECONDS)
    # Input is free so only the output limit counts: big's estimate $1.00, small's $0.01.
    cheaper = BudgetRules(max_usd=0.5, on_exceed="cheaper_model", cheaper_model="small")
    chain = [ModelEndpoint(model=model, name=name, base_url=chain_url, api_key_env=CHAIN_KEY_VAR,
                           max_output_tokens=1000, max_attempts=1,
                           price=Price(input_usd_per_mtok=0.0, output_usd_per_mtok=usd))
             for model, name, usd in (("gpt-4o", "big", 1000.0), ("gpt-4o-mini", "small", 10.0))]

    def variant(name: str, rules: BudgetRules) -> Policy:
        assert ops.policy is not None
        return ops.policy.model_copy(update={"id": f"{ops.policy.id}-{name}", "budget": rules})

    from stead.agents.ops import DELEGATING_GRAPH

    return [ops, dataclasses.replace(ops, name=ASK_AGENT, policy=variant("budget-ask", ask)),
            dataclasses.replace(ops, name=CHEAPER_AGENT, models=chain,
                                policy=variant("budget-cheaper", cheaper)),
            dataclasses.replace(ops, name=DELEGATE_AGENT, graph=DELEGATING_GRAPH,
                                policy=variant("budget-delegating", BudgetRules(max_usd=10.0)))]


# ---------------------------------------------------------------------------- files


def history_file_name(workflow_id: str, run_id: str | None = None) -> str:
    """A portable file name for a history: the workflow id with unsafe characters replaced
    (the exact id is kept inside the file), plus the run id when one is given."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", workflow_id).strip("._") or "workflow"
    return f"{safe}__{run_id}.json" if run_id else f"{safe}.json"


def history_json(history: WorkflowHistory) -> dict[str, Any]:
    """Temporal's history JSON (as the CLI and Web UI export it) with the workflow id."""
    return {"workflowId": history.workflow_id, **history.to_json_dict()}


def dump_history_json(doc: dict[str, Any]) -> str:
    """One event per line: compact, yet a re-recording diffs event by event."""
    head = {k: v for k, v in doc.items() if k != "events"}
    lines = [json.dumps(e, separators=(",", ":")) for e in doc.get("events", [])]
    return (json.dumps(head, separators=(",", ":"))[:-1] + ',"events":[\n'
            + ",\n".join(lines) + "\n]}\n")


def write_history(history: WorkflowHistory, path: Path) -> Path:
    # Written whole to a sibling, then renamed: a crash never leaves half a history behind.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_history_json(history_json(history)))
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Exported:
    path: Path
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    events: int


async def fetch_for_export(client: Client, *, query: str,
                           limit: int | None) -> list[tuple[WorkflowHistory, str]]:
    """Histories (with their run status) of the runs ``query`` selects, all fetched before
    anything is written, so a server that fails mid-way leaves the corpus as it was."""
    from temporalio.service import RPCError

    from stead.evals.replay import query_error

    fetched: list[tuple[WorkflowHistory, str]] = []
    try:
        async for wf in client.list_workflows(query, limit=limit):
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            fetched.append((history, wf.status.name.lower() if wf.status else "unknown"))
    except RPCError as e:
        raise query_error(e, query) from None
    return fetched


def write_exports(fetched: Sequence[tuple[WorkflowHistory, str]], out: Path) -> list[Exported]:
    """One file per run, named from the workflow id (``__<run id>`` is added when two runs
    would share a name); a file of the same name is replaced."""
    from stead.evals.replay import HistoryFileError

    if out.exists() and not out.is_dir():
        raise HistoryFileError(f"--out {out} exists and is not a directory")
    names = [history_file_name(h.workflow_id) for h, _ in fetched]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Exported] = []
    for (history, status), name in zip(fetched, names, strict=True):
        if names.count(name) > 1:
            name = history_file_name(history.workflow_id, history.run_id)
        path = write_history(history, out / name)
        started = history.events[0].workflow_execution_started_event_attributes
        written.append(Exported(path, history.workflow_id, history.run_id,
                                started.workflow_type.name, status, len(history.events)))
    return written


async def export_histories(client: Client, out: Path, *, query: str,
                           limit: int | None) -> list[Exported]:
    """Fetch the runs ``query`` selects and write them to ``out`` (see :func:`write_exports`)."""
    return write_exports(await fetch_for_export(client, query=query, limit=limit), out)


# ---------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Recorded:
    scenario: CorpusScenario | CorpusConversation | CorpusSweep
    path: Path
    status: str
    events: int
    size: int


async def _play_human(handle: WorkflowHandle[Any, RunResult], how: Human, *,
                      within: float = 60) -> WorkflowHistory | None:
    """Answer approvals as ``how`` says until the run ends; the pending-state history when
    ``how`` is ``snapshot_pending``."""
    if how in ("none", "queued_then_admitted", "terminate_subagent"):
        return None
    if how == "raise_budget":
        await _raise_budget(handle, within=within)
        return None
    snapshot: WorkflowHistory | None = None
    answered: set[tuple[str, int]] = set()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = await handle.query("state", result_type=RunState,
                                   rpc_timeout=timedelta(seconds=5))
        if state.status != "running":
            return snapshot
        for p in state.pending_approvals:
            if (p.approval_id, p.level) in answered:
                continue
            if how == "escalate_then_approve" and p.level == 0:
                continue  # let the first deadline pass
            if how == "snapshot_pending" and snapshot is None:
                snapshot = await handle.fetch_history()
            answered.add((p.approval_id, p.level))
            decision = ApprovalDecision(approval_id=p.approval_id, by="corpus-recorder",
                                        role=p.awaiting, note="recorded for the corpus")
            if how == "reject_signal":
                await handle.signal("reject", decision)
            elif how in ("approve_update", "edit_update"):
                edited = None
                if how == "edit_update":
                    edited = {**p.arguments, "amount": 60.0}
                await handle.execute_update("decide", DecideInput(
                    **decision.model_dump(exclude={"arguments"}), approved=True,
                    arguments=edited), result_type=DecideOutcome)
            else:
                await handle.signal("approve", decision)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.id} still running after {within:.0f}s")


async def _state_when(handle: WorkflowHandle[Any, RunResult], what: str,
                      ready: Callable[[RunState], bool], *, within: float = 60) -> RunState:
    """The run's ``state`` once ``ready`` says so; ``TimeoutError`` naming ``what`` if the
    run ends or ``within`` passes first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state: RunState = await handle.query("state", result_type=RunState,
                                             rpc_timeout=timedelta(seconds=5))
        if ready(state):
            return state
        if state.status not in ("running", "queued"):
            break
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.id} never got to {what}")


async def _raise_budget(handle: WorkflowHandle[Any, RunResult], *, within: float) -> None:
    """Once the run waits at its budget, raise each limit it would pass (the update)."""
    state = await _state_when(handle, "waiting for a budget raise",
                              lambda s: s.budget is not None and s.budget.waiting,
                              within=within)
    assert state.budget is not None
    lim = state.budget.limit
    raised = RaiseBudget(
        max_model_calls=None if lim.max_model_calls is None else lim.max_model_calls + 4,
        max_tokens=None if lim.max_tokens is None else lim.max_tokens * 4,
        max_usd=None if lim.max_usd is None else lim.max_usd * 4,
        by="corpus-recorder", reason="recorded for the corpus")
    await handle.execute_update("raise_budget", raised, result_type=Budget)


async def _hold_slot(client: Client, sc: CorpusScenario,
                     settings: Settings) -> WorkflowHandle[Any, RunResult]:
    """Start the scenario's blocker and wait until it holds its tenant's slot (admitted, its
    restart waiting for an approver)."""
    from stead.client import start_run

    assert sc.blocker is not None
    blocker = await start_run(client, sc.blocker, temporal=settings.temporal,
                              workflow_id=f"corpus-blocker-{sc.name}")
    await _state_when(blocker, "an approval", lambda s: bool(s.pending_approvals))
    return blocker


async def _terminate_subagent(client: Client, parent: WorkflowHandle[Any, RunResult], *,
                              within: float = 60) -> None:
    """Once the parent's sub-agent waits for an approval, terminate it."""
    from temporalio.service import RPCError

    child = client.get_workflow_handle(f"{parent.id}/delegate-1", result_type=RunResult)
    deadline = time.monotonic() + within
    while True:
        try:
            await _state_when(child, "an approval", lambda s: bool(s.pending_approvals),
                              within=max(deadline - time.monotonic(), 0.1))
            break
        except RPCError:  # not started yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    await child.terminate("terminated by the corpus recorder, as an operator would")


async def _let_go(blocker: WorkflowHandle[Any, RunResult]) -> None:
    """Approve the blocker's restart; wait until it ended (and so freed its slot)."""
    state = await _state_when(blocker, "an approval", lambda s: bool(s.pending_approvals))
    for p in state.pending_approvals:
        await blocker.signal("approve", ApprovalDecision(
            approval_id=p.approval_id, by="corpus-recorder", role=p.awaiting,
            note="recorded for the corpus"))
    done = await asyncio.wait_for(blocker.result(), 60)
    if done.status != "completed":
        raise RuntimeError(f"{blocker.id} (a blocker) ended {done.status}")


async def _record_one(client: Client, sc: CorpusScenario, settings: Settings,
                      out: Path) -> Recorded:
    from temporalio.client import WorkflowFailureError

    from stead.client import start_run

    blocker = await _hold_slot(client, sc, settings) if sc.blocker is not None else None
    handle = await start_run(client, sc.request, temporal=settings.temporal,
                             workflow_id=sc.workflow_id)
    if sc.human == "queued_then_admitted":
        if blocker is None:
            raise RuntimeError(f"{sc.workflow_id}: queued_then_admitted needs a blocker")
        await _state_when(handle, "the admission queue", lambda s: s.status == "queued")
        await _let_go(blocker)
        blocker = None
    if sc.human == "terminate_subagent":
        await _terminate_subagent(client, handle)
    snapshot = await _play_human(handle, sc.human)
    try:
        result = await asyncio.wait_for(handle.result(), 60)
    except WorkflowFailureError as e:
        if sc.name != "unknown-agent":
            raise RuntimeError(f"{sc.workflow_id}: the run failed: {e.cause}") from e
        status = "failed"
    else:
        if not sc.check(result):
            raise RuntimeError(f"{sc.workflow_id} did not take its path ({sc.shows}): "
                               f"{result.model_dump_json(exclude={'tool_calls'})}")
        status = result.status
    if blocker is not None:
        await _let_go(blocker)
    history = snapshot if snapshot is not None else await handle.fetch_history()
    if snapshot is not None:
        status = "running (in flight)"
    path = write_history(history, out / history_file_name(sc.workflow_id))
    return Recorded(sc, path, status, len(history.events), path.stat().st_size)


async def _record_sweep(client: Client, sw: CorpusSweep, settings: Settings,
                        out: Path) -> Recorded:
    from temporalio.api.enums.v1 import EventType

    handle = await client.start_workflow(
        EVALUATION_WORKFLOW, sw.sweep, id=sw.workflow_id, task_queue=settings.temporal.task_queue,
        result_type=EvaluationSweepSummary)
    summary = await asyncio.wait_for(handle.result(), 120)
    first = client.get_workflow_handle(sw.workflow_id, run_id=handle.first_execution_run_id)
    history = await first.fetch_history()
    last = history.events[-1].event_type
    if summary.rounds < 2 or summary.failed_activities or summary.runs <= sw.sweep.limit \
            or last != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        raise RuntimeError(f"{sw.workflow_id} did not take its path ({sw.shows}): "
                           f"{summary.model_dump_json()}, last event {last}")
    path = write_history(history, out / history_file_name(sw.workflow_id))
    return Recorded(sw, path, "continued as new", len(history.events), path.stat().st_size)


async def _record_conversation(client: Client, cv: CorpusConversation, settings: Settings,
                               out: Path) -> list[Recorded]:
    from stead.conversation import say, start_conversation

    handle = await start_conversation(client, cv.start, temporal=settings.temporal,
                                      workflow_id=cv.workflow_id)
    outcomes = [await asyncio.wait_for(say(handle, text), 60) for text in cv.messages]
    await handle.signal("end")
    ended = await asyncio.wait_for(handle.result(), 60)
    if not cv.check(outcomes):
        raise RuntimeError(f"{cv.workflow_id} did not take its path ({cv.shows}): "
                           + "; ".join(o.model_dump_json(exclude={"context"})
                                       for o in outcomes))
    recorded: list[Recorded] = []
    for wid, status in ((cv.workflow_id, ended.reason),
                        (cv.last_turn_id, outcomes[-1].status)):
        history = await client.get_workflow_handle(wid).fetch_history()
        path = write_history(history, out / history_file_name(wid))
        recorded.append(Recorded(cv, path, status, len(history.events), path.stat().st_size))
    return recorded


async def record_corpus(out: Path, *, scenarios: Sequence[CorpusScenario] = tuple(SCENARIOS),
                        conversations: Sequence[CorpusConversation] = tuple(CONVERSATIONS),
                        sweeps: Sequence[CorpusSweep] = tuple(SWEEPS),
                        progress: Callable[[str], None] = print) -> list[Recorded]:
    """Run ``scenarios`` on a throwaway embedded stack, then ``sweeps`` over their runs, and
    write their histories to ``out``."""
    from stead.agents import reference_catalog
    from stead.agents.ops import default_world as ops_world
    from stead.agents.ops.runbooks import index_runbooks
    from stead.agents.refund import default_world as refund_world
    from stead.agents.refund import refund_agent
    from stead.authoring.agent import AgentCatalog
    from stead.contracts.quota import TenantQuota
    from stead.stack.embedded import EmbeddedStack, free_port
    from stead.storage.memory import open_memory
    from stead.storage.memory.embedders import HashingEmbedder
    from stead.testing.openai_server import FakeOpenAIServer
    from stead.worker import WorkerHost

    _ensure_dir(out)
    with tempfile.TemporaryDirectory(prefix="stead-corpus-") as tmp:
        data = Path(tmp)
        # Self-contained whatever the environment says: own servers, offline models.
        base = Settings(data_dir=data, temporal_port=free_port(), ui_port=free_port(),
                        postgres_port=free_port(), memory_backend="pgvector").replace(
            temporal_address=None, database_url=None, openai_api_key=None, pinecone_api_key=None,
            otel_exporter_otlp_endpoint=None)
        stack = EmbeddedStack(base, ui=False)
        progress("starting a throwaway embedded stack (Temporal dev server, PostgreSQL)")
        await stack.start()
        stack_exit = AsyncExitStack()  # the fake model server
        try:
            settings = stack.resolved_settings().replace(task_queue="corpus")
            leaky_settings = settings.replace(task_queue="corpus-leaky")
            governed_settings = settings.replace(
                task_queue="corpus-governed", tenant_quotas={
                    t: TenantQuota.model_validate(q) for t, q in GOVERNED_QUOTAS.items()},
                model_prices=GOVERNED_PRICES, admission_recheck_seconds=30.0)
            ops_world(data).reset()
            refund_world(data).reset()
            # Hashing: deterministic and instant; the recall path is what the corpus needs.
            embedder = HashingEmbedder(384)
            memory = await open_memory(settings, embedder=embedder)
            assert memory is not None
            try:
                await index_runbooks(memory.store, memory.embedder, tenant="default")
            finally:
                await memory.close()
            catalog = reference_catalog(data)
            leaky_catalog = AgentCatalog([refund_agent(refund_world(data))])
            os.environ[CHAIN_KEY_VAR] = CHAIN_KEY
            fake = await stack_exit.enter_async_context(FakeOpenAIServer.from_model(
                catalog["ops"].offline_model, api_key=CHAIN_KEY))
            governed_catalog = AgentCatalog(governed_agents(catalog["ops"], fake.base_url))
            refund_model = catalog["refund"].offline_model
            assert isinstance(refund_model, FunctionModel)
            recorded: list[Recorded] = []
            async with WorkerHost(settings, catalog, embedder=embedder) as host, \
                    WorkerHost(leaky_settings, leaky_catalog, embedder=embedder,
                               model=leaky(refund_model)) as leaky_host, \
                    WorkerHost(governed_settings, governed_catalog, embedder=embedder) as gov:
                assert host.client is not None and leaky_host.client is not None
                assert gov.client is not None
                for sc in scenarios:
                    s = leaky_settings if sc.leaky_model else \
                        governed_settings if sc.governed else settings
                    rec = await _record_one(host.client, sc, s, out)
                    progress(f"  {rec.path.name}: {rec.status}, {rec.events} events, "
                             f"{rec.size / 1024:.0f} KiB")
                    recorded.append(rec)
                for cv in conversations:
                    for rec in await _record_conversation(host.client, cv, governed_settings,
                                                          out):
                        progress(f"  {rec.path.name}: {rec.status}, {rec.events} events, "
                                 f"{rec.size / 1024:.0f} KiB")
                        recorded.append(rec)
                for sw in sweeps:
                    rec = await _record_sweep(host.client, sw, settings, out)
                    progress(f"  {rec.path.name}: {rec.status}, {rec.events} events, "
                             f"{rec.size / 1024:.0f} KiB")
                    recorded.append(rec)
        finally:
            await stack_exit.aclose()
            os.environ.pop(CHAIN_KEY_VAR, None)
            await stack.stop()
    full = len(recorded) == len(SCENARIOS) + 2 * len(CONVERSATIONS) + len(SWEEPS)
    _write_index(out, recorded, merge=not full)  # partial: the other files' rows stay
    return recorded


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _write_index(out: Path, recorded: Sequence[Recorded], *, merge: bool = False) -> None:
    """``out/README.md``: one row per recorded file. ``merge``: the rows of files not
    recorded now are kept as the index had them (a partial re-recording)."""
    rows: dict[str, str] = {}
    index = out / "README.md"
    if merge and index.exists():
        for line in index.read_text().splitlines():
            if m := re.match(r"\| `([^`]+)` \|", line):
                rows[m.group(1)] = line
    for r in recorded:
        sc = r.scenario
        agent = sc.request.agent if isinstance(sc, CorpusScenario) \
            else sc.start.agent if isinstance(sc, CorpusConversation) else sc.agents
        rows[r.path.name] = (f"| `{r.path.name}` | {agent} | {r.status} | {r.events} | "
                             f"{r.scenario.shows} |")
    lines = ["# Recorded histories of the reference agents",
             "",
             "Replayed by `tests/test_replay.py` and `stead replay evals/histories` against the "
             "current workflow code: a change that would break runs in flight fails there.",
             "Re-record with `python -m stead.evals.corpus --out evals/histories` (a throwaway "
             "embedded stack; about 40 seconds).",
             "",
             "A re-recording replaces the files listed below. Before one that follows a change "
             "to the workflow code, move the files to a subfolder named for the change (as "
             "`before-16/`, `before-18/`): replay reads subfolders too, so the runs older code "
             "recorded keep proving that runs in flight survive the upgrade.",
             "",
             "| file | agent | outcome | events | what it shows |",
             "| --- | --- | --- | ---: | --- |", *rows.values()]
    index.write_text("\n".join(lines) + "\n")


def _names() -> list[str]:
    return [s.name for s in SCENARIOS] + [c.name for c in CONVERSATIONS] + \
        [s.name for s in SWEEPS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stead.evals.corpus", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("evals/histories"),
                    help="directory to write the histories to (default evals/histories)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="record only this scenario (repeatable); names: "
                         + ", ".join(_names()))
    args = ap.parse_args(argv)
    # Offline and self-contained: never a real model or someone else's servers.
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PINECONE_API_KEY", "TEMPORAL_ADDRESS",
                "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    # The flaky tools fail on purpose; the SDK would log each failure with a traceback.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    unknown = sorted(set(args.only) - set(_names()))
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    # A sweep grades the runs recorded before it: with --only it needs its agents' scenarios.
    swept = [s for s in SWEEPS if not args.only or s.name in args.only]
    talks = [c for c in CONVERSATIONS if not args.only or c.name in args.only]
    started = time.perf_counter()
    recorded = asyncio.run(record_corpus(args.out, scenarios=chosen, conversations=talks,
                                         sweeps=swept))
    print(f"recorded {len(recorded)} histories in {args.out} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
