"""Fuzzed approval payloads: the ``approve``/``reject`` signals and the ``decide`` update with
any JSON, against a run of the test ``bank`` agent waiting to make a transfer.

Properties:

- a ``decide`` update that is malformed or names no pending approval is refused with a
  reason (pydantic's field errors, or the pending approvals), and changes nothing;
- a signal that is malformed, empty or names no pending approval changes nothing either:
  the run keeps waiting for the same approval, still answers queries, and signals that were
  well formed (or empty) are audited as ignored when the run ends — only a malformed one
  leaves no trace but the worker's log (the SDK drops a payload it cannot decode);
- any decision on the real approval, whatever its other fields, ends the run with a status
  of the closed set, with at most one transfer — made with arguments the tool's schema
  accepts and the ledger records — and no half-claimed tool call.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _approval_worker import Transfer, bank_agent, effects, transfer_model
from _cli import run_cmd
from _fuzz import bound, fuzz, json_values, near, run_property, text
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import (
    ApprovalDecision,
    DecideInput,
    DecideOutcome,
    RunRequest,
    RunResult,
    RunState,
)
from stead.settings import Settings
from stead.stack.embedded import find_binary
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

Handle = WorkflowHandle[Any, RunResult]
STATUSES = {"completed", "failed", "denied", "refused", "escalated"}
CHANNELS = ("approve", "reject", "decide")

decision_fields: dict[str, st.SearchStrategy[Any]] = {
    "approval_id": st.sampled_from(["a1", "a3", "A2", " a2", ""]) | text | json_values,
    "by": st.sampled_from(["alice", ""]) | text | json_values,
    "note": st.none() | text | json_values,
    "role": st.sampled_from(["oncall", "manager", "intern", None]) | text | json_values,
    "arguments": st.none() | json_values
    | near({"amount": 50, "account": "ACME-1"},
           {"amount": st.integers(-10**6, 10**6) | json_values, "account": text | json_values}),
    "approved": st.booleans() | json_values,
}


def decisions(approval_id: str) -> st.SearchStrategy[Any]:
    """Decision-shaped objects around ``{"approval_id": approval_id, "by": "fuzzer"}`` and any
    other JSON value."""
    return near({"approval_id": approval_id, "by": "fuzzer"}, decision_fields) | json_values


def well_formed(model: type[ApprovalDecision], payload: Any) -> ApprovalDecision | None:
    """What the worker decodes ``payload`` to, or None when it cannot (same JSON text)."""
    try:
        return model.model_validate_json(json.dumps(payload))
    except ValidationError:
        return None


@pytest.fixture
async def bank(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Client, Path]]:
    """A worker serving the bank agent (every transfer needs on-call's approval); yields its
    client and the effects file that counts real transfers."""
    path = tmp_path / "effects"
    agent = bank_agent(path, transfer_model(500, "ACME-1"))
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        yield host.client, path


async def waiting_run(client: Client, settings: Settings) -> Handle:
    handle = await start_run(client, RunRequest(agent="bank", input="pay 500 to ACME-1"),
                             temporal=settings.temporal)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = await state_of(handle)
        if state.pending_approvals:
            assert [p.approval_id for p in state.pending_approvals] == ["a2"]
            return handle
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} never asked for approval")


async def state_of(handle: Handle) -> RunState:
    return await handle.query("state", result_type=RunState, rpc_timeout=timedelta(seconds=5))


def temporal_cli(settings: Settings, *args: str) -> list[str]:
    """``temporal workflow ARGS`` against the test stack, as an operator types it."""
    assert settings.temporal.address is not None
    return [str(find_binary("temporal")), "workflow", *args, "--address",
            settings.temporal.address, "--namespace", settings.temporal.namespace]


async def send(handle: Handle, channel: str, payload: Any) -> str | None:
    """Deliver ``payload``; for the update, the reason it was refused (None: accepted)."""
    if channel != "decide":
        await handle.signal(channel, payload)
        return None
    try:
        await handle.execute_update("decide", payload, result_type=DecideOutcome)
    except WorkflowUpdateFailedError as e:
        assert isinstance(e.cause, ApplicationError), e
        return e.cause.message
    return None


async def test_garbage_decisions_leave_a_waiting_run_waiting(
        bank: tuple[Client, Path], settings: Settings, ledger: Ledger) -> None:
    client, path = bank
    handle = await waiting_run(client, settings)
    loop = asyncio.get_running_loop()
    ignored_ids: set[str] = set()

    async def check(channel: str, payload: Any) -> str:
        model = DecideInput if channel == "decide" else ApprovalDecision
        decoded = well_formed(model, payload)
        refused = await send(handle, channel, payload)
        if channel == "decide":
            assert refused, f"decide accepted {payload!r}"
            if payload is None:
                assert refused.startswith("decide needs a payload: "), refused
                label = "update refused: no payload"
            elif decoded is None:
                assert re.match(r"\d+ validation errors? for (nullable\[)?DecideInput", refused), \
                    refused
                label = "update refused: malformed"
            else:
                assert refused == (f"unknown approval {decoded.approval_id!r}; pending: a2"), \
                    refused
                label = "update refused: unknown approval"
        elif payload is None:
            ignored_ids.add("")  # audited as a decision without a payload
            label = "signal ignored: no payload"
        elif decoded is None:
            label = "signal dropped: malformed"
        else:
            ignored_ids.add(decoded.approval_id)
            label = "signal ignored: unknown approval"
        state = await state_of(handle)  # queries see every signal delivered before them
        assert state.status == "running"
        assert [p.approval_id for p in state.pending_approvals] == ["a2"], state
        assert effects(path) == []
        return label

    sync = bound(loop, check)

    @fuzz(25)
    @given(st.sampled_from(CHANNELS),
           decisions("a2").filter(lambda p: not (isinstance(p, dict)
                                                 and p.get("approval_id") == "a2")))
    @example("decide", {"approval_id": "a9", "by": "erin", "approved": True})
    @example("approve", {"approval_id": "a9", "by": "erin"})
    @example("reject", {"approval_id": "a2 ", "by": "erin", "approved": False})
    @example("decide", [])
    @example("decide", None)
    @example("reject", None)
    def prop(channel: str, payload: Any) -> None:
        event(sync(channel, payload))

    await run_property(prop)

    # The run is intact: a proper approval goes through, once, and the noise is on record.
    ok = await handle.execute_update("decide", DecideInput(approval_id="a2", by="alice",
                                                           approved=True),
                                     result_type=DecideOutcome)
    assert ok.outcome == "approved"
    result = await asyncio.wait_for(handle.result(), 30)
    assert (result.status, result.approvals) == ("completed", 1), result
    assert len([e for e in effects(path) if e.startswith(f"{handle.id}:")]) == 1
    trail = await ledger.trail(handle.id)
    decided = [d for d in trail.decisions if d.kind == "approval_decided"]
    assert [(d.decision, d.actor) for d in decided] == [("approved", "alice")]
    audited = {d.data["approval_id"] for d in trail.decisions
               if d.kind == "approval_ignored"}
    assert audited == ignored_ids
    assert await ledger.verify_chain(handle.id) == []


async def test_any_decision_on_the_real_approval_ends_the_run_cleanly(
        bank: tuple[Client, Path], settings: Settings, ledger: Ledger) -> None:
    client, path = bank
    loop = asyncio.get_running_loop()

    async def check(channel: str, payload: Any) -> str:
        handle = await waiting_run(client, settings)
        refused = await send(handle, channel, payload)
        await asyncio.sleep(0)  # let a signal land before deciding whether to clean up
        state = await state_of(handle)
        cleaned = False
        if state.pending_approvals:
            # Dropped, refused or ignored: a clean rejection ends the run.
            await handle.execute_update("decide", DecideInput(approval_id="a2", by="cleanup",
                                                              approved=False),
                                        result_type=DecideOutcome)
            cleaned = True
        result = await asyncio.wait_for(handle.result(), 30)
        assert result.status in STATUSES
        made = [e for e in effects(path) if e.startswith(f"{handle.id}:")]
        [record] = result.tool_calls
        trail = await ledger.trail(handle.id)
        assert [c for c in trail.tool_calls if c.status in ("running", "open")] == []
        assert await ledger.verify_chain(handle.id) == []
        if record.status == "ok":
            assert not cleaned and refused is None
            Transfer.model_validate(record.arguments)
            [line] = made
            assert line.endswith(f" {record.arguments['amount']} {record.arguments['account']}")
            [call] = trail.tool_calls
            assert call.arguments == record.arguments
            return "transferred"
        assert made == [], made
        return f"no transfer: {result.status}" + (" after cleanup" if cleaned else "")

    sync = bound(loop, check)

    @fuzz(6)
    @given(st.sampled_from(CHANNELS), near({"approval_id": "a2", "by": "fuzzer"},
                                           {k: v for k, v in decision_fields.items()
                                            if k != "approval_id"}))
    @example("decide", {"approval_id": "a2", "by": "bob", "approved": True,
                        "arguments": {"amount": "lots", "account": "ACME-1"}})
    @example("approve", {"approval_id": "a2", "by": "bob", "arguments": {"amount": 20000,
                                                                         "account": "X"}})
    @example("decide", {"approval_id": "a2", "by": "bob", "approved": True, "role": "intern"})
    def prop(channel: str, payload: Any) -> None:
        event(sync(channel, payload))

    await run_property(prop)


async def test_a_signal_without_a_payload_leaves_the_run_waiting(
        bank: tuple[Client, Path], settings: Settings) -> None:
    """Found by the fuzzer: `temporal workflow signal --name approve` without --input used to
    fail the run's workflow task on every retry, so the run could no longer be approved."""
    client, _ = bank
    handle = await waiting_run(client, settings)
    try:
        done = await run_cmd(*temporal_cli(settings, "signal", "--workflow-id", handle.id,
                                           "--name", "approve"))
        assert done.code == 0, done
        state = await handle.query("state", result_type=RunState,
                                   rpc_timeout=timedelta(seconds=3))
        assert [p.approval_id for p in state.pending_approvals] == ["a2"]
    finally:
        await handle.terminate("test over")
