"""The HTTP API: start runs, read them, decide approvals, read audit trails and metrics.

    app = create_app(settings)                        # serve with uvicorn, or `stead api`

Every route under ``/v1`` needs ``Authorization: Bearer <JWT>`` (:mod:`stead.api._auth`) and
sees only the token's tenant. ``/openapi.json`` and ``/docs`` describe it; ``/inbox`` is the
approvals page (``stead/api/static/``), which asks for a token itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from temporalio.client import Client

from stead.api import _errors
from stead.api._auth import Principal, TokenError, TokenVerifier
from stead.api._backend import Backend
from stead.api._errors import ApiError
from stead.api._events import event_stream
from stead.api._models import (
    KEY_PATTERN,
    WORKFLOW_ID_PATTERN,
    ApprovalView,
    AuditTrail,
    DecideBody,
    ErrorResponse,
    FieldError,
    RaiseBudgetBody,
    Role,
    RunSummary,
    RunView,
    StartedRun,
    StartRunBody,
    TenantBudget,
)
from stead.api._run_events import run_event_stream
from stead.contracts.admission import TenantUsage
from stead.contracts.budget import Budget
from stead.contracts.models import DecideOutcome, RunStatus
from stead.evals.metrics import MetricsFilter, MetricsReport
from stead.settings import Settings
from stead.streaming import Cursor

STATIC_DIR = FsPath(__file__).parent / "static"
INBOX_PAGE = "inbox.html"

WorkflowId = Annotated[str, Path(min_length=1, max_length=1000, pattern=WORKFLOW_ID_PATTERN,
                                 description="Workflow id of the run")]
ApprovalId = Annotated[str, Path(min_length=1, max_length=200, pattern=KEY_PATTERN,
                                 description="Approval id, e.g. a3")]


def _errors_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {400: "Temporal refused the request", 401: "Missing, malformed or expired token",
             403: "The token lacks the role", 404: "No such run for this tenant",
             409: "The run's state does not allow it", 422: "Invalid input",
             429: "The tenant is over its quota and refuses starts (see Retry-After)",
             503: "Temporal, the ledger or the identity provider is unreachable"}
    return {s: {"model": ErrorResponse, "description": words[s]}
            for s in (401, 422, 503, *statuses)}


_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT",
                     description="`stead api token --sub NAME --tenant T --role ROLE`")


async def _authenticated(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None:
        raise ApiError(401, "missing bearer token: send `Authorization: Bearer <JWT>` "
                            "(`stead api token` makes one)")
    from stead.api._oidc import IdentityProviderError

    tokens: TokenVerifier = request.app.state.tokens
    try:
        return await tokens.verify(creds.credentials)
    except TokenError as e:
        raise ApiError(401, str(e)) from None
    except IdentityProviderError as e:
        raise ApiError(503, str(e)) from None


def _role(needed: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(who: Annotated[Principal, Depends(_authenticated)]) -> Principal:
        if needed not in who.roles:
            raise ApiError(403, f"this needs the {needed!r} role; the token has "
                                f"{', '.join(who.roles)}")
        return who
    return check


Anyone = Annotated[Principal, Depends(_authenticated)]
Requester = Annotated[Principal, Depends(_role("requester"))]
Approver = Annotated[Principal, Depends(_role("approver"))]
Auditor = Annotated[Principal, Depends(_role("auditor"))]


def create_app(settings: Settings, *, client: Client | None = None,
               agents: Collection[str] | None = None, poll_seconds: float = 1.0) -> FastAPI:
    """The API on ``settings``' Temporal and ledger.

    ``client``: a connected Temporal client to share (else one is made on first use);
    ``agents``: the agents runs may be started for (else any; workers refuse unknown ones);
    ``poll_seconds``: how often ``/v1/events`` looks for changes.
    """
    tokens = TokenVerifier.from_settings(settings)  # SettingsError now rather than 401s later
    backend = Backend(settings, client=client, agents=agents)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()
        await tokens.aclose()

    app = FastAPI(
        title="stead API", version="1",
        description="Start agent runs, follow them, decide approvals, read audit trails and "
                    "metrics. Bearer JWT with roles requester, approver, auditor; every "
                    "route sees only the token's tenant.",
        lifespan=lifespan,
        # Operation ids are the route functions' names (startRun-style clients read them).
        generate_unique_id_function=lambda route: route.name)
    app.state.backend = backend
    app.state.secret = tokens.secret
    app.state.tokens = tokens
    # Set by ApiServer when it stops, so that event streams end at once.
    app.state.closing = closing = asyncio.Event()
    _errors.install(app)
    # -------------------------------------------------------------------------- runs

    @app.post("/v1/runs", status_code=201, response_model=StartedRun, tags=["runs"],
              responses=_errors_doc(403, 429))
    async def start_run(body: StartRunBody, who: Requester, response: Response) -> StartedRun:
        """Start a run of an agent for the token's tenant."""
        started = await backend.start(who, body)
        # Agent names may hold any letter (``KEY_PATTERN``); a header holds Latin-1 only.
        response.headers["Location"] = f"/v1/runs/{quote(started.workflow_id, safe=':@')}"
        return started

    @app.get("/v1/runs", response_model=list[RunSummary], tags=["runs"],
             responses=_errors_doc(400))
    async def list_runs(
            who: Anyone,
            agent: Annotated[str | None, Query(min_length=1, max_length=200,
                                               pattern=KEY_PATTERN)] = None,
            status: RunStatus | None = None,
            limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> list[RunSummary]:
        """The tenant's runs: open ones first, then the most recently closed."""
        return await backend.runs(who.tenant, agent=agent, status=status, limit=limit)

    @app.get("/v1/runs/{workflow_id}", response_model=RunView, tags=["runs"],
             responses=_errors_doc(404))
    async def get_run(workflow_id: WorkflowId, who: Anyone) -> RunView:
        """A run's status, live state while it runs, and result once it completed."""
        return await backend.run(who.tenant, workflow_id)

    # -------------------------------------------------------------------------- approvals

    @app.get("/v1/approvals", response_model=list[ApprovalView], tags=["approvals"],
             responses=_errors_doc(403))
    async def list_approvals(who: Approver) -> list[ApprovalView]:
        """Approvals the tenant's runs are waiting for, soonest deadline first."""
        return await backend.approvals(who.tenant)

    @app.post("/v1/runs/{workflow_id}/approvals/{approval_id}", response_model=DecideOutcome,
              tags=["approvals"], responses=_errors_doc(403, 404, 409))
    async def decide(workflow_id: WorkflowId, approval_id: ApprovalId, body: DecideBody,
                     who: Approver) -> DecideOutcome:
        """Approve (optionally with edited arguments) or reject a pending tool call, through
        the run's ``decide`` update like ``stead approve``/``stead reject``; the token's
        ``sub`` is recorded as the approver."""
        return await backend.decide(who, workflow_id, approval_id, body)

    # -------------------------------------------------------------------------- budgets

    @app.post("/v1/runs/{workflow_id}/budget", response_model=Budget, tags=["approvals"],
              responses=_errors_doc(403, 404, 409))
    async def raise_budget(workflow_id: WorkflowId, body: RaiseBudgetBody,
                           who: Approver) -> Budget:
        """Raise a run's budget (each given limit only upward), through the run's
        ``raise_budget`` update like ``stead raise-budget``; answers the new limit. A run
        waiting under ``on_exceed: ask`` goes on once its next call fits. The token's ``sub``
        is recorded as the raiser, with the reason.

        Needs the ``approver`` role: letting a run spend more is a decision about the run
        like approving one of its tool calls, made by a person other than the one who asked
        for it, so a requester cannot lift the limit of a run they started and an auditor
        stays read-only. 409 when the run refuses the raise (a limit not above the run's, a
        limit the run does not have) or has ended."""
        return await backend.raise_budget(who, workflow_id, body)

    # -------------------------------------------------------------------------- audit

    @app.get("/v1/runs/{workflow_id}/audit", response_model=AuditTrail, tags=["audit"],
             responses=_errors_doc(403, 404))
    async def audit(workflow_id: WorkflowId, who: Auditor) -> AuditTrail:
        """The ledger's trail of a run (model calls, tool calls and attempts, decisions,
        memory) and whether its decision hash chain is intact."""
        return await backend.audit(who.tenant, workflow_id)

    @app.get("/v1/metrics", response_model=MetricsReport, tags=["audit"],
             responses=_errors_doc(403))
    async def metrics(
            who: Auditor,
            since: Annotated[str, Query(max_length=64, description=(
                "Start of the window: a duration back (30m, 24h, 7d) or an ISO time"))] = "24h",
            until: Annotated[str, Query(max_length=64,
                                        description="End of the window, same forms")] = "now",
            agent: Annotated[str | None, Query(min_length=1, max_length=200,
                                               pattern=KEY_PATTERN)] = None,
            include_synthetic: bool = False,
    ) -> MetricsReport:
        """Figures of the tenant's runs that started in a window (``stead metrics``)."""
        from stead.evals.samples import parse_when

        now = datetime.now(UTC)
        bounds: list[datetime] = []
        for name, text in (("since", since), ("until", until)):
            try:
                bounds.append(parse_when(text, now=now))
            except (ValueError, OverflowError) as e:
                message = str(e) if isinstance(e, ValueError) else "is out of range"
                raise ApiError(422, f"{name}: {message}", fields=[
                    FieldError(loc=["query", name], message=message)]) from None
        if bounds[0] >= bounds[1]:
            raise ApiError(422, f"empty window: since ({bounds[0].isoformat()}) is not before "
                                f"until ({bounds[1].isoformat()})")
        return await backend.metrics(MetricsFilter(
            since=bounds[0], until=bounds[1], agent=agent, tenant=who.tenant,
            include_synthetic=include_synthetic))

    @app.get("/v1/budget", response_model=TenantBudget, tags=["audit"],
             responses=_errors_doc(403))
    async def budget(who: Auditor) -> TenantBudget:
        """The tenant's spending windows, the UTC day and month (``stead budget``): spent,
        reserved by model calls in flight, the cap, what is left, when each resets."""
        return await backend.budget(who.tenant)

    @app.get("/v1/quota", response_model=TenantUsage, tags=["audit"],
             responses=_errors_doc())
    async def quota(who: Anyone) -> TenantUsage:
        """The tenant's admission now: runs in flight, queued, started in the last minute,
        and its caps (``stead quota``)."""
        return await backend.quota(who.tenant)

    # -------------------------------------------------------------------------- events

    @app.get("/v1/events", tags=["events"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "events `approvals`, `run` and `error`"},
                        **_errors_doc()})
    async def events(who: Anyone) -> StreamingResponse:
        """Server-sent events: ``approvals`` (approvers: the pending list whenever it
        changes), ``run`` (a run of the tenant changed status), ``error``."""
        return StreamingResponse(
            event_stream(backend, who, poll_seconds=poll_seconds, closing=closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/runs/{workflow_id}/events", tags=["events"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "events `step`, `token`, `approval`, `result` "
                                             "and `error`"},
                        204: {"description": "Last-Event-ID is the run's `result`: nothing "
                                             "more will come"},
                        **_errors_doc(404)})
    async def run_events(
            workflow_id: WorkflowId, who: Anyone,
            last_event_id: Annotated[str | None, Header(
                max_length=100, description="Resume after this event (the `id:` of the last "
                                            "event received)")] = None,
    ) -> Response:
        """Server-sent events of one run: its steps, the text its model calls write as they
        write it (tokens), its approvals and, last, its result. Resumable: reconnect with
        ``Last-Event-ID`` for exactly what came after that event."""
        cursor = Cursor()
        if last_event_id:
            try:
                cursor = Cursor.parse(last_event_id)
            except ValueError as e:
                raise ApiError(422, f"Last-Event-ID: {e}", fields=[
                    FieldError(loc=["header", "Last-Event-ID"], message=str(e))]) from None
        run_id = await backend.owned_run_id(who.tenant, workflow_id)
        await backend.ledger()  # LedgerError (a 503) now, not inside the stream
        cursor = cursor.for_run(run_id)
        if cursor.done:
            return Response(status_code=204)
        return StreamingResponse(
            run_event_stream(backend, tenant=who.tenant, workflow_id=workflow_id,
                             run_id=run_id, cursor=cursor, poll_seconds=poll_seconds,
                             closing=closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -------------------------------------------------------------------------- inbox

    @app.get("/inbox", include_in_schema=False)
    async def inbox_redirect() -> RedirectResponse:
        # The page's relative links (inbox.js, ...) resolve under /inbox/ only.
        return RedirectResponse("/inbox/", status_code=307)

    @app.get("/inbox/", include_in_schema=False)
    async def inbox() -> FileResponse:
        page = STATIC_DIR / INBOX_PAGE
        if not page.is_file():
            raise ApiError(404, "the approvals inbox is not installed (no "
                                f"stead/api/static/{INBOX_PAGE})")
        return FileResponse(page, media_type="text/html")

    app.mount("/inbox", StaticFiles(directory=STATIC_DIR, check_dir=False), name="inbox")
    return app
