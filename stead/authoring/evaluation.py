"""Online evaluation: how an agent's finished production runs are scored, declared on the agent.

    Agent(name="ops", ..., evals=OnlineEvals(
        [used_tools(), grounded_figures(), judge_run("The answer says what the tools found.")],
        sample=0.25))

A completed run is graded by every evaluator; the run counts as a **task success** when it
completed and no evaluator failed it. ``EvaluationWorkflow`` (``workflows/evaluation.py``)
scores a sample of finished runs after they end, apart from them: a run never waits for its
evaluation, and an evaluator that raises is recorded as an evaluation error, nothing more.

Evaluators:

- ``used_tools()``: the run answered after calling a tool (for agents whose task needs one);
- ``grounded_figures()``: every figure and identifier of the answer comes from what the run
  saw, derived figures included (``0.12`` → ``12 %``, ``1234.5`` → ``1,234.50``, ms → s;
  ``stead.guardrails.figures``);
- ``from_graph(evaluator)``: any step evaluator of ``stead.authoring.graph`` (``custom``,
  ``grounded_numbers``, ``answer_schema``, ``judge``) applied to the finished run;
- ``judge_run(rubric)``: a model grades the run against a rubric;
- ``rule(name, fn)``: a Python check of the :class:`FinishedRun`.

Each has a ``version``: scores are stored under the evaluator's name and version, so bump it
when what the evaluator checks changes (runs are then scored again by the new version while
they are within the sweep's look-back). Checks run in the evaluation activity, not in a
workflow: they may be slow, but must not have side effects (they can run more than once).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from stead.authoring.graph import Evaluator, GraphState, Score
from stead.authoring.judge import JUDGE_INSTRUCTIONS, parse_judgement
from stead.contracts.models import JsonObject, LedgerDecision, Message, ModelTurn, ToolCall
from stead.guardrails.figures import check_figures
from stead.integrations.llm import ModelClient

__all__ = [
    "EvaluatorKind",
    "FinishedRun",
    "JudgeReplyError",
    "OnlineEvals",
    "RuleOutcome",
    "RunEvaluator",
    "ToolUse",
    "Verdict",
    "from_graph",
    "grounded_figures",
    "judge_run",
    "rule",
    "used_tools",
]

EvaluatorKind = Literal["rule", "graph", "judge"]


# ---------------------------------------------------------------------------- what is graded


@dataclass(frozen=True, kw_only=True)
class ToolUse:
    """One tool call of a finished run, as its result and the ledger record it."""

    step: int
    call_id: str
    tool: str
    arguments: JsonObject
    status: Literal["ok", "error", "rejected"]
    """``rejected``: invalid, unknown, or denied by policy or an approver; it never ran."""
    result: JsonObject | None = None
    """What the tool returned (``ok`` calls whose result the ledger holds)."""
    error: str | None = None

    @property
    def ran(self) -> bool:
        """The tool was called: it answered, or failed trying."""
        return self.status in ("ok", "error")


@dataclass(frozen=True, kw_only=True)
class FinishedRun:
    """What evaluators read: one finished run, from the ledger."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    status: str
    """The run's final status: ``completed``, ``failed``, ``denied``, ``refused``, ..."""
    input: str
    answer: str | None
    error: str | None = None
    steps: int = 0
    model: str = ""
    model_turns: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tool_calls: tuple[ToolUse, ...] = ()
    """Every call the run made or was refused, in step order."""
    decisions: tuple[LedgerDecision, ...] = ()
    path: tuple[str, ...] = ()
    """The graph nodes the run passed, in order."""
    instructions: str = ""
    """The agent's instructions as this worker declares them."""
    recalled: tuple[str, ...] = ()
    """Texts the run recalled from semantic memory (what the pgvector store still holds)."""
    metadata: Mapping[str, object] = field(default_factory=dict)

    @property
    def ran(self) -> list[ToolUse]:
        """The calls whose tool was called (not the rejected ones)."""
        return [c for c in self.tool_calls if c.ran]

    @property
    def tool_results(self) -> list[str]:
        """The JSON text of each result a tool returned, in call order."""
        return [json.dumps(c.result, sort_keys=True, default=str) for c in self.tool_calls
                if c.status == "ok" and c.result is not None]

    def graph_state(self) -> GraphState:
        """The run as a step evaluator of ``stead.authoring.graph`` sees a step: the request,
        the conversation rebuilt from the tool calls, the answer and every tool result."""
        messages = [Message(role="user", content=self.input)]
        for c in self.tool_calls:
            call = ToolCall(id=c.call_id, name=c.tool,
                            arguments=json.dumps(c.arguments, sort_keys=True))
            messages.append(Message(role="assistant", tool_calls=[call]))
            body = c.result if c.status == "ok" else {"error": c.error or c.status}
            messages.append(Message(role="tool", tool_call_id=c.call_id, name=c.tool,
                                    content=json.dumps(body, sort_keys=True, default=str)))
        if self.answer is not None:
            messages.append(Message(role="assistant", content=self.answer))
        return GraphState(input=self.input, messages=messages, step=self.steps,
                          last_turn=ModelTurn(content=self.answer), answer=self.answer,
                          path=list(self.path), tool_results=self.tool_results)


