"""The typed objects that cross process boundaries: workflow, activity, query and CLI payloads.

Everything here is a pydantic model serialised with Temporal's pydantic data converter, so a
plain JSON payload (for example from the ``temporal`` CLI) is a valid input too. These models are
imported by workflow code: keep them free of I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from stead.contracts.budget import Budget, BudgetState, Price, Spend
from stead.contracts.policy import Policy
from stead.contracts.quota import TenantQuota

JsonObject = dict[str, Any]
"""A JSON object: tool arguments and results, whose shape the tool's own models define."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
BlobDigest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
"""Content address of a payload kept in ``stead_blobs`` (see ``stead.storage.blobs``)."""

RunStatus = Literal["running", "completed", "failed", "denied", "refused", "escalated",
                    "budget_exceeded", "queued"]
"""Closed set of run outcomes. ``running`` and ``queued`` (waiting for its tenant's admission,
``stead.contracts.admission``) only appear in the ``state`` query.
``budget_exceeded``: the run's next model call would have passed its budget (or its tenant's
spending window), and nobody raised it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _empty(value: object) -> bool:
    """Left out of a payload when empty, so that runs not using a newer field (model chains,
    reasoning items) send and store the same bytes as before it existed."""
    return not value


# ---------------------------------------------------------------------------- runs


SYNTHETIC_KEY = "stead.synthetic"
"""``RunRequest.metadata`` key of runs stead starts itself (``eval``, ``counterfactual``):
metrics, drift and telemetry keep them apart from production figures."""


class RunRequest(_Model):
    """Input of ``AgentWorkflow``: which agent to run on what."""

    agent: Name
    """Name of a registered agent, e.g. ``"ops"``."""
    input: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    """The user's request, in words."""
    tenant: Name = "default"
    """Tenant the run belongs to; recorded in the ledger and search attributes."""
    user: str | None = None
    """Who asked, for the audit trail."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Free-form string labels carried into the ledger."""
    max_steps: int | None = Field(default=None, ge=1, le=200)
    """Override of the agent's step budget (model turns plus tool calls)."""
    context: BlobDigest | None = None
    """Earlier conversation this run continues: the digest of a context manifest in
    ``stead_blobs`` (a ``RunResult.context``). The model sees those messages before ``input``;
    history carries only the digest."""
    budget: Budget | None = Field(None, exclude_if=_empty)
    """Limits for this run, within the agent's policy budget: each may only be lower than the
    policy's (``Budget.narrow``)."""
    spent: Spend | None = Field(None, exclude_if=_empty)
    """Already charged against this run's budget by earlier turns of its conversation
    (``ConversationWorkflow`` sets it): the run may spend only what is left."""


class ToolCallRecord(_Model):
    """One tool call as the run saw it."""

    step: int
    call_id: str
    tool: str
    arguments: JsonObject
    status: Literal["ok", "error", "rejected"]
    """``ok``: the tool (or a fallback) returned; ``error``: it failed after retries and
    fallbacks; ``rejected``: never ran (unknown tool, invalid arguments)."""
    served_by: str | None = None
    """The tool that produced the result: the one called or one of its fallbacks."""
    attempts: int = 0
    error: str | None = None


