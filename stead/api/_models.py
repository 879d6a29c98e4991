"""What the HTTP API takes and returns: one pydantic model per body, so ``/openapi.json``
describes every field a client may send or read.

Bodies are strict (unknown fields are refused) and refuse text that the stack could not store
(NUL characters, which PostgreSQL rejects; lone surrogates, which are not UTF-8), so such input
fails here with a 422 instead of failing a run later.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from stead.contracts.budget import Budget
from stead.contracts.models import (
    JsonObject,
    PendingApproval,
    RunResult,
    RunRow,
    RunState,
    RunStatus,
    StepInfo,
)

Role = Literal["requester", "approver", "auditor"]
"""What a token may do: start runs; list and decide approvals; read audit trails and metrics.
Reading a run of one's tenant needs any role."""

KEY_PATTERN = r"^[\w.@:-]+$"
"""Tenants, agents and approval ids in URLs and tokens: letters, digits, ``_ . @ : -``. They
end up in Temporal visibility queries, so nothing there can quote or escape."""
WORKFLOW_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Workflow ids: anything printable (control characters are never part of a real id)."""

RESERVED_METADATA_PREFIX = "stead."
"""Metadata keys stead sets itself (``stead.synthetic`` hides a run from metrics; the API's
``stead.api.sub`` names the caller); a request may not set them."""

MAX_ARGUMENTS_BYTES = 64_000
MAX_JSON_DEPTH = 32


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _storable_json(value: object, depth: int = 0) -> None:
    """Raise ``ValueError`` for JSON the stack cannot store: bad text anywhere, NaN or
    infinity (not JSON at all, and refused by PostgreSQL's jsonb), nesting beyond reason."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinite numbers")
    elif isinstance(value, dict):
        for k, v in value.items():
            _storable(k)
            _storable_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _storable_json(v, depth + 1)


def _storable_object(value: JsonObject) -> JsonObject:
    import json

    _storable_json(value)
    if len(json.dumps(value)) > MAX_ARGUMENTS_BYTES:
        raise ValueError(f"must be at most {MAX_ARGUMENTS_BYTES} bytes of JSON")
    return value


Text = Annotated[str, AfterValidator(_storable)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=KEY_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- errors


class ErrorDetail(_Body):
    type: str
    """``unauthorized``, ``forbidden``, ``not_found``, ``conflict``, ``invalid_request``,
    ``over_quota`` (a 429 with ``Retry-After``), ``unavailable`` or ``internal``."""
    message: str
    """What went wrong, in words, and what to do about it."""
    fields: list[FieldError] = Field(default_factory=list)
    """For ``invalid_request``: each field that was refused."""


class FieldError(_Body):
    loc: list[str | int]
    """Where: ``["body", "input"]``, ``["query", "limit"]``..."""
    message: str


class ErrorResponse(_Body):
    """Every 4xx/5xx body: ``{"error": {"type": ..., "message": ...}}``."""

    error: ErrorDetail


# ---------------------------------------------------------------------------- runs


def _no_reserved_keys(value: dict[str, str]) -> dict[str, str]:
    reserved = sorted(k for k in value if k.startswith(RESERVED_METADATA_PREFIX))
    if reserved:
        raise ValueError(f"keys starting with {RESERVED_METADATA_PREFIX!r} are set by stead "
                         f"itself: {', '.join(reserved)}")
    return value


class StartRunBody(_Body):
    """``POST /v1/runs``. The tenant is always the token's."""

    agent: Key
    """Name of a registered agent, e.g. ``refund``."""
    input: Annotated[Text, StringConstraints(min_length=1, max_length=100_000)]
    """The request, in words."""
    user: Annotated[Text, StringConstraints(min_length=1, max_length=200)] | None = None
    """Who is asking, for the audit trail; default: the token's ``sub``."""
    metadata: Annotated[
        dict[Annotated[Text, StringConstraints(min_length=1, max_length=200)],
             Annotated[Text, StringConstraints(max_length=2000)]],
        Field(max_length=50), AfterValidator(_no_reserved_keys)] = Field(default_factory=dict)
    """String labels carried into the ledger (``role`` is read by routing rules)."""
    max_steps: int | None = Field(None, ge=1, le=200)
    """Override of the agent's step budget."""
    budget: Budget | None = None
    """Limits for this run (``max_usd``, ``max_tokens``, ``max_model_calls``); each may only
    be lower than the agent's policy budget."""


class StartedRun(_Body):
    workflow_id: str
    run_id: str | None
    """Temporal's run id of the first execution."""


class RunSummary(_Body):
    """One line of ``GET /v1/runs``."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    status: RunStatus
    """Outcome (``running`` until it ends); a run Temporal failed, terminated, cancelled or
    timed out is ``failed``."""
    temporal_status: str
    """Temporal's execution status: RUNNING, COMPLETED, FAILED, TERMINATED, ..."""
    awaiting_approval: bool
    started_at: datetime | None
    closed_at: datetime | None


class RunView(_Body):
    """``GET /v1/runs/{workflow_id}``."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    status: RunStatus
    temporal_status: str
    state: RunState | None
    """The ``state`` query's answer while the run is open; null once it closed, or when no
    worker answered (then ``error`` says so)."""
    result: RunResult | None
    """The run's result once it completed."""
    error: str | None = None
    """Why the run failed (Temporal's failure), or why ``state`` is missing."""
    started_at: datetime | None
    closed_at: datetime | None


# ---------------------------------------------------------------------------- approvals


class ApprovalView(PendingApproval):
    """One pending approval with what an approver needs to judge it."""

    workflow_id: str
    agent: str
    tenant: str
    input: str
    """The request the run is working on."""
    recent_steps: list[StepInfo]
    """The last steps of the run (``state`` query history), oldest first."""


class DecideBody(_Body):
    """``POST /v1/runs/{workflow_id}/approvals/{approval_id}``; the approver is the token's
    ``sub`` and the policy role its ``approval_role`` claim."""

    approved: StrictBool
    note: Annotated[Text, StringConstraints(max_length=2000)] | None = None
    """Why, for the audit trail."""
    arguments: Annotated[JsonObject, AfterValidator(_storable_object)] | None = None
    """Edited arguments (approvals only): re-validated and re-scored by the run's gate; a
    call that is no longer allowed is ``denied_after_edit``."""


class RaiseBudgetBody(_Body):
    """``POST /v1/runs/{workflow_id}/budget``: the new limits (each only above the run's; an
    unset one stays as it is) and why. The raiser on record is the token's ``sub``."""

    max_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    """Input plus output tokens, summed over the run's model calls."""
    max_model_calls: int | None = Field(None, ge=1)
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=2000)]
    """Why, for the audit trail."""

    @model_validator(mode="after")
    def _some_limit(self) -> RaiseBudgetBody:
        if self.max_usd is None and self.max_tokens is None and self.max_model_calls is None:
            raise ValueError("name at least one limit to raise (max_usd, max_tokens, "
                             "max_model_calls)")
        return self


