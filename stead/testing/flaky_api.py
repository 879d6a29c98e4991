"""A small order service with deliberately flaky endpoints, for testing OpenAPI tools.

Real HTTP services rate-limit, fail with 5xx, answer with HTML error pages and lose the
connection after doing the work. This FastAPI app does all of that on request, and keeps an
``Idempotency-Key`` store the way well-behaved payment-style APIs do, so the promise "a retried
POST with the same key takes effect once" can be tested against a real server::

    python -m stead.testing.flaky_api --port 8099        # FLAKY_API_TOKEN=... requires a token
    curl http://127.0.0.1:8099/openapi.json               # the document stead.openapi reads

The API (``/orders``: list, get, create, change status, cancel) is described by its OpenAPI
document. Create, change and cancel honour ``Idempotency-Key``: a repeated key with the same
request gets the stored response again (header ``Idempotent-Replayed: true``) and has no
effect; the same key with a different request is a 422.

Control endpoints (not in the document, not behind auth) under ``/_flaky``:

- ``POST /_flaky/faults`` ``{"operation": "listOrders", "status": 429, "retry_after": "1"}``:
  the next ``times`` calls of that operation fail that way before doing anything (``body``,
  ``content_type`` and ``delay`` shape the failure);
- ``POST /_flaky/holds`` ``{"operation": "createOrder", "seconds": 30}``: the next ``times``
  calls that take effect wait that long *after* the effect before answering (a client that
  dies meanwhile never learns the outcome);
- ``GET /_flaky/calls`` (every API call: operation, status, idempotency key, replayed?),
  ``GET /_flaky/effects`` (calls that took effect, per operation), ``POST /_flaky/reset``.

:class:`FlakyControl` drives those from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any, Literal, Self, TypeVar

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CallRecord",
    "Fault",
    "FlakyControl",
    "FlakyState",
    "Hold",
    "NewOrder",
    "Order",
    "build_app",
    "main",
]

OrderStatus = Literal["open", "shipped", "cancelled"]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Makes a retried request take effect once")]
CONTROL_PREFIX = "/_flaky"


# ---------------------------------------------------------------------------- API models


class NewOrder(BaseModel):
    """What a client sends to place an order."""

    model_config = ConfigDict(extra="forbid")

    item: str = Field(min_length=1, max_length=100, description="What to order")
    quantity: int = Field(ge=1, le=1000, description="How many")
    note: str | None = Field(None, max_length=500, description="Free text for the warehouse")


class Order(BaseModel):
    id: str
    item: str
    quantity: int
    note: str | None = None
    status: OrderStatus


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: OrderStatus


class Problem(BaseModel):
    detail: str


# ---------------------------------------------------------------------------- control models


class Fault(BaseModel):
    """The next ``times`` calls of ``operation`` fail like this, before taking any effect."""

    model_config = ConfigDict(extra="forbid")

    operation: str
    """operationId, e.g. ``createOrder``."""
    status: int = Field(503, ge=200, le=599)
    times: int = Field(1, ge=1)
    retry_after: str | None = None
    """Value of the ``Retry-After`` header (seconds or an HTTP date)."""
    body: str | None = None
    """Response body; default ``{"detail": "injected <status>"}``."""
    content_type: str = "application/json"
    delay: float = Field(0.0, ge=0, le=300)
    """Seconds to wait before answering (a slow or hanging service)."""


class Hold(BaseModel):
    """The next ``times`` calls of ``operation`` that take effect wait ``seconds`` before
    answering: the effect is done and stored, the client has not heard of it yet."""

    model_config = ConfigDict(extra="forbid")

    operation: str
    seconds: float = Field(ge=0, le=600)
    times: int = Field(1, ge=1)


class CallRecord(BaseModel):
    """One API call as the service saw it."""

    operation: str
    method: str
    path: str
    query: str = ""
    idempotency_key: str | None = None
    status: int | None = None
    """Status code sent; None while the call is still being answered (held)."""
    replayed: bool = False
    """Answered from the idempotency store, without effect."""
    fault: bool = False
    """Failed by an injected fault."""
    received_at: float
    """Unix time the request arrived."""


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class FlakyState:
    """Everything the service knows; one per app, touched from its event loop only."""

    token: str | None = None
    """Bearer token required on API calls (or ``api_key``); neither set: no auth."""
    api_key: str | None = None
    """Value of the ``X-API-Key`` header accepted instead of the bearer token."""
    orders: dict[str, Order] = field(default_factory=dict)
    next_id: int = 1
    idempotency: dict[str, _Stored] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)
    effects: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: list[Fault] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)

    def reset(self) -> None:
        self.orders.clear()
        self.next_id = 1
        self.idempotency.clear()
        self.calls.clear()
        self.effects.clear()
        self.faults.clear()
        self.holds.clear()

    def take_fault(self, operation: str) -> Fault | None:
        return _take(self.faults, operation)

    def take_hold(self, operation: str) -> Hold | None:
        return _take(self.holds, operation)


_Q = TypeVar("_Q", Fault, Hold)


def _take(queue: list[_Q], operation: str) -> _Q | None:
    for i, item in enumerate(queue):
        if item.operation == operation:
            if item.times <= 1:
                del queue[i]
            else:
                queue[i] = item.model_copy(update={"times": item.times - 1})
            return item
    return None


class _Injected(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(f"injected {fault.status}")
        self.fault = fault


# ---------------------------------------------------------------------------- the app


class _StatusRecorder:
    """ASGI middleware: writes the status code sent into the call's record (set by the gate),
    whichever path produced the response (handler, validation error, auth, fault)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                record = scope.get("flaky.call")
                if isinstance(record, CallRecord):
                    record.status = int(message["status"])
            await send(message)

        await self.app(scope, receive, recording)


