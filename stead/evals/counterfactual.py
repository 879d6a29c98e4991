"""Counterfactual replay: re-run recorded real runs with a changed agent, offline.

    runs = await select_runs(ledger, agent="refund", since=timedelta(days=7), limit=20)
    report = await run_counterfactual(settings, catalog, runs, Change(policy=stricter))

Each recorded run is started again as a real ``AgentWorkflow`` (workflow id
``cf-<original>-<8 hex>``) on a private task queue, served by an in-process worker whose catalog
is the agent as changed (policy, instructions, model). Routing, the gate, approvals, the ledger
and the audit chain work exactly as for a live run; only what touches the outside world is
served from the recording instead:

- tools: every tool's function is replaced by one that returns the ORIGINAL run's recorded
  result (``stead_tool_calls``), matched by tool name and canonical arguments, in order among
  identical calls. A call the original run never made fails non-retryably
  (``NotInRecording``) and counts as a divergence. No side effect happens.
- the model (``--model recorded``): the original run's model turns, in order; a run that needs
  more turns fails with "diverged: the recording has no turn N".
- approvals: when the changed run waits for a human, the original human decision on the same
  tool and arguments is replayed (actor ``"<who> (replayed)"``); without one, the run is
  recorded as one that would wait for approval and the approval is rejected by
  ``"counterfactual"``, so the run ends instead of waiting.

The tool functions and the recorded model find the original run through the counterfactual
workflow id (``ToolContext.workflow_id`` / the activity's workflow id) in a :class:`ReplayBook`.
Counterfactual runs carry ``metadata["stead.synthetic"] = "counterfactual"`` and
``metadata["stead.counterfactual_of"] = <original workflow id>``, so metrics leave them out.

Errors: :class:`CounterfactualError` (a :class:`~stead.errors.SteadError`) for bad input: an
unknown or unfinished run, an agent the catalog does not serve, a change that cannot apply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from stead import errors
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import Tool, ToolContext
from stead.client import start_run
from stead.contracts.audit import canonical
from stead.contracts.models import (
    DecideInput,
    DecideOutcome,
    JsonObject,
    LedgerDecision,
    Message,
    ModelTurn,
    PendingApproval,
    RunRequest,
    RunResult,
    RunState,
    ToolCall,
    ToolSchema,
)
from stead.contracts.policy import Policy
from stead.errors import SteadError
from stead.evals import SYNTHETIC_KEY
from stead.files import one_file
from stead.integrations.llm import ModelCallError, ModelClient, OpenAIModel, assistant_turns
from stead.settings import ModelSettings, Settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

if TYPE_CHECKING:
    from stead.evals.report import HtmlReport

SYNTHETIC_VALUE = "counterfactual"
"""Value of ``metadata["stead.synthetic"]`` on counterfactual runs."""
COUNTERFACTUAL_OF = "stead.counterfactual_of"
"""Metadata key naming the original workflow id of a counterfactual run."""
NOT_IN_RECORDING = "NotInRecording"
"""ApplicationError type of a tool call the original run never made."""
DIVERGED = "CounterfactualDiverged"
"""ApplicationError type of a model turn the recording does not have."""
COUNTERFACTUAL_ACTOR = "counterfactual"
"""Who rejects an approval that the original run has no human decision for."""
REPLAYED = " (replayed)"
"""Appended to the original approver's name when their decision is replayed."""

ModelSetting = str
"""``agent`` (the agent's own model), ``recorded`` or ``openai:<model>``."""

# How often the driver looks at a waiting counterfactual run's pending approvals.
_POLL_SECONDS = 0.1


class CounterfactualError(SteadError):
    """Bad input to a counterfactual replay: unknown or unfinished run, unknown agent, a change
    that cannot apply. The message says what to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- the recording


class RecordedToolCall(_Model):
    """One tool call of the original run, as the ledger holds it."""

    step: int
    tool: str
    arguments: JsonObject
    status: str
    """``completed``, ``failed``; ``running``/``open`` when the outcome was never recorded."""
    result: JsonObject | None = None
    error: str | None = None
    error_type: str | None = None
    """Error type of the last attempt (e.g. ``UnknownOrder``), for a failed call."""


class RecordedTurn(_Model):
    """One successful model call of the original run."""

    step: int
    model: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None


class RecordedRun(_Model):
    """A finished run as the ledger recorded it: the request, what happened, the outcome."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    user: str | None = None
    input: str
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str = ""
    status: str
    answer: str | None = None
    error: str | None = None
    started_at: datetime
    result: RunResult | None = None
    """The run's result document; None for rows written before results were stored."""
    tool_calls: list[RecordedToolCall] = Field(default_factory=list)
    turns: list[RecordedTurn] = Field(default_factory=list)
    decisions: list[LedgerDecision] = Field(default_factory=list)