# ---------------------------------------------------------------------------- audit


class _Row(BaseModel):
    # Columns added by later migrations are left out rather than refused.
    model_config = ConfigDict(extra="ignore")


class AuditRun(RunRow):
    """A run as the ledger holds it: every column of ``stead_runs`` (the ledger's own row
    model; the other audit rows below leave out columns the trail's envelope already says)."""


class AuditModelCall(_Row):
    run_id: str
    step: int
    attempt: int
    model: str
    status: str
    finish_reason: str | None
    tool_calls: list[JsonObject]
    content: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    duration_ms: float
    created_at: datetime
    endpoint: str = ""
    """The model of the agent's chain that was called; empty outside a chain."""
    fallback: int = 0
    """Its place in the chain (0: the first choice)."""
    cost_usd: float | None = None
    """What the answer cost at the run's pinned price (null: unpriced, or no answer)."""


class AuditToolCall(_Row):
    idempotency_key: str
    run_id: str
    step: int
    call_id: str
    tool: str
    arguments: JsonObject
    status: str
    attempts: int
    result: JsonObject | None
    error: str | None
    claimed_at: datetime
    finished_at: datetime | None


class AuditToolAttempt(_Row):
    idempotency_key: str
    attempt: int
    run_id: str
    step: int
    tool: str
    requested_tool: str
    status: str
    error_type: str | None
    error: str | None
    started_at: datetime
    duration_ms: float | None


class AuditDecision(_Row):
    run_id: str
    seq: int
    step: int
    kind: str
    decision: str
    reason: str
    actor: str
    policy: str
    data: JsonObject
    created_at: datetime
    prev_hash: str
    hash: str


class AuditSupersededDecision(AuditDecision):
    """A decision of a discarded workflow-task attempt, kept beside the chain: the retried
    task decided otherwise from ``winner_seq`` on (``stead_decisions_superseded``)."""

    superseded_at: datetime
    winner_seq: int
    winner_at: datetime


class AuditMemoryOp(_Row):
    run_id: str
    step: int
    op: str
    namespaces: list[str]
    query: str | None
    item_ids: list[str]
    scores: list[float]
    embedder: str
    backend: str
    duration_ms: float
    created_at: datetime


class AuditTrail(_Body):
    """``GET /v1/runs/{workflow_id}/audit``: the ledger's record of a run."""

    workflow_id: str
    runs: list[AuditRun]
    model_calls: list[AuditModelCall]
    tool_calls: list[AuditToolCall]
    tool_attempts: list[AuditToolAttempt]
    decisions: list[AuditDecision]
    memory_ops: list[AuditMemoryOp]
    superseded: list[AuditSupersededDecision] = []
    """Decisions of discarded workflow-task attempts (not part of the chain)."""
    chain_ok: bool
    """The decision hash chain recomputes and ends where each finished run said it does."""
    chain_problems: list[str]


# ---------------------------------------------------------------------------- budget


class BudgetWindow(_Body):
    """One spending window of the tenant: the current UTC day or month."""

    window: Literal["day", "month"]
    window_start: datetime
    resets_at: datetime
    """When the window ends and the next starts from nothing."""
    spent_usd: float
    """Settled cost of the tenant's model calls in this window."""
    reserved_usd: float
    """Estimates held by the tenant's model calls in flight."""
    cap_usd: float | None
    """The tenant's cap (``STEAD_TENANT_QUOTAS``); null: not capped."""
    left_usd: float | None
    """What calls may still reserve (never below 0); null: no cap."""


class TenantBudget(_Body):
    """``GET /v1/budget``: the token's tenant's spending windows (``stead budget``)."""

    tenant: str
    windows: list[BudgetWindow]


# ---------------------------------------------------------------------------- events


class RunEvent(_Body):
    """Data of a ``run`` server-sent event: a run of the tenant changed status."""

    workflow_id: str
    agent: str
    status: RunStatus
    temporal_status: str
    awaiting_approval: bool


ErrorDetail.model_rebuild()