class RunResult(_Model):
    """Output of ``AgentWorkflow``."""

    status: RunStatus
    answer: str | None = None
    steps: int
    """Steps used: model turns plus tool calls."""
    model_turns: int = 0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    retries: int = 0
    """Tool attempts beyond the first, summed over all calls."""
    fallbacks: int = 0
    """Tool calls that were served by a fallback tool."""
    rejected_calls: int = 0
    """Calls the model got wrong (unknown tool, invalid arguments)."""
    approvals: int = 0
    """Approvals granted by a human."""
    denials: int = 0
    """Calls denied by policy or rejected by an approver."""
    escalations: int = 0
    """Approval deadlines that passed (each moves the approval up the chain or denies it)."""
    reasks: int = 0
    """Answers sent back to the model because output validation failed."""
    policy: str = ""
    """``id@version`` of the policy the run was judged by."""
    route: str = ""
    """Routing outcome: ``allow``, or the action and rule, e.g. ``refuse:pii-card``."""
    decisions: int = 0
    """Audit rows the run recorded."""
    audit_head: str = ""
    """Hash of the last audit row: `stead audit --verify` checks the chain ends here."""
    model: str = ""
    """Which model produced the answer (``scripted:<agent>`` offline; with a model chain, the
    name of the chain's model that answered the last turn)."""
    models: list[str] = Field(default_factory=list)
    """Every model that answered one of the run's turns, in the order they first did."""
    model_fallbacks: int = 0
    """Turns answered by a later model of the agent's chain because the ones before it were
    down, rate limited past their attempts, or timed out (``ModelEndpoint``)."""
    error: str | None = None
    graph: str = ""
    """``name@version`` of the execution graph the run followed."""
    path: list[str] = Field(default_factory=list)
    """Graph nodes in the order the run visited them."""
    context: BlobDigest | None = None
    """The conversation including this run's messages and answer, as a context manifest
    digest; pass it as the next run's ``RunRequest.context``. Set when the request had one."""
    spend: Spend = Field(default_factory=Spend, exclude_if=lambda v: v == Spend())
    """What the run's own model calls cost, settled from the usage each reported, plus what
    its sub-agents spent (not ``RunRequest.spent``)."""


class StepInfo(_Model):
    step: int
    kind: Literal["route", "memory", "model", "tool", "rejected", "denied", "approval", "output",
                  "evaluate", "subagent", "graph"]
    name: str
    status: str
    detail: str = ""


class PendingApproval(_Model):
    """An approval the run is waiting for (one entry of the ``state`` query)."""

    approval_id: str
    tool: str
    """The tool to be called, or ``(request)`` when routing sent the whole request to a human."""
    arguments: JsonObject
    risk: float
    deadline: datetime | None = None
    """When this level's wait ends; then the approval escalates or is auto-denied."""
    step: int = 0
    awaiting: str = ""
    """The role asked now (a level of the policy's approval chain)."""
    level: int = 0
    reason: str = ""
    factors: list[str] = Field(default_factory=list)
    """Risk factors, e.g. ``tier:high=0.45``."""
    policy: str = ""


class ApprovalDecision(_Model):
    """Payload of the ``approve`` and ``reject`` signals."""

    approval_id: str = Field(min_length=1)
    by: str = Field(min_length=1)
    """Who decided (recorded in the audit trail)."""
    note: str | None = None
    arguments: JsonObject | None = None
    """Edited arguments (approve only): re-validated and re-scored before use."""
    role: str | None = None
    """The approver's role; must be allowed by the policy's chain at the current level."""


class DecideInput(ApprovalDecision):
    """Payload of the ``decide`` update."""

    approved: bool


class DecideOutcome(_Model):
    """What the ``decide`` update returns."""

    approval_id: str
    outcome: Literal["approved", "rejected", "denied_after_edit"]
    tool: str
    arguments: JsonObject
    risk: float
    reason: str = ""


class RunState(_Model):
    """Answer of the ``state`` query."""

    agent: str
    tenant: str
    status: RunStatus
    step: int
    node: str
    """What the run is doing now, e.g. ``think``, ``tool:create_ticket``, ``done``."""
    pending_approvals: list[PendingApproval] = Field(default_factory=list)
    history: list[StepInfo] = Field(default_factory=list)
    graph: str = ""
    """``name@version`` of the execution graph the run follows."""
    path: list[str] = Field(default_factory=list)
    """Graph nodes visited so far, in order (the last is the current one)."""
    result: RunResult | None = None
    budget: BudgetState | None = Field(None, exclude_if=_empty)
    """The run's budget and spending, when it has a budget; ``waiting`` while it waits for a
    person to raise it (update ``raise_budget``)."""


# ---------------------------------------------------------------------------- model calls


class ToolCall(_Model):
    """A tool call the model proposed. ``arguments`` is the raw JSON text the model wrote."""

    id: str
    name: str
    arguments: str


class ReasoningItem(_Model):
    """What a reasoning model thought before a turn, as OpenAI's Responses API returns it. The
    turn's assistant message keeps it, so later requests hand it back and the model goes on
    from its own reasoning after a tool call (the API is called statelessly: ``store=false``)."""

    id: str
    summary: list[str] = Field(default_factory=list)
    """The reasoning summary's texts, when the model gave one."""
    encrypted_content: str | None = None
    """The reasoning itself, encrypted by the provider: opaque to stead, sent back as is."""


