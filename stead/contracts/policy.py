"""Policy as data: one YAML file per agent, validated by pydantic when the worker starts.

    policy = load_policy(Path("agents/refund/policy.yaml"))   # PolicyError names file:line

A policy carries an ``id`` and a ``version``; every decision made under it records
``policy.ref`` (``"refund-default@3"``). The models here are plain data, imported by
workflow code (the policy travels inside the run's pinned ``AgentPlan``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stead.contracts.budget import BudgetRules
from stead.errors import SpecError
from stead.files import one_file

Action = Literal["allow", "refuse", "human", "profile", "model", "agent"]
"""What routing does with a request: run it, refuse it, send it to a human first, run it
under a stricter profile, run it with another model setting, or hand it to another agent."""

PiiKind = Literal["email", "phone", "credit_card", "iban", "ssn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Conditions of a routing rule; all given conditions must hold (empty matches all)."""

    tenants: list[str] = Field(default_factory=list)
    """Request tenant is one of these."""
    roles: list[str] = Field(default_factory=list)
    """``metadata["role"]`` of the request is one of these."""
    keywords: list[str] = Field(default_factory=list)
    """Any of these words/phrases occurs in the request (case-insensitive, word start)."""
    patterns: list[str] = Field(default_factory=list)
    """Any of these regular expressions matches the request (case-insensitive)."""
    pii: list[PiiKind] = Field(default_factory=list)
    """Any of these kinds of personal data is detected in the request."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Every key has exactly this value in the request metadata."""

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {err}") \
                    from None
        return v


class RouteRule(_Strict):
    name: str
    when: Match = Field(default_factory=Match)
    action: Action
    reason: str = ""
    profile: str | None = None
    """For ``action: profile``: the name of a profile in ``profiles``."""
    model: str | None = None
    """For ``action: model``: the model setting to use (e.g. ``openai:gpt-4o``)."""
    agent: str | None = None
    """For ``action: agent``: the agent that takes the request over (under its own policy)."""


class Thresholds(_Strict):
    """Risk lines: below ``approve_at`` allow, from it ask a human, from ``deny_at`` deny."""

    approve_at: float = Field(0.5, ge=0, le=1)
    deny_at: float = Field(0.9, ge=0, le=1.0001)


class ArgumentRule(_Strict):
    """Adds risk when a call's argument crosses a line, e.g. a refund amount."""

    tool: str | None = None
    """Only for this tool (None: any tool having the field)."""
    field: str
    above: float | None = None
    """Numeric argument strictly greater than this."""
    matches: list[str] = Field(default_factory=list)
    """String argument matching any of these regular expressions (e.g. production names)."""
    add: float = Field(ge=0, le=1)
    label: str = ""


class HardLimit(_Strict):
    """Always deny, whatever the score: e.g. refunds above a hard ceiling."""

    tool: str
    field: str
    above: float
    reason: str = ""


class RiskWeights(_Strict):
    tiers: dict[str, float] = Field(
        default_factory=lambda: {"low": 0.05, "medium": 0.2, "high": 0.45, "critical": 0.7})
    side_effects: dict[str, float] = Field(
        default_factory=lambda: {"read": 0.0, "write": 0.1, "irreversible": 0.2})
    per_prior_failure: float = Field(0.05, ge=0, le=1)
    """Added per failed tool call earlier in the run (the run is going badly)."""
    max_failure_risk: float = Field(0.2, ge=0, le=1)
    untrusted: float = Field(0.2, ge=0, le=1)
    """Added when the arguments echo untrusted content (tool output, recalled memory)."""
    low_confidence: float = Field(0.2, ge=0, le=1)
    """Scaled by (1 - confidence) when the model reports a confidence."""
    routes: dict[str, float] = Field(default_factory=dict)
    """Added when the request was routed to this profile, e.g. ``{strict: 0.2}``."""
    arguments: list[ArgumentRule] = Field(default_factory=list)


class Profile(_Strict):
    """A stricter (or looser) set of thresholds selected by routing."""

    thresholds: Thresholds


class Approvals(_Strict):
    chain: list[str] = Field(default_factory=lambda: ["oncall", "manager"], min_length=1)
    """Who is asked, in order; the deadline passing moves the approval one level up."""
    timeout_seconds: float = Field(900, gt=0)
    """Deadline per level."""
    allow_edits: bool = True
    """Approvers may change the arguments (re-validated and re-scored)."""
    untrusted_line: float = Field(0.3, ge=0, le=1)
    """A call echoing untrusted content with risk at or above this always needs approval."""


class OutputRules(_Strict):
    secrets: bool = True
    """Reject answers that contain credentials or keys."""
    pii: list[PiiKind] = Field(default_factory=list)
    """Reject answers that contain these kinds of personal data."""
    grounding: bool = False
    """Numbers and identifiers in the answer must come from tool results or the request."""
    max_reasks: int = Field(2, ge=0, le=10)
    on_failure: Literal["escalate", "fail"] = "escalate"