async def load_run(ledger: Ledger, workflow_id: str) -> RecordedRun:
    """The latest finished run of ``workflow_id``; ``CounterfactualError`` if there is none."""
    trail = await ledger.trail(workflow_id)
    rows = trail.runs
    if not rows:
        raise CounterfactualError(f"the ledger has no run {workflow_id!r}")
    finished = [r for r in rows if r.finished_at is not None]
    if not finished:
        raise CounterfactualError(f"run {workflow_id!r} has not finished (status "
                                  f"{rows[-1].status}); only finished runs can be replayed")
    row = finished[-1]
    run_id = row.run_id
    last_error: dict[str, str | None] = {}
    for a in trail.tool_attempts:
        if a.run_id == run_id:
            last_error[a.idempotency_key] = a.error_type
    result: RunResult | None = None
    if row.result:
        try:
            result = RunResult.model_validate(row.result)
        except ValidationError:
            result = None  # an older result shape: the ledger rows still tell the story
    return RecordedRun(
        workflow_id=workflow_id, run_id=run_id, agent=row.agent, tenant=row.tenant,
        user=row.user_id, input=row.input,
        metadata={str(k): str(v) for k, v in (row.metadata or {}).items()},
        model=row.model, status=row.status, answer=row.answer, error=row.error,
        started_at=row.started_at, result=result,
        tool_calls=[RecordedToolCall(step=t.step, tool=t.tool, arguments=t.arguments,
                                     status=t.status, result=t.result, error=t.error,
                                     error_type=last_error.get(t.idempotency_key))
                    for t in trail.tool_calls if t.run_id == run_id],
        turns=[RecordedTurn(step=m.step, model=m.model, content=m.content,
                            tool_calls=[ToolCall.model_validate(c) for c in m.tool_calls],
                            finish_reason=m.finish_reason)
               for m in trail.model_calls if m.run_id == run_id and m.status == "ok"],
        decisions=[LedgerDecision.from_row(d)
                   for d in trail.decisions if d.run_id == run_id],
    )


async def select_runs(ledger: Ledger, *, agent: str, since: timedelta | None = None,
                      tenant: str | None = None, limit: int = 20) -> list[RecordedRun]:
    """The newest finished, non-synthetic runs of ``agent`` (newest first)."""
    if limit < 1:
        raise CounterfactualError(f"--limit must be at least 1, got {limit}")
    sql = ("select workflow_id from stead_runs where agent=$1 and finished_at is not null"
           " and not (metadata ? $2)"
           " and ($3::timestamptz is null or started_at >= $3)"
           " and ($4::text is null or tenant = $4)"
           " order by started_at desc limit $5")
    cutoff = None if since is None else _now() - since
    try:
        async with ledger.pool.acquire() as c:
            rows = await c.fetch(sql, agent, SYNTHETIC_KEY, cutoff, tenant, limit)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as err:
        raise errors.LedgerError(f"cannot read runs from the ledger: {err}") from err
    seen: list[str] = []
    for r in rows:
        if r["workflow_id"] not in seen:
            seen.append(r["workflow_id"])
    return [await load_run(ledger, wf) for wf in seen]


def _now() -> datetime:
    return datetime.now(UTC)


_SINCE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> timedelta:
    """``"7d"`` -> 7 days; units s, m, h, d, w."""
    m = _SINCE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise CounterfactualError(f"--since {text!r}: expected a positive number and a unit "
                                  f"(s, m, h, d, w), e.g. 7d or 12h")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


# ---------------------------------------------------------------------------- the change


@dataclasses.dataclass(frozen=True, kw_only=True)
class Change:
    """How the agent of the replayed runs is changed (all optional: None keeps it)."""

    policy: Policy | None = None
    policy_source: str | None = None
    """Where the policy came from (a file path), for the report."""
    instructions: str | None = None
    model: ModelSetting = "agent"

    def describe(self) -> ChangeSummary:
        return ChangeSummary(policy=self.policy.ref if self.policy else None,
                             policy_source=self.policy_source,
                             instructions=self.instructions is not None, model=self.model)


class ChangeSummary(_Model):
    policy: str | None = None
    """``id@version`` of the replacement policy, if any."""
    policy_source: str | None = None
    instructions: bool = False
    """True when the instructions were replaced."""
    model: str = "agent"


def read_instructions(value: str) -> str:
    """``--instructions TEXT``, ``@FILE``, or ``@DIR`` holding one ``*.md`` or ``*.txt``."""
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if path.is_dir():
            path = one_file(path, ("*.md", "*.txt"), what="instructions",
                            error=CounterfactualError)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CounterfactualError(f"cannot read instructions from {path}: "
                                      f"{err.strerror or err}") from None
    if not text.strip():
        raise CounterfactualError("--instructions: the new instructions are empty")
    return text