class Message(_Model):
    """One chat message in OpenAI's shape (roles system/user/assistant/tool)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: list[ReasoningItem] = Field(default_factory=list, exclude_if=_empty)
    """Assistant messages of a reasoning model (Responses API): its reasoning items."""


class ToolSchema(_Model):
    """What the model is told about a tool (OpenAI function-calling shape)."""

    name: str
    description: str
    parameters: JsonObject


class Usage(_Model):
    input_tokens: int = 0
    output_tokens: int = 0
    """Tokens the model generated, reasoning tokens included."""
    reasoning_tokens: int = Field(0, exclude_if=_empty)
    """Of ``output_tokens``, those a reasoning model spent thinking (where it says)."""


class ModelTurn(_Model):
    """One model response: an answer, tool calls, or both."""

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    model: str = ""
    finish_reason: str = "stop"
    usage: Usage = Field(default_factory=Usage)
    confidence: float | None = Field(None, ge=0, le=1)
    """The model's confidence in its proposed calls, where it reports one; low confidence
    raises the risk of every call in this turn."""
    context: BlobDigest | None = None
    """With ``ModelRequest.context``: the manifest of context + this request's non-system
    messages + this reply, stored by the activity."""
    reasoning: list[ReasoningItem] = Field(default_factory=list, exclude_if=_empty)
    """A reasoning model's reasoning items for this turn (Responses API)."""


class RunRef(_Model):
    """Identifies the run (and its step) an activity works for; ledger key material."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    step: int = 0


class ModelRequest(_Model):
    """Input of the model activity."""

    ref: RunRef
    messages: list[Message]
    tools: list[ToolSchema]
    decisions: list[DecisionRow] = Field(default_factory=list)
    """Audit rows decided since the last activity; written before the model is called."""
    model: str | None = None
    """A model setting chosen by routing (e.g. ``openai:gpt-4o``); None: the run's model."""
    context: BlobDigest | None = None
    """Earlier conversation (a context manifest digest): its messages go after the leading
    system messages of ``messages``; the reply's ``context`` extends it."""
    endpoint: ModelEndpoint | None = Field(None, exclude_if=_empty)
    """The model of the agent's chain to call (from the run's pinned plan); None: the
    routed ``model``, else the worker's configured model, else the agent's offline model."""
    fallback: int = Field(0, ge=0, exclude_if=_empty)
    """``endpoint``'s place in the chain: 0 the first, 1 its first fallback, ..."""
    price: Price | None = Field(None, exclude_if=_empty)
    """The called model's price as the run pinned it; None: unpriced (costs nothing)."""
    estimate: Spend | None = Field(None, exclude_if=_empty)
    """What the workflow estimated this call costs (request size plus the output limit), to
    reserve against the tenant's spending windows before the model is called."""


# ---------------------------------------------------------------------------- tool calls


class RetrySpec(_Model):
    """Declarative retry policy of a tool, mapped onto Temporal's RetryPolicy."""

    initial_interval: float = Field(0.2, gt=0)
    """Seconds before the first retry."""
    backoff: float = Field(2.0, ge=1.0)
    max_interval: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100)
    """Total attempts including the first; 1 means never retry."""
    non_retryable: list[str] = Field(default_factory=list)
    """Exception class names (or ApplicationError types) that are never retried."""


class Timeouts(_Model):
    start_to_close: float = Field(30.0, gt=0)
    """Seconds one attempt may take."""
    schedule_to_close: float | None = Field(None, gt=0)
    """Seconds all attempts together may take (the call's overall bound)."""
    heartbeat: float | None = Field(None, gt=0)
    """Seconds without a heartbeat after which an attempt counts as lost (long tools)."""


SideEffect = Literal["read", "write", "irreversible"]
RiskTier = Literal["low", "medium", "high", "critical"]


