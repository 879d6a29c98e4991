"""The approvals inbox in a real headless browser, against the real API and real waiting runs.

Debian's chromium, driven by its chromedriver through selenium, loads ``/inbox`` from the API
app (uvicorn on a free loopback port, in this process) that talks to the test stack; a worker
serves the ``refund`` reference agent, whose refunds above 50 EUR wait for an approver. Every
pin looks at the outcome a person cares about: the run finished, the refund exists (or not)
with the amounts the approver chose, and the ledger names the token's ``sub`` as the approver.

Selenium is blocking, and the worker and the API run on this event loop, so every browser
call goes through ``asyncio.to_thread``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from _waits import wait_pending
from pydantic import SecretStr
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from temporalio.client import Client, WorkflowHandle

from stead.agents.refund import RefundWorld, refund_agent
from stead.api import ApiServer, Role, create_app, issue_token
from stead.authoring.agent import AgentCatalog
from stead.client import start_run
from stead.contracts.models import RunRequest, RunResult
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(autouse=True, scope="module")
def _browser_installed() -> None:
    # `make test` installs them; without them this is a failure to see, not a skip to miss.
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs Debian's chromium and chromedriver at /usr/bin (`make test` "
                    "installs them: apt-get install chromium chromium-driver)")

TENANT = "acme"
SECRET = "inbox-test-secret-" + "x" * 32
WAIT = 20.0
"""Longest any single browser wait may take (seconds)."""

T = TypeVar("T")
Handle = WorkflowHandle[Any, RunResult]


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Scene:
    settings: Settings
    client: Client
    world: RefundWorld
    api: ApiServer
    browser: WebDriver

    @property
    def inbox_url(self) -> str:
        return f"{self.api.url}/inbox"


def token(*roles: Role, sub: str = "alice", tenant: str = TENANT, secret: str = SECRET,
          ttl: timedelta = timedelta(hours=1), now: datetime | None = None) -> str:
    return issue_token(secret, sub=sub, tenant=tenant, roles=roles, ttl=ttl, now=now)


@pytest.fixture(scope="module")
def world_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stead-inbox-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_profile() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stead-chromium-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _chromium(profile: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # No internet here: these keep chromium from lookups that would hang or fail.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


@pytest.fixture(scope="module")
async def scene(stack: EmbeddedStack, world_dir: Path,
                browser_profile: Path) -> AsyncIterator[Scene]:
    settings = stack.resolved_settings().replace(
        task_queue=f"test-{uuid.uuid4().hex[:10]}",
        memory_backend="off",
        api_secret=SecretStr(SECRET))
    world = RefundWorld(world_dir / "refund-world.sqlite")
    async with WorkerHost(settings, AgentCatalog([refund_agent(world)])) as host:
        assert host.client is not None
        app = create_app(settings, client=host.client, agents=["refund"])
        async with ApiServer(app, host="127.0.0.1", port=0) as api:
            driver = await asyncio.to_thread(_chromium, browser_profile)
            try:
                yield Scene(settings, host.client, world, api, driver)
            finally:
                await asyncio.to_thread(driver.quit)


# ---------------------------------------------------------------------------- browser helpers


async def b(fn: Callable[..., T], *args: Any) -> T:
    """Run one blocking browser step off the event loop (the worker lives on it)."""
    return await asyncio.to_thread(fn, *args)


def by_testid(testid: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'[data-testid="{testid}"]'


def until(driver: WebDriver, what: str, check: Callable[[WebDriver], T]) -> T:
    def probe(d: WebDriver) -> T | bool:
        try:
            return check(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
    found = WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        probe, message=f"waited {WAIT:.0f}s for {what}")
    return cast(T, found)


def visible(within: WebDriver | WebElement, testid: str) -> WebElement | bool:
    el = within.find_element(*by_testid(testid))
    return el if el.is_displayed() else False


def card_of(driver: WebDriver, workflow_id: str) -> WebElement:
    return driver.find_element(
        By.CSS_SELECTOR, f'[data-testid="approval"][data-workflow-id="{workflow_id}"]')


def field(card: WebElement, testid: str) -> WebElement:
    return card.find_element(*by_testid(testid))


def no_card(driver: WebDriver, workflow_id: str) -> bool:
    return not driver.find_elements(
        By.CSS_SELECTOR, f'[data-testid="approval"][data-workflow-id="{workflow_id}"]')


def sign_in(driver: WebDriver, url: str, text: str) -> None:
    """Fresh tab state (no stored token), then paste ``text`` into the token form."""
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    box = until(driver, "the token form", lambda d: visible(d, "token-input"))
    assert isinstance(box, WebElement)
    box.send_keys(text)
    driver.find_element(*by_testid("token-submit")).click()


def open_inbox(scene: Scene) -> None:
    sign_in(scene.browser, scene.inbox_url, token("approver"))
    until(scene.browser, "the live stream",
          lambda d: d.find_element(*by_testid("connection")).get_attribute("data-mode")
          == "live")


def banner_text(driver: WebDriver) -> str:
    el = until(driver, "the error banner", lambda d: visible(d, "error-banner"))
    assert isinstance(el, WebElement)
    return el.text


# ---------------------------------------------------------------------------- run helpers


async def start_refund(scene: Scene, text: str, *, tenant: str = TENANT) -> Handle:
    return await start_run(scene.client, RunRequest(agent="refund", input=text, tenant=tenant),
                           temporal=scene.settings.temporal)




async def decisions(ledger: Ledger, h: Handle) -> list[tuple[str, str, str]]:
    trail = await ledger.trail(h.id)
    return [(d.decision, d.actor, d.reason) for d in trail.decisions
            if d.kind == "approval_decided"]


def refunds_of(world: RefundWorld, order_id: str) -> list[int]:
    return [r["amount_cents"] for r in world.refunds() if r["order_id"] == order_id]


# ---------------------------------------------------------------------------- tests


async def test_bad_tokens_show_an_error_banner_and_ask_again(scene: Scene) -> None:
    d = scene.browser

    await b(sign_in, d, scene.inbox_url, token("approver", secret="another-key-" + "y" * 32))
    text = await b(banner_text, d)
    assert "401" in text and "signature" in text, text
    assert await b(visible, d, "token-form")

    past = datetime.now(UTC) - timedelta(hours=2)
    await b(sign_in, d, scene.inbox_url, token("approver", ttl=timedelta(hours=1), now=past))
    text = await b(banner_text, d)
    assert "401" in text and "expired" in text, text

    await b(sign_in, d, scene.inbox_url, token("requester"))
    text = await b(banner_text, d)
    assert "403" in text and "approver" in text, text
    assert await b(visible, d, "token-form")

    # Not a token at all: said next to the field, nothing sent.
    await b(sign_in, d, scene.inbox_url, "hello there")
    error = await b(until, d, "the token error", lambda d: visible(d, "token-error"))
    assert isinstance(error, WebElement) and "token" in error.text


async def test_approve_click_approves_the_waiting_run_as_the_token_subject(
        scene: Scene, ledger: Ledger) -> None:
    d = scene.browser
    h = await start_refund(scene, "Refund €300 on ORD-1005, headphones stopped working")
    pending = await wait_pending(h)
    await b(open_inbox, scene)

    card = await b(until, d, "the waiting run's card", lambda d: card_of(d, h.id))
    shown = {k: await b(lambda k=k: field(card, k).text) for k in (
        "tool", "agent", "request", "approval-id", "risk", "arguments", "factors", "steps",
        "countdown", "awaiting")}
    assert (shown["tool"], shown["agent"], shown["approval-id"], shown["awaiting"]) == (
        "issue_refund", "refund", pending.approval_id, "support-lead")
    assert shown["request"] == "Refund €300 on ORD-1005, headphones stopped working"
    assert json.loads(shown["arguments"]) == pending.arguments == {
        "order_id": "ORD-1005", "amount": 300.0, "reason": "headphones stopped working"}
    assert shown["risk"] == f"{pending.risk:.2f}" == "0.85"
    assert "refund above 50 EUR" in shown["factors"], shown["factors"]
    assert "lookup_order" in shown["steps"], shown["steps"]
    assert re.fullmatch(r"\(in \d+ min \d+ s\)", shown["countdown"]), shown["countdown"]
    # The countdown is live: it changes without any reload.
    await b(until, d, "the countdown to tick",
            lambda d: field(card_of(d, h.id), "countdown").text != shown["countdown"])

    await b(lambda: field(card, "note").send_keys("receipt checked"))
    await b(lambda: field(card, "approve").click())
    await b(until, d, "the decided card to go", lambda d: no_card(d, h.id))
    flash = await b(lambda: d.find_element(*by_testid("flash")).text)
    assert flash.startswith("Approved issue_refund"), flash

    result = await asyncio.wait_for(h.result(), 30)
    assert (result.status, result.approvals) == ("completed", 1), result
    assert refunds_of(scene.world, "ORD-1005") == [30000]
    assert await decisions(ledger, h) == [("approved", "alice", "receipt checked")]


async def test_edit_and_approve_runs_the_tool_with_the_edited_arguments(
        scene: Scene, ledger: Ledger) -> None:
    d = scene.browser
    h = await start_refund(scene, "Refund €200 on ORD-1004, the battery is dead")
    pending = await wait_pending(h)
    await b(open_inbox, scene)
    card = await b(until, d, "the waiting run's card", lambda d: card_of(d, h.id))

    await b(lambda: field(card, "edit").click())
    editor = await b(lambda: field(card, "edit-arguments"))
    assert json.loads(await b(lambda: editor.get_attribute("value") or "")) == pending.arguments

    # Not JSON: refused in the page, nothing sent, the run still waits.
    await b(editor.clear)
    await b(editor.send_keys, '{"order_id": "ORD-1004", "amount": 150,')
    await b(lambda: field(card, "edit-submit").click())
    error = await b(until, d, "the JSON error", lambda d: visible(card, "edit-error"))
    assert isinstance(error, WebElement) and "Not valid JSON" in error.text, error
    assert (await wait_pending(h)).approval_id == pending.approval_id

    edited = {**pending.arguments, "amount": 150}
    await b(editor.clear)
    await b(editor.send_keys, json.dumps(edited, indent=2))
    await b(lambda: field(card, "edit-submit").click())
    await b(until, d, "the decided card to go", lambda d: no_card(d, h.id))

    result = await asyncio.wait_for(h.result(), 30)
    assert result.status == "completed", result
    assert [(c.tool, c.arguments["amount"], c.status) for c in result.tool_calls
            if c.tool == "issue_refund"] == [("issue_refund", 150, "ok")]
    assert refunds_of(scene.world, "ORD-1004") == [15000]
    assert [(dec, actor) for dec, actor, _ in await decisions(ledger, h)] == [
        ("approved", "alice")]


async def test_a_new_run_appears_live_as_text_and_reject_denies_it(
        scene: Scene, ledger: Ledger) -> None:
    d = scene.browser
    await b(open_inbox, scene)
    await b(d.execute_script, "window.__sameDocument = true")

    # Requests come from end users: markup in them is shown as text, never run.
    text = "Refund €400 on ORD-1002, <img src=x onerror='window.__pwned=1'> desks scratched"
    h = await start_refund(scene, text)
    card = await b(until, d, "the new run's card, pushed live", lambda d: card_of(d, h.id))
    assert await b(d.execute_script, "return window.__sameDocument === true"), "page reloaded"
    assert await b(lambda: field(card, "request").text) == text
    assert await b(lambda: card.find_elements(By.TAG_NAME, "img")) == []
    assert await b(d.execute_script, "return window.__pwned === undefined")

    await b(lambda: field(card, "note").send_keys("duplicate claim"))
    await b(lambda: field(card, "reject").click())
    await b(until, d, "the decided card to go", lambda d: no_card(d, h.id))

    result = await asyncio.wait_for(h.result(), 30)
    assert (result.status, result.denials) == ("denied", 1), result
    assert "duplicate claim" in (result.answer or "")
    assert refunds_of(scene.world, "ORD-1002") == []
    assert await decisions(ledger, h) == [("rejected", "alice", "duplicate claim")]


async def test_a_decision_the_run_refuses_is_explained_on_the_card(scene: Scene) -> None:
    """A token whose approval role the policy does not allow: the run's refusal shows on the
    card (the run keeps waiting). Then an edit over the hard limit: the gate denies it, the
    page says so, and nothing is refunded."""
    d = scene.browser
    h = await start_refund(scene, "Refund €500 on ORD-1002, one desk arrived broken")
    pending = await wait_pending(h)

    intern = issue_token(SECRET, sub="ivan", tenant=TENANT, roles=["approver"],
                         approval_role="intern")
    await b(sign_in, d, scene.inbox_url, intern)
    card = await b(until, d, "the waiting run's card", lambda d: card_of(d, h.id))
    await b(lambda: field(card, "approve").click())
    error = await b(until, d, "the card's error", lambda d: visible(card, "item-error"))
    assert isinstance(error, WebElement)
    assert "403" in error.text and "may not decide" in error.text, error.text
    assert await b(lambda: field(card, "approve").is_enabled())
    assert (await wait_pending(h)).approval_id == pending.approval_id

    await b(open_inbox, scene)
    card = await b(until, d, "the waiting run's card", lambda d: card_of(d, h.id))
    await b(lambda: field(card, "edit").click())
    editor = await b(lambda: field(card, "edit-arguments"))
    await b(editor.clear)
    await b(editor.send_keys, json.dumps({**pending.arguments, "amount": 5000}))
    await b(lambda: field(card, "edit-submit").click())
    await b(until, d, "the decided card to go", lambda d: no_card(d, h.id))
    flash = await b(lambda: d.find_element(*by_testid("flash")))
    assert "denied by the policy" in await b(lambda: flash.text)
    assert await b(flash.get_attribute, "data-kind") == "warning"

    result = await asyncio.wait_for(h.result(), 30)
    assert result.status == "denied", result
    assert refunds_of(scene.world, "ORD-1002") == []


async def test_without_the_event_stream_the_inbox_polls_and_reports_lost_connections(
        scene: Scene) -> None:
    """The browser itself blocks requests. With the API unreachable the page says so in a
    banner; with only ``/v1/events`` blocked it polls ``/v1/approvals``, the banner goes, and
    a new run shows up and can be approved. The token survives the reload (asked once)."""
    d = scene.browser
    await b(open_inbox, scene)
    await b(d.execute_cdp_cmd, "Network.enable", {})
    await b(d.execute_cdp_cmd, "Network.setBlockedURLs",
            {"urls": ["*/v1/events*", "*/v1/approvals"]})
    try:
        await b(d.refresh)
        text = await b(banner_text, d)
        assert "Cannot reach the stead API" in text, text
        assert not await b(visible, d, "token-form")  # asked once per tab
        status = await b(until, d, "polling mode", lambda d: (
            el := d.find_element(*by_testid("connection")))
            .get_attribute("data-mode") == "polling" and el)
        assert isinstance(status, WebElement) and "polling every 2 s" in status.text

        await b(d.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": ["*/v1/events*"]})
        await b(until, d, "the banner to clear",
                lambda d: not d.find_element(*by_testid("error-banner")).is_displayed())
        h = await start_refund(scene, "Refund €60 on ORD-1001, two mugs arrived broken")
        card = await b(until, d, "the new run's card, polled", lambda d: card_of(d, h.id))
        await b(lambda: field(card, "approve").click())
        await b(until, d, "the decided card to go", lambda d: no_card(d, h.id))
        result = await asyncio.wait_for(h.result(), 30)
        assert result.status == "completed", result
        assert refunds_of(scene.world, "ORD-1001") == [6000]
    finally:
        await b(d.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})


# ---------------------------------------------------------------------------- a run's answer

LONG_ANSWER = " ".join(f"Word{i} of the answer, written as the model goes." for i in range(12))


async def test_a_followed_run_shows_its_answer_as_the_model_writes_it(
        scene: Scene, tmp_path: Path) -> None:
    """A run whose model streams from the fake OpenAI server (word by word, 30 ms apart): the
    run appears in the page's list, Follow opens its stream, the answer grows on screen while
    the model writes it, then the result shows. The model starts writing only once the page
    follows, so the page sees it being written, not only its end."""
    from stead.authoring.agent import Agent
    from stead.contracts.models import ModelTurn
    from stead.integrations.llm import OpenAIModel, ScriptedModel
    from stead.testing.openai_server import ChatRequest, FakeOpenAIServer

    d = scene.browser
    following = asyncio.Event()

    async def respond(_: ChatRequest) -> ModelTurn:
        await asyncio.wait_for(following.wait(), 60)
        return ModelTurn(content=LONG_ANSWER)

    settings = scene.settings.replace(task_queue=f"test-{uuid.uuid4().hex[:10]}")
    writer = Agent(name="writer", instructions="Answer in words.", tools=[],
                   offline_model=ScriptedModel([ModelTurn(content="offline")]))
    async with FakeOpenAIServer(respond, chunk_delay=0.03) as server:
        model = OpenAIModel(model="gpt-4o-mini", api_key="sk-test", base_url=server.base_url)
        async with WorkerHost(settings, AgentCatalog([writer]), model=model) as host:
            assert host.client is not None
            app = create_app(settings, client=host.client, poll_seconds=0.2)
            async with ApiServer(app, host="127.0.0.1", port=0) as api:
                await b(sign_in, d, f"{api.url}/inbox", token("approver"))
                h = await start_run(host.client, RunRequest(agent="writer", input="write",
                                                            tenant=TENANT),
                                    temporal=settings.temporal)
                row = await b(until, d, "the run in the list", lambda d: d.find_element(
                    By.CSS_SELECTOR, f'[data-testid="run"][data-workflow-id="{h.id}"]'))
                await b(lambda: row.find_element(*by_testid("run-follow")).click())
                await b(until, d, "the run's stream to be live", lambda d: d.find_element(
                    *by_testid("run-panel")).get_attribute("data-state") == "streaming")
                following.set()

                def answer_text(d: WebDriver) -> str:
                    return d.find_element(By.CSS_SELECTOR, '[data-testid="run-messages"] '
                                          'li:last-child [data-testid="run-message-text"]').text

                partial = await b(until, d, "part of the answer, still being written",
                                  lambda d: (t := answer_text(d)) and t != LONG_ANSWER and t)
                result = await b(until, d, "the result", lambda d: visible(d, "run-result"))
                assert isinstance(result, WebElement)
                # The answer is on screen already: the result line does not repeat it.
                assert await b(lambda: result.text) == "completed in 1 step"
                assert await b(answer_text, d) == LONG_ANSWER
                assert await b(lambda: d.find_element(*by_testid("run-panel"))
                               .get_attribute("data-state")) == "done"
                assert await b(d.execute_script, "return location.hash") == f"#run={h.id}"
                steps = await b(lambda: d.find_element(*by_testid("run-steps")).text)
                assert "model gpt-4o-mini: ok" in steps, steps
    assert isinstance(partial, str) and LONG_ANSWER.startswith(partial.strip()), partial
    assert len(partial) < len(LONG_ANSWER)
    assert (await asyncio.wait_for(h.result(), 30)).answer == LONG_ANSWER