def check_model_setting(value: str) -> ModelSetting:
    """``agent``, ``recorded`` or ``openai:<model>``."""
    kind, sep, name = value.partition(":")
    if value in ("agent", "recorded") or (kind == "openai" and sep and name.strip()):
        return value
    raise CounterfactualError(f"--model {value!r}: expected agent, recorded or "
                              f"openai:<model> (e.g. openai:gpt-4o-mini)")


def load_catalog(spec: str, data_dir: Path) -> AgentCatalog:
    """``module:function``; the function takes the data dir and returns an AgentCatalog."""
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        raise CounterfactualError(f"--catalog {spec!r}: expected module:function, e.g. "
                                  f"stead.agents:reference_catalog")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CounterfactualError(f"--catalog {spec!r}: cannot import {module_name}: "
                                  f"{err}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CounterfactualError(f"--catalog {spec!r}: {module_name} has no function "
                                  f"{fn_name!r}")
    catalog = fn(data_dir)
    if not isinstance(catalog, AgentCatalog):
        raise CounterfactualError(f"--catalog {spec!r}: returned {type(catalog).__name__}, "
                                  f"not an AgentCatalog")
    return catalog


# ---------------------------------------------------------------------------- serving the recording


class Divergence(_Model):
    """A point where the changed agent left the recording."""

    kind: Literal["tool_not_recorded", "model_turn_missing"]
    step: int | None = None
    detail: str


@dataclasses.dataclass
class _Replay:
    """What one counterfactual run has been served from its original run so far."""

    run: RecordedRun
    used: set[int] = dataclasses.field(default_factory=set)
    """Indexes of recorded tool calls already served."""
    by_key: dict[str, int | None] = dataclasses.field(default_factory=dict)
    """Idempotency key -> the recorded call served for it (None: not in the recording), so a
    retried activity gets the same answer."""
    divergences: list[Divergence] = dataclasses.field(default_factory=list)

    def diverge(self, d: Divergence) -> None:
        if d not in self.divergences:
            self.divergences.append(d)


class ReplayBook:
    """Counterfactual workflow id -> the original run it replays; serves its tools and turns."""

    def __init__(self) -> None:
        self._runs: dict[str, _Replay] = {}

    def add(self, workflow_id: str, run: RecordedRun) -> None:
        self._runs[workflow_id] = _Replay(run)

    def divergences(self, workflow_id: str) -> list[Divergence]:
        rep = self._runs.get(workflow_id)
        return list(rep.divergences) if rep else []

    def served(self, workflow_id: str) -> int:
        """How many tool calls were answered from the recording."""
        rep = self._runs.get(workflow_id)
        return sum(1 for v in rep.by_key.values() if v is not None) if rep else 0

    def get(self, workflow_id: str) -> _Replay | None:
        return self._runs.get(workflow_id)

    def _replay(self, workflow_id: str) -> _Replay:
        rep = self._runs.get(workflow_id)
        if rep is None:
            raise ApplicationError(f"workflow {workflow_id!r} is not a counterfactual run of "
                                   f"this replay; tools are served from recordings only",
                                   type=NOT_IN_RECORDING, non_retryable=True)
        return rep

    def replayed_tool(self, t: Tool[Any, Any]) -> Tool[Any, Any]:
        """``t`` with its function replaced by a lookup in the original run's recording.

        Marked idempotent with no reconcile hook: serving a recorded result has no side
        effect, so a lost attempt may simply be served again."""
        async def serve(args: BaseModel, ctx: ToolContext) -> BaseModel:
            return self._serve(t, args, ctx)

        serve.__name__ = f"replayed_{t.name}"
        return dataclasses.replace(t, fn=serve, idempotent=True, reconcile=None)

    def _serve(self, t: Tool[Any, Any], args: BaseModel, ctx: ToolContext) -> BaseModel:
        rep = self._replay(ctx.workflow_id)
        want = canonical(args.model_dump(mode="json"))
        if ctx.idempotency_key not in rep.by_key:
            index = _match(rep, t, want)
            rep.by_key[ctx.idempotency_key] = index
            if index is None:
                rep.diverge(Divergence(kind="tool_not_recorded", step=_step_of(ctx),
                                       detail=f"not in the recording: the changed agent would "
                                              f"call {t.name}({want})"))
        index = rep.by_key[ctx.idempotency_key]
        if index is None:
            raise ApplicationError(f"not in the recording: the changed agent would call "
                                   f"{t.name}({want})", type=NOT_IN_RECORDING,
                                   non_retryable=True)
        rec = rep.run.tool_calls[index]
        if rec.status == "completed":
            return t.output_model.model_validate(rec.result or {})  # type: ignore[no-any-return]
        if rec.status == "failed":
            raise ApplicationError(rec.error or "failed (no error recorded)",
                                   type=rec.error_type or "RecordedFailure", non_retryable=True)
        raise ApplicationError(f"the original call's outcome was never recorded (status "
                               f"{rec.status}); a counterfactual cannot know what it did",
                               type=errors.TOOL_OUTCOME_UNKNOWN, non_retryable=True)


