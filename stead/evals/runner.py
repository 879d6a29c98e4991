"""Running behaviour suites: every case is a real ``AgentWorkflow`` run on a real stack.

    async with eval_stack(settings) as resolved:          # configured, embedded or ephemeral
        report = await SuiteRunner(resolved, catalog, parallel=4).run([load_suite(path)])
    report.passed, report.cases[0].checks

The runner starts its own in-process worker on a fresh task queue, so only it serves the eval
runs, and gives that worker one model client (:class:`CaseModels`) that serves each run the
model its case declares, picked by the calling activity's workflow id. Runs carry
``metadata["stead.synthetic"] = "eval"`` plus the suite and case names, so metrics and drift
leave them out. While a run waits for approval the runner plays the case's approval actions
through the same ``decide`` update ``stead approve`` uses; a case that overruns its timeout is
terminated and fails with what it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from stead.authoring.agent import AgentCatalog
from stead.contracts.models import (
    DecideInput,
    DecideOutcome,
    Message,
    ModelTurn,
    PendingApproval,
    RunResult,
    RunState,
    ToolSchema,
)
from stead.evals.expect import (
    ApprovalTaken,
    CaseOutcome,
    Check,
    evaluate,
    observed_calls,
    observed_decisions,
)
from stead.evals.suite import (
    ApprovalAction,
    Case,
    RecordedModelSource,
    ScriptedModelSource,
    Suite,
    SuiteError,
    recorded_turns_from_file,
    turns_from_model_calls,
)
from stead.integrations.llm import ModelClient, ScriptedModel
from stead.settings import Settings
from stead.storage.ledger import Ledger, migrate

if TYPE_CHECKING:
    from stead.evals.report import HtmlReport

DEFAULT_CASE_TIMEOUT = 60.0
"""Seconds a case may take before it is terminated and fails (``Case.timeout`` overrides)."""

EVAL_ACTOR = "stead-eval"
"""Who the eval is in the audit trail when it rejects an approval the case did not plan."""


class CaseReport(BaseModel):
    """One case's verdict: pass/fail, the run it made, and every check."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    case: str
    agent: str
    workflow_id: str
    passed: bool
    run_status: str
    """The run's final status, or ``error`` when it did not finish."""
    answer: str | None = None
    error: str | None = None
    duration_ms: float
    models: list[str] = Field(default_factory=list)
    """Models that answered the run's model calls (from the ledger)."""
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


class EvalReport(BaseModel):
    """All cases of one ``stead eval``; ``passed`` is what CI gates on."""

    model_config = ConfigDict(extra="forbid")

    suites: list[str]
    """Where the suites came from (files, or ``<python>``)."""
    started_at: datetime
    duration_s: float
    cases: list[CaseReport]
    outcomes: list[CaseOutcome] = Field(default_factory=list, exclude=True)
    """The full outcome of each case (result, ledger trail), in the order of ``cases``."""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[CaseReport]:
        return [c for c in self.cases if not c.passed]

    def case(self, name: str) -> CaseReport:
        """The report of case ``name`` (or ``suite/name``)."""
        for c in self.cases:
            if name in (c.case, f"{c.suite}/{c.case}"):
                return c
        raise KeyError(name)


# ---------------------------------------------------------------------------- models


class CaseModels:
    """The eval worker's model client: each run gets its case's model, found by the
    workflow id of the calling activity; runs without one get the agent's own model."""

    def __init__(self, catalog: AgentCatalog, *, configured: ModelClient | None = None) -> None:
        self._catalog = catalog
        self._configured = configured
        self._by_run: dict[str, tuple[str, ModelClient | None]] = {}

    @property
    def name(self) -> str:
        return "eval"

    def assign(self, workflow_id: str, agent: str, model: ModelClient | None) -> None:
        """Serve run ``workflow_id`` (of ``agent``) with ``model`` (None: the agent's own)."""
        self._by_run[workflow_id] = (agent, model)

    def release(self, workflow_id: str) -> None:
        self._by_run.pop(workflow_id, None)

    def agent_model(self, agent: str, tools: Sequence[ToolSchema]) -> ModelClient:
        """The configured model, else the offline model of the agent running now: the one
        whose tools the call offers (routing may have handed the run to another agent)."""
        if self._configured is not None:
            return self._configured
        offered = {t.name for t in tools}
        for a in self._catalog.agents():
            if offered and {t.name for t in a.tools} == offered:
                return a.offline_model
        return self._catalog[agent].offline_model

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        wid = activity.info().workflow_id or ""
        agent, model = self._by_run.get(wid, ("", None))
        if model is None:
            if not agent:
                raise RuntimeError(f"run {wid!r} is not an eval case of this runner")
            model = self.agent_model(agent, tools)
        return await model.complete(messages, tools)

    async def close(self) -> None:
        """Close the configured model (once: the worker host and the runner both call it)."""
        close = getattr(self._configured, "close", None)
        self._configured = None
        if close is not None:
            await close()


