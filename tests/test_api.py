"""The HTTP API against the real stack: runs started, read and decided over HTTP, auth and
tenant isolation, the audit trail and metrics, server-sent events, ``stead api``.

Most tests talk to the ASGI app in-process (httpx's ASGITransport); the event stream and the
``stead api`` command go through a real uvicorn server on loopback. Every test has tenants of
its own, so runs of other tests (same Temporal server) never show.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _cli import STEAD, cli_env, stead
from pydantic import SecretStr

from stead.agents.ops import OpsWorld, ops_agent
from stead.agents.refund import RefundWorld, refund_agent
from stead.api import ApiServer, Role, create_app, issue_token
from stead.authoring.agent import AgentCatalog
from stead.settings import Settings
from stead.stack.embedded import free_port
from stead.worker import WorkerHost

SECRET = "test-secret-" + "x" * 40
REFUND_300 = "Refund €300 on ORD-1005, headphones stopped working"
Json = Any  # decoded response bodies


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.replace(api_secret=SecretStr(SECRET))


@pytest.fixture
def refunds(tmp_path: Path) -> RefundWorld:
    return RefundWorld(tmp_path / "refund-world.sqlite")


@pytest.fixture
async def host(api_settings: Settings, refunds: RefundWorld,
               world: OpsWorld) -> AsyncIterator[WorkerHost]:
    catalog = AgentCatalog([refund_agent(refunds), ops_agent(world)])
    async with WorkerHost(api_settings, catalog) as h:
        yield h


@pytest.fixture
async def http(api_settings: Settings, host: WorkerHost) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings, client=host.client, poll_seconds=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as c:
        yield c
    await app.state.backend.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def auth(tenant: str, *roles: Role, sub: str = "alice", secret: str = SECRET,
         ttl: timedelta = timedelta(minutes=10), now: datetime | None = None,
         approval_role: str | None = None) -> dict[str, str]:
    token = issue_token(secret, sub=sub, tenant=tenant, roles=roles or ("requester",),
                        ttl=ttl, now=now, approval_role=approval_role)
    return {"Authorization": f"Bearer {token}"}


def error_of(r: httpx.Response, status: int, type_: str) -> str:
    """The response is ``status`` with the API's error shape of ``type_``; its message."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_, body
    message: str = body["error"]["message"]
    assert message
    return message


async def start(http: httpx.AsyncClient, who: dict[str, str], text: str, *,
                agent: str = "refund") -> str:
    r = await http.post("/v1/runs", json={"agent": agent, "input": text}, headers=who)
    assert r.status_code == 201, r.text
    workflow_id: str = r.json()["workflow_id"]
    assert r.headers["location"] == f"/v1/runs/{workflow_id}"
    return workflow_id


async def eventually(http: httpx.AsyncClient, path: str, who: dict[str, str], ok: Any,
                     *, within: float = 60) -> Json:
    """GET ``path`` until ``ok(body)``: runs finish and visibility catches up in their own
    time. Fails with the last body after ``within`` seconds instead of hanging."""
    body: Json = None
    async with asyncio.timeout(within):
        while True:
            r = await http.get(path, headers=who)
            assert r.status_code == 200, r.text
            body = r.json()
            if ok(body):
                return body
            await asyncio.sleep(0.1)


async def waiting_approval(http: httpx.AsyncClient, who: dict[str, str],
                           workflow_id: str) -> Json:
    rows = await eventually(http, "/v1/approvals", who,
                            lambda b: any(a["workflow_id"] == workflow_id for a in b))
    return next(a for a in rows if a["workflow_id"] == workflow_id)


async def finished(http: httpx.AsyncClient, who: dict[str, str], workflow_id: str) -> Json:
    return await eventually(http, f"/v1/runs/{workflow_id}", who,
                            lambda b: b["temporal_status"] != "RUNNING")


# ---------------------------------------------------------------------------- runs


