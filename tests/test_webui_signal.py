"""Approving from the Temporal Web UI: the exact HTTP calls the UI makes, against a real UI.

The Web UI (2.x, served by the dev server on its UI port) does not talk gRPC: its "Send a
Signal" dialog posts ``POST /api/v1/namespaces/{ns}/workflows/{wf}/signal/{name}`` to its own
server with the typed JSON as one ``json/plain`` payload (base64 in the JSON body), after the
page load has set the ``_csrf`` cookie that every write must echo in ``X-CSRF-TOKEN``. Its
"Queries" tab posts ``.../query/{type}`` and its "Send an Update" dialog ``.../update/{name}``
the same way. These tests make those calls byte for byte (body shapes from temporalio/ui's
``workflow-service.ts`` / ``query-service.ts`` of the UI version the dev server ships) and
check that a real waiting ``refund`` run resumes — so the click-by-click instructions of
docs/approvals.md are pinned, not hoped.

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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _waits import wait_pending
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from temporalio.client import Client, WorkflowHandle

from stead.agents.refund import RefundWorld, refund_agent
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import RunRequest, RunResult
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, EmbeddedTemporal, free_port
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

NAMESPACE = "default"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
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
    settings = stack.resolved_settings().replace(
        temporal_address=temporal_with_ui.address,
        temporal_namespace=NAMESPACE,
        task_queue=f"test-{uuid.uuid4().hex[:10]}",
        memory_backend="off")
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
        for _ in range(10):
            r = await self._post(self.path(h.id, "query", query_type), {
                "execution": {"workflowId": h.id, "runId": h.result_run_id},
                "query": {"queryType": query_type},
            })
            # A query the server could not hand to a worker in time is a 503 (a busy machine);
            # a person clicks again, and so does this.
            if r.status_code != 503:
                break
            await asyncio.sleep(0.5)
        r.raise_for_status()
        (payload,) = r.json()["queryResult"]["payloads"]
        return json.loads(base64.b64decode(payload["data"]))


# ---------------------------------------------------------------------------- helpers


async def start_refund(client: Client, settings: Settings, text: str) -> Handle:
    return await start_run(client, RunRequest(agent="refund", input=text),
                           temporal=settings.temporal)




async def decided_rows(ledger: Ledger, h: Handle) -> list[tuple[str, str, str]]:
    trail = await ledger.trail(h.id)
    return [(d.kind, d.decision, d.actor) for d in trail.decisions
            if d.kind == "approval_decided"]


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
    """The dev server's UI offers the write actions docs/approvals.md tells approvers to use."""
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
    """The docs/approvals.md path: Queries tab → ``state`` shows the approval id; Send a
    Signal → ``approve`` with ``{"approval_id": ..., "by": "alice"}``: the refund runs once,
    alice is on record."""
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


async def test_send_a_signal_with_the_input_left_empty_is_refused_and_audited(
        ui: WebUI, served: tuple[Settings, Client], ledger: Ledger) -> None:
    """Submit with the Data box left empty sends ``payloads: null``. That once failed every
    workflow task of the run (found by tests/test_fuzz_approvals.py); now the run ignores it,
    keeps waiting, and the audit trail says what happened."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    p = await wait_pending(h)

    r = await ui.send_signal(h, "approve", None)
    assert r.status_code == 200, r.text
    assert await task_after_last_signal(h) == "completed"
    assert (await wait_pending(h)).approval_id == p.approval_id

    r = await ui.send_signal(h, "approve", json.dumps({"approval_id": p.approval_id,
                                                      "by": "alice"}))
    assert r.status_code == 200, r.text
    result = await asyncio.wait_for(h.result(), 30)
    assert result.status == "completed", result
    rows = [(d.kind, d.actor, d.reason) for d in (await ledger.trail(h.id)).decisions
            if d.kind in ("approval_ignored", "approval_decided")]
    assert [(k, a) for k, a, _ in rows] == [("approval_decided", "alice"),
                                            ("approval_ignored", "unknown")], rows
    assert "without a payload" in rows[1][2]


# ---------------------------------------------------------------------------- the real UI


def _chromium(profile: Path) -> WebDriver:
    # `make test` installs them; without them this is a failure to see, not a skip to miss.
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "needs Debian's chromium and chromedriver at /usr/bin (`make test` installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # No internet here: these keep chromium from lookups that would hang or fail.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                            options=options)


def _shown(d: WebDriver, css: str) -> WebElement | bool:
    try:
        return next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                     if e.is_displayed() and e.is_enabled()), False)
    except StaleElementReferenceException:
        return False


def _click(d: WebDriver, css: str) -> None:
    def go(d: WebDriver) -> bool:
        el = _shown(d, css)
        if not isinstance(el, WebElement):
            return False
        try:
            el.click()
        except (ElementNotInteractableException, ElementClickInterceptedException,
                StaleElementReferenceException, NoSuchElementException):
            return False
        return True
    WebDriverWait(d, 20, poll_frequency=0.1).until(go, message=f"could not click {css}")


def _settled(d: WebDriver, css: str) -> Callable[[WebDriver], bool]:
    """A wait condition: the element is shown and at the same place as at the last poll."""
    last: list[object] = [None]

    def check(d: WebDriver) -> bool:
        el = _shown(d, css)
        where = el.rect if isinstance(el, WebElement) else None
        steady = where is not None and where == last[0]
        last[0] = where
        return steady
    return check


def _open_signal_dialog(d: WebDriver) -> WebElement | bool:
    """One step towards the dialog per call (the menu animates, the page loads late):
    More Actions, then Send a Signal; the dialog's name box once it is there."""
    if d.find_elements(By.CSS_SELECTOR, "dialog[data-testid=signal-confirmation-modal][open]"):
        # A list of the workflow's signals when a worker answers the UI's metadata query,
        # else a text box. (The dialog may still be fading in.)
        return (_shown(d, "[data-testid=signal-select-button]")
                or _shown(d, "[data-testid=signal-name]"))
    for css in ("[data-testid=signal-button]",                  # Send a Signal
                "button[aria-controls=workflow-actions]"):      # More Actions
        el = _shown(d, css)
        if isinstance(el, WebElement):
            try:
                el.click()
            except (ElementNotInteractableException, ElementClickInterceptedException,
                    StaleElementReferenceException):
                pass
            return False
    return False


