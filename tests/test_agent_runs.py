"""End-to-end runs of the ops agent on the real dev server and PostgreSQL."""

from __future__ import annotations

from temporalio.client import Client

from stead.agents.ops import OpsWorld
from stead.client import start_run
from stead.contracts.models import RunRequest
from stead.settings import Settings
from stead.storage.ledger import Ledger


async def test_ops_run_recovers_from_slip_retry_and_fallback(
        client: Client, settings: Settings, world: OpsWorld, ledger: Ledger) -> None:
    """A loosely named service, a flaky log tool and a down metrics backend all end in an
    answer built from tool results, with the ticket opened exactly once."""
    h = await start_run(client, RunRequest(
        agent="ops", input="Checkout API is throwing 500s - check status and logs, open a ticket"),
        temporal=settings.temporal)
    r = await h.result()
    assert r.status == "completed"
    assert r.rejected_calls == 1  # the wrong-field slip, corrected next turn
    assert r.fallbacks == 1  # service_status -> probe_health
    assert r.retries >= 3  # 2 for service_status, 1 for flaky recent_logs
    assert "checkout-api is degraded" in (r.answer or "")
    assert "connection pool exhausted" in (r.answer or "")
    assert world.effects("ticket") == 1
    trail = await ledger.trail(h.id)
    assert trail.runs[0].status == "completed"
    kinds = [d.kind for d in trail.decisions]
    assert "call_rejected" in kinds and "fallback" in kinds
    assert await ledger.verify_chain(h.id) == []
    failed_attempts = [a for a in trail.tool_attempts if a.status == "error"]
    assert {a.tool for a in failed_attempts} >= {"service_status", "recent_logs"}
