"""Behaviour suites: cases, the model each case runs with, the approvals it plays, and what it
expects — loaded from YAML (or built from Python objects) and validated before anything runs.

    suite = load_suite(Path("evals/ops.yaml"))    # SuiteError names file:line and the field

A suite file::

    suite: ops                      # name (default: the file's stem)
    agent: ops                      # default agent of its cases
    cases:
      - name: restart-approved
        input: search-worker is down, restart it
        approvals: [{decision: approve, by: alice, role: oncall}]
        expect:
          status: completed
          tools: {in_order: [service_status, restart_service]}
          decisions: [{kind: gate, decision: ask, tool: restart_service}]

Model sources: ``agent`` (the agent's own model: its offline planner, or the configured
OpenAI-compatible model), ``scripted`` (fixed turns, served by
:class:`stead.integrations.llm.ScriptedModel`) and ``recorded`` (the turns a past run's model
produced, from the ledger or a JSON file). Everything a suite refers to — regular expressions, JSON
schemas, recorded files, custom evaluators — is checked at load time, so a bad suite never runs
half-way.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from stead.contracts.models import JsonObject, ModelTurn, RunRequest, RunStatus, ToolCall
from stead.errors import SpecError
from stead.evals import SYNTHETIC_KEY
from stead.files import expand_paths

CaseName = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                            pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$")]
"""Case and suite names end up in workflow ids and report tables: keep them plain."""

SUITE_KEY = "stead.eval.suite"
CASE_KEY = "stead.eval.case"
"""Run metadata naming the suite and case of an eval run (next to ``stead.synthetic``)."""


class SuiteError(SpecError):
    """A suite is invalid; the message names ``file:line``, the case and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _as_list(v: object) -> object:
    """YAML convenience: a single value where a list is expected."""
    return [v] if isinstance(v, str | int | float) else v


# ---------------------------------------------------------------------------- model sources


class AgentModelSource(_Model):
    """The agent's own model: the configured OpenAI-compatible model when settings have one,
    else the agent's offline (rule-based) planner."""

    kind: Literal["agent"] = "agent"


class ScriptedCall(_Model):
    """One tool call a scripted turn proposes."""

    tool: str = Field(min_length=1)
    arguments: JsonObject | None = None
    """The call's arguments (a JSON object)."""
    raw_arguments: str | None = None
    """Argument text sent as is, for malformed calls (instead of ``arguments``)."""

    @model_validator(mode="after")
    def _one_form(self) -> ScriptedCall:
        if self.arguments is not None and self.raw_arguments is not None:
            raise ValueError("give either arguments or raw_arguments, not both")
        return self


class ScriptedTurn(_Model):
    """One model turn: an answer, tool calls, or both."""

    content: str | None = None
    tool_calls: list[ScriptedCall] = Field(default_factory=list)
    confidence: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _not_empty(self) -> ScriptedTurn:
        if self.content is None and not self.tool_calls:
            raise ValueError("a turn needs content, tool_calls or both")
        return self

    def to_turn(self, index: int) -> ModelTurn:
        """The :class:`ModelTurn`; call ids are fixed by position so replays match."""
        calls = [ToolCall(id=f"call_{index}_{i}", name=c.tool,
                          arguments=c.raw_arguments if c.raw_arguments is not None
                          else json.dumps(c.arguments or {}))
                 for i, c in enumerate(self.tool_calls)]
        return ModelTurn(content=self.content, tool_calls=calls, confidence=self.confidence)


class ScriptedModelSource(_Model):
    """Fixed turns: the k-th assistant turn of the run gets ``turns[k]`` (the last one
    repeats)."""

    kind: Literal["scripted"]
    turns: list[ScriptedTurn] = Field(min_length=1)

    def model_turns(self) -> list[ModelTurn]:
        return [t.to_turn(i) for i, t in enumerate(self.turns)]


class RecordedModelSource(_Model):
    """The turns a past run's model produced, replayed in order."""

    kind: Literal["recorded"]
    workflow_id: str | None = Field(None, min_length=1)
    """Serve the successful model calls the ledger holds for this workflow (latest run)."""
    file: Path | None = None
    """Or a JSON file: a list of model turns, or a ``stead audit RUN --json`` document.
    Relative paths are relative to the suite file."""

    @model_validator(mode="after")
    def _one_origin(self) -> RecordedModelSource:
        if (self.workflow_id is None) == (self.file is None):
            raise ValueError("a recorded model needs exactly one of workflow_id or file")
        return self


