"""Expectation checks: what a case expects, checked against what its run did.

A run's outcome is its :class:`~stead.contracts.models.RunResult` plus its ledger trail (model
calls, tool calls, guardrail decisions) and the approvals the eval played. Every expectation gives
its own :class:`Check`, with a reason that says what was found when it fails:

    checks = await evaluate(outcome, judge_model=model)
    [c for c in checks if c.status == "fail"]

Custom evaluators receive the :class:`CaseOutcome` and return a bool, ``(bool, message)``, a
score compared with the expectation's threshold, or a :class:`Verdict`.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stead.authoring.judge import JUDGE_INSTRUCTIONS, parse_judgement
from stead.contracts.models import (
    JsonObject,
    LedgerDecision,
    Message,
    ModelCallRow,
    RunResult,
    Trail,
)
from stead.evals.suite import (
    AnswerExpect,
    ApprovalsExpect,
    CallExpect,
    Case,
    CustomExpect,
    DecisionExpect,
    JudgeExpect,
    ToolsExpect,
    load_function,
)
from stead.integrations.llm import ModelClient, ScriptedModel

CheckStatus = Literal["pass", "fail", "skip"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Check(_Model):
    """One expectation's verdict."""

    name: str
    """What was checked, e.g. ``status``, ``tools in order``, ``decision gate=ask``."""
    status: CheckStatus
    """``skip``: could not be checked here (a judge without a model); not a failure."""
    reason: str = ""
    """Why it failed (what was found instead), or a note."""
    score: float | None = None


class Verdict(_Model):
    """What a custom evaluator may return: pass/fail, or a score for the threshold."""

    passed: bool | None = None
    score: float | None = None
    message: str = ""


# ---------------------------------------------------------------------------- outcomes


class ObservedCall(_Model):
    """A tool call the model proposed, joined with what became of it."""

    step: int
    call_id: str
    tool: str
    arguments: JsonObject | None
    """The parsed arguments; None when the model's text was not a JSON object."""
    raw_arguments: str
    status: Literal["ok", "error", "rejected", "not_run"]
    """``rejected``: invalid, or denied by policy or an approver; ``not_run``: the step budget
    ran out before it."""
    served_by: str | None = None
    error: str | None = None


class ApprovalTaken(_Model):
    """An approval the run asked for, and what the eval did about it."""

    approval_id: str
    tool: str
    arguments: JsonObject
    action: Literal["approve", "reject", "wait"]
    planned: bool
    """False: the case planned no action for it, so the eval rejected it."""
    by: str = ""
    outcome: str | None = None
    """What the ``decide`` update returned (``approved``, ``rejected``, ``denied_after_edit``)."""
    problem: str | None = None
    """Why this approval makes the case fail (unplanned, wrong tool, decision refused)."""


