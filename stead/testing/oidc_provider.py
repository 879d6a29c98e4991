"""A fake OpenID Connect identity provider on loopback: discovery, a JWKS, and tokens signed
with keys it makes, so the HTTP API's single sign-on is tested over real HTTP.

    async with FakeOidcProvider(audience="stead") as idp:
        settings = settings.replace(oidc_issuer=idp.issuer, oidc_audience="stead")
        token = idp.token(sub="alice", claims={"tenant": "acme", "roles": ["approver"]})
        idp.rotate()                      # a new current key (new kid); the old one removed
        idp.jwks_fetches                  # how often the JWKS was fetched

Endpoints: ``GET <path>/.well-known/openid-configuration`` (``issuer``, ``jwks_uri``) and
``GET <path>/jwks``. Keys are RSA (RS256, 2048 bits) or EC (ES256, P-256), made in memory;
``add_key(kid=...)`` lets a test reuse another provider's key id. ``down = True`` answers
every request 503, ``close()`` stops listening (a provider unreachable). Run it standalone to
try the API by hand::

    python -m stead.testing.oidc_provider --port 8090 --tenant acme --role approver
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from stead.testing._http import LocalHTTPServer

__all__ = ["FakeOidcProvider", "KeyAlgorithm", "SigningKey"]

KeyAlgorithm = Literal["RS256", "ES256"]


@dataclass(frozen=True)
class SigningKey:
    """One key of the provider: its id, algorithm and private half."""

    kid: str
    alg: KeyAlgorithm
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, alg: KeyAlgorithm = "RS256", *, kid: str | None = None) -> SigningKey:
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg == "RS256" else ec.generate_private_key(ec.SECP256R1()))
        return cls(kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg=alg, private=private)

    def public_jwk(self) -> dict[str, object]:
        """The public half as a JWK, as a JWKS publishes it."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


class FakeOidcProvider(LocalHTTPServer):
    """Discovery + JWKS on 127.0.0.1; signs tokens with the current key."""

    def __init__(self, *, audience: str = "stead", path: str = "/realms/test",
                 alg: KeyAlgorithm = "RS256", host: str = "127.0.0.1", port: int = 0) -> None:
        """``path``: where the issuer lives under the server (Keycloak-style realms);
        ``alg``: the algorithm of the first (current) key."""
        super().__init__(host=host, port=port)
        self.audience = audience
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.keys: list[SigningKey] = [SigningKey.generate(alg)]
        """The keys the JWKS publishes; the last one is current (signs by default)."""
        self.down = False
        """True: every request is answered 503 (a provider in trouble)."""
        self.jwks_fetches = 0
        self.discovery_fetches = 0

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.base_url + self.path

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    # ------------------------------------------------------------------ keys

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    def add_key(self, alg: KeyAlgorithm = "RS256", *, kid: str | None = None,
                current: bool = True) -> SigningKey:
        """Publish a new key (the current one unless ``current=False``)."""
        key = SigningKey.generate(alg, kid=kid)
        if current:
            self.keys.append(key)
        else:
            self.keys.insert(0, key)
        return key

    def rotate(self, alg: KeyAlgorithm | None = None, *, keep_old: bool = False) -> SigningKey:
        """A new current key with a new kid; the others are removed unless ``keep_old``."""
        key = SigningKey.generate(alg or self.current.alg)
        self.keys = [*self.keys, key] if keep_old else [key]
        return key

    def remove_key(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    # ------------------------------------------------------------------ tokens

    def token(self, *, sub: str = "alice", claims: Mapping[str, object] | None = None,
              audience: str | list[str] | None = None, issuer: str | None = None,
              ttl: timedelta = timedelta(minutes=10), now: datetime | float | None = None,
              key: SigningKey | None = None, kid: str | None = None,
              omit: tuple[str, ...] = ()) -> str:
        """A signed token: ``sub``, ``iss`` (this issuer unless ``issuer``), ``aud`` (the
        provider's audience unless ``audience``), ``iat``/``nbf`` = ``now``, ``exp`` = now +
        ``ttl``, plus ``claims`` (which win). ``key``: sign with that key (default the
        current); ``kid``: the header's key id (default the key's); ``omit``: claims left
        out."""
        issued = (now.timestamp() if isinstance(now, datetime) else now) \
            if now is not None else time.time()
        payload: dict[str, object] = {
            "iss": issuer or self.issuer, "sub": sub,
            "aud": audience if audience is not None else self.audience,
            "iat": int(issued), "nbf": int(issued), "exp": int(issued + ttl.total_seconds()),
            **(claims or {})}
        for name in omit:
            payload.pop(name, None)
        signer = key or self.current
        return jwt.encode(payload, signer.private, algorithm=signer.alg,
                          headers={"kid": kid or signer.kid})

    # ------------------------------------------------------------------ server

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.path + "/.well-known/openid-configuration", self._discovery)
        app.router.add_get(self.path + "/jwks", self._jwks)
        return app

    async def _discovery(self, _: web.Request) -> web.Response:
        self.discovery_fetches += 1
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        return web.json_response({
            "issuer": self.issuer, "jwks_uri": self.jwks_url,
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys})})

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]})


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--audience", default="stead")
    parser.add_argument("--sub", default="alice")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--role", action="append", default=None)
    parser.add_argument("--ttl-minutes", type=float, default=60)
    args = parser.parse_args()
    async with FakeOidcProvider(audience=args.audience, port=args.port) as idp:
        token = idp.token(sub=args.sub, ttl=timedelta(minutes=args.ttl_minutes),
                          claims={"tenant": args.tenant, "roles": args.role or ["requester"]})
        print(f"export STEAD_OIDC_ISSUER={idp.issuer} STEAD_OIDC_AUDIENCE={args.audience}")
        print(f"TOKEN={token}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