def send_signal_by_clicking(ui_url: str, profile: Path, h: Handle, name: str,
                            typed: str) -> None:
    """What docs/approvals.md tells an approver to do, done by chromium in the Web UI itself."""
    d = _chromium(profile)
    try:
        d.get(f"{ui_url}/namespaces/{NAMESPACE}/workflows/{quote(h.id, safe='')}/"
              f"{h.result_run_id}/history")
        name_box = WebDriverWait(d, 20, poll_frequency=0.3).until(
            _open_signal_dialog, message="the Send a Signal dialog did not open")
        assert isinstance(name_box, WebElement)
        if name_box.get_attribute("data-testid") == "signal-select-button":
            name_box.click()                                      # Signal name: pick it
            option = WebDriverWait(d, 20).until(lambda d: next(
                (o for o in d.find_elements(By.CSS_SELECTOR, "#signal-select-select li")
                 if o.is_displayed() and o.text.strip() == name), False),
                message=f"{name!r} is not among the signals the UI offers")
            assert isinstance(option, WebElement)
            option.click()
        else:
            name_box.send_keys(name)                              # Signal name: type it
        data = WebDriverWait(d, 20).until(
            lambda d: _shown(d, "#modal-content-signal-confirmation-modal [role=textbox]"))
        assert isinstance(data, WebElement)
        data.click()
        data.send_keys(typed)                                     # Input → Data
        # Leaving the editor re-formats the JSON and the dialog grows: click Submit only
        # once it has stopped moving. json/plain is the default encoding.
        _click(d, "#modal-title-signal-confirmation-modal")
        WebDriverWait(d, 20, poll_frequency=0.2).until(
            _settled(d, "[data-testid=confirm-modal-button]"), message="Submit kept moving")
        _click(d, "[data-testid=confirm-modal-button]")           # Submit
        WebDriverWait(d, 20).until(
            lambda d: not _shown(d, "#modal-content-signal-confirmation-modal"),
            message="the signal dialog did not close")
    finally:
        d.quit()


async def test_clicking_send_a_signal_in_the_web_ui_approves_the_run(
        temporal_with_ui: EmbeddedTemporal, served: tuple[Settings, Client], ledger: Ledger,
        world: RefundWorld, tmp_path: Path) -> None:
    """docs/approvals.md's steps in the real Web UI, driven by headless chromium: More Actions →
    Send a Signal → name ``approve``, data ``{"approval_id": ..., "by": "alice"}`` → Submit."""
    settings, client = served
    h = await start_refund(client, settings, "Refund €300 on ORD-1005, headphones stopped working")
    p = await wait_pending(h)
    assert temporal_with_ui.ui_url is not None
    await asyncio.to_thread(
        send_signal_by_clicking, temporal_with_ui.ui_url, tmp_path / "chromium", h, "approve",
        json.dumps({"approval_id": p.approval_id, "by": "alice", "note": "sent from the UI"}))

    result = await asyncio.wait_for(h.result(), 30)
    assert (result.status, result.approvals) == ("completed", 1), result
    assert world.order("ORD-1005").refunded_cents == 30000
    trail = await ledger.trail(h.id)
    assert [(d.decision, d.actor, d.reason) for d in trail.decisions
            if d.kind == "approval_decided"] == [("approved", "alice", "sent from the UI")]