async def test_a_requester_starts_a_run_and_follows_it_to_its_result(
        http: httpx.AsyncClient) -> None:
    t = tenant()
    me = auth(t, "requester", sub="carol")
    wid = await start(http, me, "is auth-service healthy?", agent="ops")
    assert wid.startswith(f"{t}-ops-")

    run = await finished(http, me, wid)
    assert (run["workflow_id"], run["agent"], run["tenant"], run["status"],
            run["temporal_status"]) == (wid, "ops", t, "completed", "COMPLETED")
    assert run["state"] is None and run["result"]["status"] == "completed"
    assert "auth-service" in run["result"]["answer"]
    assert run["started_at"] and run["closed_at"]

    listed = await eventually(http, "/v1/runs", me,
                              lambda b: [r["workflow_id"] for r in b] == [wid])
    assert (listed[0]["status"], listed[0]["agent"], listed[0]["awaiting_approval"]) == (
        "completed", "ops", False)
    for query, expect in (("?status=completed", [wid]), ("?status=running", []),
                          ("?agent=ops", [wid]), ("?agent=refund", []), ("?limit=1", [wid])):
        r = await http.get("/v1/runs" + query, headers=me)
        assert [x["workflow_id"] for x in r.json()] == expect, query


async def test_the_run_records_the_token_subject_and_defaults_the_user_to_it(
        http: httpx.AsyncClient) -> None:
    t = tenant()
    me = auth(t, "requester", "auditor", sub="dora")
    r = await http.post("/v1/runs", headers=me, json={
        "agent": "ops", "input": "is auth-service healthy?", "metadata": {"ticket": "T-1"}})
    wid = r.json()["workflow_id"]
    await finished(http, me, wid)

    trail = (await http.get(f"/v1/runs/{wid}/audit", headers=me)).json()
    [row] = trail["runs"]
    assert (row["tenant"], row["user_id"], row["metadata"]) == (
        t, "dora", {"ticket": "T-1", "stead.api.sub": "dora"})


async def test_a_run_of_an_unknown_agent_reads_as_failed_with_its_reason(
        http: httpx.AsyncClient) -> None:
    me = auth(tenant(), "requester")
    wid = await start(http, me, "refund order 7", agent="billing")

    run = await finished(http, me, wid)
    assert (run["status"], run["result"], run["state"]) == ("failed", None, None)
    assert "billing" in run["error"], run


async def test_a_run_of_an_agent_named_in_any_script_gets_a_usable_location(
        http: httpx.AsyncClient) -> None:
    """Agent names may hold any letter; the Location header (Latin-1 only) percent-encodes
    the run's id, and it leads to the run (found by the fuzzer: a 500 before)."""
    me = auth(tenant(), "requester")
    r = await http.post("/v1/runs", json={"agent": "föhn-天気", "input": "hi"}, headers=me)
    assert r.status_code == 201, r.text
    wid = r.json()["workflow_id"]
    assert "föhn-天気" in wid
    assert r.headers["location"] == "/v1/runs/" + quote(wid, safe=":@")
    assert r.headers["location"].isascii()
    run = await finished(http, me, wid)
    got = await http.get(r.headers["location"], headers=me)
    assert got.status_code == 200 and got.json()["workflow_id"] == wid == run["workflow_id"]


# ---------------------------------------------------------------------------- approvals