class ToolPlan(_Model):
    """Everything the workflow needs to know about a tool; pinned per run at start. Frozen:
    one object serves every run of its agent (see :class:`AgentPlan`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    parameters: JsonObject
    side_effect: SideEffect
    risk: RiskTier
    idempotent: bool
    retry: RetrySpec
    timeouts: Timeouts
    fallbacks: list[str] = Field(default_factory=list)

    def schema_for_model(self) -> ToolSchema:
        return ToolSchema(name=self.name, description=self.description, parameters=self.parameters)


ModelApi = Literal["chat", "responses"]
"""Which OpenAI API a model is called through: chat completions or the Responses API."""
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
"""How hard a reasoning model thinks (OpenAI's values; not every model takes every one)."""

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""Where a model without a base URL is, when ``OPENAI_BASE_URL`` says nothing either."""


class ModelEndpoint(_Model):
    """One model an agent may call: where it is, which model, which API, with what settings.

    An agent declares an ordered chain of them (``Agent(models=[...])`` or
    ``STEAD_AGENT_MODELS``): the first answers, each later one only when those before it are
    down, rate limited past their attempts, or time out. A run pins its chain in its plan, as
    the worker resolved it (base URL, timeout and attempts filled in), with the API key by
    reference only: history never holds a key::

        ModelEndpoint(model="gpt-5-mini", api="responses", reasoning_effort="low")
        ModelEndpoint(name="local", model="qwen2.5-7b", base_url="http://127.0.0.1:8080/v1",
                      api_key_env="LOCAL_LLM_KEY", temperature=0.2, max_attempts=2)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Name
    """The model's name on its server, e.g. ``gpt-4o-mini``."""
    name: Name = ""
    """What the ledger, metrics, traces and ``RunResult.models`` call it; unique in the chain.
    Default ``openai:<model>``."""
    api: ModelApi = "chat"
    base_url: str | None = None
    """The OpenAI-compatible server, e.g. ``http://127.0.0.1:8080/v1``; unset: the worker's
    ``OPENAI_BASE_URL``, else OpenAI's (filled in when a run pins it)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key (e.g. ``AZURE_OPENAI_KEY``)."""
    api_key_secret: str | None = None
    """Name of a stead secret holding the key (``STEAD_SECRET_<NAME>``). With neither: the
    worker's ``OPENAI_API_KEY``."""
    reasoning: bool | None = None
    """A reasoning model (o-series, gpt-5, gpt-oss): gets ``reasoning_effort``, never
    ``temperature``. Unset: judged by the model's name (filled in when a run pins it)."""
    temperature: float | None = Field(None, ge=0, le=2)
    """Sampling temperature; not sent to a reasoning model (they refuse it)."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Most tokens one answer may have (reasoning tokens included)."""
    reasoning_effort: ReasoningEffort | None = None
    """Reasoning models only; refused at worker start for the others."""
    parallel_tool_calls: bool | None = None
    """May the model propose several tool calls in one turn (sent when tools are offered)."""
    strict_tools: bool = False
    """Tools with strict schemas: the server makes the model's arguments match each tool's
    schema. Every tool's schema must then be strict (closed objects, every property required);
    the worker checks the agent's own tools when it starts."""
    timeout_seconds: float | None = Field(None, gt=0, le=86_400)
    """Seconds one call may take; unset: ``STEAD_MODEL_TIMEOUT_SECONDS``."""
    max_attempts: int | None = Field(None, ge=1, le=100)
    """Attempts before the next model of the chain is asked; unset: ``STEAD_MODEL_MAX_ATTEMPTS``."""
    price: Price | None = Field(None, exclude_if=_empty)
    """What the model costs (unset: ``STEAD_MODEL_PRICES``, else unpriced); pinned in the plan,
    so a run is charged at the prices it started with."""

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("model"), str):
            return {**data, "name": f"openai:{data['model'].strip()}"}
        return data


