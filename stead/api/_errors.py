"""Every failure of the HTTP API as ``{"error": {"type", "message"}}`` with an honest status.

Bad input is a 4xx that says what to fix; an unreachable Temporal or ledger is a 503 that
says which; a 500 only ever means a bug in stead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from stead.api._models import ErrorDetail, ErrorResponse, FieldError
from stead.errors import LedgerError, StackError

log = logging.getLogger("stead.api")

ErrorType = Literal["unauthorized", "forbidden", "not_found", "conflict", "invalid_request",
                    "unavailable", "internal", "over_quota"]

_BY_STATUS: dict[int, ErrorType] = {400: "invalid_request", 401: "unauthorized",
                                    403: "forbidden", 404: "not_found", 405: "invalid_request",
                                    409: "conflict", 422: "invalid_request", 429: "over_quota",
                                    503: "unavailable"}


class ApiError(Exception):
    """Raised by routes and dependencies; rendered as an :class:`ErrorResponse`."""

    def __init__(self, status: int, message: str, *, type: ErrorType | None = None,
                 fields: list[FieldError] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        """``headers``: e.g. ``Retry-After`` of a 429."""
        super().__init__(message)
        self.headers = dict(headers or {})
        self.status = status
        self.message = message
        self.type: ErrorType = type or _BY_STATUS.get(status, "invalid_request")
        self.fields = fields or []


def error_response(status: int, message: str, *, type: ErrorType | None = None,
                   fields: list[FieldError] | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(type=type or _BY_STATUS.get(status, "internal"),
                                           message=message, fields=fields or []))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def temporal_error(err: RPCError, what: str) -> ApiError:
    """A Temporal RPC failure as the status it deserves."""
    if err.status == RPCStatusCode.NOT_FOUND:
        return ApiError(404, f"{what} not found")
    if err.status == RPCStatusCode.INVALID_ARGUMENT:
        return ApiError(400, f"Temporal refused the request for {what}: {err.message}")
    code = err.status.name if err.status is not None else "error"
    return ApiError(503, f"Temporal did not answer for {what} ({code}: {err.message})")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        return error_response(exc.status, exc.message, type=exc.type, fields=exc.fields,
                              headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [FieldError(loc=[p if isinstance(p, int) else str(p) for p in e["loc"]],
                             message=str(e["msg"])) for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(str(p) for p in f.loc)}: {f.message}" for f in fields)
        return error_response(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(StackError)
    async def _stack(_: Request, exc: StackError) -> JSONResponse:
        return error_response(503, f"Temporal is unreachable: {exc}")

    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        return error_response(503, f"the ledger is unavailable: {exc}")

    @app.exception_handler(RPCError)
    async def _rpc(_: Request, exc: RPCError) -> JSONResponse:
        err = temporal_error(exc, "the request")
        return error_response(err.status, err.message)

    async def _database(_: Request, exc: Exception) -> JSONResponse:
        return error_response(503, f"the ledger database is unavailable: "
                                   f"{type(exc).__name__}: {exc}")

    for kind in (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                 asyncpg.CannotConnectNowError):
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); this is a bug in "
                                   f"stead, please report it", type="internal")
