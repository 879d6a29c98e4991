"""Bearer tokens of the HTTP API: HS256 JWTs naming who calls, for which tenant, in which roles.

    token = issue_token(api_secret(settings), sub="alice", tenant="acme", roles=["approver"])
    principal = verify_token(api_secret(settings), token)     # or TokenError (a 401)

Claims: ``sub`` (who; recorded as the approver or the requesting user), ``tenant`` (every read
and write is scoped to it), ``roles`` (``requester``, ``approver``, ``auditor``), ``exp``, and
optionally ``approval_role``: the role of the agent's approval policy the holder decides as
(e.g. ``support-lead``), passed on to the ``decide`` update like ``stead approve --role``.
Without it the holder acts for the level currently asked, as the CLI does without ``--role``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import jwt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from stead.api._models import KEY_PATTERN, Role
from stead.errors import SettingsError
from stead.settings import Settings

if TYPE_CHECKING:
    from stead.api._oidc import OidcVerifier

ALGORITHM = "HS256"
SECRET_FILE = "api-secret"
"""Name of the generated key under the data dir when ``STEAD_API_SECRET`` is unset."""


class TokenError(Exception):
    """The bearer token is missing, malformed, forged or expired (a 401)."""


class Principal(BaseModel):
    """The verified claims of a token: who calls, for which tenant, allowed to do what."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=200,
                                             pattern=KEY_PATTERN)]
    roles: Annotated[list[Role], Field(min_length=1)]
    exp: datetime
    approval_role: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


def api_secret(settings: Settings) -> str:
    """``STEAD_API_SECRET``, else this machine's generated key in ``<data dir>/api-secret``
    (made on first use, readable by its owner only), so ``stead up`` and ``stead api token``
    agree without configuration."""
    if settings.api.secret is not None:
        return settings.api.secret.get_secret_value()
    path = Path(settings.stack.data_dir) / SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # made before (possibly by a process starting at the same moment)
    except OSError as e:
        raise SettingsError(f"cannot create the API key file {path}: {e}; set "
                            f"STEAD_API_SECRET instead") from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    try:
        key = path.read_text().strip()
    except OSError as e:
        raise SettingsError(f"cannot read the API key file {path}: {e}") from None
    if len(key) < 32:
        raise SettingsError(f"the API key file {path} holds fewer than 32 characters; delete "
                            f"it to have a new key made, or set STEAD_API_SECRET")
    return key


def issue_token(secret: str, *, sub: str, tenant: str, roles: Sequence[Role],
                ttl: timedelta = timedelta(hours=8), approval_role: str | None = None,
                now: datetime | None = None) -> str:
    """A signed token; the claims are validated first, so a bad one fails here, not later."""
    issued = now or datetime.now(UTC)
    claims = Principal(sub=sub, tenant=tenant, roles=list(roles), exp=issued + ttl,
                       approval_role=approval_role)
    payload: dict[str, object] = {"sub": claims.sub, "tenant": claims.tenant,
                                  "roles": list(claims.roles), "iat": int(issued.timestamp()),
                                  "exp": int(claims.exp.timestamp())}
    if claims.approval_role is not None:
        payload["approval_role"] = claims.approval_role
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    """The token's principal; ``TokenError`` saying why it is not accepted."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired; ask for a new one "
                         "(`stead api token`)") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature does not verify (signed with another "
                         "key?)") from None
    except jwt.MissingRequiredClaimError as e:
        raise TokenError(f"the token lacks the {e.claim!r} claim") from None
    except jwt.InvalidTokenError as e:
        raise TokenError(f"malformed token: {e}") from None
    try:
        return Principal.model_validate(claims)
    except ValidationError as e:
        raise TokenError("the token's claims are invalid: " + "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors())) from None


class TokenVerifier:
    """Both kinds of bearer token side by side: the shared HS256 key's (``stead api token``)
    and, with ``STEAD_OIDC_ISSUER``, the identity provider's. A token that names the
    provider's issuer, or is signed with anything but HS256, is the provider's to judge; the
    rest are checked with the shared key.

        tokens = TokenVerifier.from_settings(settings)
        principal = await tokens.verify(token)   # TokenError (401), IdentityProviderError (503)
    """

    def __init__(self, secret: str, oidc: OidcVerifier | None = None) -> None:
        self.secret = secret
        self.oidc = oidc

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The key of :func:`api_secret` and, when configured, the provider's verifier."""
        oidc = None
        if settings.oidc.enabled:
            from stead.api._oidc import OidcVerifier

            oidc = OidcVerifier(settings.oidc)
        return cls(api_secret(settings), oidc)

    async def verify(self, token: str) -> Principal:
        if self.oidc is not None and self.oidc.claims_token(token):
            return await self.oidc.verify(token)
        return verify_token(self.secret, token)

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()
