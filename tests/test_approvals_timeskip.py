"""Approval deadlines of hours, on Temporal's time-skipping test server.

The workflow and its activities are the real ones (ledger in the session's PostgreSQL); only
Temporal's clock is skipped, so a policy deadline of 4 hours per level passes in well under a
second of wall time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _approval_worker import bank_agent, bank_policy, effects, transfer_model
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import (
    ApprovalDecision,
    PendingApproval,
    RunRequest,
    RunResult,
    RunState,
)
from stead.settings import Settings
from stead.stack.embedded import SEARCH_ATTRIBUTES
from stead.storage.ledger import Ledger
from stead.worker import build_worker

HOURS_4 = 4 * 3600

_INDEXED = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
            "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE}


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, with stead's search attributes registered as the
    embedded and compose stacks register them (it rejects undeclared ones)."""
    async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
            data_converter=pydantic_data_converter) as e:
        await e.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
            namespace=e.client.namespace,
            search_attributes={k: _INDEXED[v] for k, v in SEARCH_ATTRIBUTES.items()}))
        yield e


async def wait_pending(h: WorkflowHandle[Any, RunResult], *, within: float = 30,
                       ) -> PendingApproval:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = await h.query("state", result_type=RunState)
        if state.pending_approvals:
            return state.pending_approvals[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval after {within:.0f}s")


async def test_unanswered_approval_escalates_after_4h_and_auto_denies_after_8h(
        env: WorkflowEnvironment, settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "effects"
    agent = bank_agent(path, transfer_model(500, "ACME-1"),
                       policy=bank_policy(timeout_seconds=HOURS_4))
    began = await env.get_current_time()
    async with build_worker(env.client, settings, AgentCatalog([agent]), ledger,
                            task_queue=settings.temporal.task_queue):
        h = await start_run(env.client, RunRequest(agent="bank", input="pay 500 to ACME-1"),
                            temporal=settings.temporal)
        r = await asyncio.wait_for(h.result(), 30)  # awaiting the result lets time skip
    ended = await env.get_current_time()

    assert ended - began >= timedelta(hours=8)
    assert (r.status, r.escalations, r.approvals, r.denials) == ("escalated", 2, 0, 1), r
    assert [(c.tool, c.status) for c in r.tool_calls] == [("transfer", "rejected")]
    assert "auto-denied after escalating to manager" in (r.tool_calls[0].error or "")
    assert effects(path) == []
    trail = await ledger.trail(h.id)
    assert [(d.kind, d.decision, d.actor) for d in trail.decisions
            if d.kind.startswith("approval_")] == [
        ("approval_requested", "oncall", "stead"), ("approval_escalated", "manager", "stead"),
        ("approval_decided", "expired", "deadline")]
    assert await ledger.verify_chain(h.id) == []


async def test_manager_approval_after_the_escalation_at_5h_is_accepted(
        env: WorkflowEnvironment, settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    """At 5 h the approval sits with the manager: an on-call approval no longer counts (it is
    audited as ignored), the manager's does, and the transfer runs once."""
    path = tmp_path / "effects"
    agent = bank_agent(path, transfer_model(500, "ACME-1"),
                       policy=bank_policy(timeout_seconds=HOURS_4))
    async with build_worker(env.client, settings, AgentCatalog([agent]), ledger,
                            task_queue=settings.temporal.task_queue):
        h = await start_run(env.client, RunRequest(agent="bank", input="pay 500 to ACME-1"),
                            temporal=settings.temporal)
        asked = await wait_pending(h)
        assert (asked.approval_id, asked.awaiting, asked.level) == ("a2", "oncall", 0)
        began = await env.get_current_time()
        await env.sleep(timedelta(hours=5))
        assert await env.get_current_time() - began >= timedelta(hours=5)
        now = await wait_pending(h)
        assert (now.awaiting, now.level) == ("manager", 1)

        await h.signal("approve", ApprovalDecision(approval_id="a2", by="olly", role="oncall"))
        await h.signal("approve", ApprovalDecision(approval_id="a2", by="mia", role="manager"))
        r = await asyncio.wait_for(h.result(), 30)

    assert (r.status, r.approvals, r.escalations, r.denials) == ("completed", 1, 1, 0), r
    assert len(effects(path)) == 1
    trail = await ledger.trail(h.id)
    assert [(d.kind, d.decision, d.actor) for d in trail.decisions
            if d.kind.startswith("approval_")] == [
        ("approval_requested", "oncall", "stead"), ("approval_escalated", "manager", "stead"),
        ("approval_decided", "approved", "mia"), ("approval_ignored", "ignored", "olly")]
    [ignored] = [d for d in trail.decisions if d.kind == "approval_ignored"]
    assert "role 'oncall' may not decide approval 'a2' at level 1" in ignored.reason