class CaseOutcome(_Model):
    """Everything one case's run did: what expectations and custom evaluators look at."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    suite: str
    case: Case
    workflow_id: str
    result: RunResult | None
    """None when the run did not finish (it failed, or the case timed out)."""
    error: str | None = None
    calls: list[ObservedCall] = Field(default_factory=list)
    decisions: list[LedgerDecision] = Field(default_factory=list)
    approvals: list[ApprovalTaken] = Field(default_factory=list)
    duration_s: float = 0.0
    trail: Trail = Field(default_factory=Trail, exclude=True)
    """The ledger trail (``Ledger.trail``), for custom evaluators."""

    @property
    def answer(self) -> str | None:
        return self.result.answer if self.result else None

    @property
    def status(self) -> str:
        return self.result.status if self.result else "error"

    def tools(self, which: Literal["proposed", "ran"] = "proposed") -> list[str]:
        """Tool names in call order: every proposed call, or only those that ran."""
        return [c.tool for c in self.calls
                if which == "proposed" or c.status in ("ok", "error")]


def observed_calls(trail: Trail, result: RunResult | None) -> list[ObservedCall]:
    """Calls as the model wrote them (ledger ``model_calls``: the raw argument text, even of
    calls the gate rejected) joined by call id with the run's own records."""
    records = list(result.tool_calls) if result else []
    used = [False] * len(records)
    best: dict[tuple[str, int], ModelCallRow] = {}
    for row in trail.model_calls:
        if row.status != "ok":
            continue
        key = (row.run_id, row.step)
        if key not in best or row.attempt >= best[key].attempt:
            best[key] = row
    out: list[ObservedCall] = []
    for row in sorted(best.values(), key=lambda r: (str(r.created_at), r.step)):
        for c in row.tool_calls:
            raw = str(c.get("arguments", ""))
            idx = next((i for i, r in enumerate(records)
                        if not used[i] and r.call_id == c.get("id")), None)
            if idx is None:
                out.append(ObservedCall(step=row.step, call_id=str(c.get("id")),
                                        tool=str(c.get("name")), arguments=_object(raw),
                                        raw_arguments=raw, status="not_run"))
                continue
            used[idx] = True
            rec = records[idx]
            out.append(ObservedCall(step=rec.step, call_id=rec.call_id, tool=str(c.get("name")),
                                    arguments=rec.arguments or _object(raw), raw_arguments=raw,
                                    status=rec.status, served_by=rec.served_by,
                                    error=rec.error))
    for i, rec in enumerate(records):  # records the ledger did not show (kept, not lost)
        if not used[i]:
            out.append(ObservedCall(step=rec.step, call_id=rec.call_id, tool=rec.tool,
                                    arguments=rec.arguments, raw_arguments=json.dumps(
                                        rec.arguments), status=rec.status,
                                    served_by=rec.served_by, error=rec.error))
    return out


def observed_decisions(trail: Trail) -> list[LedgerDecision]:
    return [LedgerDecision.from_row(d) for d in trail.decisions]


def _object(text: str) -> JsonObject | None:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------- evaluation


async def evaluate(outcome: CaseOutcome, *, judge_model: ModelClient | None = None,
                   base_dir: Path | None = None) -> list[Check]:
    """Every expectation of the outcome's case, checked; one :class:`Check` each."""
    x = outcome.case.expect
    checks: list[Check] = []
    if outcome.error is not None:
        checks.append(Check(name="run finished", status="fail", reason=outcome.error))
    played = approvals_played(outcome)
    if played is not None:
        checks.append(played)
    if x.status is not None:
        checks.append(check_status(x.status, outcome))
    if x.answer is not None:
        checks += check_answer(x.answer, outcome)
    if x.tools is not None:
        checks += check_tools(x.tools, outcome)
    checks += [check_call(c, outcome) for c in x.calls]
    checks += [check_decision(d, outcome) for d in x.decisions]
    if x.approvals_requested is not None:
        checks += check_approvals_requested(x.approvals_requested, outcome)
    if x.max_steps_used is not None:
        checks.append(check_steps(x.max_steps_used, outcome))
    for cx in x.custom:
        checks.append(await check_custom(cx, outcome, base_dir=base_dir))
    if x.judge is not None:
        checks.append(await check_judge(x.judge, outcome, model=judge_model))
    return checks


def _short(text: object, limit: int = 120) -> str:
    s = text if isinstance(text, str) else json.dumps(text, sort_keys=True, default=str)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _no_result(outcome: CaseOutcome) -> str:
    return f"no run result ({outcome.error or 'the run did not finish'})"


def _passed(name: str, ok: bool, reason: str, score: float | None = None) -> Check:
    return Check(name=name, status="pass" if ok else "fail", reason="" if ok else reason,
                 score=score)


def approvals_played(outcome: CaseOutcome) -> Check | None:
    """Did the run ask exactly for the approvals the case planned, and were the decisions
    accepted? None when the case plans none and the run asked none."""
    planned = outcome.case.approvals
    if not planned and not outcome.approvals:
        return None
    problems = [f"{a.approval_id} ({a.tool}): {a.problem}" for a in outcome.approvals
                if a.problem]
    unused = len(planned) - sum(1 for a in outcome.approvals if a.planned)
    if unused > 0 and outcome.error is None:
        problems.append(f"the case planned {len(planned)} approval decision(s) but the run "
                        f"asked for {sum(1 for a in outcome.approvals if a.planned)}")
    return _passed("approvals played", not problems, "; ".join(problems))