# ---------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What a rule may return: a score in [0, 1] and/or pass/fail, and why."""

    passed: bool | None = None
    """None: decided by ``score`` against the evaluator's threshold."""
    score: float | None = None
    """None: 1.0 when passed, else 0.0."""
    feedback: str = ""


RuleOutcome = Verdict | Score | bool | tuple[bool, str] | float
"""A rule returns a Verdict, a graph Score, a bool, (bool, feedback) or a score in [0, 1]."""


class JudgeReplyError(ValueError):
    """A judge's reply that holds no score (an evaluation error, not a failed run)."""


# ---------------------------------------------------------------------------- evaluators


@dataclass(frozen=True, kw_only=True)
class RunEvaluator:
    """One check of a finished run, stored under ``name`` and ``version``."""

    name: str
    version: int = 1
    kind: EvaluatorKind = "rule"
    check: Callable[[FinishedRun], RuleOutcome] | None = None
    """The check of a ``rule`` or ``graph`` evaluator (None for a judge)."""
    rubric: str | None = None
    """What a ``judge`` grades the run against."""
    threshold: float = 0.5
    """A score at least this passes (rules returning a number, judges)."""
    applies: Callable[[FinishedRun], bool] | None = None
    """When given and False for a run, the evaluator is recorded as skipped for it."""
    description: str = ""
    options: Mapping[str, object] = field(default_factory=dict)
    """The evaluator's settings, in its digest (built-ins: what they were given)."""

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version

    def digest(self) -> str:
        """A short hash of the declaration (kind, rubric, threshold, options, the check's
        qualified name): a changed evaluator that kept its version shows in the rows."""
        doc = {"name": self.name, "version": self.version, "kind": self.kind,
               "rubric": self.rubric, "threshold": self.threshold,
               "check": _fn_name(self.check), "applies": _fn_name(self.applies),
               "options": {k: repr(v) for k, v in sorted(self.options.items())}}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def problems(self) -> list[str]:
        out = []
        if not self.name.strip() or len(self.name) > 100:
            out.append(f"evaluator name {self.name!r}: use 1 to 100 characters")
        if self.version < 1:
            out.append(f"evaluator {self.name!r}: version must be at least 1, got "
                       f"{self.version}")
        if not 0 <= self.threshold <= 1:
            out.append(f"evaluator {self.name!r}: threshold {self.threshold:g} is outside "
                       f"[0, 1]")
        if self.kind == "judge" and not (self.rubric or "").strip():
            out.append(f"judge evaluator {self.name!r} has no rubric")
        if self.kind != "judge" and self.check is None:
            out.append(f"{self.kind} evaluator {self.name!r} has no check")
        return out

    def grade(self, run: FinishedRun) -> Verdict:
        """Run the check (a rule or graph evaluator); whatever it raises, it raises."""
        assert self.check is not None, "a judge is graded through a model"
        return _verdict(self.check(run), self.threshold)

    def judge_messages(self, run: FinishedRun) -> list[Message]:
        """What a judge is shown: the rubric, the request, the tool calls and the answer."""
        calls = "\n".join(
            f"- {c.tool}({json.dumps(c.arguments, sort_keys=True)[:300]}) -> "
            + (json.dumps(c.result, sort_keys=True, default=str)[:1500] if c.status == "ok"
               else f"{c.status}: {(c.error or '')[:300]}")
            for c in run.tool_calls[-20:]) or "(no tool calls)"
        body = (f"Rubric:\n{self.rubric}\n\nRequest:\n{run.input}\n\nTool calls:\n{calls}"
                f"\n\nRun status: {run.status}\n\nAnswer:\n{run.answer or '(no answer)'}")
        return [Message(role="system", content=JUDGE_INSTRUCTIONS),
                Message(role="user", content=body)]

    def judge_verdict(self, reply: str | None) -> Verdict:
        """The judge's reply as a verdict; ``JudgeReplyError`` when it holds no score."""
        score, why = parse_judgement(reply or "")
        if score is None:
            raise JudgeReplyError(f"judge reply not understood: {(reply or '')[:160]!r}")
        passed = score >= self.threshold
        return Verdict(passed=passed, score=score,
                       feedback=why if passed else f"score {score:g} < {self.threshold:g}: {why}")