ModelSource = Annotated[AgentModelSource | ScriptedModelSource | RecordedModelSource,
                        Field(discriminator="kind")]


def recorded_turns_from_file(path: Path) -> list[ModelTurn]:
    """Turns from a JSON file: a list of model turns, or ``stead audit --json`` output (its
    successful ``model_calls``, last attempt per step)."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read recorded model file {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"recorded model file {path} is not JSON: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("model_calls"), list):
        turns = turns_from_model_calls(data["model_calls"])
    elif isinstance(data, list):
        try:
            turns = [ModelTurn.model_validate(t) for t in data]
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"recorded model file {path}: turn "
                             f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") \
                from None
    else:
        raise ValueError(f"recorded model file {path} must hold a list of model turns or a "
                         f"`stead audit RUN --json` document")
    if not turns:
        raise ValueError(f"recorded model file {path} has no model turns")
    return turns


def turns_from_model_calls(rows: Sequence[Mapping[str, Any]]) -> list[ModelTurn]:
    """Successful model calls of one run, one turn per step, in step order. ``rows`` are
    ``model_calls`` of a ``stead audit --json`` document (or ``ModelCallRow.model_dump()``),
    read leniently: a hand-edited document may leave columns out."""
    by_step: dict[tuple[str, int], Mapping[str, Any]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        key = (str(r.get("run_id", "")), int(r.get("step", 0)))
        if key not in by_step or int(r.get("attempt", 0)) >= int(by_step[key].get("attempt", 0)):
            by_step[key] = r
    if not by_step:
        return []
    # A workflow that continued as new has several runs: replay the latest one.
    last_run = max(by_step, key=lambda k: str(by_step[k].get("created_at", "")))[0]
    turns = []
    for (run_id, _step), r in sorted(by_step.items(), key=lambda kv: kv[0][1]):
        if run_id != last_run:
            continue
        calls = [ToolCall.model_validate(c) for c in r.get("tool_calls") or []]
        turns.append(ModelTurn(content=r.get("content"), tool_calls=calls,
                               finish_reason=str(r.get("finish_reason") or "stop")))
    return turns


# ---------------------------------------------------------------------------- approvals


class ApprovalAction(_Model):
    """What the eval does when the run waits for its next approval, through the ``decide``
    update that ``stead approve``/``stead reject`` use."""

    decision: Literal["approve", "reject", "wait"]
    """``wait``: decide nothing and let the policy's deadlines escalate and auto-deny."""
    by: str = Field("stead-eval", min_length=1)
    role: str | None = None
    """The approver's role, checked against the policy's approval chain."""
    note: str | None = None
    arguments: JsonObject | None = None
    """Edited arguments (approve only)."""
    tool: str | None = None
    """The approval must be for this tool (``(request)``: routing sent the request to a human);
    otherwise it is rejected and the case fails."""

    @model_validator(mode="after")
    def _edits_need_approval(self) -> ApprovalAction:
        if self.arguments is not None and self.decision != "approve":
            raise ValueError("edited arguments only make sense with decision: approve")
        return self


# ---------------------------------------------------------------------------- expectations


class AnswerExpect(_Model):
    """Checks on the final answer; each one given is reported separately."""

    exact: str | None = None
    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)
    regex: str | None = None
    """Searched anywhere in the answer (``re.search``; dot matches newlines)."""
    json_schema: JsonObject | None = Field(None, alias="schema")
    """The answer is a JSON document matching this schema."""
    ignore_case: bool = False

    @field_validator("contains", "not_contains", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return _as_list(v)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from None
        return v

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: JsonObject | None) -> JsonObject | None:
        if v is not None:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(v)
            except SchemaError as err:
                raise ValueError(f"not a valid JSON schema: {err.message}") from None
        return v