class Execution(_Strict):
    """How calls run. Local activities run inside the workflow task on the run's worker:
    no task-queue round trip per call (a run with five read tools saves ten server round
    trips), but they show in history as markers, not activity events, and a worker that dies
    mid-call is noticed only when the workflow task times out (10 s), then the calls since the
    last completed workflow task run again (their idempotency keys still hold)."""

    local_reads: bool = True
    """Run ``read`` tools that are idempotent, declare no heartbeat and finish within
    ``local_max_seconds`` as local activities. Write tools never run locally.

    On by default: measured side by side (``python -m bench.peers.experiment local-reads``)
    a 5-tool run took 0.76x the latency, 1.24x the throughput at 50 in flight and 0.70x the
    CPU of the same run with its reads as activities. What such a read gives up is nothing
    that matters for a read: it is re-run after a lost worker (its idempotency key still
    holds), shows in history as a marker, and cannot heartbeat (a tool that declares a
    heartbeat stays an activity)."""
    local_model_calls: bool = False
    """Run model calls as local activities: for fast in-process models (scripted planners,
    small local models), not for remote LLMs whose calls take seconds."""
    local_max_seconds: float = Field(30, gt=0, le=60)
    """The longest ``start_to_close`` of a call that may run locally: the default covers a
    tool's default timeout (30 s)."""


class Policy(_Strict):
    id: Annotated[str, Field(min_length=1, pattern=r"^[a-zA-Z0-9_.-]+$")]
    version: int = Field(ge=1)
    description: str = ""
    routing: list[RouteRule] = Field(default_factory=list)
    """Evaluated in order; the first matching rule decides. No match: allow."""
    thresholds: Thresholds = Field(default_factory=Thresholds)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    risk: RiskWeights = Field(default_factory=RiskWeights)
    hard_limits: list[HardLimit] = Field(default_factory=list)
    deny_tools: list[str] = Field(default_factory=list)
    """Tools never allowed under this policy."""
    approvals: Approvals = Field(default_factory=Approvals)
    output: OutputRules = Field(default_factory=OutputRules)
    execution: Execution = Field(default_factory=Execution)
    budget: BudgetRules | None = Field(None, exclude_if=lambda v: v is None)
    """What one run may spend (money, tokens, model calls) and what happens at the limit;
    None: no run budget (tenant spending windows still apply)."""

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def thresholds_for(self, profile: str | None) -> Thresholds:
        if profile and profile in self.profiles:
            return self.profiles[profile].thresholds
        return self.thresholds

    def check_references(self, tools: set[str]) -> list[str]:
        """Problems with names this policy refers to (profiles, tools)."""
        out: list[str] = []
        for r in self.routing:
            if r.action == "profile" and (r.profile is None or r.profile not in self.profiles):
                out.append(f"routing rule {r.name!r}: profile {r.profile!r} is not defined")
            if r.action == "model" and not r.model:
                out.append(f"routing rule {r.name!r}: action 'model' needs a model")
            if r.action == "agent" and not r.agent:
                out.append(f"routing rule {r.name!r}: action 'agent' needs an agent")
        for name in self.risk.routes:
            if name not in self.profiles:
                out.append(f"risk.routes: profile {name!r} is not defined")
        for t in [*(h.tool for h in self.hard_limits), *self.deny_tools,
                  *(a.tool for a in self.risk.arguments if a.tool)]:
            if t not in tools:
                out.append(f"policy refers to unknown tool {t!r}")
        for name, p in [("thresholds", self.thresholds),
                        *((f"profiles.{k}", v.thresholds) for k, v in self.profiles.items())]:
            if p.approve_at > p.deny_at:
                out.append(f"{name}: approve_at is above deny_at")
        return out


class PolicyError(SpecError):
    """A policy file is invalid; the message names the file, the line and the field."""


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; errors name ``source:line`` and the field."""
    import yaml

    try:
        node = yaml.compose(text)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        else:  # a character YAML refuses (ReaderError) has a position, not a mark
            position = getattr(err, "position", None)
            line = text[:position].count("\n") + 1 if isinstance(position, int) else None
        where = f"{source}:{line}" if line is not None else source
        raise PolicyError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:1: a policy must be a mapping with id and version")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = [p for p in e["loc"]]
            line = _line_of(node, loc)
            field = ".".join(str(p) for p in loc) or "(policy)"
            problems.append(f"{source}:{line}: {field}: {e['msg']}")
        raise PolicyError("invalid policy:\n  " + "\n  ".join(problems)) from None


POLICY_PATTERNS = ("*.yaml", "*.yml")
"""What a policy file is called: a directory given for a policy holds exactly one of these."""


def policy_file(path: Path) -> Path:
    """The one policy file under the directory ``path`` (searched recursively), e.g.
    ``agents/refund``, or ``path`` itself when it is not a directory (``load_policy`` reports
    a file it cannot read); none or several in the directory is a :class:`PolicyError`."""
    if not path.is_dir():
        return path
    return one_file(path, POLICY_PATTERNS, what="policy", error=PolicyError)


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"cannot read policy {path}: {err}") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise PolicyError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") \
            from None
    return parse_policy(text, source=str(path))


def _line_of(node: Any, loc: list[int | str]) -> int:
    """Best line number for a pydantic error location in the YAML node tree."""
    import yaml

    line = (node.start_mark.line + 1) if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line, node = v.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
