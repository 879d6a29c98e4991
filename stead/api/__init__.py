"""The HTTP API of stead: runs, approvals, audit and metrics for clients that are not Python.

    app = create_app(settings)                       # FastAPI; `stead api` serves it
    token = issue_token(api_secret(settings), sub="alice", tenant="acme", roles=["approver"])

Tokens of an OpenID Connect identity provider are accepted too when ``STEAD_OIDC_ISSUER`` is
set (:mod:`stead.api._oidc`, ``docs/security.md``).

Routes (all JSON, bearer JWT, scoped to the token's tenant; errors are
``{"error": {"type", "message"}}``):

    POST /v1/runs                                      requester  start a run
    GET  /v1/runs?agent=&status=&limit=                any role   recent runs
    GET  /v1/runs/{workflow_id}                        any role   state and result
    GET  /v1/approvals                                 approver   pending approvals
    POST /v1/runs/{workflow_id}/approvals/{approval_id} approver  decide (the `decide` update)
    POST /v1/runs/{workflow_id}/budget                 approver   raise its budget (`raise_budget`)
    GET  /v1/runs/{workflow_id}/audit                  auditor    ledger trail + chain check
    GET  /v1/metrics?since=24h&until=now&agent=        auditor    `stead metrics` as JSON
    GET  /v1/events                                    any role   server-sent events
    GET  /v1/runs/{workflow_id}/events                 any role   one run's steps, tokens,
                                                                  approvals, result (SSE)
    GET  /openapi.json, /docs, /inbox
"""

from stead.api._auth import (
    Principal,
    TokenError,
    TokenVerifier,
    api_secret,
    issue_token,
    verify_token,
)
from stead.api._models import (
    ApprovalView,
    AuditTrail,
    DecideBody,
    ErrorDetail,
    ErrorResponse,
    Role,
    RunEvent,
    RunSummary,
    RunView,
    StartedRun,
    StartRunBody,
)
from stead.api._oidc import IdentityProviderError, OidcVerifier
from stead.api._server import ApiServer
from stead.api.app import create_app

__all__ = [
    "ApiServer",
    "ApprovalView",
    "AuditTrail",
    "DecideBody",
    "ErrorDetail",
    "ErrorResponse",
    "IdentityProviderError",
    "OidcVerifier",
    "Principal",
    "Role",
    "RunEvent",
    "RunSummary",
    "RunView",
    "StartRunBody",
    "StartedRun",
    "TokenError",
    "TokenVerifier",
    "api_secret",
    "create_app",
    "issue_token",
    "verify_token",
]