async def test_an_approver_approves_a_waiting_refund_and_the_money_moves_once(
        http: httpx.AsyncClient, refunds: RefundWorld) -> None:
    t = tenant()
    requester, approver = auth(t, "requester"), auth(t, "approver", sub="lena")
    wid = await start(http, requester, REFUND_300)

    a = await waiting_approval(http, approver, wid)
    assert (a["agent"], a["tenant"], a["input"], a["tool"], a["awaiting"]) == (
        "refund", t, REFUND_300, "issue_refund", "support-lead")
    assert (a["arguments"]["order_id"], a["arguments"]["amount"]) == ("ORD-1005", 300)
    assert a["risk"] >= 0.7 and any("refund above 50 EUR" in f for f in a["factors"])
    assert datetime.fromisoformat(a["deadline"]) > datetime.now(UTC)
    assert [(s["kind"], s["name"]) for s in a["recent_steps"] if s["kind"] == "tool"] == [
        ("tool", "lookup_order")]
    running = (await http.get(f"/v1/runs/{wid}", headers=requester)).json()
    assert running["status"] == "running"
    assert [p["approval_id"] for p in running["state"]["pending_approvals"]] == [
        a["approval_id"]]

    r = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}", headers=approver,
                        json={"approved": True, "note": "receipt checked"})
    assert r.status_code == 200, r.text
    assert (r.json()["outcome"], r.json()["tool"]) == ("approved", "issue_refund")

    run = await finished(http, requester, wid)
    assert run["status"] == "completed"
    assert run["result"]["answer"].startswith("Refunded 300.00 EUR on ORD-1005")
    assert refunds.order("ORD-1005").refunded_cents == 30_000
    assert refunds.effects("refund") == 1

    again = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}",
                            headers=approver, json={"approved": True})
    assert "has ended" in error_of(again, 409, "conflict")
    assert (await http.get("/v1/approvals", headers=approver)).json() == []


async def test_deciding_twice_while_the_run_goes_on_is_a_conflict_with_the_reason(
        http: httpx.AsyncClient, refunds: RefundWorld) -> None:
    """Two approvals in one run: the first decided one cannot be decided again."""
    t = tenant()
    requester, approver = auth(t, "requester"), auth(t, "approver", sub="lena")
    wid = await start(http, requester, "refund order ORD-1003")  # amount from the lookup
    a = await waiting_approval(http, approver, wid)
    path = f"/v1/runs/{wid}/approvals/{a['approval_id']}"
    # The first decision and a second one racing it: exactly one is applied.
    first, second = await asyncio.gather(
        http.post(path, headers=approver, json={"approved": False, "note": "no"}),
        http.post(path, headers=auth(t, "approver", sub="max"), json={"approved": True}))
    statuses = sorted((first.status_code, second.status_code))
    assert statuses[0] == 200, (first.text, second.text)
    loser = second if second.status_code != 200 else first
    assert statuses[1] == 409, loser.text
    assert "already decided" in error_of(loser, 409, "conflict") \
        or "has ended" in error_of(loser, 409, "conflict")
    run = await finished(http, requester, wid)
    effects = refunds.effects("refund")
    winner = first if first.status_code == 200 else second
    assert effects == (1 if winner.json()["outcome"] == "approved" else 0), run


async def test_a_rejected_refund_is_not_paid_and_the_run_says_who_rejected(
        http: httpx.AsyncClient, refunds: RefundWorld) -> None:
    t = tenant()
    requester, approver = auth(t, "requester"), auth(t, "approver", "auditor", sub="omar")
    wid = await start(http, requester, REFUND_300)
    a = await waiting_approval(http, approver, wid)

    r = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}", headers=approver,
                        json={"approved": False, "note": "customer got a voucher"})
    assert r.json()["outcome"] == "rejected", r.text

    run = await finished(http, requester, wid)
    # The approver is the token's subject, the note is passed on.
    assert run["result"]["answer"].startswith(
        "I did not refund the €300 on ORD-1005: the approver (omar) rejected it "
        "(“customer got a voucher”)"), run["result"]["answer"]
    assert refunds.effects("refund") == 0
    trail = (await http.get(f"/v1/runs/{wid}/audit", headers=approver)).json()
    decided = [d for d in trail["decisions"] if d["kind"] == "approval_decided"]
    assert [(d["decision"], d["actor"]) for d in decided] == [("rejected", "omar")]
    assert decided[0]["reason"] == "customer got a voucher"