class GraphPin(_Model):
    """The graph a run started with, pinned in history (see ``stead.authoring.graph``)."""

    name: str
    version: int
    digest: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class AgentPlan(_Model):
    """An agent as a run sees it: resolved once at run start and kept in history.

    Frozen, and shared: stead's data converter decodes one plan payload once and hands the
    same object to every run that pinned it (``stead.security.codec``), so a worker holds a
    plan per agent, not per cached run. Derive a changed plan with ``model_copy(update=...)``;
    never change one in place, its dicts (tool parameters, output schema) included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    instructions: str
    model: str
    max_steps: int
    tools: list[ToolPlan]
    model_timeout: float = 60.0
    """Start-to-close seconds of one model call."""
    model_max_attempts: int = 5
    policy: Policy | None = None
    output_schema: JsonObject | None = None
    """JSON schema the final answer must satisfy (a JSON document), if the agent declares one."""
    memory: MemoryPlan | None = None
    """Semantic memory use; None: the run neither recalls nor remembers."""
    graph: GraphPin | None = None
    """The execution graph the run follows (None: runs recorded before graphs, which
    follow the default ``react`` graph, version 1)."""
    models: list[ModelEndpoint] = Field(default_factory=list, exclude_if=_empty)
    """The agent's model chain, first choice first, as the worker resolved it; empty: the
    worker's configured model (``OPENAI_*``), else the agent's offline model."""
    admission: TenantQuota | None = Field(None, exclude_if=_empty)
    """The run's tenant quota when it caps runs in flight or starts per minute: the run asks
    for admission before its first step (``stead.workflows._admission``); None: it does not."""
    price: Price | None = Field(None, exclude_if=_empty)
    """The price of ``model`` when the run has no chain (``STEAD_MODEL_PRICES``), pinned at
    run start; each chain model carries its own (``ModelEndpoint.price``)."""
    spend_windows: bool = Field(False, exclude_if=_empty)
    """The run's tenant has spending windows (``STEAD_TENANT_QUOTAS`` ``usd_per_day`` or
    ``usd_per_month``) on the worker that started it: each model request carries the
    workflow's estimate, which the model activity reserves against them. False (and a run
    without a budget): the workflow estimates nothing, and a model activity whose worker has
    windows for the tenant estimates the call itself (the same figure for a priced call)."""
    routed_prices: dict[str, Price] = Field(default_factory=dict, exclude_if=_empty)
    """The prices of the model settings the policy's routing may choose (``action: model``),
    by setting (``openai:gpt-4o``), pinned at run start like ``price``; a routed model that
    is not here is charged no money (runs recorded before routed models were priced)."""


class ToolInvocation(_Model):
    """Input of a tool activity."""

    ref: RunRef
    call_id: str
    tool: str
    """The tool this activity runs (the called tool or one of its fallbacks)."""
    requested_tool: str
    """The tool the model asked for."""
    arguments: JsonObject
    idempotency_key: str
    decisions: list[DecisionRow] = Field(default_factory=list)
    """Audit rows (e.g. the gate's allow) written before the tool's side effect."""


class ToolOutcome(_Model):
    """Output of a tool activity."""

    tool: str
    result: JsonObject
    attempt: int
    replayed: bool = False
    """True when the result came from the ledger because this key had already completed."""


class StartRun(_Model):
    ref: RunRef
    request: RunRequest


class FinishRun(_Model):
    ref: RunRef
    result: RunResult
    decisions: list[DecisionRow] = Field(default_factory=list)


class LostSubagent(_Model):
    """Input of ``run.subagent_spend``: a sub-agent of run ``ref`` that timed out, was
    terminated or cancelled, so neither a result nor a failure says what it spent."""

    ref: RunRef
    workflow_id: str
    """The sub-agent's workflow id (its own sub-agents' ids begin with it and ``/``)."""


class DecisionRow(_Model):
    """One link of a run's audit chain, built by the workflow, stored by an activity."""

    workflow_id: str
    run_id: str
    seq: int
    """1, 2, ... within the run."""
    step: int
    kind: str
    """What was decided about, e.g. ``route``, ``gate``, ``approval_decided``, ``fallback``."""
    decision: str
    reason: str = ""
    actor: str = "stead"
    policy: str = ""
    data: JsonObject = Field(default_factory=dict)
    at: datetime
    """Workflow time of the decision."""
    prev_hash: str
    hash: str


# ---------------------------------------------------------------------------- ledger rows
#
# What ``stead.storage.ledger.Ledger`` writes (the records below the activity payloads) and reads
# back (one model per table, every column in table order, so ``model_dump()`` is the row as
# ``select *`` returns it: `stead audit --json` prints exactly that).