def _verdict(got: RuleOutcome, threshold: float) -> Verdict:
    if isinstance(got, Verdict):
        if got.passed is None and got.score is None:
            raise TypeError("a Verdict needs passed or score")
        score = got.score if got.score is not None else (1.0 if got.passed else 0.0)
        if not 0 <= score <= 1:
            raise ValueError(f"score {score:g} is outside [0, 1]")
        passed = got.passed if got.passed is not None else score >= threshold
        return Verdict(passed=passed, score=score, feedback=got.feedback)
    if isinstance(got, Score):
        return Verdict(passed=got.passed, score=got.value, feedback=got.feedback)
    if isinstance(got, bool):
        return Verdict(passed=got, score=1.0 if got else 0.0)
    if isinstance(got, tuple):
        ok, why = got
        return Verdict(passed=bool(ok), score=1.0 if ok else 0.0, feedback=str(why))
    if isinstance(got, int | float):
        value = float(got)
        if not 0 <= value <= 1:
            raise ValueError(f"score {value:g} is outside [0, 1]")
        return Verdict(passed=value >= threshold, score=value,
                       feedback="" if value >= threshold
                       else f"score {value:g} below {threshold:g}")
    raise TypeError(f"an evaluator returned {type(got).__name__}; return a Verdict, a Score, "
                    f"a bool, (bool, feedback) or a number in [0, 1]")


def _fn_name(fn: object) -> str | None:
    if fn is None:
        return None
    code = getattr(fn, "__code__", None)
    line = f":{code.co_firstlineno}" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}{line}"


def rule(name: str, fn: Callable[[FinishedRun], RuleOutcome], *, version: int = 1,
         threshold: float = 0.5, applies: Callable[[FinishedRun], bool] | None = None,
         description: str = "") -> RunEvaluator:
    """A Python check of the finished run: returns a Verdict, a bool, (bool, feedback) or a
    score in [0, 1] compared with ``threshold``."""
    return RunEvaluator(name=name, version=version, kind="rule", check=fn, threshold=threshold,
                        applies=applies, description=description or (fn.__doc__ or "").strip())


def used_tools(*, min_calls: int = 1, any_of: Iterable[str] = (), answered: bool = False,
               version: int = 1,
               applies: Callable[[FinishedRun], bool] | None = None) -> RunEvaluator:
    """The run answered after calling at least ``min_calls`` tools (of ``any_of``, when
    given). A call counts when its tool was called, whether it answered or failed
    (``answered``: only when it answered); a call the gate or an approver refused, or that
    was invalid, does not. For agents whose task needs tools: an answer that called none is
    made up."""
    if min_calls < 1:
        raise ValueError(f"used_tools(min_calls={min_calls}): must be at least 1")
    wanted = tuple(sorted(set(any_of)))

    def check(run: FinishedRun) -> tuple[bool, str]:
        called = [c for c in run.ran if not wanted or c.tool in wanted]
        ran = [c for c in called if c.status == "ok"] if answered else called
        if len(ran) >= min_calls:
            return True, ""
        which = f" of {', '.join(wanted)}" if wanted else ""
        if not called:
            what = "answered without calling any tool" + which
        elif not ran:
            what = f"answered although every call{which} failed"
        else:
            what = f"called {len(ran)} tool(s){which}, fewer than the {min_calls} required"
        refused = [c for c in run.tool_calls if not c.ran]
        if refused:
            what += f" ({len(refused)} proposed call(s) never ran: " \
                    + ", ".join(sorted({c.tool for c in refused})) + ")"
        return False, what
    return RunEvaluator(name="used-tools", version=version, kind="rule", check=check,
                        applies=applies, description="the answer came after calling a tool",
                        options={"min_calls": min_calls, "any_of": wanted,
                                 "answered": answered})