def _match(rep: _Replay, t: Tool[Any, Any], want: str) -> int | None:
    """The next unserved recorded call of ``t`` with these arguments (in recorded order)."""
    for i, rec in enumerate(rep.run.tool_calls):
        if i in rep.used or rec.tool != t.name:
            continue
        if _normalised(t, rec.arguments) == want:
            rep.used.add(i)
            return i
    return None


def _normalised(t: Tool[Any, Any], arguments: JsonObject) -> str:
    """Arguments as the tool's input model reads them (so 30 and 30.0 match)."""
    try:
        parsed: BaseModel = t.input_model.model_validate(arguments)
    except ValidationError:
        return canonical(arguments)
    return canonical(parsed.model_dump(mode="json"))


def _step_of(ctx: ToolContext) -> int | None:
    # Idempotency keys are "<workflow id>:<first run id>:<step>:<tool>".
    parts = ctx.idempotency_key.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class RecordedModel:
    """Serves the original run's model turns in order (turn k = k-th successful model call).

    Finds the original run through the model activity's workflow id."""

    def __init__(self, book: ReplayBook) -> None:
        self._book = book

    @property
    def name(self) -> str:
        return "recorded"

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        try:
            workflow_id = activity.info().workflow_id
        except RuntimeError:
            raise ModelCallError("the recorded model serves counterfactual runs only (called "
                                 "outside a model activity)", kind=DIVERGED,
                                 retryable=False) from None
        rep = self._book.get(workflow_id) if workflow_id else None
        if rep is None:
            raise ModelCallError(f"workflow {workflow_id!r} is not a counterfactual run of this "
                                 f"replay", kind=DIVERGED, retryable=False)
        k = assistant_turns(messages)
        turns = rep.run.turns
        if k >= len(turns):
            detail = (f"diverged: the recording has no turn {k + 1} (the original run made "
                      f"{len(turns)} model turn{'s' if len(turns) != 1 else ''})")
            rep.diverge(Divergence(kind="model_turn_missing", detail=detail))
            raise ModelCallError(detail, kind=DIVERGED, retryable=False)
        t = turns[k]
        return ModelTurn(content=t.content, tool_calls=t.tool_calls, model=f"recorded:{t.model}",
                         finish_reason=t.finish_reason or "stop")


def changed_catalog(catalog: AgentCatalog, book: ReplayBook, *, agent: str | None,
                    change: Change) -> AgentCatalog:
    """The catalog with every tool served from recordings and ``agent`` changed as asked.

    A tool object shared by several agents stays shared (the catalog requires it)."""
    replaced: dict[int, Tool[Any, Any]] = {}

    def swap(t: Tool[Any, Any]) -> Tool[Any, Any]:
        if id(t) not in replaced:
            replaced[id(t)] = book.replayed_tool(t)
        return replaced[id(t)]

    agents: list[Agent] = []
    for a in catalog.agents():
        target = a.name == agent
        agents.append(dataclasses.replace(
            a, tools=[swap(t) for t in a.tools],
            policy=change.policy if target and change.policy is not None else a.policy,
            instructions=(change.instructions if target and change.instructions is not None
                          else a.instructions)))
    return AgentCatalog(agents)


def _model_for(setting: ModelSetting, models: ModelSettings,
               book: ReplayBook) -> ModelClient | None:
    if setting == "agent":
        return None  # the worker's configured model, else each agent's offline model
    if setting == "recorded":
        return RecordedModel(book)
    name = setting.partition(":")[2]
    if models.api_key is None:
        raise CounterfactualError(f"--model {setting} needs OPENAI_API_KEY (and "
                                  f"OPENAI_BASE_URL for a compatible server)")
    return OpenAIModel(model=name, api_key=models.api_key.get_secret_value(),
                       base_url=models.base_url, timeout=models.timeout_seconds)


# ---------------------------------------------------------------------------- the report


class ToolStep(_Model):
    step: int
    tool: str
    arguments: JsonObject
    status: str
    """``ok``, ``error`` or ``rejected`` (denied by the gate or an approver)."""


class GateDecision(_Model):
    step: int
    tool: str
    arguments: JsonObject
    decision: str
    """``allow``, ``ask`` or ``deny``."""
    rule: str
    """The policy line that decided, e.g. ``thresholds.approve_at`` or ``hard_limits``."""
    policy: str
    risk: float | None = None
    reason: str = ""


class ApprovalRecord(_Model):
    approval_id: str
    step: int
    tool: str
    arguments: JsonObject
    outcome: str
    """``approved``, ``rejected`` or ``expired``."""
    by: str
    note: str | None = None
    edited_arguments: JsonObject | None = None
    replayed: bool = False
    """The original run's human decision, replayed."""
    would_wait: bool = False
    """No human decision to replay: the run would wait; it was rejected by the replay."""