def check_status(expected: Sequence[str], outcome: CaseOutcome) -> Check:
    want = " or ".join(expected)
    if outcome.result is None:
        return _passed("status", False, f"expected {want}; {_no_result(outcome)}")
    r = outcome.result
    detail = f" (error: {_short(r.error)})" if r.error else (
        f" (answer: {_short(r.answer)})" if r.answer else "")
    return _passed("status", r.status in expected, f"status is {r.status}{detail}, "
                                                   f"expected {want}")


def check_answer(x: AnswerExpect, outcome: CaseOutcome) -> list[Check]:
    names: list[str] = []
    if x.exact is not None:
        names.append("answer exact")
    names += [f"answer contains {s!r}" for s in x.contains]
    names += [f"answer lacks {s!r}" for s in x.not_contains]
    if x.regex is not None:
        names.append(f"answer matches /{x.regex}/")
    if x.json_schema is not None:
        names.append("answer schema")
    if outcome.result is None:
        return [_passed(n, False, _no_result(outcome)) for n in names]
    answer = outcome.result.answer or ""

    def fold(text: str) -> str:
        return text.lower() if x.ignore_case else text

    seen = f"answer is {_short(answer)!r}" if answer else "the run gave no answer"
    out: list[Check] = []
    if x.exact is not None:
        out.append(_passed("answer exact", fold(answer) == fold(x.exact),
                           f"{seen}, expected exactly {_short(x.exact)!r}"))
    for s in x.contains:
        out.append(_passed(f"answer contains {s!r}", fold(s) in fold(answer), seen))
    for s in x.not_contains:
        out.append(_passed(f"answer lacks {s!r}", fold(s) not in fold(answer), seen))
    if x.regex is not None:
        flags = re.DOTALL | (re.IGNORECASE if x.ignore_case else 0)
        out.append(_passed(f"answer matches /{x.regex}/",
                           re.search(x.regex, answer, flags) is not None, seen))
    if x.json_schema is not None:
        out.append(_check_schema(x.json_schema, answer, seen))
    return out


def _check_schema(schema: JsonObject, answer: str, seen: str) -> Check:
    from stead.guardrails.calls import schema_problems

    try:
        doc = json.loads(answer)
    except json.JSONDecodeError as err:
        return _passed("answer schema", False, f"{seen}: not JSON ({err.msg} at char {err.pos})")
    problems = schema_problems(schema, doc)
    return _passed("answer schema", not problems,
                   "answer does not match the schema: " + "; ".join(problems))


def check_tools(x: ToolsExpect, outcome: CaseOutcome) -> list[Check]:
    seq = outcome.tools(x.which)
    label = "" if x.which == "proposed" else " (ran)"
    got = f"{'called' if x.which == 'ran' else 'proposed'} [{', '.join(seq)}]"
    out: list[Check] = []
    if x.exact is not None:
        out.append(_passed(f"tools exact{label}", seq == x.exact,
                           f"{got}, expected exactly [{', '.join(x.exact)}]"))
    if x.in_order is not None:
        missing = _first_out_of_order(seq, x.in_order)
        out.append(_passed(f"tools in order{label}", missing is None,
                           f"{got}; [{', '.join(x.in_order)}] not in this order: "
                           f"{missing!r} not found" + (
                               "" if missing == x.in_order[0] else " after the ones before it")))
    if x.includes:
        absent = [t for t in x.includes if t not in seq]
        out.append(_passed(f"tools include [{', '.join(x.includes)}]{label}", not absent,
                           f"{got}; missing: {', '.join(absent)}"))
    if x.excludes:
        present = [t for t in x.excludes if t in seq]
        out.append(_passed(f"tools exclude [{', '.join(x.excludes)}]{label}", not present,
                           f"{got}; present: {', '.join(present)}"))
    return out


