"""Approving from the Temporal Web UI: the exact HTTP calls the UI makes, against a real UI.

The Web UI (2.x, served by the dev server on its UI port) does not talk gRPC: its "Send a
Signal" dialog posts ``POST /api/v1/namespaces/{ns}/workflows/{wf}/signal/{name}`` to its own
server with the typed JSON as one ``json/plain`` payload (base64 in the JSON body), after the
page load has set the ``_csrf`` cookie that every write must echo in ``X-CSRF-TOKEN``. Its
"Queries" tab posts ``.../query/{type}`` and its "Send an Update" dialog ``.../update/{name}``
the same way. These tests make those calls byte for byte (body shapes from temporalio/ui's
``workflow-service.ts`` / ``query-service.ts`` of the UI version the dev server ships) and
check that a real waiting ``refund`` run resumes — so the README's click-by-click instructions
are pinned, not hoped.

The shared test stack runs Temporal headless, so this module starts its own dev server with
the UI (on free ports, same PostgreSQL for the ledger).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from temporalio.client import Client, WorkflowHandle

from agents.refund import RefundWorld, refund_agent
from stead.agent import AgentCatalog
from stead.client import start_run
from stead.embedded import EmbeddedStack, EmbeddedTemporal, free_port
from stead.ledger import Ledger
from stead.models import PendingApproval, RunRequest, RunResult, RunState
from stead.settings import Settings
from stead.worker import WorkerHost

NAMESPACE = "default"
Handle = WorkflowHandle[Any, RunResult]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def temporal_with_ui() -> AsyncIterator[EmbeddedTemporal]:
    """A dev server with its Web UI, the way ``stead up`` starts it (tuned, attributes set)."""
    data = Path(tempfile.mkdtemp(prefix="stead-webui-"))
    server = EmbeddedTemporal(data, port=free_port(), ui_port=free_port(), namespace=NAMESPACE)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path) -> RefundWorld:
    return RefundWorld(tmp_path / "refund-world.sqlite")


@pytest.fixture
async def served(stack: EmbeddedStack, temporal_with_ui: EmbeddedTemporal,
                 world: RefundWorld) -> AsyncIterator[tuple[Settings, Client]]:
    """A worker for the ``refund`` agent on the UI's server; yields its settings and client."""
    settings = stack.resolved_settings().model_copy(update={
        "temporal_address": temporal_with_ui.address, "temporal_namespace": NAMESPACE,
        "task_queue": f"test-{uuid.uuid4().hex[:10]}", "memory_backend": "off"})
    async with WorkerHost(settings, AgentCatalog([refund_agent(world)])) as host:
        assert host.client is not None
        yield settings, host.client


@pytest.fixture
async def ui(temporal_with_ui: EmbeddedTemporal) -> AsyncIterator[WebUI]:
    assert temporal_with_ui.ui_url is not None
    async with httpx.AsyncClient(base_url=temporal_with_ui.ui_url, timeout=10) as http:
        web = WebUI(http)
        await web.open()
        yield web


# ---------------------------------------------------------------------------- the UI's calls


def ui_payload(typed: str) -> dict[str, Any]:
    """What the UI makes of the text typed into its input box with encoding ``json/plain``:
    parsed, re-serialised compactly, base64 in a Payload (``setBase64Payload``)."""
    data = json.dumps(json.loads(typed), separators=(",", ":"))
    return {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(data.encode()).decode()}