def build_app(state: FlakyState | None = None) -> FastAPI:
    """The service over ``state`` (a fresh one if omitted; ``app.state.flaky`` holds it)."""
    st = state if state is not None else FlakyState()

    async def gate(request: Request) -> None:
        """Every API call: recorded, authenticated, then maybe failed by a queued fault."""
        if request.url.path.startswith(CONTROL_PREFIX):
            return
        route = request.scope.get("route")
        operation = str(getattr(route, "operation_id", None) or request.url.path)
        record = CallRecord(operation=operation, method=request.method, path=request.url.path,
                            query=request.url.query,
                            idempotency_key=request.headers.get("idempotency-key"),
                            received_at=time.time())
        st.calls.append(record)
        request.scope["flaky.call"] = record
        if st.token is not None or st.api_key is not None:
            bearer = request.headers.get("authorization", "")
            ok = (st.token is not None and bearer == f"Bearer {st.token}") or (
                st.api_key is not None and request.headers.get("x-api-key") == st.api_key)
            if not ok:
                raise HTTPException(401, "missing or wrong credentials",
                                    headers={"WWW-Authenticate": "Bearer"})
        fault = st.take_fault(operation)
        if fault is not None:
            record.fault = True
            raise _Injected(fault)

    app = FastAPI(title="flaky orders", version="1.0.0",
                  description="An order service that fails on request (stead.testing.flaky_api).",
                  dependencies=[Depends(gate)])
    app.state.flaky = st
    app.add_middleware(_StatusRecorder)

    @app.exception_handler(_Injected)
    async def injected(request: Request, exc: _Injected) -> Response:
        f = exc.fault
        if f.delay:
            await asyncio.sleep(f.delay)
        body = f.body if f.body is not None else json.dumps({"detail": f"injected {f.status}"})
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else None
        return Response(body, status_code=f.status, media_type=f.content_type, headers=headers)

    async def once(request: Request, key: str | None, operation: str, payload: object,
                   effect: Callable[[], Awaitable[tuple[int, dict[str, Any]]]]) -> JSONResponse:
        """Run ``effect`` unless ``key`` already did: then answer what it answered then."""
        fingerprint = hashlib.sha256(json.dumps(
            [request.method, request.url.path, payload], sort_keys=True).encode()).hexdigest()
        if key is not None and key in st.idempotency:
            stored = st.idempotency[key]
            if stored.fingerprint != fingerprint:
                raise HTTPException(422, f"Idempotency-Key {key!r} was already used with a "
                                         f"different request")
            record = request.scope.get("flaky.call")
            if isinstance(record, CallRecord):
                record.replayed = True
            return JSONResponse(stored.body, status_code=stored.status,
                                headers={"Idempotent-Replayed": "true"})
        status, body = await effect()
        st.effects[operation] += 1
        if key is not None:
            st.idempotency[key] = _Stored(fingerprint, status, body)
        hold = st.take_hold(operation)
        if hold is not None:
            await asyncio.sleep(hold.seconds)
        return JSONResponse(body, status_code=status)

    def find(order_id: str) -> Order:
        order = st.orders.get(order_id)
        if order is None:
            raise HTTPException(404, f"order {order_id} not found")
        return order

    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "No such order"}}

    @app.get("/orders", operation_id="listOrders", response_model=list[Order],
             summary="List orders", description="Newest last; optionally only one status.")
    async def list_orders(status: OrderStatus | None = None,
                          limit: Annotated[int, Query(ge=1, le=100)] = 50) -> list[Order]:
        found = [o for o in st.orders.values() if status is None or o.status == status]
        return found[:limit]

    @app.get("/orders/{order_id}", operation_id="getOrder", response_model=Order,
             summary="Get one order", responses=not_found)
    async def get_order(order_id: str) -> Order:
        return find(order_id)

    @app.post("/orders", operation_id="createOrder", response_model=Order, status_code=201,
              summary="Place an order", description="Charges the customer: retry only with the "
                                                    "same Idempotency-Key.")
    async def create_order(new: NewOrder, request: Request,
                           idempotency_key: IdempotencyKey = None) -> JSONResponse:
        async def effect() -> tuple[int, dict[str, Any]]:
            order = Order(id=f"ord-{st.next_id}", item=new.item, quantity=new.quantity,
                          note=new.note, status="open")
            st.next_id += 1
            st.orders[order.id] = order
            return 201, order.model_dump(mode="json")
        return await once(request, idempotency_key, "createOrder", new.model_dump(mode="json"),
                          effect)

    @app.put("/orders/{order_id}/status", operation_id="setOrderStatus", response_model=Order,
             summary="Change an order's status",
             responses={**not_found, 409: {"model": Problem,
                                           "description": "Cancelled orders stay cancelled"}})
    async def set_status(order_id: str, change: StatusChange, request: Request,
                         idempotency_key: IdempotencyKey = None) -> JSONResponse:
        async def effect() -> tuple[int, dict[str, Any]]:
            order = find(order_id)
            if order.status == "cancelled" and change.status != "cancelled":
                raise HTTPException(409, f"order {order_id} is cancelled")
            st.orders[order_id] = order.model_copy(update={"status": change.status})
            return 200, st.orders[order_id].model_dump(mode="json")
        return await once(request, idempotency_key, "setOrderStatus",
                          change.model_dump(mode="json"), effect)

    @app.delete("/orders/{order_id}", operation_id="cancelOrder", response_model=Order,
                summary="Cancel an order", responses=not_found)
    async def cancel_order(order_id: str, request: Request,
                           idempotency_key: IdempotencyKey = None) -> JSONResponse:
        async def effect() -> tuple[int, dict[str, Any]]:
            order = find(order_id)
            st.orders[order_id] = order.model_copy(update={"status": "cancelled"})
            return 200, st.orders[order_id].model_dump(mode="json")
        return await once(request, idempotency_key, "cancelOrder", None, effect)

    control = APIRouter(prefix=CONTROL_PREFIX, include_in_schema=False)

    @control.post("/faults")
    async def add_fault(fault: Fault) -> dict[str, int]:
        st.faults.append(fault)
        return {"queued": len(st.faults)}

    @control.post("/holds")
    async def add_hold(hold: Hold) -> dict[str, int]:
        st.holds.append(hold)
        return {"queued": len(st.holds)}

    @control.get("/calls")
    async def calls() -> list[CallRecord]:
        return st.calls

    @control.get("/effects")
    async def effects() -> dict[str, int]:
        return dict(st.effects)

    @control.post("/reset")
    async def reset() -> dict[str, bool]:
        st.reset()
        return {"reset": True}

    app.include_router(control)
    return app