def _first_out_of_order(seq: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first wanted name that cannot be matched after the previous ones; None if all."""
    pos = 0
    for w in wanted:
        try:
            pos = seq.index(w, pos) + 1
        except ValueError:
            return w
    return None


def _subset(expected: object, actual: object) -> bool:
    """Does ``actual`` contain ``expected``? Objects: every expected key, recursively; lists:
    same length, element by element; numbers by value (but booleans are not numbers)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            _subset(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return expected == actual


def check_call(x: CallExpect, outcome: CaseOutcome) -> Check:
    name = f"call {x.tool}" + (f"#{x.nth}" if x.nth else "") + (
        f" {_short(x.arguments, 60)}" if x.arguments else "") + (
        f" [{x.status}]" if x.status else "")
    calls = [c for c in outcome.calls if c.tool == x.tool]
    if x.nth is not None:
        if len(calls) < x.nth:
            return _passed(name, False, f"{x.tool} was called {len(calls)} time(s); "
                                        f"proposed: [{', '.join(outcome.tools())}]")
        calls = [calls[x.nth - 1]]
    if not calls:
        return _passed(name, False, f"no call of {x.tool}; proposed: "
                                    f"[{', '.join(outcome.tools()) or 'nothing'}]")
    ok = any(_subset(x.arguments, c.arguments or {}) and (x.status is None or
                                                          c.status == x.status)
             for c in calls)
    seen = "; ".join(
        f"{c.tool} {_short(c.raw_arguments if c.arguments is None else c.arguments, 80)} "
        f"{c.status}" + (f" ({_short(c.error, 80)})" if c.error else "") for c in calls)
    return _passed(name, ok, f"found: {seen}")


def _matches(d: LedgerDecision, x: DecisionExpect) -> bool:
    return (d.kind == x.kind and (x.decision is None or d.decision == x.decision)
            and (x.tool is None or d.data.get("tool") == x.tool)
            and (x.rule is None or d.data.get("rule") == x.rule)
            and (x.reason_contains is None or x.reason_contains.lower() in d.reason.lower()))


def check_decision(x: DecisionExpect, outcome: CaseOutcome) -> Check:
    what = f"{x.kind}" + (f"={x.decision}" if x.decision else "") + (
        f" tool={x.tool}" if x.tool else "") + (f" rule={x.rule}" if x.rule else "") + (
        f" reason~{x.reason_contains!r}" if x.reason_contains else "")
    name = f"decision {what}" if x.present else f"no decision {what}"
    found = [d for d in outcome.decisions if _matches(d, x)]
    if x.present:
        same_kind = [d for d in outcome.decisions if d.kind == x.kind]
        if same_kind:
            reason = f"not recorded; {x.kind} decisions: " + ", ".join(
                d.summary() + (f" “{_short(d.reason, 80)}”" if x.reason_contains else "")
                for d in same_kind)
        else:
            kinds = sorted({d.kind for d in outcome.decisions})
            reason = (f"the run recorded no {x.kind} decision (kinds recorded: "
                      f"{', '.join(kinds) or 'none'})")
        return _passed(name, bool(found), reason)
    return _passed(name, not found, "recorded: " + ", ".join(
        f"seq {d.seq} {d.summary()} “{_short(d.reason, 80)}”" for d in found))


def check_approvals_requested(x: ApprovalsExpect, outcome: CaseOutcome) -> list[Check]:
    asked = [str(d.data.get("tool")) for d in outcome.decisions
             if d.kind == "approval_requested"]
    out = []
    got = f"the run asked {len(asked)} approval(s)" + (f": [{', '.join(asked)}]"
                                                        if asked else "")
    if x.count is not None:
        out.append(_passed(f"approvals requested = {x.count}", len(asked) == x.count, got))
    if x.tools is not None:
        out.append(_passed(f"approvals requested for [{', '.join(x.tools)}]",
                           asked == x.tools, got))
    return out


def check_steps(limit: int, outcome: CaseOutcome) -> Check:
    name = f"steps <= {limit}"
    if outcome.result is None:
        return _passed(name, False, _no_result(outcome))
    r = outcome.result
    return _passed(name, r.steps <= limit, f"used {r.steps} steps ({r.model_turns} model "
                                           f"turns, {len(r.tool_calls)} tool calls)")


async def check_custom(x: CustomExpect, outcome: CaseOutcome, *,
                       base_dir: Path | None = None) -> Check:
    name = f"custom {x.name or x.function.rpartition(':')[2]}"
    try:
        fn = load_function(x.function, base_dir=base_dir)
        got = fn(outcome)
        if inspect.isawaitable(got):
            got = await got
    except Exception as err:
        return _passed(name, False, f"{x.function} raised {type(err).__name__}: {err}")
    return _interpret(name, got, x.threshold, x.function)


def _interpret(name: str, got: object, threshold: float | None, what: str) -> Check:
    if isinstance(got, Verdict):
        if got.score is not None and threshold is not None:
            return _passed(name, got.score >= threshold,
                           f"score {got.score:g} < threshold {threshold:g}"
                           + (f": {got.message}" if got.message else ""), score=got.score)
        if got.passed is None:
            return _passed(name, False, f"{what} returned a Verdict with neither passed nor "
                                        f"a score (with a threshold)")
        return Check(name=name, status="pass" if got.passed else "fail", reason=got.message,
                     score=got.score)
    if isinstance(got, bool):
        return _passed(name, got, f"{what} returned False")
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], bool):
        return Check(name=name, status="pass" if got[0] else "fail", reason=str(got[1]))
    if isinstance(got, int | float):
        score = float(got)
        if threshold is None:
            return _passed(name, False, f"{what} returned a score ({score:g}) but the "
                                        f"expectation sets no threshold", score=score)
        return _passed(name, score >= threshold, f"score {score:g} < threshold {threshold:g}",
                       score=score)
    return _passed(name, False, f"{what} returned {type(got).__name__}; expected bool, "
                                f"(bool, message), a score or a Verdict")


