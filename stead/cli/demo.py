"""``stead demo``: the reference agents through a scripted scenario on the embedded stack.

Each scenario states what it shows and what must hold; the demo fails (exit 1) if any does
not, so it doubles as a smoke test of a fresh install. After the runs, one online-evaluation
sweep grades them (``EvaluationWorkflow``): the report says how many runs were a task success
and why each other one was not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import WorkflowHandle

from stead.contracts.models import ApprovalDecision, RunRequest, RunResult, RunState
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, port_is_free


@dataclass(frozen=True)
class Scenario:
    shows: str
    request: RunRequest
    check: Callable[[RunResult], bool]
    approve: bool = False
    """The demo plays the approver: it waits for the pending approval and sends the public
    ``approve`` signal, as an on-call engineer would with `stead approve` or the Temporal CLI."""


SCENARIOS: list[Scenario] = [
    Scenario(
        "model slip (bad args) corrected, metrics down -> fallback, flaky logs -> retry, "
        "runbook recalled from memory",
        RunRequest(agent="ops", user="demo",
                   input="Checkout API is throwing 500s. Check its status and recent logs, "
                         "then open a ticket."),
        lambda r: r.status == "completed" and r.rejected_calls >= 1 and r.fallbacks >= 1
        and r.retries >= 1 and "Runbook" in (r.answer or "")),
    Scenario(
        "model calls a tool that does not exist, then picks another path",
        RunRequest(agent="ops", user="demo", input="payments-db is very slow, page the on-call"),
        lambda r: r.status == "completed" and r.rejected_calls == 1
        and any(c.tool == "create_ticket" and c.status == "ok" for c in r.tool_calls)),
    Scenario(
        "irreversible tool needs approval; the demo approves through the `approve` signal",
        RunRequest(agent="ops", user="demo", input="search-worker is down, restart it"),
        lambda r: r.status == "completed" and r.approvals == 1
        and any(c.tool == "restart_service" and c.status == "ok" for c in r.tool_calls),
        approve=True),
    Scenario(
        "nobody approves in time: escalates oncall -> manager, then auto-denies",
        RunRequest(agent="ops", user="demo", input="restart auth-service now",
                   metadata={"approval_timeout_seconds": "1"}),
        lambda r: r.status == "escalated" and r.escalations >= 2 and r.approvals == 0),
    Scenario(
        "small refund: allowed by policy without a human",
        RunRequest(agent="refund", user="demo",
                   input="Refund €30 on ORD-1001, the mug arrived broken"),
        lambda r: r.status == "completed" and r.approvals == 0
        and any(c.tool == "issue_refund" and c.status == "ok" for c in r.tool_calls)),
    Scenario(
        "refund above the hard limit: denied by policy, the model is told why",
        RunRequest(agent="refund", user="demo", input="Refund 4,000 EUR for order ORD-1004"),
        lambda r: r.status == "denied" and r.denials >= 1),
    Scenario(
        "request carrying a card number: refused by routing before the model runs",
        RunRequest(agent="refund", user="demo",
                   input="Refund ORD-1002 to my card 4111 1111 1111 1111"),
        lambda r: r.status == "refused" and r.model_turns == 0),
    Scenario(
        "a tool and its fallback both fail: structured failure, clear answer, no hang",
        RunRequest(agent="ops", user="demo", input="How is legacy-batch doing?"),
        lambda r: r.status == "completed" and "could not determine" in (r.answer or "")),
]


async def run_demo(settings: Settings, console: Console) -> bool:
    from stead.agents import reference_catalog
    from stead.agents.ops import default_world
    from stead.agents.ops.runbooks import index_runbooks
    from stead.agents.refund import default_world as refund_world
    from stead.client import start_run
    from stead.storage.memory import choose_embedder, open_memory
    from stead.worker import WorkerHost

    stack = EmbeddedStack(settings)
    reuse = (settings.temporal.address is None and not port_is_free(settings.stack.temporal_port)
             and settings.ledger.database_url is None
             and not port_is_free(settings.stack.postgres_port))
    if reuse:
        console.print(f"using the running stack on 127.0.0.1:{settings.stack.temporal_port}")
    else:
        console.print("starting the embedded stack (Temporal dev server, PostgreSQL)…")
        await stack.start()
    try:
        resolved = stack.resolved_settings().replace(
            task_queue=f"stead-demo-{uuid.uuid4().hex[:6]}")
        default_world(settings.stack.data_dir).reset()
        refund_world(settings.stack.data_dir).reset()
        embedder = None if resolved.memory.off else choose_embedder(resolved)
        memory = await open_memory(resolved, embedder=embedder)
        if memory is not None:
            try:
                n = await index_runbooks(memory.store, memory.embedder, tenant="default")
                console.print(f"indexed {n} ops runbooks into {memory.backend} memory "
                              f"({memory.embedder.name})")
            finally:
                await memory.close()
        results: list[tuple[Scenario, str, RunResult, float, bool]] = []
        runs: dict[str, str] = {}
        async with WorkerHost(resolved, reference_catalog(settings.stack.data_dir),
                              embedder=embedder) as host:
            assert host.client is not None and host.ledger is not None
            for sc in SCENARIOS:
                started = time.perf_counter()
                handle = await start_run(host.client, sc.request, temporal=resolved.temporal)
                if sc.approve:
                    await _approve_when_asked(handle, console)
                result = await handle.result()
                took = time.perf_counter() - started
                results.append((sc, handle.id, result, took, sc.check(result)))
                runs[handle.id] = handle.first_execution_run_id or ""
            graded = await _grade(host, resolved, runs)
        _report(console, results, graded, stack.ui_url if not reuse else
                f"http://127.0.0.1:{settings.stack.ui_port}")
        return all(ok for *_, ok in results)
    finally:
        if not reuse:
            await stack.stop()


async def _grade(host: Any, settings: Settings, runs: dict[str, str]
                 ) -> dict[str, tuple[bool | None, str]]:
    """One online-evaluation sweep over the demo's runs; per workflow id, whether the run was
    a task success (None: not graded) and why not."""
    from datetime import timedelta

    from stead.evals.online import (
        EVALUATION_WORKFLOW,
        EvaluationSweep,
        EvaluationSweepSummary,
        list_evaluations,
    )

    await host.client.execute_workflow(
        EVALUATION_WORKFLOW, EvaluationSweep(lookback=timedelta(minutes=30)),
        id=f"stead-demo-grade-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue,
        result_type=EvaluationSweepSummary, execution_timeout=timedelta(minutes=2))
    out: dict[str, tuple[bool | None, str]] = {}
    for wid, run_id in runs.items():
        rows = await list_evaluations(host.ledger.pool, wid, run_id=run_id or None)
        failed = [f"{r.evaluator}: {r.feedback}" for r in rows if r.passed is False]
        if not rows or any(r.status == "error" for r in rows):
            out[wid] = (None, "not graded")
        elif any(r.feedback.startswith("not graded") for r in rows):
            out[wid] = (False, "not a task success: "
                               + rows[0].feedback.removeprefix("not graded: "))
        elif failed:
            out[wid] = (False, "not a task success: " + "; ".join(failed))
        else:
            out[wid] = (True, "a task success: every evaluator passed")
    return out


async def _approve_when_asked(handle: WorkflowHandle[Any, RunResult], console: Console) -> None:
    """Wait (bounded) for the run's pending approval, then approve it by signal."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = await handle.query("state", result_type=RunState)
        if state.pending_approvals:
            p = state.pending_approvals[0]
            console.print(f"  {handle.id}: approval {p.approval_id} pending for {p.tool} "
                          f"(risk {p.risk:.2f}, awaiting {p.awaiting}) — approving by signal",
                          highlight=False)
            await handle.signal("approve", ApprovalDecision(
                approval_id=p.approval_id, by="demo-oncall", role=p.awaiting,
                note="checked the dashboards; go ahead"))
            return
        if state.status != "running":
            return
        await asyncio.sleep(0.1)