async def case_model(suite: Suite, case: Case, ledger: Ledger) -> ModelClient | None:
    """The model a case declares (None: the agent's own); recorded turns are read now, so a
    missing recording fails before any run starts."""
    src = case.model
    if isinstance(src, ScriptedModelSource):
        return ScriptedModel(src.model_turns(), name=f"scripted:eval:{case.name}")
    if isinstance(src, RecordedModelSource):
        if src.file is not None:
            try:
                turns = recorded_turns_from_file(src.file)
            except ValueError as err:
                raise SuiteError(f"{suite.where(case.name)}: case {case.name!r}: {err}") \
                    from None
            return ScriptedModel(turns, name=f"recorded:{src.file.name}")
        assert src.workflow_id is not None
        trail = await ledger.trail(src.workflow_id)
        turns = turns_from_model_calls([m.model_dump() for m in trail.model_calls])
        if not turns:
            raise SuiteError(f"{suite.where(case.name)}: case {case.name!r}: the ledger has "
                             f"no successful model calls for workflow {src.workflow_id!r}")
        return ScriptedModel(turns, name=f"recorded:{src.workflow_id}")
    return None


# ---------------------------------------------------------------------------- the runner


def select_cases(suites: Sequence[Suite],
                 only: Collection[str] | None = None) -> list[tuple[Suite, Case]]:
    """Cases to run: all, or those named (``case`` or ``suite/case``) in ``only``."""
    picked = [(s, c) for s in suites for c in s.cases
              if not only or c.name in only or f"{s.name}/{c.name}" in only]
    if only:
        known = {n for s in suites for c in s.cases for n in (c.name, f"{s.name}/{c.name}")}
        unknown = sorted(set(only) - known)
        if unknown:
            names = ", ".join(f"{s.name}/{c.name}" for s in suites for c in s.cases)
            raise SuiteError(f"no case named {', '.join(map(repr, unknown))}; cases: {names}")
    return picked