async def test_edit_and_approve_pays_the_edited_amount(
        http: httpx.AsyncClient, refunds: RefundWorld) -> None:
    t = tenant()
    requester, approver = auth(t, "requester"), auth(t, "approver", sub="lena")
    wid = await start(http, requester, REFUND_300)
    a = await waiting_approval(http, approver, wid)
    path = f"/v1/runs/{wid}/approvals/{a['approval_id']}"

    edited = {**a["arguments"], "amount": 40}
    bad = await http.post(path, headers=approver, json={"approved": False, "arguments": edited})
    assert "only make sense with an approval" in error_of(bad, 422, "invalid_request")
    r = await http.post(path, headers=approver, json={"approved": True, "arguments": edited})
    assert r.status_code == 200, r.text
    assert (r.json()["outcome"], r.json()["arguments"]["amount"]) == ("approved", 40)

    run = await finished(http, requester, wid)
    assert run["status"] == "completed", run
    assert refunds.order("ORD-1005").refunded_cents == 4_000


async def test_the_approval_role_claim_is_checked_by_the_runs_policy(
        http: httpx.AsyncClient) -> None:
    """``approval_role`` goes to ``decide`` as the role: one outside the policy's chain is
    refused (403), one in it decides."""
    t = tenant()
    requester = auth(t, "requester")
    wid = await start(http, requester, REFUND_300)
    a = await waiting_approval(http, auth(t, "approver"), wid)
    path = f"/v1/runs/{wid}/approvals/{a['approval_id']}"

    wrong = await http.post(path, json={"approved": True},
                            headers=auth(t, "approver", approval_role="intern"))
    assert "may not decide" in error_of(wrong, 403, "forbidden")
    unknown = await http.post(f"/v1/runs/{wid}/approvals/a99", json={"approved": True},
                              headers=auth(t, "approver"))
    assert "unknown approval 'a99'" in error_of(unknown, 404, "not_found")
    ok = await http.post(path, json={"approved": False},
                         headers=auth(t, "approver", approval_role="support-lead"))
    assert ok.json()["outcome"] == "rejected", ok.text
    await finished(http, requester, wid)


# ---------------------------------------------------------------------------- audit, metrics


async def test_an_auditor_reads_the_trail_with_an_intact_chain_and_the_metrics(
        http: httpx.AsyncClient) -> None:
    t = tenant()
    requester, auditor = auth(t, "requester"), auth(t, "auditor", sub="audrey")
    wid = await start(http, requester, "is auth-service healthy?", agent="ops")
    await finished(http, requester, wid)

    r = await http.get(f"/v1/runs/{wid}/audit", headers=auditor)
    trail = r.json()
    assert (trail["workflow_id"], trail["chain_ok"], trail["chain_problems"]) == (wid, True, [])
    assert [x["status"] for x in trail["runs"]] == ["completed"]
    assert trail["model_calls"] and trail["decisions"]
    assert trail["decisions"][0]["prev_hash"] and trail["decisions"][-1]["hash"]
    assert trail["superseded"] == []  # no attempt of this run's tasks was discarded

    m = (await http.get("/v1/metrics?since=1h", headers=auditor)).json()
    assert m["filter"]["tenant"] == t
    assert (m["overall"]["runs"], m["overall"]["completed"]) == (1, 1)
    assert [a["agent"] for a in m["agents"]] == ["ops"]
    none = (await http.get("/v1/metrics?since=1h&agent=refund", headers=auditor)).json()
    assert none["overall"]["runs"] == 0

    for query, field in (("since=yesterday", "since"), ("until=soon", "until"),
                         ("since=99999999999w", "since")):
        bad = await http.get(f"/v1/metrics?{query}", headers=auditor)
        assert error_of(bad, 422, "invalid_request").startswith(f"{field}:"), query
    empty = await http.get("/v1/metrics?since=1h&until=2h", headers=auditor)
    assert "empty window" in error_of(empty, 422, "invalid_request")


# ---------------------------------------------------------------------------- auth


