"""Single sign-on for the HTTP API: tokens of an OpenID Connect provider (the fake in
``stead.testing.oidc_provider``, over real HTTP) checked by the real API server, side by side
with the shared HS256 key; key rotation and the refetch limit counted at the provider; every
refusal a 401 that says why; an unreachable provider a 503; bad settings stop the process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from _cli import cli_env, stead
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from stead.agents.ops import OpsWorld, ops_agent
from stead.agents.refund import RefundWorld, refund_agent
from stead.api import ApiServer, create_app, issue_token
from stead.api._auth import TokenError
from stead.api._oidc import principal_of
from stead.authoring.agent import AgentCatalog
from stead.errors import SettingsError
from stead.settings import VARIABLES, OidcClaims, Settings, load_settings
from stead.testing.oidc_provider import FakeOidcProvider
from stead.worker import WorkerHost

SECRET = "test-secret-" + "x" * 40
AUDIENCE = "stead-api"
REFUND_300 = "Refund €300 on ORD-1005, headphones stopped working"
# Keycloak/Okta/Entra-style: who is the user name, the tenant an `org` claim, roles from
# groups. (Not the e-mail: the ledger redacts e-mail addresses, so it would record
# "[REDACTED:email]" as the user.)
CLAIMS = OidcClaims.model_validate({
    "subject": "preferred_username", "tenant_claim": "org", "roles_claim": "groups",
    "roles": {"stead-requesters": "requester", "stead-approvers": ["approver", "requester"],
              "stead-auditors": "auditor"},
    "approval_roles": {"support-leads": "support-lead"}})


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def person(t: str, *groups: str, name: str = "alice", **more: object) -> dict[str, object]:
    return {"preferred_username": name, "org": t, "groups": list(groups), **more}


def error_of(r: httpx.Response, status: int, type_: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"]["type"] == type_, body
    message: str = body["error"]["message"]
    return message


@pytest.fixture
async def idp() -> AsyncIterator[FakeOidcProvider]:
    async with FakeOidcProvider(audience=AUDIENCE) as provider:
        yield provider


REFETCH = 2.0
"""The tests' refetch limit: long enough that a flood of 40 requests on a loaded machine ends
inside one interval, so the fetch counts below are exact."""


def sso(settings: Settings, idp: FakeOidcProvider, **changes: Any) -> Settings:
    changes.setdefault("oidc_jwks_refetch_seconds", REFETCH)
    return settings.replace(api_secret=SecretStr(SECRET), oidc_issuer=idp.issuer,
                            oidc_audience=AUDIENCE, oidc_claims=CLAIMS, **changes)


async def serve(settings: Settings, *, client: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, client=client, poll_seconds=0.2)
    async with ApiServer(app, host="127.0.0.1", port=0) as server, \
            httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
async def api(settings: Settings, idp: FakeOidcProvider) -> AsyncIterator[httpx.AsyncClient]:
    """The real API server (uvicorn on loopback) trusting ``idp``."""
    async for c in serve(sso(settings, idp)):
        yield c


async def runs_of(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.get("/v1/runs", headers=bearer(token))


# ---------------------------------------------------------------------------- accepted


async def test_rs256_and_es256_tokens_are_mapped_to_tenant_roles_and_approval_role(
        settings: Settings, idp: FakeOidcProvider, tmp_path: Any, world: OpsWorld) -> None:
    """A requester (RS256) starts a run; an approver whose token is ES256 sees its approval
    and decides it as ``support-lead`` (from a group); another tenant's token sees nothing;
    an HS256 token of the same tenant keeps working beside them."""
    es = idp.add_key("ES256", current=False)
    t = tenant()
    catalog = AgentCatalog([refund_agent(RefundWorld(tmp_path / "refunds.sqlite")),
                            ops_agent(world)])
    configured = sso(settings, idp)
    async with WorkerHost(configured, catalog) as host:
        async for api in serve(configured, client=host.client):
            requester = idp.token(sub="u-1", claims=person(t, "stead-requesters", "staff"))
            r = await api.post("/v1/runs", json={"agent": "refund", "input": REFUND_300},
                               headers=bearer(requester))
            assert r.status_code == 201, r.text
            wid = r.json()["workflow_id"]
            assert wid.startswith(f"{t}-refund-")
            run = (await api.get(f"/v1/runs/{wid}", headers=bearer(requester))).json()
            assert run["tenant"] == t, run

            # Groups that map to no role give none: a requester may not read approvals.
            r = await api.get("/v1/approvals", headers=bearer(requester))
            assert "'approver' role" in error_of(r, 403, "forbidden")

            lead = idp.token(key=es, claims=person(t, "stead-approvers", "support-leads",
                                                   name="bob"))
            intern = idp.token(key=es, claims=person(t, "stead-approvers",
                                                     approval_role="intern"))
            approval: Any = None
            async with asyncio.timeout(60):
                while not approval:
                    r = await api.get("/v1/approvals", headers=bearer(lead))
                    assert r.status_code == 200, r.text
                    approval = next((a for a in r.json() if a["workflow_id"] == wid), None)
                    await asyncio.sleep(0.1)
            path = f"/v1/runs/{wid}/approvals/{approval['approval_id']}"
            # The approval_role claim wins over the groups' one, and the policy checks it.
            r = await api.post(path, json={"approved": True}, headers=bearer(intern))
            assert "may not decide" in error_of(r, 403, "forbidden")
            r = await api.post(path, json={"approved": False}, headers=bearer(lead))
            assert r.status_code == 200 and r.json()["outcome"] == "rejected", r.text

            other = idp.token(claims=person(tenant(), "stead-approvers"))
            r = await api.get(f"/v1/runs/{wid}", headers=bearer(other))
            assert error_of(r, 404, "not_found")
            assert await _listed(api, other) == []

            hs = issue_token(SECRET, sub="ci", tenant=t, roles=["requester"])
            assert wid in [x["workflow_id"] for x in await _listed(api, hs, wid)]

            # The mapped subject (preferred_username) is who the ledger says started it.
            auditor = idp.token(claims=person(t, "stead-auditors", name="audrey"))
            async with asyncio.timeout(60):
                while True:
                    r = await api.get(f"/v1/runs/{wid}", headers=bearer(auditor))
                    if r.json()["temporal_status"] != "RUNNING":
                        break
                    await asyncio.sleep(0.1)
            trail = (await api.get(f"/v1/runs/{wid}/audit", headers=bearer(auditor))).json()
            [row] = trail["runs"]
            assert (row["tenant"], row["user_id"], row["status"]) == (
                t, "alice", "denied"), row


async def _listed(api: httpx.AsyncClient, token: str, wid: str | None = None) -> list[Any]:
    """The tenant's runs, waiting (visibility lags) until ``wid`` shows, if given."""
    async with asyncio.timeout(30):
        while True:
            r = await runs_of(api, token)
            assert r.status_code == 200, r.text
            rows: list[Any] = r.json()
            if wid is None or any(x["workflow_id"] == wid for x in rows):
                return rows
            await asyncio.sleep(0.1)