class RunSide(_Model):
    """One side of a comparison: the original run or its counterfactual."""

    workflow_id: str
    status: str
    """A run status, or ``error`` when the counterfactual could not run to the end."""
    answer: str | None = None
    error: str | None = None
    route: str = ""
    policy: str = ""
    model: str = ""
    tools: list[ToolStep] = Field(default_factory=list)
    gates: list[GateDecision] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)

    @property
    def waits_for_approval(self) -> bool:
        return any(a.would_wait for a in self.approvals)


class RunComparison(_Model):
    """One recorded run against its counterfactual."""

    agent: str
    input: str
    original: RunSide
    counterfactual: RunSide
    outcome_changed: bool
    decisions_changed: bool
    """Routing, a gate decision or an approval outcome differs."""
    tools_changed: bool
    answer_changed: bool
    waits_for_approval: bool
    """The changed run reached an approval nobody decided in the original run."""
    divergences: list[Divergence] = Field(default_factory=list)
    served_from_recording: int = 0
    differences: list[str] = Field(default_factory=list)
    """The differences in words, for people."""

    @property
    def changed(self) -> bool:
        return (self.outcome_changed or self.decisions_changed or self.tools_changed
                or self.answer_changed or bool(self.divergences))

    @property
    def verdict(self) -> str:
        if self.counterfactual.status == "error":
            return "error"
        if self.divergences:
            return "diverged"
        return "changed" if self.changed else "same"


class Summary(_Model):
    runs: int = 0
    changed: int = 0
    outcome_changed: int = 0
    decisions_changed: int = 0
    tools_changed: int = 0
    answer_changed: int = 0
    would_wait: int = 0
    diverged: int = 0
    errors: int = 0


class CounterfactualReport(_Model):
    change: ChangeSummary
    summary: Summary
    runs: list[RunComparison] = Field(default_factory=list)


def _rule(decision: str, reason: str) -> str:
    """Which policy line decided, read from the gate's recorded reason."""
    for needle, rule in (("deny_tools", "deny_tools"), ("hard limit", "hard_limits"),
                         ("deny line", "thresholds.deny_at"),
                         ("untrusted line", "approvals.untrusted_line"),
                         ("approval line", "thresholds.approve_at")):
        if needle in reason:
            return rule
    return decision


def _gates(decisions: Sequence[LedgerDecision]) -> list[GateDecision]:
    out = []
    for d in decisions:
        if d.kind != "gate":
            continue
        risk = d.data.get("risk")
        out.append(GateDecision(step=d.step, tool=str(d.data.get("tool", "")),
                                arguments=dict(d.data.get("arguments") or {}),
                                decision=d.decision, rule=_rule(d.decision, d.reason),
                                policy=d.policy,
                                risk=float(risk) if isinstance(risk, int | float) else None,
                                reason=d.reason))
    return out


def _approvals(decisions: Sequence[LedgerDecision]) -> list[ApprovalRecord]:
    requested: dict[str, LedgerDecision] = {}
    out = []
    for d in decisions:
        approval_id = str(d.data.get("approval_id", ""))
        if d.kind == "approval_requested":
            requested[approval_id] = d
        elif d.kind == "approval_decided":
            req = requested.get(approval_id)
            edited = d.data.get("edited_arguments")
            out.append(ApprovalRecord(
                approval_id=approval_id, step=d.step,
                tool=str(req.data.get("tool", "")) if req else "",
                arguments=dict(req.data.get("arguments") or {}) if req else {},
                outcome=d.decision, by=d.actor, note=d.reason or None,
                edited_arguments=edited if isinstance(edited, dict) else None,
                replayed=d.actor.endswith(REPLAYED), would_wait=d.actor == COUNTERFACTUAL_ACTOR))
    return out


def _tools(result: RunResult | None, run: RecordedRun | None = None) -> list[ToolStep]:
    if result is not None:
        return [ToolStep(step=c.step, tool=c.tool, arguments=c.arguments, status=c.status)
                for c in result.tool_calls]
    if run is None:
        return []
    return [ToolStep(step=c.step, tool=c.tool, arguments=c.arguments,
                     status="ok" if c.status == "completed" else "error")
            for c in run.tool_calls]


def _original_side(run: RecordedRun) -> RunSide:
    r = run.result
    return RunSide(workflow_id=run.workflow_id, status=run.status, answer=run.answer,
                   error=run.error, route=r.route if r else "", policy=r.policy if r else "",
                   model=run.model, tools=_tools(r, run), gates=_gates(run.decisions),
                   approvals=_approvals(run.decisions))


