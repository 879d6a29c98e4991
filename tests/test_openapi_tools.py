"""OpenAPI tools against a real HTTP service: ``stead.testing.flaky_api`` served by uvicorn in
its own process, its OpenAPI document read from ``/openapi.json``.

What is pinned: documents become tools with the right schemas and declarations (FastAPI's 3.1
and a hand-written 3.0 YAML), bad documents and settings fail naming what is wrong, each HTTP
outcome maps to the right retryable or final error, runs call the tools end to end with the
``Idempotency-Key`` the ledger claimed, 429 (``Retry-After`` waited out) and 503 are retried, a
4xx reaches the model, and a POST whose worker is SIGKILLed after the effect takes effect once.

Run as a script, this module is a worker (settings from the environment) serving the ``shop``
agent, whose tools come from ``STEAD_OPENAPI_SOURCES``: the SIGKILL test's killable worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from _procs import ROOT, WorkerProcess, worker_env
from pydantic import SecretStr, ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import Tool, ToolContext, validate_arguments
from stead.client import connect, start_run
from stead.contracts.models import (
    ApprovalDecision,
    Message,
    ModelTurn,
    PendingApproval,
    RunRequest,
    RunResult,
    RunState,
    Timeouts,
    ToolCall,
    ToolSchema,
    Trail,
)
from stead.errors import SettingsError
from stead.guardrails.calls import check_call
from stead.integrations.llm import FunctionModel, ModelClient, ScriptedModel, call, tool_history
from stead.integrations.openapi import (
    HTTP_CLIENT_ERROR,
    HTTP_SERVER_ERROR,
    HTTP_TIMEOUT,
    HTTP_UNREACHABLE,
    RATE_LIMITED,
    UNEXPECTED_RESPONSE,
    OpenAPIAuth,
    OpenAPIError,
    ToolOverride,
    load_document,
    openapi_tools,
    with_openapi_sources,
)
from stead.security.secrets import Secrets
from stead.settings import Settings, load_settings
from stead.stack.embedded import free_port
from stead.storage.ledger import Ledger
from stead.testing.flaky_api import FlakyControl

TOKEN = "flaky-bearer-token-0123456789"
API_KEY = "flaky-api-key-0123456789"
ALL_OPERATIONS = ["listOrders", "getOrder", "createOrder", "setOrderStatus", "cancelOrder"]
THIS_SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def flaky_url() -> Iterator[str]:
    """``python -m stead.testing.flaky_api`` on a free loopback port, requiring TOKEN (or
    API_KEY) on every API call."""
    port = free_port()
    env = {**os.environ, "FLAKY_API_TOKEN": TOKEN, "FLAKY_API_KEY": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "stead.testing.flaky_api", "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"flaky API exited with {proc.returncode}: {err}")
            try:
                if httpx.get(url + "/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("flaky API did not come up within 30 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def document(flaky_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's own OpenAPI document (FastAPI's, OpenAPI 3.1), saved as a JSON file."""
    path = tmp_path_factory.mktemp("openapi") / "orders.json"
    path.write_text(httpx.get(flaky_url + "/openapi.json", timeout=10).text)
    return path


@pytest.fixture
async def flaky(flaky_url: str) -> AsyncIterator[FlakyControl]:
    """The service, emptied for this test (orders, calls, faults, idempotency keys)."""
    async with FlakyControl(flaky_url) as control:
        await control.reset()
        yield control


def shop_tools(document: Path, base_url: str, *, operations: Sequence[str] = ALL_OPERATIONS,
               auth: OpenAPIAuth | None = None,
               overrides: dict[str, ToolOverride] | None = None) -> dict[str, Tool[Any, Any]]:
    tools = openapi_tools(document, operations=operations, base_url=base_url,
                          auth=auth or OpenAPIAuth(bearer_secret="shop_token"),
                          overrides=overrides)
    return {t.name: t for t in tools}


def ctx_for(t: Tool[Any, Any], *, key: str = "wf-1:1:tool", attempt: int = 1) -> ToolContext:
    """What the tool activity would hand the tool: its declared secrets, resolved."""
    secrets = Secrets({"shop_token": TOKEN, "shop_key": API_KEY})
    return ToolContext(idempotency_key=key, attempt=attempt, workflow_id="wf-1", run_id="r-1",
                       tenant="default", secrets=secrets.for_tool(t.name, t.secrets))