def workflow_id_for(suite: str, case: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{suite}-{case}").strip("-")[:120]
    return f"eval-{slug}-{uuid.uuid4().hex[:8]}"


class SuiteRunner:
    """Runs suites' cases as real workflows on ``settings``' stack, ``parallel`` at a time.

    ``settings`` must be resolved (Temporal and PostgreSQL addresses set: see
    :func:`eval_stack`). ``catalog`` is the agents the eval worker serves; give it fake worlds
    of its own so evals never touch anyone else's. ``judge_model`` grades ``judge``
    expectations (default: the configured OpenAI-compatible model, if any).
    """

    def __init__(self, settings: Settings, catalog: AgentCatalog, *, parallel: int = 4,
                 case_timeout: float = DEFAULT_CASE_TIMEOUT,
                 judge_model: ModelClient | None = None, poll_interval: float = 0.1) -> None:
        if settings.temporal.address is None or settings.ledger.database_url is None:
            raise ValueError("SuiteRunner needs resolved settings (temporal_address and "
                             "database_url set); use eval_stack(settings)")
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.settings = settings
        self.catalog = catalog
        self.parallel = parallel
        self.case_timeout = case_timeout
        self.judge_model = judge_model
        self.poll_interval = poll_interval

    async def run(self, suites: Sequence[Suite], *, only: Collection[str] | None = None,
                  on_start: Callable[[Suite, Case], None] | None = None,
                  on_done: Callable[[CaseReport], None] | None = None) -> EvalReport:
        """Run the selected cases; everything is checked before the first run starts."""
        from stead.worker import WorkerHost, configured_model

        selected = select_cases(suites, only)
        problems = [p for s in suites for p in s.check_agents(self.catalog.names())]
        if problems:
            raise SuiteError("invalid suite:\n  " + "\n  ".join(problems))
        started_at, t0 = datetime.now(UTC), time.perf_counter()
        queue = f"eval-{uuid.uuid4().hex[:10]}"
        # Memory off: eval runs must neither recall from nor write to anyone's memory.
        run_settings = self.settings.replace(
            task_queue=queue,
            memory_backend="off")
        assert run_settings.ledger.database_url is not None
        await migrate(run_settings.ledger.migration_database_url
                      or run_settings.ledger.database_url)
        ledger = await Ledger.connect(run_settings.ledger.database_url, min_size=1, max_size=4,
                                      retry_seconds=run_settings.ledger.retry_seconds)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(ledger.close)
            prepared = [(s, c, await case_model(s, c, ledger)) for s, c in selected]
            configured = configured_model(run_settings.models)
            judge = self.judge_model or configured
            models = CaseModels(self.catalog, configured=configured)
            stack.push_async_callback(models.close)
            async with WorkerHost(run_settings, self.catalog, model=models,
                                  task_queue=queue) as host:
                assert host.client is not None
                client = host.client
                gate = asyncio.Semaphore(self.parallel)

                async def one(suite: Suite, case: Case, model: ModelClient | None) \
                        -> tuple[CaseReport, CaseOutcome]:
                    async with gate:
                        if on_start is not None:
                            on_start(suite, case)
                        outcome = await self._run_case(client, ledger, run_settings, models,
                                                       suite, case, model)
                        report = _report(outcome, await evaluate(
                            outcome, judge_model=judge, base_dir=suite.base_dir))
                    if on_done is not None:
                        on_done(report)
                    return report, outcome

                done = await asyncio.gather(*(one(s, c, m) for s, c, m in prepared))
        return EvalReport(suites=[s.source for s in suites], started_at=started_at,
                          duration_s=time.perf_counter() - t0, cases=[r for r, _ in done],
                          outcomes=[o for _, o in done])

    async def _run_case(self, client: Client, ledger: Ledger, run_settings: Settings,
                        models: CaseModels, suite: Suite, case: Case,
                        model: ModelClient | None) -> CaseOutcome:
        from stead.client import start_run

        wid = workflow_id_for(suite.name, case.name)
        models.assign(wid, case.agent, model)
        timeout = case.timeout or self.case_timeout
        taken: list[ApprovalTaken] = []
        result: RunResult | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            handle = await start_run(client, case.request(suite.name),
                                     temporal=run_settings.temporal, workflow_id=wid)
            try:
                result = await asyncio.wait_for(self._drive(handle, case, taken), timeout)
            except TimeoutError:
                error = await _stop_overrun(handle, timeout)
            except WorkflowFailureError as err:
                error = f"run failed: {getattr(err.cause, 'message', None) or err.cause or err}"
            except asyncio.CancelledError:
                # The eval was stopped (Ctrl-C): no eval run is left waiting for a worker.
                with contextlib.suppress(RPCError):
                    await handle.terminate(reason="stead eval was cancelled")
                raise
        except RPCError as err:
            error = f"could not start the run: {err.message}"
        finally:
            models.release(wid)
        duration = time.perf_counter() - started
        trail = await ledger.trail(wid)
        return CaseOutcome(suite=suite.name, case=case, workflow_id=wid, result=result,
                           error=error, calls=observed_calls(trail, result),
                           decisions=observed_decisions(trail), approvals=taken,
                           duration_s=duration, trail=trail)

    async def _drive(self, handle: WorkflowHandle[Any, RunResult], case: Case,
                     taken: list[ApprovalTaken]) -> RunResult:
        """Wait for the result; meanwhile answer each approval the run asks for."""
        plan = list(case.approvals)
        seen: set[str] = set()
        result = asyncio.ensure_future(handle.result())
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=self.poll_interval)
                if done:
                    return result.result()
                try:
                    state: RunState = await handle.query("state", result_type=RunState,
                                                         rpc_timeout=timedelta(seconds=5))
                except (RPCError, WorkflowQueryFailedError):
                    continue  # not picked up yet, or finishing right now
                for p in state.pending_approvals:
                    if p.approval_id not in seen:
                        seen.add(p.approval_id)
                        taken.append(await _play(handle, p, plan.pop(0) if plan else None))
        finally:
            if not result.done():
                result.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await result