class ModelCallRecord(_Model):
    """One model call attempt as the ledger records it (``Ledger.record_model_call``)."""

    attempt: int
    model: str
    """The model that answered (the response's own name when it gives one)."""
    status: Literal["ok", "error"]
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    content: str | None = None
    error: str | None = None
    """``<type>: <message>`` of a failed call."""
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float
    endpoint: str = ""
    """The name of the chain's model that was called (``ModelEndpoint.name``); empty for a
    model outside a chain (the configured, routed or offline model)."""
    fallback: int = 0
    """That model's place in the chain: 0 the first choice, 1 its first fallback, ..."""
    cost_usd: float | None = None
    """What the answer cost at the run's pinned price (None: unpriced, or no answer)."""


class ToolAttemptReport(_Model):
    """How one tool activity attempt ended (``Ledger.finish_tool``)."""

    key: str
    """The call's idempotency key."""
    attempt: int
    outcome: Literal["ok", "error", "replayed", "reconciled"]
    result: JsonObject | None = None
    error_type: str | None = None
    error: str | None = None
    final: bool = False
    """A failure that will not be retried: the call is closed as failed."""
    duration_ms: float | None = None


class MemoryOpRecord(_Model):
    """One memory recall or write a run made (``Ledger.record_memory_op``)."""

    op: Literal["recall", "write"]
    namespaces: list[str] = Field(default_factory=list)
    query: str | None = None
    item_ids: list[str] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    embedder: str = ""
    backend: str = ""
    duration_ms: float = 0.0


class _LedgerRow(BaseModel):
    # Columns added by later migrations are left out rather than refused (an older CLI
    # reading a newer ledger); tests/test_ledger.py pins each model to its table's columns.
    model_config = ConfigDict(extra="ignore")


