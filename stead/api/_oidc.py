"""Bearer tokens from an OpenID Connect identity provider: keys by discovery and JWKS, claims
mapped to stead's :class:`~stead.api._auth.Principal`.

    verifier = OidcVerifier(settings.oidc)     # STEAD_OIDC_* (stead.settings.OidcSettings)
    principal = await verifier.verify(token)   # TokenError (401), IdentityProviderError (503)

Keys come from ``jwks_uri`` of ``<issuer>/.well-known/openid-configuration`` (or
``STEAD_OIDC_JWKS_URL``) and are kept ``jwks_cache_seconds``. A token naming a key id the cache
does not hold makes one refetch, since that is how a rotated key first shows, but at most one
per ``jwks_refetch_seconds``: a flood of made-up key ids reaches the provider once, not once
per request. Concurrent requests share one fetch. When a refetch fails, the keys already held
stay in use (a provider's short outage does not lock everyone out); with no keys at all the
request is a 503 that names the provider.

What a token must satisfy: a public-key algorithm of ``STEAD_OIDC_ALGORITHMS`` (never ``none``,
never HS*: the JWKS is public), a key of the provider whose type fits that algorithm, ``iss``
equal to the issuer, ``aud`` containing the audience, ``exp`` (and ``nbf``/``iat`` when
present) within ``STEAD_OIDC_LEEWAY_SECONDS`` of this clock. Every refusal says which of these
failed; none quotes key material.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt
from pydantic import ValidationError

from stead.api._auth import Principal, TokenError
from stead.settings import OidcClaims, OidcSettings, secure_url

if TYPE_CHECKING:  # httpx loads with the first fetch, not with the API module
    import httpx

log = logging.getLogger("stead.api.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
_MAX_DOCUMENT_BYTES = 1_000_000
"""A discovery document or JWKS larger than this is not one (and is not read into memory)."""


class IdentityProviderError(Exception):
    """The identity provider could not be asked for its keys, or answered nonsense (a 503:
    the token may be fine, stead cannot tell now)."""


class OidcVerifier:
    """Verifies tokens of one OpenID Connect provider; one per API process (it holds the key
    cache and an HTTP client, closed by :meth:`aclose`)."""

    def __init__(self, settings: OidcSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``transport``: httpx's seam for a custom network path; ``clock``: monotonic
        seconds, for the cache and the refetch limit."""
        if settings.issuer is None or settings.audience is None:
            raise ValueError("OidcVerifier needs STEAD_OIDC_ISSUER and STEAD_OIDC_AUDIENCE")
        self.settings = settings
        self.issuer: str = settings.issuer
        self.audience: str = settings.audience
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._jwks_uri: str | None = settings.jwks_url
        self._keys: dict[str | None, dict[str, Any]] = {}
        """The provider's signing keys by ``kid`` (JWK objects as published)."""
        self._fetched_at: float | None = None
        """When the keys were last fetched successfully."""
        self._attempted_at: float | None = None
        """When a fetch was last tried, successful or not (the refetch limit counts from it)."""
        self._last_error: IdentityProviderError | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """JWKS fetches made (tried), for tests and diagnostics."""

    # ------------------------------------------------------------------ tokens

    def claims_token(self, token: str) -> bool:
        """Whether ``token`` is this provider's to judge rather than the shared HS256 key's:
        it names this issuer, or it is signed with anything but HS256 (so that ``none`` or a
        foreign algorithm gets the provider's clear refusal). Nothing is trusted yet."""
        try:
            header = jwt.get_unverified_header(token)
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return False  # the shared-key path says "malformed"
        return payload.get("iss") == self.issuer or header.get("alg") != "HS256"

    async def verify(self, token: str) -> Principal:
        """The token's principal; ``TokenError`` (401) saying what is wrong with it, or
        ``IdentityProviderError`` (503) when the provider's keys cannot be had."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise TokenError(f"malformed token: {e}") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise TokenError(f"the token is signed with {alg!r}; tokens of {self.issuer} must "
                             f"use {' or '.join(self.settings.algorithms)} "
                             f"(STEAD_OIDC_ALGORITHMS)")
        # Another issuer's token is refused before its key id is looked up: its kid would
        # otherwise make a refetch from this provider for nothing.
        iss = self._claim(token, "iss")
        if iss is None:
            raise TokenError("the token lacks the 'iss' claim")
        if iss != self.issuer:
            raise TokenError(f"the token's issuer {iss!r} is not {self.issuer!r} "
                             f"(STEAD_OIDC_ISSUER)")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token: its `kid` header is not a string")
        key = await self._key(kid, alg)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "verify_sub": False})
        except jwt.ExpiredSignatureError:
            raise TokenError(f"the token expired {self._ago(token, 'exp')}, beyond the "
                             f"{self.settings.leeway_seconds:g} s of clock skew allowed; "
                             f"sign in again") from None
        except jwt.ImmatureSignatureError:
            raise TokenError(f"the token is not valid yet (its nbf/iat lies more than "
                             f"{self.settings.leeway_seconds:g} s ahead of this clock)") from None
        except jwt.InvalidSignatureError:
            raise TokenError(f"the token's signature does not verify with {self.issuer}'s key "
                             f"{kid!r} (signed by another issuer's key?)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"the token is for another audience ({self._claim(token, 'aud')!r}); "
                             f"stead accepts {self.audience!r} (STEAD_OIDC_AUDIENCE)") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"the token's issuer {self._claim(token, 'iss')!r} is not "
                             f"{self.issuer!r} (STEAD_OIDC_ISSUER)") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenError(f"the token lacks the {e.claim!r} claim") from None
        except jwt.InvalidTokenError as e:
            raise TokenError(f"malformed token: {e}") from None
        return principal_of(claims, self.settings.claims)

    @staticmethod
    def _claim(token: str, name: str) -> object:
        """A claim of a token not verified yet (for routing and for saying what is wrong)."""
        try:
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as e:
            raise TokenError(f"malformed token: {e}") from None
        return payload.get(name)

    def _ago(self, token: str, name: str) -> str:
        value = self._claim(token, name)
        if not isinstance(value, int | float):
            return "already"
        return f"{max(0, int(time.time() - value))} s ago"

    # ------------------------------------------------------------------ keys

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        now = self._clock()
        fresh = self._fetched_at is not None and \
            now - self._fetched_at < self.settings.jwks_cache_seconds
        if not fresh:
            await self._refresh(reason="expired" if self._fetched_at else "first use")
        elif self._find(kid) is None and self._may_refetch(now):
            await self._refresh(reason=f"unknown key {kid!r}")
        jwk = self._find(kid)
        if jwk is None:
            if not self._keys and self._last_error is not None:
                raise self._last_error  # a concurrent request's fetch failed: a 503 here too
            if kid is None:
                raise TokenError(f"the token names no key (`kid`) and {self.issuer} publishes "
                                 f"{len(self._keys)} keys; it cannot be matched")
            raise TokenError(f"the token names key {kid!r}, which {self.issuer} does not "
                             f"publish (rotated out, or not its token)")
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise TokenError(f"the token is signed with {alg}, but key {kid!r} is for "
                             f"{declared}")
        try:
            return jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            raise TokenError(f"key {kid!r} of {self.issuer} is a {jwk.get('kty')} key, "
                             f"which cannot verify {alg}") from None

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or \
            now - self._attempted_at >= self.settings.jwks_refetch_seconds

    async def _refresh(self, *, reason: str) -> None:
        """Fetch the JWKS once, whoever else asks meanwhile; keep the old keys if it fails."""
        attempted = self._attempted_at
        async with self._lock:
            if self._attempted_at != attempted:
                return  # another request fetched while this one waited: use its result
            if not self._may_refetch(self._clock()):
                if self._keys:
                    return  # an expired cache, refetched too recently: keep the keys held
                if self._last_error is not None:
                    raise self._last_error  # the provider was down a moment ago: spare it
            self._attempted_at = self._clock()
            self.fetches += 1
            try:
                keys = await self._fetch_keys()
            except IdentityProviderError as e:
                self._last_error = e
                if not self._keys:
                    raise
                log.warning("keeping %d cached keys of %s: %s", len(self._keys),
                            self.issuer, e)
                return
            log.info("fetched %d keys of %s (%s)", len(keys), self.issuer, reason)
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_error = None

    async def _fetch_keys(self) -> dict[str | None, dict[str, Any]]:
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover()
        try:
            document = await self._get_json(self._jwks_uri, "JWKS")
        except IdentityProviderError:
            if self.settings.jwks_url is None:
                self._jwks_uri = None  # discovered: look again next time, it may have moved
            raise
        raw = document.get("keys")
        if not isinstance(raw, list):
            raise IdentityProviderError(f"the JWKS at {self._jwks_uri} has no `keys` list")
        keys: dict[str | None, dict[str, Any]] = {}
        for jwk in raw:
            # Symmetric (oct) keys and encryption keys never verify a signature here.
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC") or \
                    jwk.get("use", "sig") != "sig":
                continue
            kid = jwk.get("kid")
            keys[kid if isinstance(kid, str) else None] = jwk
        if not keys:
            raise IdentityProviderError(f"the JWKS at {self._jwks_uri} holds no RSA or EC "
                                        f"signing key")
        return keys

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        document = await self._get_json(url, "discovery document")
        if document.get("issuer") != self.issuer:
            raise IdentityProviderError(
                f"the discovery document at {url} names the issuer "
                f"{document.get('issuer')!r}, not STEAD_OIDC_ISSUER={self.issuer!r}; set "
                f"STEAD_OIDC_ISSUER to exactly what the provider's tokens carry in `iss`")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IdentityProviderError(f"the discovery document at {url} has no jwks_uri")
        try:
            return secure_url(jwks_uri)
        except ValueError as e:
            raise IdentityProviderError(f"the discovery document at {url} names the jwks_uri "
                                        f"{jwks_uri!r}, which {e}") from None

    async def _get_json(self, url: str, what: str) -> Mapping[str, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.settings.http_timeout_seconds,
                follow_redirects=False, headers={"Accept": "application/json"})
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as e:
            raise IdentityProviderError(
                f"the identity provider {self.issuer} is unreachable ({what} {url}: "
                f"{type(e).__name__}: {e or 'no answer'}); its tokens cannot be checked "
                f"now") from None
        if response.status_code != 200:
            raise IdentityProviderError(f"the identity provider answered {response.status_code} "
                                        f"for its {what} ({url})")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise IdentityProviderError(f"the {what} at {url} is larger than "
                                        f"{_MAX_DOCUMENT_BYTES} bytes")
        try:
            document = response.json()
        except ValueError:
            raise IdentityProviderError(f"the {what} at {url} is not JSON") from None
        if not isinstance(document, dict):
            raise IdentityProviderError(f"the {what} at {url} is not a JSON object")
        return document

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# ---------------------------------------------------------------------- claims


def _lookup(claims: Mapping[str, Any], name: str) -> object:
    """The claim ``name``: as it is (``https://example.com/roles``), else a dotted path
    (``realm_access.roles``); None when absent."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def principal_of(claims: Mapping[str, Any], mapping: OidcClaims) -> Principal:
    """stead's principal from a verified token's claims, as ``STEAD_OIDC_CLAIMS`` maps them."""
    subject = _lookup(claims, mapping.subject)
    if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
        raise TokenError(f"the token has no {mapping.subject!r} claim naming who calls "
                         f"(STEAD_OIDC_CLAIMS subject)")
    if mapping.tenant is not None:
        tenant: object = mapping.tenant
    else:
        assert mapping.tenant_claim is not None  # OidcClaims requires one of the two
        tenant = _lookup(claims, mapping.tenant_claim)
        if not isinstance(tenant, str):
            raise TokenError(f"the token has no {mapping.tenant_claim!r} claim naming the "
                             f"tenant (STEAD_OIDC_CLAIMS tenant_claim)")
    raw = _lookup(claims, mapping.roles_claim)
    values = raw.split() if isinstance(raw, str) else raw
    if not isinstance(values, list):
        raise TokenError(f"the token has no {mapping.roles_claim!r} claim listing its groups "
                         f"or roles (STEAD_OIDC_CLAIMS roles_claim)")
    groups = [v for v in values if isinstance(v, str)]
    roles: list[str] = []
    for group in groups:
        given = mapping.roles.get(group, []) if mapping.roles is not None else \
            ([group] if group in ("requester", "approver", "auditor") else [])
        roles.extend(r for r in given if r not in roles)
    if not roles:
        raise TokenError(f"none of the token's {len(groups)} {mapping.roles_claim!r} values "
                         f"is a stead role (requester, approver, auditor) or maps to one "
                         f"(STEAD_OIDC_CLAIMS roles)")
    approval_role = _lookup(claims, mapping.approval_role_claim) \
        if mapping.approval_role_claim is not None else None
    if approval_role is None:
        approval_role = next((mapping.approval_roles[g] for g in groups
                              if g in mapping.approval_roles), None)
    exp = claims.get("exp")
    if isinstance(exp, int | float):
        try:
            exp = datetime.fromtimestamp(exp, UTC)
        except (OverflowError, ValueError, OSError):
            raise TokenError(f"the token's exp ({exp!r}) is not a time") from None
    try:
        return Principal.model_validate({
            "sub": str(subject), "tenant": tenant, "roles": roles,
            "exp": exp,
            "approval_role": approval_role})
    except ValidationError as e:
        raise TokenError("the token's claims do not make a stead principal: " + "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors())) from None