def _call(tool: str, arguments: JsonObject) -> str:
    return f"{tool}({canonical(arguments)})"


def tool_sequence(side: RunSide) -> str:
    return ", ".join(f"{t.tool} {t.status}" for t in side.tools) or "none"


def _compare(run: RecordedRun, original: RunSide, cf: RunSide, *,
             divergences: list[Divergence], served: int) -> RunComparison:
    def gate_key(g: GateDecision) -> tuple[str, str, str]:
        return g.tool, canonical(g.arguments), g.decision

    def approval_key(a: ApprovalRecord) -> tuple[str, str, str]:
        return a.tool, canonical(a.arguments), a.outcome

    def tool_key(t: ToolStep) -> tuple[str, str, str]:
        return t.tool, canonical(t.arguments), t.status

    outcome = original.status != cf.status or cf.waits_for_approval
    route = original.route != cf.route
    gates = [gate_key(g) for g in original.gates] != [gate_key(g) for g in cf.gates]
    approvals = ([approval_key(a) for a in original.approvals]
                 != [approval_key(a) for a in cf.approvals])
    tools = [tool_key(t) for t in original.tools] != [tool_key(t) for t in cf.tools]
    answer = original.answer != cf.answer

    words: list[str] = []
    if cf.status == "error":
        words.append(f"counterfactual did not finish: {cf.error}")
    elif outcome:
        words.append(f"status: {original.status} → {cf.status}"
                     + (" (would wait for approval)" if cf.waits_for_approval else ""))
    if route:
        words.append(f"route: {original.route or '-'} → {cf.route or '-'}")
    for i in range(max(len(original.gates), len(cf.gates))):
        o = original.gates[i] if i < len(original.gates) else None
        c = cf.gates[i] if i < len(cf.gates) else None
        if o and c and (o.tool, canonical(o.arguments)) == (c.tool, canonical(c.arguments)):
            if o.decision != c.decision:
                words.append(f"gate {_call(c.tool, c.arguments)}: {o.decision} [{o.rule}] → "
                             f"{c.decision} [{c.rule}]")
        elif o and c:
            words.append(f"gate {i + 1}: {_call(o.tool, o.arguments)} {o.decision} → "
                         f"{_call(c.tool, c.arguments)} {c.decision}")
        elif o:
            words.append(f"gate {_call(o.tool, o.arguments)} {o.decision}: not reached")
        elif c:
            words.append(f"new gate {_call(c.tool, c.arguments)}: {c.decision} [{c.rule}]")
    if approvals:
        words.append("approvals: " + (approval_summary(original.approvals) or "none") + " → "
                     + (approval_summary(cf.approvals) or "none"))
    if tools:
        words.append(f"tools: {tool_sequence(original)} → {tool_sequence(cf)}")
    if answer and cf.status != "error":
        words.append("answer changed")
    words.extend(d.detail for d in divergences)
    return RunComparison(agent=run.agent, input=run.input, original=original, counterfactual=cf,
                         outcome_changed=outcome, decisions_changed=route or gates or approvals,
                         tools_changed=tools, answer_changed=answer,
                         waits_for_approval=cf.waits_for_approval, divergences=divergences,
                         served_from_recording=served, differences=words)


def approval_summary(approvals: Sequence[ApprovalRecord]) -> str:
    return ", ".join(f"{a.tool} {'would wait' if a.would_wait else a.outcome} by {a.by}"
                     for a in approvals)


def _summarize(runs: Sequence[RunComparison]) -> Summary:
    return Summary(runs=len(runs), changed=sum(r.changed for r in runs),
                   outcome_changed=sum(r.outcome_changed for r in runs),
                   decisions_changed=sum(r.decisions_changed for r in runs),
                   tools_changed=sum(r.tools_changed for r in runs),
                   answer_changed=sum(r.answer_changed for r in runs),
                   would_wait=sum(r.waits_for_approval for r in runs),
                   diverged=sum(bool(r.divergences) for r in runs),
                   errors=sum(r.counterfactual.status == "error" for r in runs))


# ---------------------------------------------------------------------------- running