def grounded_figures(*, ignore: Iterable[str] = (), ignore_below: int = 10,
                     instructions: bool = True, version: int = 1,
                     applies: Callable[[FinishedRun], bool] | None = None) -> RunEvaluator:
    """Every figure and identifier of the answer is grounded in what the run saw: tool
    results, the request, recalled memory and (``instructions``) the agent's instructions,
    derived figures included (``stead.guardrails.figures``: percentages of fractions,
    rounding, thousands separators, units, list lengths). ``ignore``: figures never checked,
    as written; bare integers below ``ignore_below`` are not checked."""
    skip = tuple(ignore)

    def check(run: FinishedRun) -> tuple[bool, str]:
        texts = [run.input, *run.recalled, *([run.instructions] if instructions else [])]
        data = [c.result for c in run.tool_calls if c.status == "ok" and c.result is not None]
        missing = [c.text for c in check_figures(run.answer or "", texts=texts, data=data,
                                                 ignore=skip, ignore_below=ignore_below)
                   if not c.grounded]
        if missing:
            return False, (f"the answer states {', '.join(missing)}, which no tool result, "
                           f"the request or recalled memory gives (as written or derived)")
        return True, ""
    return RunEvaluator(name="grounded-figures", version=version, kind="rule", check=check,
                        applies=applies, description="figures come from what the run saw",
                        options={"ignore": skip, "ignore_below": ignore_below,
                                 "instructions": instructions})


def from_graph(evaluator: Evaluator, *, version: int = 1, name: str | None = None,
               applies: Callable[[FinishedRun], bool] | None = None) -> RunEvaluator:
    """A step evaluator of ``stead.authoring.graph`` applied to the finished run (its state
    rebuilt by :meth:`FinishedRun.graph_state`); a ``judge(rubric)`` becomes a judge."""
    if evaluator.fn is None:
        return judge_run(evaluator.rubric or "", threshold=evaluator.threshold,
                         version=version, name=name or evaluator.name, applies=applies)
    ev = evaluator

    def check(run: FinishedRun) -> Score:
        return ev.score(run.graph_state())
    return RunEvaluator(name=name or evaluator.name, version=version, kind="graph",
                        check=check, threshold=evaluator.threshold, applies=applies,
                        options={"graph_evaluator": _fn_name(evaluator.fn)})


def judge_run(rubric: str, *, threshold: float = 0.7, version: int = 1, name: str = "judge",
              applies: Callable[[FinishedRun], bool] | None = None) -> RunEvaluator:
    """A model grades the finished run against ``rubric`` (``OnlineEvals.judge_model``, else
    the model that serves the agent on the evaluating worker). A reply without a score, or a
    model that fails, is an evaluation error, not a failed run."""
    return RunEvaluator(name=name, version=version, kind="judge", rubric=rubric,
                        threshold=threshold, applies=applies)


# ---------------------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class OnlineEvals:
    """An agent's online evaluation: which evaluators score its finished runs, and how many.

    ``sample``: the share of finished runs evaluated (0 to 1). Whether a run is in the sample
    is decided by a hash of its ids, so every sweep, and every worker, picks the same runs,
    and a larger share keeps the runs a smaller one picked. ``STEAD_EVAL_SAMPLE`` overrides it
    for every agent of a worker."""

    evaluators: Sequence[RunEvaluator | Evaluator]
    sample: float = 1.0
    judge_model: ModelClient | None = None
    """The model of ``judge`` evaluators; None: the model serving the agent."""
    include_synthetic: bool = False
    """Evaluate runs stead started itself too (eval suites, counterfactual replays)."""
    graded: tuple[RunEvaluator, ...] = field(init=False, repr=False)
    """``evaluators``, each a :class:`RunEvaluator` (step evaluators through
    :func:`from_graph`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "graded", tuple(
            e if isinstance(e, RunEvaluator) else from_graph(e) for e in self.evaluators))

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.sample <= 1:
            out.append(f"evals: sample {self.sample:g} is outside [0, 1]")
        if not self.graded:
            out.append("evals: no evaluators")
        seen: set[str] = set()
        for e in self.graded:
            out.extend(f"evals: {p}" for p in e.problems())
            if e.name in seen:
                out.append(f"evals: two evaluators are named {e.name!r}; scores are stored by "
                           f"name (give one `name=`)")
            seen.add(e.name)
        return out
