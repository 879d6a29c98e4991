"""``stead run``, ``show``, ``audit``, ``pending``, ``approve`` and ``reject``: start a run and
stream its steps, look at a run and its ledger trail, and decide the approvals runs wait for.

    stead run ops "checkout-api is slow, look into it"
    stead run ops "is auth-service healthy?" --stream     # the answer as it is written
    stead show ops-1f2e --json
    stead audit ops-1f2e --verify
    stead pending --tenant acme
    stead approve ops-1f2e a3 --as alice --role sre

Exit codes: 0 success; 1 a run ended without completing, a decision was refused or the hash
chain is broken; 2 bad input; 3 the stack is unreachable; 4 no such run.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    NO_LEDGER_TABLES,
    cli_ledger,
    cli_settings,
    err,
    fail,
    fail_invalid,
    json_object_option,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)
from stead.contracts.budget import Budget
from stead.contracts.models import RunRequest, RunResult, RunState, Trail
from stead.errors import LedgerError, RunNotFound, StackError
from stead.settings import Settings

if TYPE_CHECKING:
    from stead.streaming import RunEvent, TokenEvent


def register(app: typer.Typer) -> None:
    """Add the run and approval commands to the ``stead`` app, in ``stead --help`` order."""
    app.command("run")(run_cmd)
    app.command("show")(show)
    app.command("audit")(audit)
    app.command("pending")(pending)
    app.command("approve")(approve)
    app.command("reject")(reject)


def _an_id(value: str) -> str:
    """Run and approval ids: an empty or blank one is bad input, not a server error."""
    if not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


def run_cmd(
    agent: str = typer.Argument(..., help="Agent name, e.g. ops"),
    text: str = typer.Argument(..., help="The request, in words"),
    tenant: str = typer.Option("default", help="Tenant the run belongs to"),
    user: str | None = typer.Option(None, help="Who is asking (for the audit trail)"),
    max_steps: int | None = typer.Option(None, help="Override the agent's step budget"),
    max_usd: float | None = typer.Option(None, help="Money limit of this run (US dollars; "
                                         "only lowers the policy's)"),
    wait: bool = typer.Option(True, help="Wait for the result, streaming steps"),
    stream: bool = typer.Option(False, "--stream", help=(
        "Also show what the model writes as it writes it (read from the ledger's token "
        "stream); with --json, one JSON line per event")),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
) -> None:
    """Start a run, stream its steps, print the result."""
    try:
        request = RunRequest(agent=agent, input=text, tenant=tenant, user=user,
                             max_steps=max_steps,
                             budget=None if max_usd is None else Budget(max_usd=max_usd))
    except ValidationError as e:
        fail_invalid("request", e)
    if stream and not wait:
        fail("--stream shows a run while it runs; it cannot be used with --no-wait",
             EXIT_BAD_INPUT)
    settings = resolved(cli_settings())
    result = run_async(_run_and_stream(settings, request, wait=wait, as_json=as_json,
                                       stream=stream))
    if result is not None and result.status != "completed":
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _run_and_stream(settings: Settings, request: RunRequest, *, wait: bool,
                          as_json: bool, stream: bool = False) -> RunResult | None:
    from stead.observability.tracing import traced_client

    async with traced_client(settings) as client:  # client spans when tracing is on
        if stream:
            return await _start_and_follow(client, settings, request, as_json=as_json)
        return await _start_and_stream(client, settings, request, wait=wait, as_json=as_json)


async def _start_and_stream(client: Client, settings: Settings, request: RunRequest, *,
                            wait: bool, as_json: bool) -> RunResult | None:
    from stead.client import start_run

    handle = await start_run(client, request, temporal=settings.temporal)
    if not wait:
        if as_json:
            print_json({"workflow_id": handle.id, "run_id": handle.result_run_id})
        else:
            out.print(f"started [bold]{handle.id}[/]")
        return None
    if not as_json:
        out.print(f"started [bold]{handle.id}[/] — streaming steps (Ctrl-C stops watching, "
                  f"not the run)")
    seen, query_failed = 0, False
    result_task = asyncio.create_task(handle.result())
    finished = False
    while not finished:
        # One more query after the run ended: a fast run can finish before the first query
        # is answered, and its steps must still be shown.
        finished = result_task.done()
        try:
            state: RunState = await handle.query("state", result_type=RunState,
                                                 rpc_timeout=timedelta(seconds=2))
            for s in state.history[seen:]:
                if not as_json:
                    out.print(f"  step {s.step:>2}  {s.kind:<8} {s.name:<18} {s.status:<8} "
                              f"[dim]{s.detail[:90]}[/]", highlight=False)
            seen = len(state.history)
        except RPCError:
            pass  # no worker has picked the run up yet
        except WorkflowQueryFailedError as err:
            # The worker could not answer (a query that replays the run can fail where the
            # run does not): the steps are lost to this watch, the result is not.
            if not query_failed and not as_json:
                out.print(f"  [dim]steps not shown: the worker did not answer ({err})[/]",
                          highlight=False)
            query_failed = True
        if not finished:
            await asyncio.wait({result_task}, timeout=0.3)
    try:
        result = result_task.result()
    except WorkflowFailureError as e:
        cause = e.cause
        fail(f"run {handle.id} failed: {getattr(cause, 'message', cause)}",
              EXIT_RUN_NOT_COMPLETED)
    if as_json:
        print_json({"workflow_id": handle.id, **result.model_dump(mode="json")})
    else:
        _print_result(handle.id, result)
    return result


async def _start_and_follow(client: Client, settings: Settings, request: RunRequest, *,
                            as_json: bool) -> RunResult:
    """``stead run --stream``: the run's steps, the text its model calls write (as they
    write it), its approvals, then the result as without ``--stream``."""
    import asyncpg

    from stead.client import start_run
    from stead.streaming import ResultEvent, StreamListener, follow_run

    dsn = settings.ledger.database_url
    assert dsn is not None
    async with cli_ledger(settings, missing_tables=NO_LEDGER_TABLES) as ledger:
        listener = StreamListener(dsn)
        try:
            await listener.start()  # before the run starts, so no word of it is missed
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise LedgerError(f"--stream reads the ledger's token stream, which is "
                              f"unreachable: {type(e).__name__}: {e}") from None
        try:
            handle = await start_run(client, request, temporal=settings.temporal)
            assert handle.result_run_id is not None
            if not as_json:
                out.print(f"started [bold]{handle.id}[/] — streaming steps and the model's "
                          f"words (Ctrl-C stops watching, not the run)")
            show = _StreamPrinter(as_json)
            outcome: ResultEvent | None = None
            async for event in follow_run(client, ledger, listener, workflow_id=handle.id,
                                          run_id=handle.result_run_id, tenant=request.tenant):
                if event is None:
                    continue
                show(event)
                if isinstance(event.data, ResultEvent):
                    outcome = event.data
        finally:
            await listener.close()
    assert outcome is not None  # follow_run ends with the result
    if outcome.result is None:
        fail(f"run {handle.id} failed: {outcome.error}", EXIT_RUN_NOT_COMPLETED)
    if not as_json:
        _print_result(handle.id, outcome.result)
    return outcome.result


class _StreamPrinter:
    """Prints a followed run's events: text as it comes, on the line of its message. Step and
    approval lines that arrive while a message is being written wait for its end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.message: tuple[int, int, int] | None = None
        """(step, attempt, fallback) of the message being written; None: none is."""
        self.latest: dict[int, tuple[int, int, int]] = {}
        """step -> its latest message (late words of earlier ones are not shown)."""
        self.line_open = False
        self.waiting: list[str] = []
        """Lines that came while a message was being written."""

    def __call__(self, event: RunEvent) -> None:
        from stead.streaming import (
            ApprovalEvent,
            ErrorEvent,
            ResultEvent,
            StepEvent,
            TokenEvent,
        )

        if self.as_json:
            out.file.write(json.dumps({"event": event.name, "id": event.id,
                                       "data": event.data.model_dump(mode="json")}) + "\n")
            out.file.flush()
            return
        d = event.data
        if isinstance(d, TokenEvent):
            self._token(d)
        elif isinstance(d, StepEvent):
            self._line(f"  step {d.step:>2}  {d.kind:<8} {d.name:<18} {d.status:<8} "
                       f"[dim]{d.detail[:90]}[/]")
        elif isinstance(d, ApprovalEvent):
            what = f"{d.tool} {json.dumps(d.arguments)}" if d.tool else ""
            risk = f" (risk {d.risk:.2f})" if d.risk is not None else ""
            verb = {"requested": f"waiting for {d.decision}",
                    "escalated": f"escalated to {d.decision}",
                    "decided": f"{d.decision} by {d.actor}"}[d.type]
            self._line(f"  approval {d.approval_id}: {what}{risk} — {verb}")
        elif isinstance(d, ErrorEvent):
            self._line(f"  [dim]{d.message}[/]")
        elif isinstance(d, ResultEvent):
            self._end_line()
            self._flush()

    def _token(self, t: TokenEvent) -> None:
        key = (t.step, t.attempt, t.fallback)
        if t.type == "start":
            self._end_line()
            self.message = None
            self._flush()
            if t.restart and t.step in self.latest:
                who = (f"model {t.fallback + 1} of the chain" if t.fallback
                       else f"attempt {t.attempt}")
                self._line(f"  [dim](step {t.step}: {who} restarts the message)[/]")
            self.latest[t.step] = key
            self.message = key
        elif key != self.message or self.latest.get(t.step) != key:
            return  # a late word of a message that was restarted
        elif t.type == "text":
            self._write(t.text)
        elif t.type == "reset":
            self._end_line()
            out.print("  [dim](the message so far, redacted:)[/]", highlight=False)
            self._write(t.text)
        elif t.type == "end":
            self._end_line()
            self.message = None
            self._flush()
        elif t.type == "error":
            self._end_line()
            self.message = None
            self._line(f"  [dim](step {t.step}: attempt {t.attempt} failed: {t.error})[/]")
            self._flush()

    def _write(self, text: str) -> None:
        if not text:
            return
        if not self.line_open:
            out.print("  [bold]›[/] ", end="", highlight=False)
            self.line_open = True
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def _end_line(self) -> None:
        if self.line_open:
            out.print()
            self.line_open = False

    def _line(self, text: str) -> None:
        if self.message is not None:
            self.waiting.append(text)
            return
        self._end_line()
        out.print(text, highlight=False)

    def _flush(self) -> None:
        lines, self.waiting = self.waiting, []
        for text in lines:
            out.print(text, highlight=False)