async def invoke(t: Tool[Any, Any], arguments: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    out = await t(validate_arguments(t, arguments), ctx_for(t, **ctx))
    return dict(out.model_dump(mode="json"))


async def failure(t: Tool[Any, Any], arguments: dict[str, Any], **ctx: Any
                  ) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await invoke(t, arguments, **ctx)
    return info.value


@contextlib.asynccontextmanager
async def shop_worker(settings: Settings, tools: Sequence[Tool[Any, Any]],
                      model: ModelClient) -> AsyncIterator[Client]:
    """An in-process worker serving the ``shop`` agent with these tools and this model."""
    agent = Agent(name="shop", instructions="Run the order desk with the order API.",
                  tools=list(tools), offline_model=model, max_steps=12)
    s = settings.replace(secrets={"shop_token": SecretStr(TOKEN)})
    from stead.worker import WorkerHost

    async with WorkerHost(s, AgentCatalog([agent])) as host:
        assert host.client is not None
        yield host.client


async def approve_when_pending(h: WorkflowHandle[Any, RunResult]) -> PendingApproval:
    """Play the approver: approve the run's first pending approval (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = await h.query("state", result_type=RunState)
        if state.pending_approvals:
            pending = state.pending_approvals[0]
            await h.signal("approve", ApprovalDecision(approval_id=pending.approval_id,
                                                       by="shop-lead"))
            return pending
        await asyncio.sleep(0.05)
    raise AssertionError("no approval was requested within 30 s")


def attempts(trail: Trail, tool: str) -> list[tuple[Any, ...]]:
    return [(a.attempt, a.status, a.error_type) for a in trail.tool_attempts
            if a.tool == tool]


# --------------------------------------------------------------------------- documents → tools


def test_service_document_becomes_tools_declared_by_method(document: Path,
                                                           flaky_url: str) -> None:
    """FastAPI's 3.1 document: names and descriptions from the operations, side effect by
    method, a declared Idempotency-Key makes a POST idempotent and is not an argument, the
    JSON body is the ``body`` argument with its $refs in $defs, the output schema describes
    status and the 2xx body."""
    tools = shop_tools(document, flaky_url)
    declared = {n: (t.side_effect, t.idempotent, t.risk) for n, t in tools.items()}
    assert declared == {
        "listOrders": ("read", True, "low"),
        "getOrder": ("read", True, "low"),
        # POST is irreversible; the service declares Idempotency-Key, so a lost call may be
        # re-sent with the same key instead of escalated.
        "createOrder": ("irreversible", True, "medium"),
        "setOrderStatus": ("write", True, "low"),
        "cancelOrder": ("write", True, "low"),
    }
    create = tools["createOrder"]
    assert create.description.startswith("Place an order\n\nCharges the customer")
    assert create.secrets == ("shop_token",)
    params = create.parameters()
    assert set(params["properties"]) == {"body"}  # no Idempotency-Key argument
    assert params["required"] == ["body"]
    assert params["properties"]["body"] == {"$ref": "#/$defs/NewOrder"}
    assert params["$defs"]["NewOrder"]["required"] == ["item", "quantity"]
    assert params["additionalProperties"] is False
    assert set(tools["setOrderStatus"].parameters()["properties"]) == {"order_id", "body"}
    listing = tools["listOrders"].parameters()
    assert set(listing["properties"]) == {"status", "limit"} and "required" not in listing
    out = tools["listOrders"].output_model.model_json_schema()
    assert out["properties"]["body"]["items"] == {"$ref": "#/$defs/Order"}
    assert "Order" in out["$defs"]
    # The workflow's gate checks calls with these schemas; $defs resolve there too.
    plans = {t.name: t.plan() for t in tools.values()}
    ok = check_call(ToolCall(id="c1", name="createOrder",
                             arguments='{"body": {"item": "anvil", "quantity": 2}}'), plans)
    assert ok.error is None
    bad = check_call(ToolCall(id="c2", name="createOrder",
                              arguments='{"body": {"item": "anvil", "quantity": 0}}'), plans)
    assert bad.kind == "invalid_arguments" and "quantity" in (bad.error or "")
    with pytest.raises(ValidationError, match="Additional properties"):
        validate_arguments(tools["getOrder"], {"order_id": "ord-1", "expand": True})


CATALOG_30 = """\
openapi: 3.0.3
info: {title: catalog, version: "1"}
servers:
  - url: https://{region}.catalog.example/v1
    variables: {region: {default: eu}}
paths:
  /items/{item_id}:
    parameters:
      - $ref: '#/components/parameters/ItemId'
    get:
      operationId: getItem
      summary: Get an item
      parameters:
        - {name: fields, in: query, style: form, explode: false,
           schema: {type: array, items: {type: string}}}
        - {name: X-Trace, in: header, schema: {type: string}}
        - {name: Authorization, in: header, schema: {type: string}}
      responses:
        200:
          description: the item
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Category'}
        404: {description: no such item}
    patch:
      operationId: renameItem
      description: Rename or reprice an item.
      requestBody:
        required: true
        content:
          application/merge-patch+json:
            schema:
              type: object
              properties:
                name: {type: string, nullable: true}
                price: {type: number, minimum: 0, exclusiveMinimum: true}
                kind: {type: string, enum: [a, b], nullable: true}
      responses:
        204: {description: renamed}
  /items/{item_id}/label:
    parameters: [{$ref: '#/components/parameters/ItemId'}]
    get:
      operationId: itemLabel
      responses:
        200: {description: label, content: {text/plain: {schema: {type: string}}}}
components:
  parameters:
    ItemId: {name: item_id, in: path, required: true, schema: {type: integer, minimum: 1}}
  schemas:
    Category:
      type: object
      required: [name]
      properties:
        name: {type: string, example: tools}
        since: {type: string, format: date, default: 2024-01-01}
        parent: {$ref: '#/components/schemas/Category'}
        children: {type: array, items: {$ref: '#/components/schemas/Category'}}
"""


async def test_openapi_30_yaml_is_converted_and_called_as_declared(tmp_path: Path) -> None:
    """A 3.0 YAML document: path-level $ref parameters, nullable and boolean
    exclusiveMinimum in JSON Schema 2020-12 terms, a recursive schema kept as $defs, the
    server URL's variables, arrays in the query, header parameters, a non-JSON media type for
    the body, a text response and an empty 204 — sent and read as the document says."""
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_30)
    seen: list[httpx.Request] = []
    category = {"name": "tools", "children": [{"name": "saws", "parent": {"name": "tools"}}]}

    def service(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/label"):
            return httpx.Response(200, text="HAMMER-7", headers={"content-type": "text/plain"})
        if request.method == "PATCH":
            return httpx.Response(204)
        if request.url.path.endswith("/9"):
            return httpx.Response(200, json={"children": []})  # no name: not a Category
        return httpx.Response(200, json=category)

    tools = {t.name: t for t in openapi_tools(
        path, operations=["getItem", "renameItem", "itemLabel"],
        transport=httpx.MockTransport(service))}
    get = tools["getItem"].parameters()
    assert get["required"] == ["item_id"]
    assert get["properties"]["item_id"] == {"type": "integer", "minimum": 1}
    assert set(get["properties"]) == {"item_id", "fields", "X-Trace"}  # Authorization is ours
    rename = tools["renameItem"]
    assert (rename.side_effect, rename.idempotent) == ("irreversible", False)
    assert rename.description == "Rename or reprice an item."
    body = rename.parameters()["properties"]["body"]["properties"]
    assert body["name"] == {"type": ["string", "null"]}
    assert body["price"] == {"type": "number", "exclusiveMinimum": 0}
    assert body["kind"] == {"type": ["string", "null"], "enum": ["a", "b", None]}
    out = tools["getItem"].output_model.model_json_schema()
    assert out["$defs"]["Category"]["properties"]["children"]["items"] == \
        {"$ref": "#/$defs/Category"}
    assert out["$defs"]["Category"]["properties"]["since"]["default"] == "2024-01-01"
    assert "example" not in out["$defs"]["Category"]["properties"]["name"]
    with pytest.raises(ValidationError, match="minimum"):
        validate_arguments(tools["getItem"], {"item_id": 0})

    got = await invoke(tools["getItem"], {"item_id": 7, "fields": ["name", "parent"],
                                          "X-Trace": "t-1"}, key="wf-9:3:getItem")
    assert got == {"status": 200, "body": category}
    sent = seen[-1]
    assert str(sent.url).startswith("https://eu.catalog.example/v1/items/7?")
    assert sent.url.params["fields"] == "name,parent"
    assert sent.headers["X-Trace"] == "t-1"
    assert sent.headers["Idempotency-Key"] == "wf-9:3:getItem"
    assert "authorization" not in sent.headers  # no auth declared, none sent

    renamed = await invoke(rename, {"item_id": 7, "body": {"name": None, "price": 2.5}})
    assert renamed == {"status": 204, "body": None}
    assert seen[-1].headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(seen[-1].content) == {"name": None, "price": 2.5}

    assert await invoke(tools["itemLabel"], {"item_id": 7}) == {"status": 200,
                                                                "body": "HAMMER-7"}
    err = await failure(tools["getItem"], {"item_id": 9})
    assert err.type == UNEXPECTED_RESPONSE and err.non_retryable
    assert "does not match the document's schema" in err.message
    assert "'name' is a required property" in err.message


def _doc(**paths: Any) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "servers": [{"url": "https://api.example"}], "paths": paths}


def _op(operation_id: str, **more: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "responses": {"200": {"description": "ok"}}, **more}


@pytest.mark.parametrize(("document", "operations", "message"), [
    ({"swagger": "2.0", "paths": {}}, ["x"], "no 'openapi' version field (Swagger 2.0"),
    ({"openapi": "4.0.0", "paths": {}}, ["x"], "is OpenAPI 4.0.0; stead reads 3.0.x and 3.1.x"),
    ({"openapi": "3.1.0"}, ["x"], "has no 'paths' object"),
    (_doc(**{"/a": {"get": _op("getA")}}), ["getB"],
     "unknown operationId(s) 'getB'; the document has: getA"),
    (_doc(**{"/a": {"get": _op("getA")}}), [], "choose the operations to expose"),
    (_doc(**{"/a": {"get": _op("getA")}, "/b": {"get": _op("getA")}}), ["getA"],
     "operationId 'getA' is used twice (GET /a and GET /b)"),
    (_doc(**{"/a": {"get": _op("getA", parameters=[
        {"name": "sid", "in": "cookie", "schema": {"type": "string"}}])}}), ["getA"],
     "operation 'getA': cookie parameter 'sid': cookie parameters are not supported"),
    (_doc(**{"/a": {"get": _op("getA", parameters=[
        {"name": "f", "in": "query", "schema": {"type": "object"}}])}}), ["getA"],
     "operation 'getA': query parameter 'f': object-valued parameters are not supported"),
    (_doc(**{"/a/{id}": {"get": _op("getA")}}), ["getA"],
     "operation 'getA': path '/a/{id}' has {id} but no path parameter of that name"),
    (_doc(**{"/a": {"post": _op("upload", requestBody={
        "content": {"multipart/form-data": {"schema": {"type": "object"}}}})}}), ["upload"],
     "operation 'upload': the request body is multipart/form-data; only JSON request bodies"),
    (_doc(**{"/a": {"post": _op("postA", requestBody={"content": {"application/json": {
        "schema": {"$ref": "other.yaml#/Thing"}}}})}}), ["postA"],
     "operation 'postA': $ref 'other.yaml#/Thing' points outside the document"),
    (_doc(**{"/a": {"post": _op("postA", requestBody={"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Missing"}}}})}}), ["postA"],
     "operation 'postA': $ref '#/components/schemas/Missing' points at nothing"),
    ({**_doc(**{"/a": {"get": _op("getA")}}), "servers": [{"url": "/api"}]}, ["getA"],
     "operation 'getA': base URL '/api' is not an absolute http(s) URL (the document's "
     "server URL is relative: pass base_url)"),
], ids=["swagger2", "openapi4", "no-paths", "unknown-op", "no-ops", "duplicate-op", "cookie",
        "object-query", "missing-path-param", "multipart", "external-ref", "dangling-ref",
        "relative-server"])
def test_bad_documents_fail_naming_what_and_where(document: dict[str, Any],
                                                  operations: list[str], message: str) -> None:
    with pytest.raises(OpenAPIError) as info:
        openapi_tools(document, operations=operations)
    assert message in str(info.value)


def test_unreadable_documents_and_stray_overrides_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(OpenAPIError, match=r"cannot read OpenAPI document '.*missing.yaml'"):
        load_document(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("openapi: 3.1.0\npaths: {/a: [\n")
    with pytest.raises(OpenAPIError, match=r"broken.yaml' is not valid YAML at line \d+"):
        load_document(broken)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"openapi": "3.1.0",')
    with pytest.raises(OpenAPIError, match=r"bad.json' is not valid JSON: .* at line 1"):
        load_document(bad_json)
    with pytest.raises(OpenAPIError, match="overrides for 'getB', which is not among"):
        openapi_tools(_doc(**{"/a": {"get": _op("getA")}, "/b": {"get": _op("getB")}}),
                      operations=["getA"], overrides={"getB": ToolOverride(risk="high")})


# --------------------------------------------------------------------------- settings


def _source(document: Path | str, **more: Any) -> dict[str, Any]:
    return {"document": str(document), "base_url": "http://127.0.0.1:9",
            "operations": ["getOrder", "createOrder"], "agents": ["shop"],
            "auth": {"bearer_secret": "shop_token"}, **more}


def _shop(*tools: Tool[Any, Any]) -> AgentCatalog:
    model = ScriptedModel([ModelTurn(content="ok")])
    return AgentCatalog([
        Agent(name="shop", instructions="Orders.", tools=list(tools), offline_model=model),
        Agent(name="other", instructions="Other.", tools=[], offline_model=model)])


@pytest.mark.parametrize(("value", "message"), [
    ("{not json", "STEAD_OPENAPI_SOURCES must be JSON"),
    ('{"orders": {"document": "o.json", "agents": ["shop"]}}',
     "STEAD_OPENAPI_SOURCES at orders.operations="),
    ('{"orders": {"document": "o.json", "operations": [], "agents": ["shop"]}}',
     "at least 1 item"),
    ('{"orders": {"document": "o.json", "operations": ["a"], "agents": ["shop"], '
     '"auth": {"bearer_secret": "a_token", "api_key_secret": "a_key"}}}',
     "set exactly one of bearer_secret and api_key_secret"),
    ('{"orders": {"document": "o.json", "operations": ["a"], "agents": ["shop"], '
     '"auth": {"bearer_secret": "Bad-Name"}}}', "secret name 'Bad-Name' must match"),
    ('{"orders": {"document": "o.json", "operations": ["a"], "agents": ["shop"], '
     '"overrides": {"a": {"side_effect": "maybe"}}}}',
     "STEAD_OPENAPI_SOURCES at orders.overrides.a.side_effect="),
    ('{"orders": {"document": "o.json", "operations": ["a"], "agents": ["shop"], '
     '"retries": 3}}', "Extra inputs are not permitted"),
], ids=["not-json", "no-operations", "empty-operations", "two-auths", "bad-secret-name",
        "bad-override", "unknown-key"])
def test_bad_openapi_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                                message: str) -> None:
    monkeypatch.setenv("STEAD_OPENAPI_SOURCES", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "STEAD_OPENAPI_SOURCES" in str(info.value)
    assert message in str(info.value)


def test_settings_sources_add_tools_to_the_named_agents(document: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``with_openapi_sources``: the operations become tools of the agents the source names
    (overrides applied), other agents are untouched; a source naming an agent the worker does
    not serve, a document that cannot be read or a name clash fail naming the source."""
    monkeypatch.setenv("STEAD_OPENAPI_SOURCES", json.dumps({"orders": _source(
        document, overrides={"createOrder": {"name": "place_order", "risk": "high",
                                             "retry": {"max_attempts": 5}}})}))
    catalog = with_openapi_sources(_shop(), load_settings().integrations)
    shop = catalog["shop"]
    assert shop.registry.names() == ["getOrder", "place_order"]
    assert shop.registry["place_order"].risk == "high"
    assert shop.registry["place_order"].retry.max_attempts == 5
    assert catalog["other"].registry.names() == []
    assert with_openapi_sources(_shop(), Settings().integrations).names() == ["other", "shop"]

    def fails(source: dict[str, Any], catalog: AgentCatalog | None = None) -> str:
        s = Settings(openapi_sources={"orders": source})
        with pytest.raises(SettingsError) as info:
            with_openapi_sources(catalog or _shop(), s.integrations)
        text = str(info.value)
        assert text.startswith("invalid setting: STEAD_OPENAPI_SOURCES")
        return text

    assert "agents 'ghost' are not served by this worker (it serves other, shop)" in fails(
        _source(document, agents=["shop", "ghost"]))
    assert "['orders']: cannot read OpenAPI document" in fails(
        _source(document.with_name("nope.json")))
    assert "['orders']: OpenAPI document" in fails(_source(document, operations=["nope"]))
    clash = openapi_tools(document, operations=["getOrder"], base_url="http://127.0.0.1:9")[0]
    other = dataclasses.replace(clash, description="another getOrder")
    assert "rename them with overrides" in fails(_source(document), _shop(other))


# --------------------------------------------------------------------------- HTTP outcomes


async def test_http_outcomes_map_to_retryable_and_final_errors(
        document: Path, flaky_url: str, flaky: FlakyControl) -> None:
    """Against the real service: 2xx → status and body; 4xx final with the body excerpt; 429
    and 5xx retryable (Retry-After beyond the attempt: final); HTML where JSON was declared
    and bodies off the schema → UnexpectedResponse; a refused connection is retryable; auth
    by bearer token or API key."""
    tools = shop_tools(document, flaky_url)
    made = await invoke(tools["createOrder"], {"body": {"item": "anvil", "quantity": 2}},
                        key="wf-1:1:createOrder")
    assert made == {"status": 201, "body": {"id": "ord-1", "item": "anvil", "quantity": 2,
                                            "note": None, "status": "open"}}

    missing = await failure(tools["getOrder"], {"order_id": "ord-404"})
    assert (missing.type, missing.non_retryable) == (HTTP_CLIENT_ERROR, True)
    assert str(missing) == ('HTTP 404 Not Found from GET /orders/ord-404; response body: '
                            '{"detail":"order ord-404 not found"}')
    conflict = await failure(tools["setOrderStatus"], {"order_id": "ord-1",
                                                       "body": {"status": "shipped"}},
                             key="wf-1:1:createOrder")  # another request's key
    assert conflict.type == HTTP_CLIENT_ERROR and "HTTP 422" in conflict.message
    assert "already used with a different request" in conflict.message

    await flaky.fault("listOrders", status=503)
    unavailable = await failure(tools["listOrders"], {})
    assert (unavailable.type, unavailable.non_retryable) == (HTTP_SERVER_ERROR, False)
    assert "HTTP 503 Service Unavailable from GET /orders" in unavailable.message
    await flaky.fault("listOrders", status=429, retry_after="3600")
    patience = await failure(tools["listOrders"], {})
    assert (patience.type, patience.non_retryable) == (RATE_LIMITED, True)
    assert "asks to wait 3600s, more than this attempt has left" in patience.message
    await flaky.fault("listOrders", status=429, retry_after="3600")
    last = await failure(tools["listOrders"], {}, attempt=3)  # no retry left: nothing to wait
    assert last.type == RATE_LIMITED and "asks to wait" not in last.message
    await flaky.fault("listOrders", status=429)  # no Retry-After: Temporal's backoff decides
    assert (await failure(tools["listOrders"], {})).non_retryable is False

    await flaky.fault("getOrder", status=200, body="<html>maintenance</html>",
                      content_type="text/html")
    html = await failure(tools["getOrder"], {"order_id": "ord-1"})
    assert (html.type, html.non_retryable) == (UNEXPECTED_RESPONSE, True)
    assert "expected a JSON body, got text/html: <html>maintenance</html>" in html.message
    await flaky.fault("getOrder", status=200, body='{"id": 5}')
    off_schema = await failure(tools["getOrder"], {"order_id": "ord-1"})
    assert off_schema.type == UNEXPECTED_RESPONSE and "5 is not of type 'string'" in str(
        off_schema)
    await flaky.fault("getOrder", status=200, body="{truncated")
    assert "the body is not valid JSON" in (
        await failure(tools["getOrder"], {"order_id": "ord-1"})).message

    nowhere = shop_tools(document, f"http://127.0.0.1:{free_port()}")["listOrders"]
    refused = await failure(nowhere, {})
    assert (refused.type, refused.non_retryable) == (HTTP_UNREACHABLE, False)
    assert "nothing was sent" in refused.message

    by_key = shop_tools(document, flaky_url, auth=OpenAPIAuth(api_key_secret="shop_key"))
    assert (await invoke(by_key["listOrders"], {}))["status"] == 200
    anonymous = openapi_tools(document, operations=["listOrders"], base_url=flaky_url)[0]
    unauthorized = await failure(anonymous, {})
    assert unauthorized.type == HTTP_CLIENT_ERROR and "HTTP 401" in unauthorized.message
    assert (await flaky.effects()) == {"createOrder": 1}
    keys = {c.idempotency_key for c in await flaky.calls()}
    assert keys == {"wf-1:1:tool", "wf-1:1:createOrder"}


async def test_lost_response_retries_idempotent_calls_and_escalates_others(
        document: Path, flaky_url: str, flaky: FlakyControl) -> None:
    """No answer within the attempt (the service hangs): a call the service deduplicates by
    key is retried (HttpTimeout); one it does not is ToolOutcomeUnknown, never re-sent."""
    quick = ToolOverride(timeouts=Timeouts(start_to_close=1))
    keyed = shop_tools(document, flaky_url, operations=["createOrder"],
                       overrides={"createOrder": quick})["createOrder"]
    await flaky.fault("createOrder", status=201, delay=3)
    lost = await failure(keyed, {"body": {"item": "anvil", "quantity": 1}})
    assert (lost.type, lost.non_retryable) == (HTTP_TIMEOUT, False)
    assert "retrying with the same Idempotency-Key" in lost.message

    blind = shop_tools(document, flaky_url, operations=["createOrder"], overrides={
        "createOrder": quick.model_copy(update={"idempotent": False})})["createOrder"]
    assert blind.idempotent is False
    await flaky.fault("createOrder", status=201, delay=3)
    unknown = await failure(blind, {"body": {"item": "anvil", "quantity": 1}})
    assert (unknown.type, unknown.non_retryable) == ("ToolOutcomeUnknown", True)
    assert "a human must check whether it took effect" in unknown.message


# --------------------------------------------------------------------------- runs


async def test_run_reads_and_writes_through_openapi_tools(
        settings: Settings, ledger: Ledger, document: Path, flaky_url: str,
        flaky: FlakyControl) -> None:
    """A run places an order, reads it back, ships it and lists shipped orders: the gate
    judges OpenAPI calls like any other (shipping an order id taken from a tool result needs a
    human), every call carries the idempotency key the ledger claimed for it, each write took
    effect once, and the answer is built from what the service returned."""
    def planner(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        h = tool_history(messages)
        if "createOrder" not in h.called:
            return ModelTurn(tool_calls=[call("createOrder", body={"item": "anvil",
                                                                   "quantity": 2})])
        order = h.results["createOrder"]["body"]
        for name, args in (("getOrder", {"order_id": order["id"]}),
                           ("setOrderStatus", {"order_id": order["id"],
                                               "body": {"status": "shipped"}}),
                           ("listOrders", {"status": "shipped"})):
            if name not in h.called:
                return ModelTurn(tool_calls=[call(name, **args)])
        shipped = h.results["listOrders"]["body"]
        return ModelTurn(content=f"Order {order['id']} ({h.results['getOrder']['body']['item']}"
                                 f") is {h.results['setOrderStatus']['body']['status']}; "
                                 f"{len(shipped)} shipped order(s).")

    tools = shop_tools(document, flaky_url)
    async with shop_worker(settings, list(tools.values()),
                           FunctionModel(planner, name="shop-planner")) as client:
        h = await start_run(client, RunRequest(agent="shop", input="order two anvils, ship"),
                            temporal=settings.temporal)
        asked = await approve_when_pending(h)
        r = await h.result()

    assert r.status == "completed", r
    assert r.answer == "Order ord-1 (anvil) is shipped; 1 shipped order(s)."
    assert (asked.tool, asked.arguments) == ("setOrderStatus", {
        "order_id": "ord-1", "body": {"status": "shipped"}})
    assert "untrusted" in asked.reason and r.approvals == 1
    assert [c.tool for c in r.tool_calls] == ["createOrder", "getOrder", "setOrderStatus",
                                              "listOrders"]
    assert await flaky.effects() == {"createOrder": 1, "setOrderStatus": 1}
    trail = await ledger.trail(h.id)
    claimed = {c.tool: c.idempotency_key for c in trail.tool_calls}
    sent = {c.operation: c.idempotency_key for c in await flaky.calls()}
    assert sent == claimed
    assert len(set(sent.values())) == 4 and all(k.startswith(h.id) for k in sent.values())
    assert all(c.status == "completed" for c in trail.tool_calls)


async def test_rate_limit_and_unavailable_are_retried_until_success(
        settings: Settings, ledger: Ledger, document: Path, flaky_url: str,
        flaky: FlakyControl) -> None:
    """429 with ``Retry-After: 1`` then 503: the tool's retry policy retries (the 429 waited
    out first) with the same Idempotency-Key, and the third attempt's answer reaches the run."""
    await flaky.fault("listOrders", status=429, retry_after="1")
    await flaky.fault("listOrders", status=503)
    model = ScriptedModel([ModelTurn(tool_calls=[call("listOrders", call_id="c1")]),
                           ModelTurn(content="listed")])
    tools = shop_tools(document, flaky_url, operations=["listOrders"])
    async with shop_worker(settings, list(tools.values()), model) as client:
        h = await start_run(client, RunRequest(agent="shop", input="list orders"),
                            temporal=settings.temporal)
        r = await h.result()

    assert r.status == "completed", r
    assert r.retries == 2 and r.tool_calls[0].attempts == 3
    trail = await ledger.trail(h.id)
    assert attempts(trail, "listOrders") == [(1, "error", RATE_LIMITED),
                                             (2, "error", HTTP_SERVER_ERROR), (3, "ok", None)]
    calls = await flaky.calls("listOrders")
    assert [c.status for c in calls] == [429, 503, 200]
    assert len({c.idempotency_key for c in calls}) == 1
    assert calls[1].received_at - calls[0].received_at >= 1.0  # Retry-After honoured


async def test_client_error_is_reported_to_the_model_not_retried(
        settings: Settings, ledger: Ledger, document: Path, flaky_url: str,
        flaky: FlakyControl) -> None:
    """A 404 is the model's to handle: one attempt, and the tool message the model reads
    names the status and carries the service's explanation."""
    seen: list[dict[str, Any]] = []

    def planner(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        h = tool_history(messages)
        if "getOrder" not in h.called:
            return ModelTurn(tool_calls=[call("getOrder", order_id="ord-404")])
        seen.append(h.errors["getOrder"])
        return ModelTurn(content="There is no order ord-404.")

    tools = shop_tools(document, flaky_url, operations=["getOrder"])
    async with shop_worker(settings, list(tools.values()),
                           FunctionModel(planner, name="shop-planner")) as client:
        h = await start_run(client, RunRequest(agent="shop", input="where is ord-404?"),
                            temporal=settings.temporal)
        r = await h.result()

    assert r.status == "completed" and r.answer == "There is no order ord-404."
    [error] = seen
    [failed] = error["failures"]
    assert failed["attempts"] == 1
    assert failed["error"] == ('getOrder: HttpClientError: HTTP 404 Not Found from GET '
                               '/orders/ord-404; response body: '
                               '{"detail":"order ord-404 not found"}')
    trail = await ledger.trail(h.id)
    assert attempts(trail, "getOrder") == [(1, "error", HTTP_CLIENT_ERROR)]
    assert len(await flaky.calls("getOrder")) == 1


# --------------------------------------------------------------------------- SIGKILL


async def _wait_until(check: Callable[[], Any], *, within: float, what: str,
                      procs: Sequence[WorkerProcess]) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log}:\n{p.output()}" for p in procs)
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}\n{logs}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_post_takes_effect_once_across_worker_sigkill(
        settings: Settings, ledger: Ledger, document: Path, flaky_url: str,
        flaky: FlakyControl, tmp_path: Path) -> None:
    """The POST takes effect, then its worker is SIGKILLed before the answer arrives (the
    service holds it). A new worker retries the call with the same Idempotency-Key, the
    service answers from its idempotency store, and the order exists once. The workers get
    their tools from STEAD_OPENAPI_SOURCES."""
    await flaky.hold("createOrder", seconds=20)
    sources = {"orders": _source(document, base_url=flaky_url, operations=["createOrder"],
                                 overrides={"createOrder": {"timeouts": {
                                     "start_to_close": 30, "heartbeat": 1}}})}
    env = worker_env(settings, tmp_path, STEAD_OPENAPI_SOURCES=json.dumps(sources),
                     STEAD_SECRET_SHOP_TOKEN=TOKEN)
    procs = [WorkerProcess(THIS_SCRIPT, env, tmp_path / "worker-1.log").start()]
    try:
        client = await connect(settings)
        h = await start_run(client, RunRequest(agent="shop", input="order one anvil"),
                            temporal=settings.temporal)

        async def effect_done() -> bool:
            return (await flaky.effects()).get("createOrder") == 1

        await _wait_until(effect_done, within=60, what="the order to be placed", procs=procs)
        procs[0].kill()
        procs.append(WorkerProcess(THIS_SCRIPT, env, tmp_path / "worker-2.log").start())
        r = await asyncio.wait_for(h.result(), 90)
    finally:
        for p in procs:
            p.kill()

    assert r.status == "completed", (r, procs[-1].output())
    assert r.answer == "Placed the order."
    assert await flaky.effects() == {"createOrder": 1}
    calls = await flaky.calls("createOrder")
    assert [c.replayed for c in calls] == [False, True]
    trail = await ledger.trail(h.id)
    [row] = trail.tool_calls
    assert {c.idempotency_key for c in calls} == {row.idempotency_key}
    assert row.status == "completed" and row.result["body"]["id"] == "ord-1"
    assert attempts(trail, "createOrder") == [(1, "running", None), (2, "ok", None)]


def killable_shop_agent() -> Agent:
    """The SIGKILL test's agent: tools from STEAD_OPENAPI_SOURCES, one order, one answer."""
    model = ScriptedModel([
        ModelTurn(tool_calls=[call("createOrder", call_id="c1",
                                   body={"item": "anvil", "quantity": 1})]),
        ModelTurn(content="Placed the order.")], name="scripted:shop")
    return Agent(name="shop", instructions="Place the order once.", tools=[],
                 offline_model=model, max_steps=4)


async def _serve() -> None:
    from stead.worker import WorkerHost, run_until_signal

    settings = load_settings()
    catalog = with_openapi_sources(AgentCatalog([killable_shop_agent()]), settings.integrations)
    await run_until_signal(WorkerHost(settings, catalog))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve())