class WebUI:
    """The browser side of the Web UI: a cookie jar and the requests its dialogs send."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.settings: dict[str, Any] = {}

    async def open(self) -> None:
        """Page load: the UI fetches its settings, and the server sets the CSRF cookie."""
        r = await self.http.get("/api/v1/settings")
        r.raise_for_status()
        self.settings = r.json()
        assert self.http.cookies.get("_csrf"), "the UI server set no _csrf cookie"

    def path(self, wf: str, *rest: str) -> str:
        # UI >= 2.23 encodes each path parameter once (route-for-api.ts).
        return "/".join(["/api/v1/namespaces", quote(NAMESPACE, safe=""), "workflows",
                         quote(wf, safe=""), *(quote(p, safe="") for p in rest)])

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(path, content=json.dumps(body), headers={
            "X-CSRF-TOKEN": self.http.cookies["_csrf"], "Content-Type": "application/json"})

    async def send_signal(self, h: Handle, name: str, typed: str | None) -> httpx.Response:
        """Workflow page → "Send a Signal": name, input typed as JSON, encoding json/plain.
        ``None``: the input box left empty (the UI then sends ``payloads: null``)."""
        return await self._post(self.path(h.id, "signal", name), {
            "signalName": name,
            "workflowExecution": {"workflowId": h.id, "runId": h.result_run_id},
            "input": {"payloads": [ui_payload(typed)] if typed is not None else None},
        })

    async def send_update(self, h: Handle, name: str, typed: str) -> httpx.Response:
        """Workflow page → "Send an Update": name, input typed as JSON, encoding json/plain."""
        return await self._post(self.path(h.id, "update", name), {
            "workflowExecution": {"runId": h.result_run_id},
            "request": {"meta": {"updateId": str(uuid.uuid4()), "identity": "webui-test"},
                        "input": {"args": {"payloads": [ui_payload(typed)]}}},
        })

    async def query(self, h: Handle, query_type: str) -> Any:
        """Workflow page → "Queries" tab: pick the query type; the UI shows the JSON result."""
        r = await self._post(self.path(h.id, "query", query_type), {
            "execution": {"workflowId": h.id, "runId": h.result_run_id},
            "query": {"queryType": query_type},
        })
        r.raise_for_status()
        (payload,) = r.json()["queryResult"]["payloads"]
        return json.loads(base64.b64decode(payload["data"]))


# ---------------------------------------------------------------------------- helpers


async def start_refund(client: Client, settings: Settings, text: str) -> Handle:
    return await start_run(client, RunRequest(agent="refund", input=text), settings=settings)


async def wait_pending(h: Handle, *, within: float = 30) -> PendingApproval:
    deadline = time.monotonic() + within
    state: RunState | None = None
    while time.monotonic() < deadline:
        state = await h.query("state", result_type=RunState, rpc_timeout=timedelta(seconds=5))
        if state.pending_approvals:
            return state.pending_approvals[0]
        assert state.status == "running", f"run ended without asking: {state}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval after {within:.0f}s; last state: {state}")


async def decided_rows(ledger: Ledger, h: Handle) -> list[tuple[str, str, str]]:
    trail = await ledger.trail(h.id)
    return [(d["kind"], d["decision"], d["actor"]) for d in trail["decisions"]
            if d["kind"] == "approval_decided"]


async def task_after_last_signal(h: Handle, *, within: float = 15) -> str:
    """``completed`` or ``failed``: how the first workflow task after the last signal in
    history ended (the worker has looked at the signal either way)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        kinds = [e.WhichOneof("attributes") for e in (await h.fetch_history()).events]
        signalled = max(i for i, k in enumerate(kinds)
                        if k == "workflow_execution_signaled_event_attributes")
        for k in kinds[signalled:]:
            if k == "workflow_task_completed_event_attributes":
                return "completed"
            if k == "workflow_task_failed_event_attributes":
                return "failed"
        await asyncio.sleep(0.05)
    raise AssertionError(f"signal not handled within {within:.0f}s")


# ---------------------------------------------------------------------------- tests


async def test_ui_settings_allow_signals_and_updates(ui: WebUI) -> None:
    """The dev server's UI offers the write actions the README tells approvers to use."""
    s = ui.settings
    assert (s["DisableWriteActions"], s["WorkflowSignalDisabled"],
            s["WorkflowUpdateDisabled"]) == (False, False, False), s