def _print_result(workflow_id: str, r: RunResult) -> None:
    colour = "green" if r.status == "completed" else "yellow"
    out.print(f"\n[bold]{workflow_id}[/]: [{colour}]{r.status}[/] in {r.steps} steps "
              f"({r.model_turns} model turns, {len(r.tool_calls)} tool calls, {r.retries} "
              f"retries, {r.fallbacks} fallbacks, {r.rejected_calls} rejected) — {r.model}"
              + (f" ({r.model_fallbacks} turn(s) by a fallback model; models: "
                 f"{', '.join(r.models)})" if r.model_fallbacks else ""))
    if r.answer:
        out.print(f"[bold]answer:[/] {r.answer}", highlight=False)
    if r.error:
        out.print(f"[bold]error:[/] {r.error}", highlight=False)
    if r.spend.model_calls:
        s = r.spend
        out.print(f"[bold]spent:[/] ${s.usd:.6f}, {s.tokens} tokens, {s.model_calls} model "
                  f"call(s)", highlight=False)


_TENANT_HELP = "Only a run of this tenant; another tenant's run is not found (exit 4)"


def show(
    run_id: str = typer.Argument(..., help="Workflow id of the run", callback=_an_id),
    tenant: str | None = typer.Option(None, help=_TENANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Show a run's state and steps."""
    settings = resolved(cli_settings())
    data = run_async(_show(settings, run_id, tenant))
    if as_json:
        print_json(data)
        return
    out.print(f"[bold]{run_id}[/]  status: [bold]{data['status']}[/]  "
              f"temporal: {data['temporal_status']}", highlight=False)
    if data.get("node"):
        out.print(f"now: {data['node']}")
    table = Table("step", "kind", "name", "status", "detail")
    for s in data.get("history", []):
        table.add_row(str(s["step"]), s["kind"], s["name"], s["status"], s["detail"][:80])
    out.print(table)
    if data.get("answer"):
        out.print(f"[bold]answer:[/] {data['answer']}", highlight=False)
    if data.get("error"):
        out.print(f"[bold]error:[/] {data['error']}", highlight=False)


async def _show(settings: Settings, run_id: str, tenant: str | None = None) -> dict[str, Any]:
    from temporalio.common import SearchAttributeKey

    client = await temporal_client(settings)
    handle = client.get_workflow_handle(run_id, result_type=RunResult)
    # The same words whether the run is missing or another tenant's: nothing to tell apart.
    missing = RunNotFound(f"no run {run_id!r}" + (f" for tenant {tenant!r}" if tenant else "")
                          + f" on {settings.temporal.address}")
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise missing from None
        raise
    if tenant is not None and desc.typed_search_attributes.get(
            SearchAttributeKey.for_keyword("SteadTenant")) != tenant:
        raise missing
    data: dict[str, Any] = {"workflow_id": run_id,
                            "temporal_status": desc.status.name if desc.status else "UNKNOWN"}
    if desc.status == WorkflowExecutionStatus.RUNNING:
        try:
            state = await handle.query("state", result_type=RunState,
                                       rpc_timeout=timedelta(seconds=5))
            data.update(state.model_dump(mode="json"))
        except RPCError as e:
            data.update(status="running", node=f"(no worker answered the query: {e.message})")
    elif desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        data.update(result.model_dump(mode="json"))
        data["history"] = [{"step": c.step, "kind": "tool", "name": c.tool, "status": c.status,
                            "detail": c.error or (f"served by {c.served_by}"
                                                  if c.served_by != c.tool else "")}
                           for c in result.tool_calls]
    else:
        try:
            await handle.result()
        except WorkflowFailureError as e:
            data.update(status="failed", error=str(getattr(e.cause, "message", e.cause)))
        else:  # pragma: no cover - status changed between calls
            data.update(status="completed")
    return data


def audit(
    run_id: str = typer.Argument(..., help="Workflow id of the run", callback=_an_id),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    verify: bool = typer.Option(False, "--verify", help="Check the decision hash chain"),
    tenant: str | None = typer.Option(None, help=_TENANT_HELP),
) -> None:
    """Print the ledger trail of a run: model calls, tool attempts, decisions."""
    settings = resolved(cli_settings())
    trail, problems = run_async(_audit(settings, run_id, verify, tenant))
    if as_json:
        payload: dict[str, Any] = {"workflow_id": run_id, **trail.model_dump()}
        if verify:
            payload["chain_ok"] = not problems
            payload["chain_problems"] = problems
        print_json(payload)
    else:
        _print_trail(run_id, trail)
        if verify:
            if problems:
                err.print("[bold red]hash chain broken:[/]\n  " + "\n  ".join(problems))
            else:
                aside = (f"; {len(trail.superseded)} superseded beside it, decided by "
                         f"discarded workflow-task attempts" if trail.superseded else "")
                out.print(f"[green]hash chain intact[/] ({len(trail.decisions)} decisions"
                          f"{aside})")
    if verify and problems:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _audit(settings: Settings, run_id: str, verify: bool, tenant: str | None = None,
                 ) -> tuple[Trail, list[str]]:
    async with cli_ledger(settings) as ledger:
        trail = await ledger.trail(run_id, tenant=tenant)
        if not trail.runs:
            raise RunNotFound(f"the ledger has no run {run_id!r}"
                              + (f" for tenant {tenant!r}" if tenant else ""))
        problems = await ledger.verify_chain(run_id, tenant=tenant) if verify else []
        return trail, problems


def _print_trail(run_id: str, trail: Trail) -> None:
    for r in trail.runs:
        out.print(f"[bold]{run_id}[/] ({r.run_id}) agent={r.agent} tenant={r.tenant} "
                  f"status=[bold]{r.status}[/] steps={r.steps} model={r.model}",
                  highlight=False)
    events: list[tuple[datetime, str, str, str, str]] = []
    for m in trail.model_calls:
        what = (", ".join(c["name"] for c in m.tool_calls) or "answer") \
            if m.status == "ok" else (m.error or "")
        via = f"{m.endpoint} (fallback {m.fallback}): " if m.fallback else ""
        events.append((m.created_at, str(m.step), f"model#{m.attempt}", m.status,
                       f"{via}{m.model} → {what} ({m.duration_ms:.0f} ms)"))
    for a in trail.tool_attempts:
        detail = a.error or ""
        if a.tool != a.requested_tool:
            detail = f"fallback for {a.requested_tool}. {detail}"
        dur = f" ({a.duration_ms:.0f} ms)" if a.duration_ms is not None else ""
        events.append((a.started_at, str(a.step), f"{a.tool}#{a.attempt}",
                       a.status, detail[:100] + dur))
    for d in trail.decisions:
        events.append((d.created_at, str(d.step), f"decision:{d.kind}",
                       d.decision, d.reason[:100]))
    for s in trail.superseded:
        won = s.winner_at.strftime("%H:%M:%S.%f")[:-3]
        events.append((s.created_at, str(s.step), f"superseded:{s.kind}", s.decision,
                       f"seq {s.seq}: decided by a discarded attempt of its workflow task; "
                       f"history's row {s.winner_seq} was decided at {won}"))
    table = Table("time", "step", "what", "outcome", "detail")
    for at, step, what, outcome, detail in sorted(events, key=lambda e: e[0]):
        table.add_row(at.strftime("%H:%M:%S.%f")[:-3], step, what, outcome, detail)
    out.print(table)


def pending(
    tenant: str | None = typer.Option(None, help="Only runs of this tenant"),
    agent: str | None = typer.Option(None, help="Only runs of this agent"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """List approvals that runs are waiting for, with risk and deadline."""
    settings = resolved(cli_settings())
    rows = run_async(_pending(settings, tenant, agent))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no approvals pending")
        return
    table = Table("run", "approval", "agent", "tenant", "tool", "arguments", "risk",
                  "awaiting", "deadline (UTC)")
    for r in rows:
        table.add_row(r["workflow_id"], r["approval_id"], r["agent"], r["tenant"], r["tool"],
                      json.dumps(r["arguments"])[:60], f"{r['risk']:.2f}", r["awaiting"],
                      str(r["deadline"])[:19])
    out.print(table)


async def _pending(settings: Settings, tenant: str | None,
                   agent: str | None) -> list[dict[str, Any]]:
    client = await temporal_client(settings)
    query = "SteadAwaitingApproval = true AND ExecutionStatus = 'Running'"
    for key, value in (("SteadTenant", tenant), ("SteadAgent", agent)):
        if value is not None:
            query += f" AND {key} = {json.dumps(value)}"
    rows: list[dict[str, Any]] = []
    async for wf in client.list_workflows(query):
        handle = client.get_workflow_handle(wf.id)
        try:
            state = await handle.query("state", result_type=RunState,
                                       rpc_timeout=timedelta(seconds=5))
        except RPCError:
            continue  # finished or no worker right now; it will show up again if still waiting
        if tenant is not None and state.tenant != tenant:
            continue  # the run's own word, should a search attribute ever disagree
        for p in state.pending_approvals:
            rows.append({"workflow_id": wf.id, "agent": state.agent, "tenant": state.tenant,
                         **p.model_dump(mode="json")})
    return sorted(rows, key=lambda r: (str(r["deadline"]), r["workflow_id"]))


def _decide_cmd(run_id: str, approval_id: str, *, approved: bool, by: str, role: str | None,
                note: str | None, args_json: str | None, as_json: bool) -> None:
    from stead.contracts.models import DecideInput

    arguments = json_object_option("--args", args_json) if args_json is not None else None
    try:
        payload = DecideInput(approval_id=approval_id, by=by, role=role, note=note,
                              arguments=arguments, approved=approved)
    except ValidationError as e:
        fail("invalid decision: " + "; ".join(x["msg"] for x in e.errors()), EXIT_BAD_INPUT)
    settings = resolved(cli_settings())
    outcome = run_async(_decide(settings, run_id, payload))
    if as_json:
        print_json(outcome)
    else:
        out.print(f"{run_id} {approval_id}: [bold]{outcome['outcome']}[/] — {outcome['tool']} "
                  f"{json.dumps(outcome['arguments'])} (risk {outcome['risk']:.2f}) "
                  f"{outcome['reason']}", highlight=False)
    if outcome["outcome"] == "denied_after_edit":
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _decide(settings: Settings, run_id: str, payload: Any) -> dict[str, Any]:
    from temporalio.client import WorkflowUpdateFailedError

    from stead.contracts.models import DecideOutcome

    client = await temporal_client(settings)
    handle = client.get_workflow_handle(run_id)
    try:
        result = await handle.execute_update("decide", payload, result_type=DecideOutcome)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        fail(f"decision refused: {getattr(cause, 'message', cause)}", EXIT_RUN_NOT_COMPLETED)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise RunNotFound(f"no running run {run_id!r}") from None
        raise StackError(f"cannot reach run {run_id!r}: {e.message}") from None
    dumped: dict[str, Any] = result.model_dump(mode="json")
    return dumped


def approve(
    run_id: str = typer.Argument(..., help="Workflow id of the run", callback=_an_id),
    approval_id: str = typer.Argument(..., help="Approval id, e.g. a3 (see `stead pending`)",
                                       callback=_an_id),
    by: str = typer.Option(..., "--as", help="Who approves (recorded in the audit trail)"),
    role: str | None = typer.Option(None, help="Approver role, checked against the policy"),
    note: str | None = typer.Option(None, help="Why"),
    args: str | None = typer.Option(None, "--args", help="Edited arguments as a JSON object"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Approve a pending tool call (optionally with edited arguments)."""
    _decide_cmd(run_id, approval_id, approved=True, by=by, role=role, note=note, args_json=args,
                as_json=as_json)


def reject(
    run_id: str = typer.Argument(..., help="Workflow id of the run", callback=_an_id),
    approval_id: str = typer.Argument(..., help="Approval id, e.g. a3", callback=_an_id),
    by: str = typer.Option(..., "--as", help="Who rejects (recorded in the audit trail)"),
    role: str | None = typer.Option(None, help="Approver role, checked against the policy"),
    note: str | None = typer.Option(None, help="Why"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Reject a pending tool call; the model is told and the run goes on."""
    _decide_cmd(run_id, approval_id, approved=False, by=by, role=role, note=note,
                args_json=None, as_json=as_json)