def _report(console: Console, results: list[tuple[Scenario, str, RunResult, float, bool]],
            graded: dict[str, tuple[bool | None, str]], ui_url: str | None) -> None:
    table = Table(title="stead demo — one line per run")
    numeric = ("steps", "retries", "fallbacks", "rejected", "approvals", "denials",
               "escalations", "duration")
    for col in ("run", "agent", "outcome", *numeric, "check"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for sc, wid, r, took, ok in results:
        table.add_row(wid, sc.request.agent, r.status, str(r.steps), str(r.retries),
                      str(r.fallbacks), str(r.rejected_calls), str(r.approvals),
                      str(r.denials), str(r.escalations), f"{took * 1000:.0f} ms",
                      "[green]ok[/]" if ok else "[red]FAILED[/]")
    console.print(table)
    done = sum(r.status == "completed" for _, _, r, _, _ in results)
    good = sum(graded.get(wid, (None, ""))[0] is True for _, wid, _, _, _ in results)
    console.print(f"completed: {done} of {len(results)} runs; task success (graded after each "
                  f"run ended, `stead grade`): [bold]{good} of {len(results)}[/]", highlight=False)
    models = sorted({r.model for _, _, r, _, _ in results})
    offline = any(m.startswith("scripted") for m in models)
    console.print(f"models: [bold]{', '.join(models)}[/]" + (
        " (offline scripted planners — set OPENAI_API_KEY for a real model)" if offline else ""))
    for sc, wid, r, _, _ok in results:
        console.print(f"\n[bold]{wid}[/] — {sc.shows}", highlight=False)
        console.print(f"  asked:  {sc.request.input}", highlight=False)
        console.print(f"  answer: {r.answer or r.error}", highlight=False)
        console.print(f"  graded: {graded.get(wid, (None, 'not graded'))[1]}", highlight=False)
    if ui_url:
        console.print(f"\nTemporal Web UI: [bold]{ui_url}[/] (while the stack runs: "
                      f"`make up`); ledger trail: `stead audit RUN_ID`")