async def test_bad_tokens_are_401_and_missing_roles_403(http: httpx.AsyncClient) -> None:
    t = tenant()
    past = datetime.now(UTC) - timedelta(hours=2)
    cases = {
        "missing": ({}, "missing bearer token"),
        "not bearer": ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "missing bearer token"),
        "malformed": ({"Authorization": "Bearer not.a.jwt"}, "malformed token"),
        "wrong signature": (auth(t, "auditor", secret="another-key-" + "y" * 40),
                            "signature does not verify"),
        "expired": (auth(t, "auditor", now=past, ttl=timedelta(hours=1)), "has expired"),
    }
    for name, (headers, words) in cases.items():
        for method, path in (("GET", "/v1/runs"), ("GET", "/v1/approvals"),
                             ("POST", "/v1/runs"), ("GET", "/v1/events"),
                             ("GET", "/v1/runs/x/events")):
            r = await http.request(method, path, headers=headers,
                                   json={"agent": "ops", "input": "x"})
            assert words in error_of(r, 401, "unauthorized"), (name, path)
            assert r.headers["www-authenticate"] == "Bearer"

    forbidden = [
        ("GET", "/v1/approvals", "requester"), ("POST", "/v1/runs/x/approvals/a1", "auditor"),
        ("POST", "/v1/runs", "approver"), ("GET", "/v1/runs/x/audit", "approver"),
        ("GET", "/v1/metrics", "requester"), ("GET", "/v1/budget", "approver"),
        ("POST", "/v1/runs/x/budget", "requester"), ("POST", "/v1/runs/x/budget", "auditor")]
    for method, path, role in forbidden:
        r = await http.request(method, path, headers=auth(t, role),
                               json={"agent": "ops", "input": "x", "approved": True})
        assert "role" in error_of(r, 403, "forbidden"), (path, role)


async def test_another_tenants_runs_are_not_found_and_not_decidable(
        http: httpx.AsyncClient, refunds: RefundWorld) -> None:
    ours, theirs = tenant(), tenant()
    everything: tuple[Role, ...] = ("requester", "approver", "auditor")
    us, them = auth(ours, *everything), auth(theirs, *everything, sub="mallory")
    wid = await start(http, us, REFUND_300)
    a = await waiting_approval(http, us, wid)

    missing = error_of(await http.get("/v1/runs/no-such-run", headers=them), 404, "not_found")
    assert error_of(await http.get(f"/v1/runs/{wid}", headers=them), 404, "not_found") \
        == missing.replace("no-such-run", wid)
    error_of(await http.get(f"/v1/runs/{wid}/audit", headers=them), 404, "not_found")
    r = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}", headers=them,
                        json={"approved": True})
    error_of(r, 404, "not_found")
    assert (await http.get("/v1/approvals", headers=them)).json() == []
    assert (await http.get("/v1/runs", headers=them)).json() == []
    assert (await http.get("/v1/metrics?since=1h", headers=them)).json()["overall"]["runs"] == 0

    # Still ours, still waiting: their attempt decided nothing.
    assert (await waiting_approval(http, us, wid))["approval_id"] == a["approval_id"]
    assert refunds.effects("refund") == 0
    r = await http.post(f"/v1/runs/{wid}/approvals/{a['approval_id']}", headers=us,
                        json={"approved": False})
    assert r.json()["outcome"] == "rejected"
    await finished(http, us, wid)


# ---------------------------------------------------------------------------- bad input


