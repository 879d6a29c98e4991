"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis): whatever a client sends,
valid or not, the answer is never a server error, and every error has the API's shape.

The API runs in a real uvicorn server on loopback, in a thread with its own event loop (its
Temporal client and ledger pool live there), against the session's real stack; the token has
every role, so requests get past auth and reach Temporal and the ledger. The event streams are
left out: ``/v1/events`` is endless with nothing to fuzz but the token (tested in test_api.py),
and ``/v1/runs/{workflow_id}/events`` follows a run until it ends, which a run the fuzzer
started on a queue no worker serves never does (tested in test_streaming.py).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from stead.api import ApiServer, create_app, issue_token
from stead.stack.embedded import EmbeddedStack

SECRET = "fuzz-secret-" + "z" * 40
MAX_EXAMPLES = 15


OPERATIONS = [("POST", "/v1/runs"), ("GET", "/v1/runs"), ("GET", "/v1/runs/{workflow_id}"),
              ("GET", "/v1/approvals"),
              ("POST", "/v1/runs/{workflow_id}/approvals/{approval_id}"),
              ("GET", "/v1/runs/{workflow_id}/audit"), ("GET", "/v1/metrics"),
              ("POST", "/v1/runs/{workflow_id}/budget"), ("GET", "/v1/budget"),
              ("GET", "/v1/quota")]
"""Every operation of the document but the event streams (checked against the document)."""


@pytest.fixture(scope="module")
def live_api(stack: EmbeddedStack) -> Iterator[str]:
    """The API's base URL, served from a thread with its own event loop until the module's
    tests end."""
    api_settings = stack.resolved_settings().replace(
        api_secret=SecretStr(SECRET),
        task_queue=f"fuzz-{uuid.uuid4().hex[:8]}",
        memory_backend="off")
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        app = create_app(api_settings)
        async with ApiServer(app, host="127.0.0.1", port=0) as server:
            box["url"], box["loop"], box["stop"] = (server.url, asyncio.get_running_loop(),
                                                    asyncio.Event())
            ready.set()
            await box["stop"].wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # reported to the test below
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, name="api-under-fuzz", daemon=True)
    thread.start()
    assert ready.wait(60), "the API did not start within 60 s"
    if "error" in box:
        raise box["error"]
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)
    assert not thread.is_alive(), "the API did not stop"


@pytest.fixture(scope="module")
def api_schema(live_api: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_api}/openapi.json")


@pytest.fixture(scope="module")
def token() -> str:
    """Every role, a tenant of its own: requests get past auth into Temporal and the ledger."""
    return issue_token(SECRET, sub="fuzzer", tenant=f"fuzz-{uuid.uuid4().hex[:8]}",
                       roles=["requester", "approver", "auditor"], ttl=timedelta(hours=1))


def test_every_operation_but_the_event_streams_is_fuzzed(api_schema: Any) -> None:
    documented = {(m.upper(), p) for p, item in api_schema.raw_schema["paths"].items()
                  for m in item}
    assert documented - set(OPERATIONS) == {("GET", "/v1/events"),
                                            ("GET", "/v1/runs/{workflow_id}/events")}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_makes_the_api_fail_with_a_server_error(
        api_schema: Any, token: str, method: str, path: str, mode: GenerationMode) -> None:
    """Inputs that fit the document and inputs that do not: never a 5xx, errors in shape."""
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {token}"}

    @given(case=operation.as_strategy(mode))
    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=[not_a_server_error],
                                          timeout=30)
        error_has_the_api_shape(response.status_code, response.json())

    fuzz()


def error_has_the_api_shape(status: int, body: Any) -> None:
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert body["error"]["type"] and body["error"]["message"], body