async def _play(handle: WorkflowHandle[Any, RunResult], p: PendingApproval,
                action: ApprovalAction | None) -> ApprovalTaken:
    """Take the case's next approval action on ``p``; whatever goes wrong, decide so the run
    does not hang (the case fails on the recorded problem instead)."""
    base = {"approval_id": p.approval_id, "tool": p.tool, "arguments": p.arguments}
    if action is None:
        outcome, problem = await _decide(handle, p.approval_id, approved=False, by=EVAL_ACTOR,
                                         note="the eval case planned no decision for this "
                                              "approval")
        return ApprovalTaken(**base, action="reject", planned=False, by=EVAL_ACTOR,
                             outcome=outcome, problem="the case planned no decision for it, "
                                                      "so the eval rejected it"
                                                      + (f" ({problem})" if problem else ""))
    if action.tool is not None and action.tool != p.tool:
        outcome, _ = await _decide(handle, p.approval_id, approved=False, by=EVAL_ACTOR,
                                   note=f"the eval case expected an approval for {action.tool}")
        return ApprovalTaken(**base, action="reject", planned=True, by=EVAL_ACTOR,
                             outcome=outcome, problem=f"the case expected an approval for "
                                                      f"{action.tool}; the eval rejected it")
    if action.decision == "wait":
        return ApprovalTaken(**base, action="wait", planned=True)
    outcome, problem = await _decide(handle, p.approval_id,
                                     approved=action.decision == "approve", by=action.by,
                                     role=action.role, note=action.note,
                                     arguments=action.arguments)
    if problem is not None:
        await _decide(handle, p.approval_id, approved=False, by=EVAL_ACTOR,
                      note="the eval case's own decision was refused")
    return ApprovalTaken(**base, action=action.decision, planned=True, by=action.by,
                         outcome=outcome, problem=problem)


