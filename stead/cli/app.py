"""The ``stead`` command line: tables for people, ``--json`` for scripts.

Exit codes: 0 success; 1 a run ended without completing (or a check failed); 2 bad input or
settings; 3 the stack is unreachable; 4 no such run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    T,
    cli_settings,
    configure_cli_logging,
    err,
    fail,
    out,
    print_json,
    quiet_sdk_logs,
    resolved,
    run_async,
    temporal_client,
)
from stead.contracts.models import RunRequest, RunResult, RunState, Trail
from stead.errors import RunNotFound, SettingsError, StackError, SteadError
from stead.settings import Settings

app = typer.Typer(help="stead: durable execution for AI agents, on Temporal.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _an_id(value: str) -> str:
    """Run and approval ids: an empty or blank one is bad input, not a server error."""
    if not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


# ----------------------------------------------------------------------------- up / demo


@app.command()
def up() -> None:
    """Run the embedded stack (Temporal + Web UI, PostgreSQL) and one worker until Ctrl-C.

    With TEMPORAL_ADDRESS / DATABASE_URL set, those servers are used instead of starting them.
    """
    from stead.stack.runner import serve

    settings = cli_settings()
    configure_cli_logging(settings)
    run_async(serve(settings, out))


@app.command()
def demo() -> None:
    """Run the reference agents through a scripted scenario and print a summary."""
    from stead.cli.demo import run_demo

    settings = cli_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_sdk_logs()
    ok = run_async(run_demo(settings, out))
    raise typer.Exit(0 if ok else EXIT_RUN_NOT_COMPLETED)


@app.command()
def worker() -> None:
    """Run one worker against TEMPORAL_ADDRESS / DATABASE_URL (or the embedded defaults)."""
    from stead.agents import served_catalog
    from stead.worker import WorkerHost, run_until_signal

    settings = resolved(cli_settings())
    configure_cli_logging(settings)
    try:
        catalog = served_catalog(settings)
    except SteadError as e:
        fail(str(e), EXIT_BAD_INPUT)
    run_async(run_until_signal(WorkerHost(settings, catalog)))


# ----------------------------------------------------------------------------- runs


@app.command("run")
def run_cmd(
    agent: str = typer.Argument(..., help="Agent name, e.g. ops"),
    text: str = typer.Argument(..., help="The request, in words"),
    tenant: str = typer.Option("default", help="Tenant the run belongs to"),
    user: str | None = typer.Option(None, help="Who is asking (for the audit trail)"),
    max_steps: int | None = typer.Option(None, help="Override the agent's step budget"),
    wait: bool = typer.Option(True, help="Wait for the result, streaming steps"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
) -> None:
    """Start a run, stream its steps, print the result."""
    try:
        request = RunRequest(agent=agent, input=text, tenant=tenant, user=user,
                             max_steps=max_steps)
    except ValidationError as e:
        fail("invalid request: " + "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors()),
            EXIT_BAD_INPUT)
    settings = resolved(cli_settings())
    result = run_async(_run_and_stream(settings, request, wait=wait, as_json=as_json))
    if result is not None and result.status != "completed":
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _run_and_stream(settings: Settings, request: RunRequest, *, wait: bool,
                          as_json: bool) -> RunResult | None:
    from stead.observability.tracing import traced_client

    async with traced_client(settings) as client:  # client spans when tracing is on
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
    seen = 0
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


def _print_result(workflow_id: str, r: RunResult) -> None:
    colour = "green" if r.status == "completed" else "yellow"
    out.print(f"\n[bold]{workflow_id}[/]: [{colour}]{r.status}[/] in {r.steps} steps "
              f"({r.model_turns} model turns, {len(r.tool_calls)} tool calls, {r.retries} "
              f"retries, {r.fallbacks} fallbacks, {r.rejected_calls} rejected) — {r.model}")
    if r.answer:
        out.print(f"[bold]answer:[/] {r.answer}", highlight=False)
    if r.error:
        out.print(f"[bold]error:[/] {r.error}", highlight=False)


_TENANT_HELP = "Only a run of this tenant; another tenant's run is not found (exit 4)"


@app.command()
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


@app.command()
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
                out.print(f"[green]hash chain intact[/] ({len(trail.decisions)} decisions)")
    if verify and problems:
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _audit(settings: Settings, run_id: str, verify: bool, tenant: str | None = None,
                 ) -> tuple[Trail, list[str]]:
    from stead.storage.ledger import Ledger

    assert settings.ledger.database_url is not None
    ledger = await Ledger.connect(settings.ledger.database_url, min_size=0, max_size=2,
                                  retry_seconds=0)
    try:
        trail = await ledger.trail(run_id, tenant=tenant)
        if not trail.runs:
            raise RunNotFound(f"the ledger has no run {run_id!r}"
                              + (f" for tenant {tenant!r}" if tenant else ""))
        problems = await ledger.verify_chain(run_id, tenant=tenant) if verify else []
        return trail, problems
    finally:
        await ledger.close()


def _print_trail(run_id: str, trail: Trail) -> None:
    for r in trail.runs:
        out.print(f"[bold]{run_id}[/] ({r.run_id}) agent={r.agent} tenant={r.tenant} "
                  f"status=[bold]{r.status}[/] steps={r.steps} model={r.model}",
                  highlight=False)
    events: list[tuple[datetime, str, str, str, str]] = []
    for m in trail.model_calls:
        what = (", ".join(c["name"] for c in m.tool_calls) or "answer") \
            if m.status == "ok" else (m.error or "")
        events.append((m.created_at, str(m.step), f"model#{m.attempt}", m.status,
                       f"{m.model} → {what} ({m.duration_ms:.0f} ms)"))
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
    table = Table("time", "step", "what", "outcome", "detail")
    for at, step, what, outcome, detail in sorted(events, key=lambda e: e[0]):
        table.add_row(at.strftime("%H:%M:%S.%f")[:-3], step, what, outcome, detail)
    out.print(table)


# ----------------------------------------------------------------------------- approvals


@app.command()
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

    arguments: dict[str, Any] | None = None
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except json.JSONDecodeError as e:
            fail(f"--args is not valid JSON: {e}", EXIT_BAD_INPUT)
        if not isinstance(parsed, dict):
            fail("--args must be a JSON object", EXIT_BAD_INPUT)
        arguments = parsed
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


@app.command()
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


@app.command()
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


# ----------------------------------------------------------------------------- memory

memory_app = typer.Typer(help="Semantic memory: add, search, delete, stats, re-embed.",
                         no_args_is_help=True)
app.add_typer(memory_app, name="memory")


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"--filter is not valid JSON: {e}", EXIT_BAD_INPUT)
    if not isinstance(value, dict):
        fail("--filter must be a JSON object, e.g. '{\"kind\": \"runbook\"}'", EXIT_BAD_INPUT)
    return value


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            fail(f"--meta takes key=value, got {p!r}", EXIT_BAD_INPUT)
        out[key] = value
    return out


async def _with_memory(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from stead.storage.memory import MemoryError as StoreError
    from stead.storage.memory import open_memory

    try:
        memory = await open_memory(settings)
    except (OSError, StoreError) as e:
        raise StackError(f"memory store unavailable: {e}") from None
    if memory is None:
        raise SettingsError("memory is off (STEAD_MEMORY_BACKEND=off)")
    try:
        return await fn(memory)
    except StoreError as e:
        raise SettingsError(str(e)) from None
    finally:
        await memory.close()


@memory_app.command("add")
def memory_add(
    text: str = typer.Argument(..., help="What to remember"),
    tenant: str = typer.Option("default", help="Tenant the item belongs to"),
    namespace: str = typer.Option("notes", help="Namespace within the tenant"),
    agent: str | None = typer.Option(None, help="Only this agent recalls it"),
    subject: str | None = typer.Option(None, help="User id the item is about"),
    item_id: str | None = typer.Option(None, "--id", help="Item id (default: content hash)"),
    ttl: int | None = typer.Option(None, help="Seconds until it expires"),
    meta: list[str] = typer.Option([], help="key=value metadata (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Embed and store one item."""
    import hashlib
    from datetime import UTC, datetime
    from datetime import timedelta as td

    from stead.storage.memory import MemoryItem

    if not text.strip():
        fail("text is empty", EXIT_BAD_INPUT)
    now = datetime.now(UTC)
    try:
        item = MemoryItem(
            id=item_id or "note:" + hashlib.sha256(text.encode()).hexdigest()[:16],
            tenant=tenant, namespace=namespace, agent=agent, subject=subject, text=text,
            metadata=_parse_meta(meta), created_at=now,
            expires_at=now + td(seconds=ttl) if ttl else None)
    except ValidationError as e:
        fail("invalid item: " + "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors()),
            EXIT_BAD_INPUT)

    async def go(memory: Any) -> dict[str, Any]:
        [vector] = await memory.embedder.embed([item.text])
        await memory.store.upsert([(item.model_copy(update={"embedder": memory.embedder.name}),
                                    vector)])
        return {"id": item.id, "tenant": tenant, "namespace": namespace,
                "embedder": memory.embedder.name, "backend": memory.backend}

    done = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(done)
    else:
        out.print(f"stored [bold]{done['id']}[/] in {tenant}/{namespace} "
                  f"({done['backend']}, {done['embedder']})", highlight=False)