def judge_messages(x: JudgeExpect, outcome: CaseOutcome) -> list[Message]:
    """What the judge model is shown: the rubric, the request, the calls and the answer."""
    r = outcome.result
    calls = "\n".join(f"- {c.tool} {c.raw_arguments[:300]} -> {c.status}"
                      + (f" ({c.error[:200]})" if c.error else "")
                      for c in outcome.calls) or "(none)"
    body = (f"Rubric:\n{x.rubric}\n\nRequest ({outcome.case.agent} agent):\n"
            f"{outcome.case.input}\n\nTool calls:\n{calls}\n\nFinal status: {outcome.status}\n"
            f"Answer:\n{(r.answer if r else None) or '(no answer)'}")
    return [Message(role="system", content=JUDGE_INSTRUCTIONS),
            Message(role="user", content=body)]


async def check_judge(x: JudgeExpect, outcome: CaseOutcome, *,
                      model: ModelClient | None) -> Check:
    if x.model is not None:
        model = ScriptedModel(x.model.model_turns(), name="scripted:judge")
    if model is None:
        return Check(name="judge", status="skip",
                     reason="no judge model: set OPENAI_API_KEY (or give judge.model)")
    name = f"judge ({model.name})"
    try:
        turn = await model.complete(judge_messages(x, outcome), [])
    except Exception as err:
        return _passed(name, False, f"judge model failed: {type(err).__name__}: {err}")
    score, why = parse_judgement(turn.content or "")
    if score is None:
        return _passed(name, False, f"judge reply not understood: {_short(turn.content)!r}")
    ok = score >= x.threshold
    return Check(name=name, status="pass" if ok else "fail", score=score,
                 reason=why if ok else f"score {score:g} < threshold {x.threshold:g}: {why}")


__all__ = [
    "ApprovalTaken",
    "CaseOutcome",
    "Check",
    "CheckStatus",
    "ObservedCall",
    "Verdict",
    "evaluate",
    "observed_calls",
    "observed_decisions",
    "parse_judgement",
]