async def test_writes_without_the_csrf_header_are_refused(
        ui: WebUI, served: tuple[Settings, Client]) -> None:
    """Why the test keeps a cookie jar: the UI server refuses a signal that lacks it."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones broke")
    p = await wait_pending(h)
    r = await ui.http.post(ui.path(h.id, "signal", "approve"), json={
        "signalName": "approve", "workflowExecution": {"workflowId": h.id},
        "input": {"payloads": [ui_payload(json.dumps({"approval_id": p.approval_id,
                                                      "by": "mallory"}))]}})
    assert r.status_code == 400 and "csrf" in r.text.lower(), r.text
    assert (await wait_pending(h)).approval_id == p.approval_id  # still waiting
    await h.terminate("test cleanup")


async def test_approve_signal_typed_into_the_web_ui_resumes_the_run(
        ui: WebUI, served: tuple[Settings, Client], ledger: Ledger, world: RefundWorld) -> None:
    """README path: Queries tab → ``state`` shows the approval id; Send a Signal → ``approve``
    with ``{"approval_id": ..., "by": "alice"}``: the refund runs once, alice is on record."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    await wait_pending(h)

    state = await ui.query(h, "state")
    (pending,) = state["pending_approvals"]
    assert (pending["tool"], pending["arguments"]["order_id"]) == ("issue_refund", "ORD-1005")
    typed = f'{{"approval_id": "{pending["approval_id"]}", "by": "alice"}}'

    r = await ui.send_signal(h, "approve", typed)
    assert r.status_code == 200, r.text

    result = await asyncio.wait_for(h.result(), 30)
    assert (result.status, result.approvals) == ("completed", 1), result
    assert result.answer is not None and result.answer.startswith(
        "Refunded 300.00 EUR on ORD-1005")
    assert world.order("ORD-1005").refunded_cents == 30000
    assert len(world.refunds()) == 1
    assert await decided_rows(ledger, h) == [("approval_decided", "approved", "alice")]


async def test_a_mistyped_signal_is_dropped_and_the_run_keeps_waiting(
        ui: WebUI, served: tuple[Settings, Client], ledger: Ledger, world: RefundWorld) -> None:
    """A payload that is no ``ApprovalDecision`` (here: no ``approval_id``) cannot approve
    anything and cannot break the run; the corrected signal then works."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    p = await wait_pending(h)

    r = await ui.send_signal(h, "approve", '{"by": "alice"}')
    assert r.status_code == 200, r.text  # the server takes any payload; the worker judges it
    assert await task_after_last_signal(h) == "completed"
    assert (await wait_pending(h)).approval_id == p.approval_id
    assert world.refunds() == []

    r = await ui.send_signal(h, "reject", json.dumps(
        {"approval_id": p.approval_id, "by": "bob", "note": "customer already got a voucher"}))
    assert r.status_code == 200, r.text
    result = await asyncio.wait_for(h.result(), 30)
    assert (result.status, result.denials) == ("denied", 1), result
    assert "customer already got a voucher" in (result.answer or "")
    assert world.refunds() == []
    assert await decided_rows(ledger, h) == [("approval_decided", "rejected", "bob")]


async def test_decide_update_from_the_web_ui_returns_the_outcome(
        ui: WebUI, served: tuple[Settings, Client], world: RefundWorld) -> None:
    """Send an Update → ``decide`` with edited arguments: the UI shows the outcome the gate
    returned, and the tool runs with the edited amount."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    p = await wait_pending(h)
    edited = {**p.arguments, "amount": 250}

    r = await ui.send_update(h, "decide", json.dumps(
        {"approval_id": p.approval_id, "by": "carol", "approved": True, "arguments": edited}))
    assert r.status_code == 200, r.text
    outcome = r.json()["outcome"]
    assert "success" in outcome, outcome
    (payload,) = outcome["success"]["payloads"]
    decided = json.loads(base64.b64decode(payload["data"]))
    assert (decided["outcome"], decided["arguments"]["amount"]) == ("approved", 250)

    result = await asyncio.wait_for(h.result(), 30)
    assert result.status == "completed", result
    assert world.order("ORD-1005").refunded_cents == 25000


@pytest.mark.xfail(strict=True, reason=(
    "known bug, pinned first by tests/test_fuzz_approvals.py::test_a_signal_without_a_"
    "payload_leaves_the_run_waiting: a signal without a payload reaches AgentWorkflow._apply "
    "as None and fails every workflow task, so the run can no longer be approved. From the "
    "Web UI that is one click on Send a Signal with the input box left empty. Drop this mark "
    "once workflows/agent.py ignores (and audits) a None decision."))
async def test_send_a_signal_with_the_input_left_empty_leaves_the_run_waiting(
        ui: WebUI, served: tuple[Settings, Client]) -> None:
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    p = await wait_pending(h)
    try:
        r = await ui.send_signal(h, "approve", None)
        assert r.status_code == 200, r.text
        assert await task_after_last_signal(h) == "completed"
        assert (await wait_pending(h)).approval_id == p.approval_id
    finally:
        await h.terminate("test over")