async def _decide(handle: WorkflowHandle[Any, RunResult], approval_id: str, *, approved: bool,
                  by: str, role: str | None = None, note: str | None = None,
                  arguments: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """Send the ``decide`` update; (outcome, None) or (None, why it was refused)."""
    try:
        out = await handle.execute_update(
            "decide", DecideInput(approval_id=approval_id, by=by, role=role, note=note,
                                  arguments=arguments, approved=approved),
            result_type=DecideOutcome, rpc_timeout=timedelta(seconds=30))
    except WorkflowUpdateFailedError as err:
        return None, f"decision refused: {getattr(err.cause, 'message', err.cause)}"
    except RPCError as err:
        return None, f"could not send the decision: {err.message}"
    return out.outcome, None


async def _stop_overrun(handle: WorkflowHandle[Any, RunResult], timeout: float) -> str:
    """Terminate a run that overran its case's timeout; say what it was waiting for."""
    where = ""
    try:
        state: RunState = await handle.query("state", result_type=RunState,
                                             rpc_timeout=timedelta(seconds=2))
        where = f"; the run was at {state.node} (step {state.step})"
        if state.pending_approvals:
            where += ", waiting for approval " + ", ".join(
                f"{p.approval_id} ({p.tool}, awaiting {p.awaiting})"
                for p in state.pending_approvals)
    except (RPCError, WorkflowQueryFailedError):
        where = "; no worker answered the run's state query"
    with contextlib.suppress(RPCError):
        await handle.terminate(reason=f"stead eval: case timed out after {timeout:g}s")
    return f"timed out after {timeout:g}s{where}; terminated"


def _report(outcome: CaseOutcome, checks: list[Check]) -> CaseReport:
    models = sorted({m.model for m in outcome.trail.model_calls if m.model})
    return CaseReport(suite=outcome.suite, case=outcome.case.name, agent=outcome.case.agent,
                      workflow_id=outcome.workflow_id,
                      passed=not any(c.status == "fail" for c in checks),
                      run_status=outcome.status, answer=outcome.answer, error=outcome.error,
                      duration_ms=round(outcome.duration_s * 1000, 1), models=models,
                      checks=checks)


# ---------------------------------------------------------------------------- HTML report


def eval_html(report: EvalReport) -> HtmlReport:
    """The report people open: a table per case and per expectation, and case latencies."""
    from stead.evals.report import HtmlReport

    html = HtmlReport("stead eval", subtitle=", ".join(report.suites))
    total, failed = len(report.cases), len(report.failed)
    html.section("Summary", f"{total - failed} of {total} cases passed ({failed} failed) in "
                            f"{report.duration_s:.1f} s, started "
                            f"{report.started_at:%Y-%m-%d %H:%M:%S} UTC.")
    html.table(["suite", "case", "result", "run status", "time (ms)", "checks", "failed checks"],
               [[c.suite, c.case, "pass" if c.passed else "fail", c.run_status,
                 f"{c.duration_ms:.0f}", f"{sum(1 for x in c.checks if x.status == 'pass')}/"
                 f"{len(c.checks)}",
                 "; ".join(f"{x.name}: {x.reason}" for x in c.failures)]
                for c in report.cases], status_column=2)
    by_suite: dict[str, list[float]] = {}
    for c in report.cases:
        by_suite.setdefault(c.suite, []).append(c.duration_ms)
    html.histogram("Case latency (start to result, approvals included)", by_suite, unit="ms",
                   bins=20)
    html.section("Expectations", "Every check of every case; reasons say what was found.")
    html.table(["suite", "case", "check", "result", "reason"],
               [[c.suite, c.case, x.name, x.status, x.reason]
                for c in report.cases for x in c.checks], status_column=3)
    return html


# ---------------------------------------------------------------------------- the stack


@contextlib.asynccontextmanager
async def eval_stack(settings: Settings, *, ephemeral: bool = False) -> AsyncIterator[Settings]:
    """Resolved settings of the stack to run evals on, started if need be.

    Configured servers are used as they are; an embedded service already running under the
    data dir is reused; one that is not is started for the eval and stopped after it.
    ``ephemeral``: a throwaway embedded stack in a temporary directory on free ports.
    """
    from stead.stack.embedded import EmbeddedPostgres, EmbeddedStack, free_port, port_is_free

    if ephemeral:
        # Not under pytest's tmp tree (reset to 0700 by every pytest start), which the
        # unprivileged PostgreSQL user must keep reaching: the system temp dir directly.
        data = Path(tempfile.mkdtemp(prefix="stead-eval-stack-"))
        throwaway = settings.replace(
            data_dir=data,
            temporal_address=None,
            database_url=None,
            temporal_port=free_port(),
            ui_port=free_port(),
            postgres_port=free_port())
        stack = EmbeddedStack(throwaway, ui=False)
        try:
            await stack.start()
            yield stack.resolved_settings()
        finally:
            await stack.stop()
            shutil.rmtree(data, ignore_errors=True)
        return
    filled = settings
    if settings.temporal.address is None and not port_is_free(settings.stack.temporal_port):
        filled = filled.replace(temporal_address=f"127.0.0.1:{settings.stack.temporal_port}")
    if settings.ledger.database_url is None and not port_is_free(settings.stack.postgres_port):
        pg = EmbeddedPostgres(settings.stack.data_dir.resolve(), port=settings.stack.postgres_port)
        # Workers log in least-privilege; the owner migrates (stead/storage/dbroles.py).
        filled = filled.replace(
            database_url=pg.worker_url,
            migrate_database_url=pg.url)
    stack = EmbeddedStack(filled, ui=False)
    await stack.start()
    try:
        yield stack.resolved_settings()
    finally:
        await stack.stop()


__all__ = [
    "DEFAULT_CASE_TIMEOUT",
    "CaseModels",
    "CaseReport",
    "EvalReport",
    "SuiteRunner",
    "case_model",
    "eval_html",
    "eval_stack",
    "select_cases",
    "workflow_id_for",
]