class ToolsExpect(_Model):
    """Checks on the sequence of tool calls (names), each reported separately."""

    exact: list[str] | None = None
    """The sequence is exactly this."""
    in_order: list[str] | None = None
    """These appear in this order (other calls may come between)."""
    includes: list[str] = Field(default_factory=list)
    excludes: list[str] = Field(default_factory=list)
    which: Literal["proposed", "ran"] = "proposed"
    """``proposed``: every call the model made (rejected and denied ones too); ``ran``: only
    calls that reached the tool."""

    @field_validator("includes", "excludes", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return _as_list(v)


class CallExpect(_Model):
    """A call of ``tool`` whose arguments contain ``arguments`` (a subset match)."""

    tool: str = Field(min_length=1)
    arguments: JsonObject = Field(default_factory=dict)
    status: Literal["ok", "error", "rejected", "not_run"] | None = None
    """``rejected``: never ran (invalid, denied by policy or by an approver)."""
    nth: int | None = Field(None, ge=1)
    """Only the n-th call of this tool (1-based); default: any of them."""


class DecisionExpect(_Model):
    """A guardrail decision in the ledger (``stead_decisions``), present or absent."""

    kind: str = Field(min_length=1)
    """e.g. ``route``, ``gate``, ``call_rejected``, ``approval_requested``, ``fallback``."""
    decision: str | None = None
    """e.g. ``allow``/``ask``/``deny`` for ``gate``, ``refuse``/``profile`` for ``route``."""
    tool: str | None = None
    """The decision's ``data.tool`` (gate, call_rejected, approval_requested)."""
    rule: str | None = None
    """The routing rule (``data.rule``) of a ``route`` decision."""
    reason_contains: str | None = None
    present: bool = True


class ApprovalsExpect(_Model):
    """Approvals the run asked for (``approval_requested`` decisions)."""

    count: int | None = Field(None, ge=0)
    tools: list[str] | None = None
    """Exactly these tools, in order."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"count": v}
        if isinstance(v, list):
            return {"tools": v}
        return v


class CustomExpect(_Model):
    """A Python evaluator: ``module:function`` or ``path/to/file.py:function`` (relative to
    the suite file). It receives the :class:`~stead.evals.runner.CaseOutcome` and returns a
    bool, ``(bool, message)``, a score (needs ``threshold``) or a
    :class:`~stead.evals.expect.Verdict`; it may be async."""

    function: str = Field(pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")
    threshold: float | None = None
    name: str | None = None
    """Label in the report (default: the function name)."""


class JudgeExpect(_Model):
    """Model-as-judge: a rubric sent to a model that answers with a score in [0, 1]."""

    rubric: str = Field(min_length=1)
    threshold: float = Field(0.7, ge=0, le=1)
    model: ScriptedModelSource | None = None
    """A scripted judge (tests); default: the runner's judge model, else the configured
    OpenAI-compatible model, else the check is skipped."""


class Expect(_Model):
    """Everything a case expects; each check is reported on its own."""

    status: list[RunStatus] | None = None
    """The run's final status is one of these."""
    answer: AnswerExpect | None = None
    tools: ToolsExpect | None = None
    calls: list[CallExpect] = Field(default_factory=list)
    decisions: list[DecisionExpect] = Field(default_factory=list)
    approvals_requested: ApprovalsExpect | None = None
    max_steps_used: int | None = Field(None, ge=0)
    """The run used at most this many steps (model turns plus tool calls)."""
    custom: list[CustomExpect] = Field(default_factory=list)
    judge: JudgeExpect | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return _as_list(v)


# ---------------------------------------------------------------------------- cases & suites


class Case(_Model):
    """One request, the model it runs with, the approvals it plays and what it expects."""

    name: CaseName
    agent: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=100_000)
    tenant: str = Field("default", min_length=1)
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    """Request metadata (e.g. ``role``); keys starting with ``stead.`` are the eval's own."""
    max_steps: int | None = Field(None, ge=1, le=200)
    model: ModelSource = Field(default_factory=AgentModelSource)
    approvals: list[ApprovalAction] = Field(default_factory=list)
    """Taken in order, one per approval the run asks for."""
    expect: Expect = Field(default_factory=Expect)
    timeout: float | None = Field(None, gt=0)
    """Seconds this case may take (default: the runner's per-case timeout)."""
    description: str = ""

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: object) -> object:
        return {"kind": v} if v == "agent" else v

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, v: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in v if k.startswith("stead."))
        if reserved:
            raise ValueError(f"metadata keys starting with 'stead.' are set by the eval "
                             f"runner: {', '.join(reserved)}")
        return v

    def request(self, suite: str) -> RunRequest:
        """The run request, marked as a synthetic eval run of ``suite``/this case."""
        return RunRequest(agent=self.agent, input=self.input, tenant=self.tenant,
                          user=self.user, max_steps=self.max_steps,
                          metadata={**self.metadata, SYNTHETIC_KEY: "eval",
                                    SUITE_KEY: suite, CASE_KEY: self.name})