# ---------------------------------------------------------------------------- control client


class FlakyControl:
    """Drives a running flaky service's control endpoints.

        async with FlakyControl("http://127.0.0.1:8099") as flaky:
            await flaky.fault("listOrders", status=429, retry_after="1")
    """

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url + CONTROL_PREFIX, timeout=10,
                                       transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def fault(self, operation: str, *, status: int = 503, times: int = 1,
                    retry_after: str | None = None, body: str | None = None,
                    content_type: str = "application/json", delay: float = 0.0) -> None:
        f = Fault(operation=operation, status=status, times=times, retry_after=retry_after,
                  body=body, content_type=content_type, delay=delay)
        (await self._http.post("/faults", json=f.model_dump())).raise_for_status()

    async def hold(self, operation: str, *, seconds: float, times: int = 1) -> None:
        h = Hold(operation=operation, seconds=seconds, times=times)
        (await self._http.post("/holds", json=h.model_dump())).raise_for_status()

    async def calls(self, operation: str | None = None) -> list[CallRecord]:
        resp = await self._http.get("/calls")
        resp.raise_for_status()
        found = [CallRecord.model_validate(c) for c in resp.json()]
        return [c for c in found if operation is None or c.operation == operation]

    async def effects(self) -> dict[str, int]:
        resp = await self._http.get("/effects")
        resp.raise_for_status()
        return {str(k): int(v) for k, v in resp.json().items()}

    async def reset(self) -> None:
        (await self._http.post("/reset")).raise_for_status()


# ---------------------------------------------------------------------------- main


async def serve(*, host: str, port: int, token: str | None, api_key: str | None) -> None:
    """Serve until SIGINT/SIGTERM; print the URL once listening (a parent may wait for it)."""
    import uvicorn

    app = build_app(FlakyState(token=token, api_key=api_key))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="off"))

    async def announce() -> None:
        # uvicorn exposes only a flag for "listening", no event to wait on.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # flush: a parent process reads this line from a pipe, where print would buffer it.
        print(f"flaky API at http://{host}:{port} (document: /openapi.json)", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await server.serve()
    finally:
        announcer.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stead.testing.flaky_api",
        description="An order service with deliberately flaky endpoints and an "
                    "Idempotency-Key store.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--token", default=os.environ.get("FLAKY_API_TOKEN"),
                        help="require this bearer token (default: $FLAKY_API_TOKEN; unset: no "
                             "auth)")
    parser.add_argument("--api-key", default=os.environ.get("FLAKY_API_KEY"),
                        help="accept this X-API-Key header value (default: $FLAKY_API_KEY)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    try:
        asyncio.run(serve(host=args.host, port=args.port, token=args.token or None,
                          api_key=args.api_key or None))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