async def test_bad_bodies_and_parameters_are_422_naming_the_field(
        http: httpx.AsyncClient) -> None:
    me = auth(tenant(), "requester", "approver", "auditor")
    bodies = [
        ({"input": "x"}, "body.agent"),
        ({"agent": "ops", "input": ""}, "body.input"),
        ({"agent": "ops", "input": "x", "tenant": "other"}, "body.tenant"),
        ({"agent": "ops", "input": "bad \x00 byte"}, "NUL"),
        ({"agent": "ops", "input": "x", "metadata": {"stead.synthetic": "1"}}, "stead."),
        ({"agent": "o ps", "input": "x"}, "body.agent"),
        ({"agent": "ops", "input": "x", "max_steps": 0}, "body.max_steps"),
    ]
    for body, words in bodies:
        r = await http.post("/v1/runs", headers=me, json=body)
        assert words in error_of(r, 422, "invalid_request"), body
        assert r.json()["error"]["fields"], body
    raw = await http.post("/v1/runs", headers={**me, "Content-Type": "application/json"},
                          content=b'{"agent": "ops", "input": "\\ud800"}')
    assert "surrogate" in error_of(raw, 422, "invalid_request")
    broken = await http.post("/v1/runs", headers={**me, "Content-Type": "application/json"},
                             content=b'{"agent": ')
    error_of(broken, 422, "invalid_request")

    decisions = [({"approved": "yes"}, "body.approved"), ({}, "body.approved"),
                 ({"approved": True, "arguments": {"amount": float("nan")}}, "NaN"),
                 ({"approved": True, "by": "someone-else"}, "body.by")]
    for body, words in decisions:
        r = await http.post("/v1/runs/x/approvals/a1", content=json.dumps(body).encode(),
                            headers={**me, "Content-Type": "application/json"})
        assert words in error_of(r, 422, "invalid_request"), body
    for path in ("/v1/runs?limit=0", "/v1/runs?limit=101", "/v1/runs?status=lost",
                 "/v1/runs?agent=a'b", "/v1/runs/a%01b", "/v1/runs/x/approvals/a'1"):
        r = await http.request("POST" if "approvals" in path else "GET", path, headers=me,
                               json={"approved": True})
        error_of(r, 422, "invalid_request")
    error_of(await http.get("/v1/nowhere", headers=me), 404, "not_found")
    error_of(await http.delete("/v1/runs", headers=me), 405, "invalid_request")