@memory_app.command("search")
def memory_search(
    query: str = typer.Argument(..., help="What to look for"),
    tenant: str = typer.Option("default", help="Tenant to search (never crosses tenants)"),
    namespace: str | None = typer.Option(None, help="Only this namespace"),
    agent: str | None = typer.Option(None, help="As this agent (its items and shared ones)"),
    top_k: int = typer.Option(5, min=1, max=100, help="How many results"),
    filter_: str | None = typer.Option(None, "--filter", help="Metadata filter as JSON"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Top-k items by meaning."""
    flt = _parse_filter(filter_)

    async def go(memory: Any) -> list[dict[str, Any]]:
        hits = await memory.search(tenant, query, top_k=top_k, namespace=namespace,
                                   agent=agent, filter=flt)
        return [{"score": round(h.score, 4), **h.item.model_dump(mode="json")} for h in hits]

    hits = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(hits)
        return
    table = Table("score", "id", "namespace", "text")
    for h in hits:
        table.add_row(f"{h['score']:.3f}", h["id"], h["namespace"], h["text"][:100])
    out.print(table)


@memory_app.command("delete")
def memory_delete(
    tenant: str = typer.Option("default", help="Tenant to delete from"),
    ids: list[str] = typer.Option([], "--id", help="Item id (repeatable)"),
    filter_: str | None = typer.Option(None, "--filter", help="Metadata filter as JSON"),
    subject: str | None = typer.Option(None, help="Erase everything about this user id"),
    namespace: str | None = typer.Option(None, help="Only this namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Delete by id, by filter, or everything about a subject."""
    flt = _parse_filter(filter_)
    if sum(bool(x) for x in (ids, flt, subject)) != 1:
        fail("give exactly one of --id, --filter, --subject", EXIT_BAD_INPUT)

    async def go(memory: Any) -> int:
        if subject:
            return int(await memory.store.delete_subject(tenant, subject))
        return int(await memory.store.delete(tenant, ids=ids or None, filter=flt,
                                             namespace=namespace))

    n = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json({"deleted": n})
    else:
        out.print(f"deleted {n} item(s) from tenant {tenant}")


@memory_app.command("stats")
def memory_stats(
    tenant: str | None = typer.Option(None, help="Only this tenant"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Items per tenant and namespace."""
    async def go(memory: Any) -> dict[str, Any]:
        return {"backend": memory.backend, "embedder": memory.embedder.name,
                "dimension": memory.embedder.dimension,
                "namespaces": await memory.store.stats(tenant)}

    data = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(data)
        return
    out.print(f"{data['backend']} — embedder {data['embedder']} ({data['dimension']} dims)")
    table = Table("tenant/namespace", "items")
    for key, st in sorted(data["namespaces"].items()):
        table.add_row(key, str(st.get("items", 0)))
    out.print(table)


@memory_app.command("reembed")
def memory_reembed(
    tenant: str | None = typer.Option(None, help="Only this tenant"),
) -> None:
    """Re-embed items stored by another embedder (after changing the embedder)."""
    from stead.storage.memory import DimensionMismatch, choose_embedder
    from stead.storage.memory.pgvector import PgVectorStore

    settings = resolved(cli_settings())

    async def go() -> int:
        from stead.storage.memory import Memory

        # A new dimension alters the column, which only the tables' owner may do.
        assert settings.ledger.migration_database_url is not None
        store = await PgVectorStore.connect(settings.ledger.migration_database_url, min_size=0,
                                            max_size=2)
        memory = Memory(store=store, embedder=choose_embedder(settings), backend="pgvector")
        try:
            try:
                await store.ensure(memory.embedder.dimension)
            except DimensionMismatch:
                pass  # exactly what reembed fixes
            return await memory.reembed(tenant=tenant)
        finally:
            await memory.close()

    n = run_async(go())
    out.print(f"re-embedded {n} item(s)")


@memory_app.command("retention")
def memory_retention(
    tenant: str = typer.Option("default", help="Tenant"),
    namespace: str | None = typer.Option(None, help="Namespace to set (omit to list)"),
    ttl: int | None = typer.Option(None, min=1, help="Seconds items live (with --namespace)"),
    forever: bool = typer.Option(False, help="Remove the namespace's TTL"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Show or set per-namespace retention (TTL applied to items written from now on)."""
    if namespace is not None and (ttl is None) == (not forever):
        fail("with --namespace give exactly one of --ttl SECONDS or --forever", EXIT_BAD_INPUT)

    async def go(memory: Any) -> dict[str, int]:
        if namespace is not None:
            await memory.store.set_retention(tenant, namespace, None if forever else ttl)
        return dict(await memory.store.retention(tenant))

    data = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(data)
        return
    table = Table("namespace", "ttl (s)")
    for ns, seconds in sorted(data.items()):
        table.add_row(ns, str(seconds))
    out.print(table if data else f"no retention set for tenant {tenant} (items live forever)")


@memory_app.command("purge")
def memory_purge() -> None:
    """Delete expired items now (retention)."""
    from datetime import UTC, datetime

    async def go(memory: Any) -> int:
        return int(await memory.store.purge_expired(datetime.now(UTC)))

    n = run_async(_with_memory(resolved(cli_settings()), go))
    out.print(f"purged {n} expired item(s)")


@memory_app.command("index-runbooks")
def memory_index_runbooks(
    tenant: str = typer.Option("default", help="Tenant to index for"),
) -> None:
    """Index the ops agent's shipped runbooks (idempotent)."""
    from stead.agents.ops.runbooks import index_runbooks

    async def go(memory: Any) -> int:
        return await index_runbooks(memory.store, memory.embedder, tenant=tenant)

    n = run_async(_with_memory(resolved(cli_settings()), go))
    out.print(f"indexed {n} runbook(s) for tenant {tenant}")


# Each command group lives in a module of its own with a ``register(app)``.
from stead.cli import api, chat, counterfactual, db, graph, metrics, replay, stuck, suites  # noqa: E402
from stead.security import codec_server  # noqa: E402

for _group in (suites, replay, counterfactual, metrics, db, codec_server, stuck, api, chat,
               graph):
    _group.register(app)


def main() -> None:
    """Entry point of the ``stead`` script."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            err.print(e.code, highlight=False)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    # The Temporal client's Rust threads outlive asyncio.run(); tearing the interpreter down
    # with them alive aborts the process now and then (SIGABRT/SIGSEGV at exit, about 1 run in
    # 15 here; temporalio/sdk-python#300), turning exit code 0 or 4 into 134. All work is done
    # by now, so flush and leave without the teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
