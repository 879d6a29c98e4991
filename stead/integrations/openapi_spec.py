"""OpenAPI tool declarations: one ``STEAD_OPENAPI_SOURCES`` entry (``OpenAPISource``), its
authentication (``OpenAPIAuth``) and per-operation overrides (``ToolOverride``).

    OpenAPISource(document=Path("billing.yaml"), operations=["getInvoice"], agents=["refund"],
                  auth=OpenAPIAuth(bearer_secret="billing_token"))

Plain pydantic models over the contracts; ``stead.integrations.openapi`` turns them into tools and
re-exports them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stead.contracts.models import RetrySpec, RiskTier, SideEffect, Timeouts
from stead.security.tool_secrets import check_secret_name


class OpenAPIAuth(BaseModel):
    """How calls authenticate: a bearer token or an API-key header, each a worker secret
    (``STEAD_SECRET_<NAME>``) that only these tools may read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bearer_secret: str | None = None
    """Secret sent as ``Authorization: Bearer <value>``."""
    api_key_secret: str | None = None
    """Secret sent in the ``api_key_header`` header."""
    api_key_header: str = Field("X-API-Key", pattern=r"^[A-Za-z0-9-]{1,64}$")

    @model_validator(mode="after")
    def _one_kind(self) -> OpenAPIAuth:
        chosen = [n for n in (self.bearer_secret, self.api_key_secret) if n is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of bearer_secret and api_key_secret")
        check_secret_name(chosen[0])
        return self

    @property
    def secret(self) -> str:
        name = self.bearer_secret or self.api_key_secret
        assert name is not None  # the validator saw to it
        return name

    def headers(self, value: str) -> dict[str, str]:
        if self.bearer_secret is not None:
            return {"Authorization": f"Bearer {value}"}
        return {self.api_key_header: value}


class ToolOverride(BaseModel):
    """What to declare differently from the defaults for one operation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    """Tool name (default: the operationId, with characters OpenAI refuses replaced by ``_``)."""
    description: str | None = None
    side_effect: SideEffect | None = None
    risk: RiskTier | None = None
    idempotent: bool | None = None
    """True when the service deduplicates by ``Idempotency-Key`` although the document does
    not declare the header: then a lost call is re-sent instead of escalated."""
    retry: RetrySpec | None = None
    timeouts: Timeouts | None = None


class OpenAPISource(BaseModel):
    """One entry of ``STEAD_OPENAPI_SOURCES``: a document, the operations to expose, and the
    agents that get them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    document: Path
    """OpenAPI 3.0/3.1 document, JSON or YAML (relative paths: from the worker's directory)."""
    base_url: str | None = None
    """Where to send requests; default: the document's first ``servers`` URL."""
    operations: list[str] = Field(min_length=1)
    """operationIds to expose; nothing is exposed by default."""
    agents: list[str] = Field(min_length=1)
    """Agents (of this worker) whose tools these become."""
    auth: OpenAPIAuth | None = None
    overrides: dict[str, ToolOverride] = Field(default_factory=dict)
    """Per operationId."""


__all__ = ["OpenAPIAuth", "OpenAPISource", "ToolOverride"]