def test_claims_are_read_by_name_or_dotted_path_and_roles_from_strings() -> None:
    """``realm_access.roles`` (Keycloak) as a path, a namespaced claim with dots as it is,
    a space-separated string as a list; a fixed tenant; stead role names without a map."""
    keycloak = OidcClaims.model_validate({"tenant": "acme", "roles_claim": "realm_access.roles"})
    p = principal_of({"sub": "kc-1", "exp": 2e9, "realm_access": {"roles": ["approver", "x"]}},
                     keycloak)
    assert (p.sub, p.tenant, p.roles, p.approval_role) == ("kc-1", "acme", ["approver"], None)
    auth0 = OidcClaims.model_validate({"tenant_claim": "https://stead.dev/tenant",
                                       "roles_claim": "scope"})
    p = principal_of({"sub": "a0", "exp": 2e9, "https://stead.dev/tenant": "t1",
                      "scope": "openid auditor requester"}, auth0)
    assert (p.tenant, p.roles) == ("t1", ["auditor", "requester"])
    with pytest.raises(TokenError, match="no 'org' claim"):
        principal_of({"preferred_username": "a", "exp": 2e9, "groups": ["stead-auditors"]},
                     CLAIMS)
    with pytest.raises(TokenError, match="none of the token's 2 'groups' values"):
        principal_of({"preferred_username": "a", "org": "t", "exp": 2e9, "groups": ["a", "b"]},
                     CLAIMS)
    with pytest.raises(TokenError, match="tenant: String should match"):
        principal_of({"preferred_username": "a", "org": "no spaces", "exp": 2e9,
                      "groups": ["stead-auditors"]}, CLAIMS)


# ---------------------------------------------------------------------------- keys


async def test_a_rotated_key_is_picked_up_with_one_refetch(
        api: httpx.AsyncClient, idp: FakeOidcProvider) -> None:
    t = tenant()
    old = idp.token(claims=person(t, "stead-auditors"))
    assert (await runs_of(api, old)).status_code == 200
    assert (await runs_of(api, old)).status_code == 200
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)  # cached, by kid

    await asyncio.sleep(REFETCH + 0.2)  # past the refetch limit of the last fetch
    idp.rotate()
    new = idp.token(claims=person(t, "stead-auditors"))
    assert (await runs_of(api, new)).status_code == 200, "the rotated key is picked up"
    assert idp.jwks_fetches == 2
    assert (await runs_of(api, new)).status_code == 200
    # The old key is gone from the JWKS: its tokens are refused without another fetch.
    r = await runs_of(api, old)
    assert "does not publish" in error_of(r, 401, "unauthorized")
    assert idp.jwks_fetches == 2