class _Approvals:
    """Answers a counterfactual run's approvals from the original run's human decisions."""

    def __init__(self, run: RecordedRun) -> None:
        self._recorded = _approvals(run.decisions)
        self._used: set[int] = set()
        self._answered: set[str] = set()

    async def answer(self, handle: WorkflowHandle[Any, RunResult], p: PendingApproval) -> None:
        if p.approval_id in self._answered:
            return
        self._answered.add(p.approval_id)
        want = (p.tool, canonical(p.arguments))
        why = "the original run has no human decision on this call"
        for i, rec in enumerate(self._recorded):
            if i in self._used or (rec.tool, canonical(rec.arguments)) != want:
                continue
            self._used.add(i)
            if rec.outcome not in ("approved", "rejected"):
                why = f"the original approval {rec.outcome} without a human decision"
                break
            approved = rec.outcome == "approved"
            try:
                await handle.execute_update("decide", DecideInput(
                    approval_id=p.approval_id, approved=approved, by=f"{rec.by}{REPLAYED}",
                    note=rec.note, arguments=rec.edited_arguments if approved else None),
                    result_type=DecideOutcome)
                return
            except (WorkflowUpdateFailedError, RPCError) as err:
                cause = getattr(err, "cause", None) or err
                why = f"the original decision could not be replayed ({cause})"
            break
        # Deliberately end the wait: a counterfactual has no approver to wait for.
        try:
            await handle.execute_update("decide", DecideInput(
                approval_id=p.approval_id, approved=False, by=COUNTERFACTUAL_ACTOR,
                note=f"counterfactual: {why}; the run would wait for {p.awaiting or 'approval'}"),
                result_type=DecideOutcome)
        except (WorkflowUpdateFailedError, RPCError):
            pass  # decided meanwhile, or the run ended: nothing left to answer


