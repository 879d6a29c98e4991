"""Waiting for a run to reach a point, by its ``state`` query (what the CLI and UI read)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from stead.contracts.models import PendingApproval, RunState


async def wait_pending(h: WorkflowHandle[Any, Any], *, within: float = 30) -> PendingApproval:
    """Poll the ``state`` query until the run waits for an approval; fail after ``within`` s."""
    deadline = time.monotonic() + within
    state: RunState | None = None
    while time.monotonic() < deadline:
        try:
            state = await h.query("state", result_type=RunState,
                                  rpc_timeout=timedelta(seconds=5))
        except RPCError as e:
            # No answer within the RPC timeout (the client reports its own timeout as
            # CANCELLED): a worker that is still starting, or a query sent to the sticky queue
            # of a worker just killed. Ask again, within the same deadline.
            if e.status not in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                raise
            continue
        if state.pending_approvals:
            return state.pending_approvals[0]
        assert state.status == "running", f"run ended without asking: {state}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval after {within:.0f}s; last state: {state}")