class RunRow(_LedgerRow):
    """A row of ``stead_runs``: one run of a workflow."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    user_id: str | None
    input: str
    metadata: JsonObject
    model: str
    status: str
    """``running`` until finished, then the ``RunResult.status``."""
    answer: str | None
    error: str | None
    steps: int
    result: JsonObject | None
    """The ``RunResult`` as JSON (None while running)."""
    started_at: datetime
    finished_at: datetime | None


class ModelCallRow(_LedgerRow):
    """A row of ``stead_model_calls``: one model call attempt."""

    workflow_id: str
    run_id: str
    step: int
    attempt: int
    model: str
    status: str
    finish_reason: str | None
    tool_calls: list[JsonObject]
    """The proposed calls as ``ToolCall`` JSON (``arguments`` is the model's raw text)."""
    content: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    duration_ms: float
    created_at: datetime
    endpoint: str = ""
    """The chain's model that was called (``ModelEndpoint.name``); empty outside a chain."""
    fallback: int = 0
    """Its place in the chain (0: the first choice)."""
    cost_usd: float | None = None
    """What the answer cost at the run's pinned price (None: unpriced, or no answer)."""


class ToolCallRow(_LedgerRow):
    """A row of ``stead_tool_calls``: a call's idempotency record and outcome."""

    idempotency_key: str
    workflow_id: str
    run_id: str
    step: int
    call_id: str
    tool: str
    arguments: JsonObject
    status: str
    """``running``, ``open`` (failed, will retry), ``completed`` or ``failed``."""
    prev_status: str | None
    attempts: int
    result: JsonObject | None
    error: str | None
    claimed_at: datetime
    finished_at: datetime | None


class ToolAttemptRow(_LedgerRow):
    """A row of ``stead_tool_attempts``: one tool activity attempt, lost ones included."""

    idempotency_key: str
    attempt: int
    workflow_id: str
    run_id: str
    step: int
    tool: str
    requested_tool: str
    status: str
    """``running``, ``ok``, ``error``, ``replayed`` or ``reconciled``."""
    error_type: str | None
    error: str | None
    started_at: datetime
    duration_ms: float | None


class StoredDecision(_LedgerRow):
    """A row of ``stead_decisions``: a ``DecisionRow`` as stored (redacted, maybe re-chained)."""

    workflow_id: str
    seq: int
    run_id: str
    step: int
    kind: str
    decision: str
    reason: str
    actor: str
    policy: str
    data: JsonObject
    dedupe_key: str
    created_at: datetime
    prev_hash: str
    hash: str


class SupersededDecision(StoredDecision):
    """A row of ``stead_decisions_superseded``: what an attempt of a workflow task decided
    that history does not hold (a later attempt decided otherwise; migration 0014)."""

    superseded_at: datetime
    winner_seq: int
    """The seq from which the two attempts differ."""
    winner_at: datetime
    """When history's row at ``winner_seq`` was decided."""


class MemoryOpRow(_LedgerRow):
    """A row of ``stead_memory_ops``: one memory recall or write."""

    workflow_id: str
    run_id: str
    step: int
    op: str
    tenant: str
    namespaces: list[str]
    query: str | None
    item_ids: list[str]
    scores: list[float]
    embedder: str
    backend: str
    duration_ms: float
    created_at: datetime


class Trail(_Model):
    """Everything the ledger holds about a workflow (``Ledger.trail``), each list oldest first."""

    runs: list[RunRow] = Field(default_factory=list)
    model_calls: list[ModelCallRow] = Field(default_factory=list)
    tool_calls: list[ToolCallRow] = Field(default_factory=list)
    tool_attempts: list[ToolAttemptRow] = Field(default_factory=list)
    decisions: list[StoredDecision] = Field(default_factory=list)
    memory_ops: list[MemoryOpRow] = Field(default_factory=list)
    superseded: list[SupersededDecision] = Field(default_factory=list)
    """Decisions of discarded workflow-task attempts, kept beside the chain (not in it)."""


class LedgerDecision(_Model):
    """One decision as read back from the ledger (``stead_decisions``), without its hashes."""

    seq: int
    step: int
    kind: str
    decision: str
    reason: str = ""
    actor: str = ""
    policy: str = ""
    data: JsonObject = Field(default_factory=dict)

    @classmethod
    def from_row(cls, row: StoredDecision) -> LedgerDecision:
        """From a ``Ledger.trail`` decision."""
        return cls(seq=row.seq, step=row.step, kind=row.kind, decision=row.decision,
                   reason=row.reason, actor=row.actor, policy=row.policy, data=row.data)

    def summary(self) -> str:
        """``gate=ask(restart_service)[rule]``: kind, decision, tool and rule when known."""
        tool, rule = self.data.get("tool"), self.data.get("rule")
        return (f"{self.kind}={self.decision}" + (f"({tool})" if tool else "")
                + (f"[{rule}]" if rule else ""))


class DecisionBatch(_Model):
    rows: list[DecisionRow]


# ---------------------------------------------------------------------------- memory


class MemoryPlan(_Model):
    """How a run uses semantic memory (from the agent's declaration)."""

    recall_top_k: int = Field(4, ge=0, le=50)
    """Items recalled before the model first thinks (0: no recall)."""
    recall_namespaces: list[str] = Field(default_factory=list)
    """Namespaces to search (empty: all of the tenant's)."""
    min_score: float = Field(0.25, ge=-1, le=1)
    """Recalled items below this cosine similarity are dropped."""
    write_summary: bool = True
    """After a completed run, remember the request and answer in namespace ``runs``."""
    summary_ttl_seconds: int | None = Field(None, gt=0)


class RecalledItem(_Model):
    id: str
    namespace: str
    text: str
    score: float
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)


class RecallRequest(_Model):
    ref: RunRef
    query: str
    top_k: int
    namespaces: list[str] = Field(default_factory=list)
    min_score: float = 0.0


class RecallResult(_Model):
    items: list[RecalledItem] = Field(default_factory=list)
    embedder: str = ""
    backend: str = ""


class MemoryNote(_Model):
    text: str = Field(min_length=1, max_length=20_000)
    namespace: str = "runs"
    subject: str | None = None
    ttl_seconds: int | None = Field(None, gt=0)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)


class WriteRequest(_Model):
    ref: RunRef
    notes: list[MemoryNote]


for _m in (AgentPlan, ModelRequest, ToolInvocation, FinishRun):
    _m.model_rebuild()