async def test_an_unreachable_stack_is_503_naming_what_is_down(settings: Settings) -> None:
    down = settings.replace(
        api_secret=SecretStr(SECRET),
        temporal_address=f"127.0.0.1:{free_port()}",
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/stead")
    app = create_app(down)
    me = auth(tenant(), "requester", "approver", "auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as c:
        for method, path in (("GET", "/v1/runs"), ("GET", "/v1/runs/x"),
                             ("GET", "/v1/approvals"), ("POST", "/v1/runs")):
            r = await c.request(method, path, headers=me, json={"agent": "ops", "input": "x"})
            assert "Temporal is unreachable" in error_of(r, 503, "unavailable"), path
        for path in ("/v1/runs/x/audit", "/v1/metrics"):
            r = await c.get(path, headers=me)
            assert "ledger" in error_of(r, 503, "unavailable"), path
    await app.state.backend.close()


async def test_the_openapi_document_describes_every_route_with_auth_and_errors(
        http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ops = {(m.upper(), p): o for p, item in doc["paths"].items() for m, o in item.items()}
    assert set(ops) == {
        ("POST", "/v1/runs"), ("GET", "/v1/runs"), ("GET", "/v1/runs/{workflow_id}"),
        ("GET", "/v1/approvals"), ("POST", "/v1/runs/{workflow_id}/approvals/{approval_id}"),
        ("GET", "/v1/runs/{workflow_id}/audit"), ("GET", "/v1/metrics"),
        ("GET", "/v1/events"), ("GET", "/v1/runs/{workflow_id}/events"), ("GET", "/v1/budget"),
        ("GET", "/v1/quota"), ("POST", "/v1/runs/{workflow_id}/budget")}
    for key, op in ops.items():
        assert op["security"] == [{"HTTPBearer": []}], key
        for status in ("401", "422", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (key, status)
    body = doc["components"]["schemas"]["StartRunBody"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"agent", "input"}
    assert (await http.get("/docs")).status_code == 200
    inbox = await http.get("/inbox")
    assert (inbox.status_code, inbox.headers["location"]) == (307, "/inbox/")
    page = await http.get("/inbox/")  # no token needed: the page asks for one
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (await http.get("/inbox/inbox.js")).status_code == 200
    error_of(await http.get("/inbox/nothing-here.js"), 404, "not_found")


def test_the_public_surface_is_exported() -> None:
    import stead.api

    assert sorted(stead.api.__all__) == stead.api.__all__
    for name in stead.api.__all__:
        assert hasattr(stead.api, name), name


# ---------------------------------------------------------------------------- live server


async def _events(stream: httpx.Response) -> AsyncIterator[tuple[str, Json]]:
    name = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


async def test_the_event_stream_announces_a_run_that_starts_waiting(
        api_settings: Settings, host: WorkerHost) -> None:
    """Over a real uvicorn server: the first ``approvals`` event is the (empty) list, the next
    one carries the approval a new run waits for, and ``run`` events follow its status."""
    t = tenant()
    approver = auth(t, "approver", "requester")
    app = create_app(api_settings, client=host.client, poll_seconds=0.2)
    async with ApiServer(app, host="127.0.0.1", port=0) as server, \
            httpx.AsyncClient(base_url=server.url, timeout=30) as c, \
            c.stream("GET", "/v1/events", headers=approver) as stream, \
            asyncio.timeout(60):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream)
        assert await anext(events) == ("approvals", [])
        wid = await start(c, approver, REFUND_300)
        approvals: Json = None
        runs: list[Json] = []
        async for name, data in events:  # until it waits and a run event said it started
            if name == "approvals":
                approvals = data
            elif name == "run":
                runs.append(data)
            if approvals and runs:
                break
        [approval] = approvals
        assert (approval["workflow_id"], approval["tool"]) == (wid, "issue_refund")
        assert {r["workflow_id"] for r in runs} == {wid} and runs[0]["status"] == "running"

        r = await c.post(f"/v1/runs/{wid}/approvals/{approval['approval_id']}",
                         headers=approver, json={"approved": False})
        assert r.status_code == 200
        async for name, data in events:  # until the list empties and the run has ended
            if name == "approvals":
                approvals = data
            elif name == "run":
                runs.append(data)
            if approvals == [] and runs[-1]["status"] != "running":
                break
        assert (runs[-1]["workflow_id"], runs[-1]["agent"]) == (wid, "refund")
        assert runs[-1]["awaiting_approval"] is False

        # Stopping the server ends the open stream cleanly (no broken chunked response).
        stopping = asyncio.create_task(server.stop())
        assert [e async for e in events] == []
        await stopping


async def test_stead_api_serves_until_ctrl_c_with_tokens_from_stead_api_token(
        settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(settings, STEAD_DATA_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("STEAD_API_SECRET", None)  # the data dir's key, made on first use
    t = tenant()
    made = await stead("api", "token", "--sub", "ci", "--tenant", t, "--role", "auditor",
                       "--ttl", "5m", env=env)
    assert made.code == 0, made.err
    token = made.out.strip()
    assert (tmp_path / "api-secret").stat().st_mode & 0o777 == 0o600
    bad = await stead("api", "token", "--sub", "ci", "--tenant", t, "--role", "root", env=env)
    assert (bad.code, "--role root" in bad.err) == (2, True), bad

    proc = await asyncio.create_subprocess_exec(
        str(STEAD), "api", "--port", str(port), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        seen = b""
        async with asyncio.timeout(60):
            while b"stead API on" not in seen:
                line = await proc.stdout.readline()
                assert line, f"stead api exited early:\n{seen.decode()}"
                seen += line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/v1/metrics?since=1h",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert r.json()["filter"]["tenant"] == t
            assert (await c.get("/v1/metrics")).status_code == 401
        taken = await stead("api", "--port", str(port), env=env)
        assert taken.code == 3 and "cannot listen" in taken.err, taken
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest = await proc.stdout.read()
            assert await proc.wait() == 0, (seen + rest).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