async def test_a_flood_of_unknown_key_ids_refetches_at_most_once_per_interval(
        api: httpx.AsyncClient, idp: FakeOidcProvider) -> None:
    t = tenant()
    good = idp.token(claims=person(t, "stead-auditors"))
    assert (await runs_of(api, good)).status_code == 200
    await asyncio.sleep(REFETCH + 0.2)

    def flood() -> list[str]:
        return [idp.token(claims=person(t, "stead-auditors"), kid=f"made-up-{i}")
                for i in range(40)]

    answers = await asyncio.gather(*(runs_of(api, x) for x in flood()))
    assert {r.status_code for r in answers} == {401}
    assert all("does not publish" in r.json()["error"]["message"] for r in answers)
    assert idp.jwks_fetches == 2  # 40 unknown kids, one refetch
    answers = await asyncio.gather(*(runs_of(api, x) for x in flood()))
    assert {r.status_code for r in answers} == {401} and idp.jwks_fetches == 2
    await asyncio.sleep(REFETCH + 0.2)
    answers = await asyncio.gather(*(runs_of(api, x) for x in flood()))
    assert idp.jwks_fetches == 3  # the next interval: one more
    assert (await runs_of(api, good)).status_code == 200


# ---------------------------------------------------------------------------- refused


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, object], payload: dict[str, object], key: bytes | None) -> str:
    """A token assembled by hand, as an attacker would (pyjwt refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if key is None else \
        hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_each_bad_token_is_a_401_that_says_what_is_wrong(
        api: httpx.AsyncClient, idp: FakeOidcProvider) -> None:
    t = tenant()
    who = person(t, "stead-auditors")
    async with FakeOidcProvider(audience=AUDIENCE) as impostor:
        # Another provider's key under the very kid this provider publishes.
        impostor.keys = []
        twin = impostor.add_key(kid=idp.current.kid)
        public_pem = idp.current.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        claims = {"iss": idp.issuer, "aud": AUDIENCE, "exp": 4_000_000_000, **who}
        cases = {
            "wrong audience": (idp.token(claims=who, audience="another-app"),
                               "for another audience ('another-app'); stead accepts "
                               "'stead-api'"),
            "audience list without ours": (idp.token(claims=who, audience=["a", "b"]),
                                           "another audience"),
            "expired beyond leeway": (idp.token(claims=who, ttl=timedelta(seconds=-120)),
                                      "expired"),
            "not yet valid": (idp.token(claims={**who, "nbf": 4_000_000_000}),
                              "not valid yet"),
            "another issuer's key, same kid": (
                impostor.token(claims=who, issuer=idp.issuer, key=twin),
                "does not verify with"),
            "another issuer": (impostor.token(claims=who, key=twin),
                               f"issuer {impostor.issuer!r} is not {idp.issuer!r}"),
            "wrong iss, right key": (idp.token(claims=who, issuer="https://evil.example"),
                                     "issuer 'https://evil.example' is not"),
            "alg none": (_hand_made({"alg": "none", "typ": "JWT", "kid": idp.current.kid},
                                    claims, None), "signed with 'none'"),
            "HS256 forged with the public key": (
                _hand_made({"alg": "HS256", "typ": "JWT", "kid": idp.current.kid}, claims,
                           public_pem), "signed with 'HS256'; tokens of"),
            "unmapped groups": (idp.token(claims=person(t, "everyone")), "none of the token"),
            "no exp": (idp.token(claims=who, omit=("exp",)), "lacks the 'exp' claim"),
            "exp past any calendar": (idp.token(claims={**who, "exp": 10**20}),
                                      "exp (100000000000000000000) is not a time"),
            "no iss, RS256": (idp.token(claims=who, omit=("iss",)), "lacks the 'iss' claim"),
            "no aud": (idp.token(claims=who, omit=("aud",)), "lacks the 'aud' claim"),
        }
        for name, (token, words) in cases.items():
            r = await runs_of(api, token)
            message = error_of(r, 401, "unauthorized")
            assert words in message, (name, message)
            assert "BEGIN" not in message and str(idp.current.public_jwk()["n"]) not in message
            assert r.headers["www-authenticate"] == "Bearer"
    within = idp.token(claims=who, ttl=timedelta(seconds=-30))  # 30 s late, 60 s allowed
    assert (await runs_of(api, within)).status_code == 200


# ---------------------------------------------------------------------------- provider down


async def test_an_unreachable_provider_is_a_503_and_held_keys_outlive_an_outage(
        settings: Settings, idp: FakeOidcProvider) -> None:
    t = tenant()
    token = idp.token(claims=person(t, "stead-auditors"))
    hs = issue_token(SECRET, sub="ci", tenant=t, roles=["auditor"])
    idp.down = True
    async for api in serve(sso(settings, idp, oidc_jwks_cache_seconds=0.5,
                                oidc_jwks_refetch_seconds=0.5)):
        answers = await asyncio.gather(*(runs_of(api, token) for _ in range(8)))
        for r in answers:  # all of them, though only one asked the provider
            assert "answered 503 for its discovery document" in error_of(r, 503,
                                                                          "unavailable")
        assert idp.discovery_fetches == 1
        assert (await runs_of(api, hs)).status_code == 200  # the shared key needs no provider
        fetched = idp.discovery_fetches
        assert error_of(await runs_of(api, token), 503, "unavailable")
        assert idp.discovery_fetches == fetched, "a provider just found down is spared"

        idp.down = False
        await asyncio.sleep(0.6)
        assert (await runs_of(api, token)).status_code == 200

        idp.down = True  # the cache expires during the outage: the keys held still serve
        await asyncio.sleep(0.6)
        assert (await runs_of(api, token)).status_code == 200
        assert idp.jwks_fetches == 2

    stopped = FakeOidcProvider(audience=AUDIENCE)
    await stopped.start()
    configured = sso(settings, stopped)
    late = stopped.token(claims=person(t, "stead-auditors"))
    await stopped.close()
    async for api in serve(configured):
        message = error_of(await runs_of(api, late), 503, "unavailable")
        assert f"identity provider {configured.oidc.issuer} is unreachable" in message


# ---------------------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("env", "words"), [
    ({"STEAD_OIDC_ISSUER": "http://login.example.com"},
     "STEAD_OIDC_ISSUER='http://login.example.com': Value error, must be https://"),
    ({"STEAD_OIDC_ISSUER": "https://login.example.com"},
     "STEAD_OIDC_AUDIENCE=None: Value error, is required with STEAD_OIDC_ISSUER"),
    ({"STEAD_OIDC_JWKS_URL": "https://login.example.com/keys"},
     "STEAD_OIDC_JWKS_URL='https://login.example.com/keys': Value error, is set, but no "
     "issuer is"),
    ({"STEAD_OIDC_ALGORITHMS": '["RS256", "HS256"]'},
     "STEAD_OIDC_ALGORITHMS=['RS256', 'HS256']: Value error, 'HS256' is not accepted (a "
     "shared-key or unsigned algorithm"),
    ({"STEAD_OIDC_ALGORITHMS": '["none"]'}, "'none' is not accepted"),
    ({"STEAD_OIDC_ALGORITHMS": '["XS999"]'}, "'XS999' is not accepted; use some of RS256"),
    ({"STEAD_OIDC_CLAIMS": '{"roles": {"admins": "admin"}}'},
     "STEAD_OIDC_CLAIMS at roles.admins.0='admin': Input should be 'requester', 'approver' "
     "or 'auditor'"),
    ({"STEAD_OIDC_CLAIMS": '{"tenant": "acme", "tenant_claim": "org"}'},
     "either tenant (one fixed tenant) or tenant_claim"),
    ({"STEAD_OIDC_CLAIMS": '{"tenant_claim": null}'}, "name the tenant"),
    ({"STEAD_OIDC_CLAIMS": '{"subjekt": "email"}'}, "subjekt"),
    ({"STEAD_OIDC_LEEWAY_SECONDS": "-1"}, "STEAD_OIDC_LEEWAY_SECONDS='-1'"),
])
def test_bad_oidc_settings_name_the_variable_and_the_reason(
        clean_env: pytest.MonkeyPatch, env: dict[str, str], words: str) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert words in str(caught.value)


def test_good_oidc_settings_are_read(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STEAD_OIDC_ISSUER", "https://login.example.com/realms/acme")
    clean_env.setenv("STEAD_OIDC_AUDIENCE", "stead")
    clean_env.setenv("STEAD_OIDC_CLAIMS", '{"tenant": "acme", "roles": {"ops": "approver"}}')
    oidc = load_settings().oidc
    assert (oidc.enabled, oidc.algorithms, oidc.leeway_seconds, oidc.jwks_cache_seconds) == \
        (True, ["RS256", "ES256"], 60.0, 300.0)
    assert (oidc.claims.tenant, oidc.claims.tenant_claim, oidc.claims.roles) == \
        ("acme", None, {"ops": ["approver"]})


async def test_stead_api_refuses_to_start_with_a_bad_provider_setting(
        settings: Settings) -> None:
    env = cli_env(settings, STEAD_OIDC_ISSUER="https://login.example.com",
                  STEAD_API_SECRET=SECRET)
    env.pop("STEAD_OIDC_AUDIENCE", None)
    done = await stead("api", "--port", "1", env=env)
    assert done.code != 0 and "STEAD_OIDC_AUDIENCE" in done.err, done