class Suite(_Model):
    """A named list of cases. ``agent`` is the default agent of cases that name none."""

    name: CaseName
    description: str = ""
    agent: str | None = None
    cases: list[Case] = Field(min_length=1)
    _source: str = PrivateAttr("<suite>")
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _case_defaults(cls, data: object) -> object:
        if isinstance(data, dict) and "suite" in data and "name" not in data:
            data = {("name" if k == "suite" else k): v for k, v in data.items()}
        if isinstance(data, dict) and isinstance(data.get("agent"), str) \
                and isinstance(data.get("cases"), list):
            data = {**data, "cases": [
                {"agent": data["agent"], **c} if isinstance(c, dict) else c
                for c in data["cases"]]}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        seen: set[str] = set()
        dupes: list[str] = []
        for c in self.cases:
            (dupes if c.name in seen else []).append(c.name)
            seen.add(c.name)
        if dupes:
            raise ValueError(f"case names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def base_dir(self) -> Path | None:
        """The suite file's directory: relative evaluator files are found from there."""
        return self._base_dir

    @property
    def source(self) -> str:
        """Where the suite came from (its file, or ``<python>``)."""
        return self._source

    def where(self, case: str) -> str:
        """``file:line`` of a case, for error messages."""
        line = self._lines.get(case)
        return f"{self._source}:{line}" if line else self._source

    def check_agents(self, agents: Sequence[str]) -> list[str]:
        """Problems with agent names against the agents a catalog serves."""
        return [f"{self.where(c.name)}: case {c.name!r}: unknown agent {c.agent!r} (the "
                f"catalog serves: {', '.join(sorted(agents)) or 'none'})"
                for c in self.cases if c.agent not in agents]


# ---------------------------------------------------------------------------- loading


def parse_suite(text: str, *, source: str = "<suite>", base_dir: Path | None = None,
                default_name: str | None = None) -> Suite:
    """Parse and validate suite YAML; every problem is reported as ``source:line: field``."""
    import yaml

    try:
        node = yaml.compose(text)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise SuiteError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{source}:1: a suite must be a mapping with a list of cases")
    if default_name is not None and "suite" not in data and "name" not in data:
        data["name"] = default_name
    return _build(data, node=node, source=source, base_dir=base_dir)


SUITE_PATTERNS = ("*.yaml", "*.yml")
"""What a suite file is called: ``stead eval DIR`` reads these under DIR."""


def suite_files(paths: Sequence[Path]) -> list[Path]:
    """The suite files named, or found (recursively, sorted) under directories."""
    return expand_paths(paths, SUITE_PATTERNS, what="suite", error=SuiteError)


def load_suite(path: Path) -> Suite:
    """Load ``path`` (YAML); relative files in it are relative to its directory."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SuiteError(f"cannot read suite {path}: {err.strerror or err}") from None
    stem = re.sub(r"[^A-Za-z0-9_.:-]+", "-", path.stem).strip("-") or "suite"
    return parse_suite(text, source=str(path), base_dir=path.parent, default_name=stem)


def suite_from_data(data: Mapping[str, Any], *, source: str = "<python>",
                    base_dir: Path | None = None) -> Suite:
    """A suite from plain Python objects (the same shape as the YAML)."""
    return _build(dict(data), node=None, source=source, base_dir=base_dir)


def _build(data: dict[str, Any], *, node: Any, source: str, base_dir: Path | None) -> Suite:
    names = _case_names(data)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = list(e["loc"])
            problems.append(f"{_at(source, node, where)}: {_field(where, names)}: "
                            f"{e['msg'].removeprefix('Value error, ')}")
        raise SuiteError(f"invalid suite {source}:\n  " + "\n  ".join(problems)) from None
    suite._source, suite._base_dir = source, base_dir
    if node is not None:
        suite._lines = {c.name: _line_of(node, ["cases", i])
                        for i, c in enumerate(suite.cases)}
    suite = _resolve_files(suite, node=node, source=source, base_dir=base_dir)
    problems = []
    for i, c in enumerate(suite.cases):
        for j, cx in enumerate(c.expect.custom):
            try:
                load_function(cx.function, base_dir=base_dir)
            except ValueError as err:
                loc: list[int | str] = ["cases", i, "expect", "custom", j, "function"]
                problems.append(f"{_at(source, node, loc)}: {_field(loc, names)}: {err}")
    if problems:
        raise SuiteError(f"invalid suite {source}:\n  " + "\n  ".join(problems))
    return suite


def _resolve_files(suite: Suite, *, node: Any, source: str, base_dir: Path | None) -> Suite:
    """Make recorded files absolute and check they hold turns."""
    cases = []
    problems = []
    for i, c in enumerate(suite.cases):
        if isinstance(c.model, RecordedModelSource) and c.model.file is not None:
            path = c.model.file if c.model.file.is_absolute() or base_dir is None \
                else (base_dir / c.model.file)
            try:
                recorded_turns_from_file(path)
            except ValueError as err:
                loc: list[int | str] = ["cases", i, "model", "file"]
                problems.append(f"{_at(source, node, loc)}: case {c.name!r}: "
                                f"model.file: {err}")
            c = c.model_copy(update={"model": c.model.model_copy(update={"file": path})})
        cases.append(c)
    if problems:
        raise SuiteError(f"invalid suite {source}:\n  " + "\n  ".join(problems))
    out = suite.model_copy(update={"cases": cases})
    out._source, out._lines, out._base_dir = suite._source, dict(suite._lines), suite._base_dir
    return out


def load_function(ref: str, *, base_dir: Path | None = None) -> Callable[..., object]:
    """Resolve ``module:function`` or ``file.py:function`` (relative to ``base_dir``)."""
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ValueError(f"no file {path} for evaluator {ref!r}")
        name = "stead_eval_" + re.sub(r"\W", "_", str(path.resolve()))
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot load {path} as a Python module")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                raise ValueError(f"importing {path} failed: {type(err).__name__}: {err}") \
                    from None
            sys.modules[name] = module
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"cannot import module {target!r}: {err}") from None
        except Exception as err:
            raise ValueError(f"importing {target!r} failed: {type(err).__name__}: {err}") \
                from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{target!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def _case_names(data: Mapping[str, Any]) -> dict[int, str]:
    cases = data.get("cases")
    if not isinstance(cases, list):
        return {}
    return {i: str(c["name"]) for i, c in enumerate(cases)
            if isinstance(c, dict) and isinstance(c.get("name"), str)}


def _field(loc: Sequence[int | str], names: Mapping[int, str]) -> str:
    """``case 'x': expect.status`` for case fields, else the dotted path."""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        rest = ".".join(str(p) for p in loc[2:]) or "(case)"
        name = names.get(loc[1])
        return f"case {name!r}: {rest}" if name else f"cases[{loc[1]}]: {rest}"
    return ".".join(str(p) for p in loc) or "(suite)"


def _at(source: str, node: Any, loc: Sequence[int | str]) -> str:
    """``source:line`` when the suite came from YAML, else just ``source``."""
    return f"{source}:{_line_of(node, loc)}" if node is not None else source


def _line_of(node: Any, loc: Sequence[int | str]) -> int:
    """Best line number for a validation error location in the YAML node tree."""
    import yaml

    line = int(node.start_mark.line) + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part or (part == "name" and k.value == "suite"):
                    line, node = int(v.start_mark.line) + 1, v
                    break
            # else: a union tag or a missing key; the enclosing node's line is the best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = int(node.start_mark.line) + 1
        else:
            return line
    return line


__all__ = [
    "CASE_KEY",
    "SUITE_KEY",
    "SUITE_PATTERNS",
    "AgentModelSource",
    "AnswerExpect",
    "ApprovalAction",
    "ApprovalsExpect",
    "CallExpect",
    "Case",
    "CustomExpect",
    "DecisionExpect",
    "Expect",
    "JudgeExpect",
    "ModelSource",
    "RecordedModelSource",
    "ScriptedCall",
    "ScriptedModelSource",
    "ScriptedTurn",
    "Suite",
    "SuiteError",
    "ToolsExpect",
    "load_function",
    "load_suite",
    "parse_suite",
    "recorded_turns_from_file",
    "suite_files",
    "suite_from_data",
    "turns_from_model_calls",
]