async def _drive(handle: WorkflowHandle[Any, RunResult], approvals: _Approvals,
                 timeout: float) -> RunResult:
    """Wait for the run's result, answering its approvals as they come up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    result = asyncio.ensure_future(handle.result())
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=_POLL_SECONDS)
            if done:
                return result.result()
            if loop.time() >= deadline:
                raise TimeoutError
            try:
                state = await handle.query("state", result_type=RunState,
                                           rpc_timeout=timedelta(seconds=10))
            except (WorkflowQueryFailedError, RPCError):
                continue  # finished between the two calls, or busy: look again
            for p in state.pending_approvals:
                await approvals.answer(handle, p)
    finally:
        if not result.done():
            result.cancel()


async def _replay_one(run: RecordedRun, *, host_settings: Settings, client: Client,
                      ledger: Ledger, book: ReplayBook, timeout: float) -> RunComparison:
    cf_id = f"cf-{run.workflow_id}-{uuid.uuid4().hex[:8]}"
    book.add(cf_id, run)
    request = RunRequest(agent=run.agent, input=run.input, tenant=run.tenant, user=run.user,
                         metadata={**run.metadata, SYNTHETIC_KEY: SYNTHETIC_VALUE,
                                   COUNTERFACTUAL_OF: run.workflow_id})
    handle = await start_run(client, request, temporal=host_settings.temporal, workflow_id=cf_id)
    result: RunResult | None = None
    error: str | None = None
    try:
        result = await _drive(handle, _Approvals(run), timeout)
    except WorkflowFailureError as err:
        error = f"workflow failed: {err.cause or err}"
    except TimeoutError:
        error = f"did not finish within {timeout:g}s"
        try:
            await handle.terminate(reason="counterfactual replay timed out")
        except RPCError:
            pass
    trail = await ledger.trail(cf_id)
    decisions = [LedgerDecision.from_row(d) for d in trail.decisions]
    cf = RunSide(workflow_id=cf_id, status=result.status if result else "error",
                 answer=result.answer if result else None,
                 error=result.error if result else error,
                 route=result.route if result else "", policy=result.policy if result else "",
                 model=result.model if result else "", tools=_tools(result),
                 gates=_gates(decisions), approvals=_approvals(decisions))
    return _compare(run, _original_side(run), cf, divergences=book.divergences(cf_id),
                    served=book.served(cf_id))


async def run_counterfactual(settings: Settings, catalog: AgentCatalog,
                             runs: Sequence[RecordedRun], change: Change | None = None, *,
                             run_timeout: float = 300.0, parallel: int = 4,
                             on_result: Callable[[RunComparison], None] | None = None,
                             ) -> CounterfactualReport:
    """Replay ``runs`` with ``change`` applied; ``settings`` must be resolved (addresses set).

    Starts an in-process worker on a private task queue for the duration of the replay."""
    change = change or Change()
    check_model_setting(change.model)
    if not runs:
        return CounterfactualReport(change=change.describe(), summary=Summary())
    agents = sorted({r.agent for r in runs})
    missing = [a for a in agents if a not in catalog]
    if missing:
        raise CounterfactualError(f"the catalog does not serve agent(s) {', '.join(missing)} of "
                                  f"the selected runs; it serves: {', '.join(catalog.names())}")
    if (change.policy is not None or change.instructions is not None) and len(agents) > 1:
        raise CounterfactualError(f"the selected runs belong to several agents "
                                  f"({', '.join(agents)}); a policy or instructions change "
                                  f"applies to one agent: select runs of one agent")
    book = ReplayBook()
    changed = changed_catalog(catalog, book, agent=agents[0], change=change)
    model = _model_for(change.model, settings.models, book)
    queue = f"counterfactual-{uuid.uuid4().hex[:12]}"
    # Memory is off: a counterfactual must not write run summaries (a side effect).
    host_settings = settings.replace(task_queue=queue, memory_backend="off")
    async with WorkerHost(host_settings, changed, model=model, task_queue=queue) as host:
        assert host.client is not None and host.ledger is not None
        client, ledger = host.client, host.ledger
        gate = asyncio.Semaphore(max(parallel, 1))

        async def one(run: RecordedRun) -> RunComparison:
            async with gate:
                cmp = await _replay_one(run, host_settings=host_settings, client=client,
                                        ledger=ledger, book=book, timeout=run_timeout)
            if on_result is not None:
                on_result(cmp)
            return cmp

        compared = await asyncio.gather(*(one(r) for r in runs))
    return CounterfactualReport(change=change.describe(), summary=_summarize(compared),
                                runs=list(compared))


# ---------------------------------------------------------------------------- HTML


def html_report(report: CounterfactualReport) -> HtmlReport:
    """The report as a :class:`~stead.evals.report.HtmlReport` (call ``write(path)``)."""
    from stead.evals.report import HtmlReport

    c = report.change
    what = [f"policy {c.policy}" + (f" from {c.policy_source}" if c.policy_source else "")
            if c.policy else "", "new instructions" if c.instructions else "",
            f"model {c.model}"]
    doc = HtmlReport("stead counterfactual",
                     subtitle="changed: " + ", ".join(w for w in what if w))
    s = report.summary
    doc.section("Summary", f"{s.runs} run(s) replayed; tools served from the recording, no "
                           f"side effects.")
    doc.table(["runs", "changed", "outcome", "decisions", "tools", "answer", "would wait",
               "diverged", "errors"],
              [[s.runs, s.changed, s.outcome_changed, s.decisions_changed, s.tools_changed,
                s.answer_changed, s.would_wait, s.diverged, s.errors]])
    doc.bars("Runs that changed, by what", {
        "outcome": s.outcome_changed, "decisions": s.decisions_changed,
        "tools": s.tools_changed, "answer": s.answer_changed, "would wait": s.would_wait,
        "diverged": s.diverged}, unit="runs")
    doc.section("Runs")
    doc.table(["run", "agent", "original", "counterfactual", "tools (original → cf)",
               "verdict"],
              [[r.original.workflow_id, r.agent, r.original.status,
                r.counterfactual.status + (" (would wait)" if r.waits_for_approval else ""),
                f"{tool_sequence(r.original)} → {tool_sequence(r.counterfactual)}", r.verdict]
               for r in report.runs], status_column=5)
    for r in report.runs:
        doc.section(f"{r.original.workflow_id} → {r.counterfactual.workflow_id}",
                    f"{r.agent}: {r.input[:300]}")
        doc.table(["", "original", "counterfactual"], [
            ["status", r.original.status, r.counterfactual.status],
            ["route", r.original.route, r.counterfactual.route],
            ["policy", r.original.policy, r.counterfactual.policy],
            ["model", r.original.model, r.counterfactual.model],
            ["tools", tool_sequence(r.original), tool_sequence(r.counterfactual)],
            ["gates", gate_summary(r.original.gates), gate_summary(r.counterfactual.gates)],
            ["approvals", approval_summary(r.original.approvals) or "none",
             approval_summary(r.counterfactual.approvals) or "none"],
            ["answer", r.original.answer or r.original.error or "",
             r.counterfactual.answer or r.counterfactual.error or ""],
        ])
        if r.differences:
            doc.table(["differences"], [[d] for d in r.differences])
    return doc


def gate_summary(gates: Sequence[GateDecision]) -> str:
    return ", ".join(f"{g.tool} {g.decision} [{g.rule}]" for g in gates) or "none"


def to_json(report: CounterfactualReport) -> dict[str, Any]:
    """The report as JSON data, with each comparison's verdict and change flags included."""
    data = report.model_dump(mode="json")
    for r, d in zip(report.runs, data["runs"], strict=True):
        d["changed"] = r.changed
        d["verdict"] = r.verdict
    return data


__all__ = [
    "COUNTERFACTUAL_ACTOR",
    "COUNTERFACTUAL_OF",
    "DIVERGED",
    "NOT_IN_RECORDING",
    "SYNTHETIC_VALUE",
    "ApprovalRecord",
    "Change",
    "ChangeSummary",
    "CounterfactualError",
    "CounterfactualReport",
    "Divergence",
    "GateDecision",
    "RecordedModel",
    "RecordedRun",
    "ReplayBook",
    "RunComparison",
    "RunSide",
    "Summary",
    "ToolStep",
    "approval_summary",
    "changed_catalog",
    "check_model_setting",
    "gate_summary",
    "html_report",
    "load_catalog",
    "load_run",
    "parse_since",
    "read_instructions",
    "run_counterfactual",
    "select_runs",
    "to_json",
    "tool_sequence",
]
