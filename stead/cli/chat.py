"""``stead chat``: talk to an agent in a conversation that lasts (``ConversationWorkflow``).

    stead chat ops                                    # interactive: one line, one turn
    stead chat ops --id my-chat -m "status of checkout-api?" -m "and its logs?" --json
    stead chat ops --id my-chat                       # later: the same conversation goes on

A worker must be serving the agent (``stead up`` or ``stead worker``). Leaving (end of input,
or ``--message`` done) keeps the conversation open for ``--id`` to continue; ``/end`` in the
interactive session, or ``--end``, closes it.

Exit codes: 0 every turn completed; 1 a turn did not complete; 2 bad input (an empty message,
a conversation of another agent, one that has ended); 3 the stack is unreachable or no worker
answered in time.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

import typer

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    EXIT_UNREACHABLE,
    cli_settings,
    err,
    fail,
    fail_invalid,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

    from stead.conversation import ConversationResult, TurnOutcome
    from stead.settings import Settings

END_COMMAND = "/end"


def register(app: typer.Typer) -> None:
    """Add ``chat`` to the ``stead`` app."""
    app.command("chat")(chat_cmd)


def chat_cmd(
    agent: str = typer.Argument(..., help="Agent name, e.g. ops"),
    conversation_id: str | None = typer.Option(
        None, "--id", help="Conversation id: continue it if it is running, else start it"),
    messages: list[str] = typer.Option(
        [], "--message", "-m", help="Say this (repeatable, in order) instead of reading stdin"),
    end: bool = typer.Option(False, "--end", help="Close the conversation afterwards"),
    tenant: str = typer.Option("default", help="Tenant the conversation belongs to"),
    user: str | None = typer.Option(None, help="Who is talking (for the audit trail)"),
    timeout: float = typer.Option(300.0, "--timeout", min=1.0,
                                  help="Seconds to wait for one answer"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text"),
) -> None:
    """Talk to AGENT: each message is one turn (a run that sees the whole conversation)."""
    if any(not m.strip() for m in messages):
        fail("--message needs some text", EXIT_BAD_INPUT)
    settings = resolved(cli_settings())
    turns = run_async(_chat(settings, agent, conversation_id, messages, end=end, tenant=tenant,
                            user=user, timeout=timeout, as_json=as_json))
    if any(t.status != "completed" for t in turns):
        raise typer.Exit(EXIT_RUN_NOT_COMPLETED)


async def _chat(settings: Settings, agent: str, conversation_id: str | None,
                messages: list[str], *, end: bool, tenant: str, user: str | None,
                timeout: float, as_json: bool) -> list[TurnOutcome]:
    from pydantic import ValidationError
    from temporalio.service import RPCError

    from stead.conversation import ConversationStart, ConversationState, start_conversation

    try:
        start = ConversationStart(agent=agent, tenant=tenant, user=user)
    except ValidationError as e:
        fail_invalid("conversation", e)
    client = await temporal_client(settings)
    handle = await start_conversation(client, start, temporal=settings.temporal,
                                      workflow_id=conversation_id, attach=True)
    if conversation_id is not None:
        try:
            state: ConversationState = await handle.query(
                "state", result_type=ConversationState, rpc_timeout=timedelta(seconds=timeout))
        except RPCError as e:
            fail(f"conversation {handle.id} did not answer ({e}); is a worker running "
                 f"(`stead up`)?", EXIT_UNREACHABLE)
        if state.agent != agent:
            fail(f"conversation {handle.id} talks to agent {state.agent!r}, not {agent!r}",
                 EXIT_BAD_INPUT)
    interactive = not messages
    if not as_json:
        out.print(f"conversation [bold]{handle.id}[/] with [bold]{agent}[/]"
                  + (f" — type a message, {END_COMMAND} to close it, Ctrl-D to leave it open"
                     if interactive else ""), highlight=False)
    turns: list[TurnOutcome] = []
    pending = list(messages)
    while True:
        if interactive:
            if not as_json:
                out.print("[bold cyan]you>[/] ", end="")
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text == END_COMMAND:
                end = True
                break
        elif pending:
            text = pending.pop(0)
        else:
            break
        turn = await _say(handle, text, timeout=timeout)
        turns.append(turn)
        if not as_json:
            _print_turn(turn)
    if end:
        await handle.signal("end")
    if as_json:
        print_json({"conversation_id": handle.id, "ended": end,
                    "turns": [t.model_dump(mode="json") for t in turns]})
    elif not end:
        err.print(f"conversation left open: `stead chat {agent} --id {handle.id}` goes on",
                  highlight=False)
    return turns


async def _say(handle: WorkflowHandle[object, ConversationResult], text: str, *,
               timeout: float) -> TurnOutcome:
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    from stead.conversation import say

    try:
        return await asyncio.wait_for(say(handle, text), timeout)
    except TimeoutError:
        fail(f"no answer from conversation {handle.id} within {timeout:g}s; is a worker "
             f"serving it (`stead up`)?", EXIT_UNREACHABLE)
    except WorkflowUpdateFailedError as e:
        fail(f"message refused: {getattr(e.cause, 'message', e.cause)}", EXIT_BAD_INPUT)
    except RPCError as e:
        fail(f"conversation {handle.id} cannot take messages: {e}", EXIT_BAD_INPUT)


def _print_turn(t: TurnOutcome) -> None:
    colour = "green" if t.status == "completed" else "yellow"
    head = f"[bold magenta]{'agent>'}[/] "
    if t.answer:
        out.print(head + t.answer, highlight=False)
    out.print(f"[dim]turn {t.turn}: [{colour}]{t.status}[/] ({t.run_id})[/]", highlight=False)
    if t.error:
        out.print(f"[bold]error:[/] {t.error}", highlight=False)
