"""Tool credentials and redaction: a secret reaches only the tool that declared it, and no
seeded secret or configured personal data survives into the ledger or the logs.

The end-to-end test seeds four values — a configured credential, an API-key-looking string, an
e-mail address and an employee id matched by a configured pattern — into the request, the
model's output, a tool's result and a tool's error, then reads every row of every ``stead_%``
table and every captured log record.
"""

from __future__ import annotations

import json
import logging
import random
import string
import uuid
from collections.abc import Sequence

import pytest
from pydantic import BaseModel, SecretStr

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, ToolRegistry, tool
from stead.client import start_run
from stead.contracts.models import Message, ModelTurn, RetrySpec, RunRequest, RunResult, ToolSchema
from stead.errors import SettingsError, SpecError
from stead.integrations.llm import FunctionModel, ScriptedModel, assistant_turns, call
from stead.security.secrets import (
    MissingSecret,
    Redactor,
    Secrets,
    UndeclaredSecret,
    _RedactingRecordFactory,
    compile_patterns,
    install_log_redaction,
)
from stead.settings import Settings, load_settings
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

# ---------------------------------------------------------------------------- settings


def test_bad_redaction_settings_fail_at_load_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEAD_REDACT_PATTERNS", '["EMP-\\\\d{6}", "(unclosed"]')
    with pytest.raises(SettingsError, match=r"STEAD_REDACT_PATTERNS.*pattern \[1\] '\(unclosed'"
                                            r" is not a valid regular expression"):
        load_settings()
    monkeypatch.setenv("STEAD_REDACT_PATTERNS", '{"everything": ".*"}')
    with pytest.raises(SettingsError, match="matches the empty string"):
        load_settings()
    monkeypatch.setenv("STEAD_REDACT_PATTERNS", '{"employee_id": "EMP-\\\\d{6}"}')
    monkeypatch.setenv("STEAD_REDACT_PII", '["email", "passport"]')
    with pytest.raises(SettingsError, match="STEAD_REDACT_PII"):
        load_settings()
    monkeypatch.setenv("STEAD_REDACT_PII", '["email"]')
    s = load_settings()
    assert compile_patterns(s.security.redact_patterns)[0][0] == "employee_id"
    assert s.security.redact_pii == ["email"]


def test_bad_tool_secrets_fail_when_the_worker_starts_without_echoing_the_value(
        settings: Settings) -> None:
    with pytest.raises(SettingsError, match="STEAD_SECRET_DESK: secret 'desk' is 5 characters"
                       ) as short:
        Secrets.from_settings(settings.security, environ={"STEAD_SECRET_DESK": "s3cr3"})
    assert "s3cr3" not in str(short.value)
    with pytest.raises(SettingsError, match=r"STEAD_SECRET_DESK-TOKEN: secret name 'desk-token'"):
        Secrets.from_settings(settings.security,
                              environ={"STEAD_SECRET_DESK-TOKEN": "long-enough-1"})
    bad_json = settings.replace(secrets={"Desk": SecretStr("long-enough-1")})
    with pytest.raises(SettingsError, match="STEAD_SECRETS: secret name 'Desk'"):
        Secrets.from_settings(bad_json.security, environ={})
    # Variables win over the JSON object; names are lowercase; repr shows names only.
    both = settings.replace(secrets={"desk": SecretStr("from-json-123")})
    secrets = Secrets.from_settings(both.security, environ={"STEAD_SECRET_DESK": "from-env-4567",
                                                   "STEAD_SECRET_VAULT": "vault-token-89"})
    assert secrets.items() == [("desk", "from-env-4567"), ("vault", "vault-token-89")]
    assert repr(secrets) == "Secrets(['desk', 'vault'])"


class Nothing(BaseModel):
    pass


def test_a_tool_declares_valid_secret_names() -> None:
    @tool(secrets=["Bad-Name", "ok_name", "ok_name"])
    async def leaky(args: Nothing, ctx: ToolContext) -> Nothing:
        """Does nothing."""
        return Nothing()

    with pytest.raises(SpecError) as err:
        ToolRegistry([leaky]).validate()
    assert "secret name 'Bad-Name' must match" in str(err.value)
    assert "a secret is declared twice" in str(err.value)


def test_a_tool_reads_only_what_it_declared_and_never_shows_it() -> None:
    secrets = Secrets({"desk": "desk-token-0001", "vault": "vault-token-0002"})
    ctx = ToolContext(idempotency_key="k", attempt=1, workflow_id="w", run_id="r", tenant="t",
                      secrets=secrets.for_tool("create_ticket", ["desk", "pager"]))
    assert ctx.secret("desk") == "desk-token-0001"
    assert ctx.secret("pager", required=False) is None
    with pytest.raises(MissingSecret, match=r"tool 'create_ticket' needs the secret 'pager', "
                                            r"which is not configured: set STEAD_SECRET_PAGER"):
        ctx.secret("pager")
    with pytest.raises(UndeclaredSecret, match=r"asked for the secret 'vault' without "
                                               r"declaring it"):
        ctx.secret("vault")
    assert "desk-token-0001" not in repr(ctx)
    with pytest.raises(UndeclaredSecret):  # a context built outside a worker holds nothing
        ToolContext(idempotency_key="k", attempt=1, workflow_id="w", run_id="r",
                    tenant="t").secret("desk")


# ---------------------------------------------------------------------------- redactor


def test_redactor_replaces_known_values_patterns_and_pii_in_text_and_data() -> None:
    r = Redactor(known=[("desk", "tkt-0123456789"), ("long", "tkt-0123456789-extended")],
                 patterns=compile_patterns({"employee_id": r"EMP-\d{6}"}))
    text = ("token tkt-0123456789-extended and tkt-0123456789, key sk-abcdefghijklmnopqrstuvwx"
            "yz012345, mail ana@example.com, staff EMP-123456, password=hunter22")
    once = r.text(text)
    assert once == ("token [REDACTED:secret/long] and [REDACTED:secret/desk], key "
                    "[REDACTED:openai_key], mail [REDACTED:email], staff [REDACTED:employee_id], "
                    "password=[REDACTED:credential]")
    assert r.text(once) == once  # markers are never redacted again
    data = {"ana@example.com": ["EMP-654321", 42, None, {"t": "tkt-0123456789"}]}
    assert r.value(data) == {"[REDACTED:email]": ["[REDACTED:employee_id]", 42, None,
                                                  {"t": "[REDACTED:secret/desk]"}]}
    # scrub: known values only, data the model needs stays.
    assert r.scrub({"mail": "ana@example.com", "t": "x tkt-0123456789"}) == {
        "mail": "ana@example.com", "t": "x [REDACTED:secret/desk]"}
    assert Redactor(pii_kinds=[]).text("mail ana@example.com") == "mail ana@example.com"


def test_redactor_from_settings_knows_every_secret_setting(settings: Settings) -> None:
    s = settings.replace(
        secrets={"desk": SecretStr("desk-token-0001")},
        openai_api_key=SecretStr("plain-provider-key-01"),
        codec_keys=SecretStr('{"k1": "c2VjcmV0LWtleS1tYXRlcmlhbA=="}'),
        database_url="postgresql://stead_worker:pg-pass-7781@db:5432/stead")
    r = Redactor.from_settings(s)
    out = r.text("desk-token-0001 plain-provider-key-01 c2VjcmV0LWtleS1tYXRlcmlhbA== "
                 "pg-pass-7781")
    assert out == ("[REDACTED:secret/desk] [REDACTED:secret/openai_api_key] "
                   "[REDACTED:secret/codec_keys.k1] [REDACTED:secret/database_url.password]")


def test_log_records_are_redacted_before_any_handler_sees_them(
        caplog: pytest.LogCaptureFixture) -> None:
    original = logging.getLogRecordFactory()
    try:
        install_log_redaction(Redactor(known=[("desk", "tkt-0123456789")]))
        install_log_redaction(Redactor(known=[("desk", "tkt-9876543210")]))  # replaces
        # One redacting factory, never two stacked (a worker earlier in this process may
        # already have installed one: installing again swaps its redactor).
        factory = logging.getLogRecordFactory()
        assert isinstance(factory, _RedactingRecordFactory)
        assert not isinstance(factory.base, _RedactingRecordFactory)
        log = logging.getLogger("tests.secrets")
        with caplog.at_level(logging.INFO, logger="tests.secrets"):
            log.info("calling %s with %s", "ana@example.com", "tkt-9876543210")
            try:
                try:
                    raise ValueError("backend said tkt-9876543210")
                except ValueError as inner:
                    raise RuntimeError("wrapped") from inner
            except RuntimeError:
                log.exception("failed for ana@example.com")
        assert "tkt-9876543210" not in caplog.text and "ana@example.com" not in caplog.text
        assert "calling [REDACTED:email] with [REDACTED:secret/desk]" in caplog.text
        assert "ValueError: backend said [REDACTED:secret/desk]" in caplog.text  # cause kept
        assert "RuntimeError: wrapped" in caplog.text
    finally:
        logging.setLogRecordFactory(original)


# ---------------------------------------------------------------------------- tools in runs


def _seeds() -> dict[str, str]:
    """Fresh values per test, so rows of other tests cannot satisfy or spoil the search."""
    rng = random.SystemRandom()
    alnum = string.ascii_letters + string.digits
    return {
        "credential": f"tkt-{uuid.uuid4().hex}",
        "api_key": "sk-" + "".join(rng.choice(alnum) for _ in range(40)),
        "email": f"ana.{uuid.uuid4().hex[:10]}@example.com",
        "employee": f"EMP-{rng.randrange(10**5, 10**6)}",
    }


class Who(BaseModel):
    user: str
    note: str = ""


class Profile(BaseModel):
    email: str
    api_key: str
    employee: str
    session: str


def _leaky_agent(seeds: dict[str, str], seen: list[Sequence[Message]]) -> Agent:
    """Tools that leak every seed: in a result, in a log line, in an error message."""

    @tool(secrets=["ticketing_token"])
    async def lookup_user(args: Who, ctx: ToolContext) -> Profile:
        """Look a user up in the directory."""
        token = ctx.secret("ticketing_token")
        logging.getLogger("tests.leaky").warning("directory call with %s for %s (%s)", token,
                                                 args.user, args.note)
        return Profile(email=seeds["email"], api_key=seeds["api_key"],
                       employee=seeds["employee"], session=token)

    @tool(retry=RetrySpec(max_attempts=3, initial_interval=0.1, non_retryable=["ValueError"]))
    async def failing_lookup(args: Who, ctx: ToolContext) -> Profile:
        """A directory mirror that fails."""
        raise ValueError(f"mirror rejected {seeds['credential']} for {seeds['email']} / "
                         f"{seeds['employee']} / {seeds['api_key']}")

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        seen.append(list(messages))
        k = assistant_turns(messages)
        note = f"key {seeds['api_key']} staff {seeds['employee']}"
        if k == 0:
            return ModelTurn(tool_calls=[call("lookup_user", user=seeds["email"], note=note)])
        if k == 1:
            return ModelTurn(tool_calls=[call("failing_lookup", user=seeds["email"])])
        summary = (f"Found {seeds['email']} ({seeds['employee']}), session "
                   f"{seeds['credential']}")
        if k == 2:  # echoes the key: output validation sends it back once
            return ModelTurn(content=f"{summary}, key {seeds['api_key']}.")
        return ModelTurn(content=summary + ".")

    return Agent(name="leaky", instructions="Look users up.", tools=[lookup_user, failing_lookup],
                 offline_model=FunctionModel(plan, name="leaky-planner"))


async def _rows_containing(ledger: Ledger, needle: str) -> list[str]:
    """``table: row`` of every row of every stead_% table whose text holds ``needle`` (bytea
    columns are compared by their hex form)."""
    tables = [r["table_name"] for r in await ledger.pool.fetch(
        "select table_name from information_schema.tables"
        " where table_schema = current_schema() and table_name like 'stead\\_%'")]
    assert {"stead_runs", "stead_model_calls", "stead_tool_calls", "stead_tool_attempts",
            "stead_decisions", "stead_memory_ops", "stead_blobs"} <= set(tables)
    hits: list[str] = []
    for t in tables:
        rows = await ledger.pool.fetch(
            f"select x::text as row from {t} x where strpos(x::text, $1) > 0"
            f" or strpos(x::text, $2) > 0", needle, needle.encode().hex())
        hits.extend(f"{t}: {r['row'][:300]}" for r in rows)
    return hits


async def test_seeded_secrets_reach_neither_the_ledger_nor_the_logs(
        settings: Settings, ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    seeds = _seeds()
    seen: list[Sequence[Message]] = []
    agent = _leaky_agent(seeds, seen)
    s = settings.replace(
        secrets={"ticketing_token": SecretStr(seeds["credential"])},
        redact_patterns={"employee_id": r"EMP-\d{6}"})
    caplog.set_level(logging.INFO)
    async with WorkerHost(s, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(
            agent="leaky", input=f"Look up {seeds['email']} with key {seeds['api_key']}, staff "
                                 f"{seeds['employee']}", user=seeds["email"],
            metadata={"contact": seeds["email"]}), temporal=s.temporal)
        result = await h.result()

    # The run did what the test needs: every seed flowed through it.
    assert result.status == "completed", result
    assert result.reasks == 1  # the answer echoing the key was sent back once
    assert [c.status for c in result.tool_calls] == ["ok", "error"]
    # The model saw the lookup's data but never the credential the tool leaked into it.
    tool_msg = next(m.content or "" for m in seen[-1] if m.role == "tool")
    assert seeds["email"] in tool_msg and seeds["api_key"] in tool_msg
    assert seeds["credential"] not in json.dumps([m.model_dump() for m in seen[-1]])
    assert "[REDACTED:secret/ticketing_token]" in tool_msg
    # ... and the answer that reached the workflow carries no credential either.
    assert seeds["credential"] not in (result.answer or "")

    assert len(await _rows_containing(ledger, h.id)) >= 10  # the search does find rows
    for name, value in seeds.items():
        assert await _rows_containing(ledger, value) == [], f"{name} found in the ledger"
    trail = await ledger.trail(h.id)
    flat = json.dumps(trail.model_dump(), default=str)
    for marker in ("[REDACTED:secret/ticketing_token]", "[REDACTED:openai_key]",
                   "[REDACTED:email]", "[REDACTED:employee_id]"):
        assert marker in flat, marker  # redacted, not absent
    (run,) = trail.runs
    assert run.user_id == "[REDACTED:email]" and run.metadata == {
        "contact": "[REDACTED:email]"}
    failed = [a for a in trail.tool_attempts if a.status == "error"]
    assert [a.error_type for a in failed] == ["ValueError"]
    assert "[REDACTED:secret/ticketing_token]" in failed[0].error

    # Decision rows changed by redaction were re-chained: the chain verifies from stored rows
    # and still ends at the head the workflow recorded.
    marks = {d.kind: d.data.get("_ledger", {}).get("redacted")
             for d in trail.decisions}
    assert marks["route"] is None  # before the first redacted row: stored as built
    assert marks["gate"] is True  # its arguments held the seeds
    assert marks["output_rejected"] is False  # unchanged, but re-linked after a redacted row
    assert await ledger.verify_chain(h.id) == []

    text = caplog.text
    for name, value in seeds.items():
        assert value not in text, f"{name} found in the logs"
        assert all(value not in r.getMessage() for r in caplog.records), name
    assert "directory call with [REDACTED:secret/ticketing_token] for [REDACTED:email]" in text
    assert "failing_lookup: ValueError: mirror rejected [REDACTED:secret/ticketing_token]" in text


async def test_a_redacted_chain_still_shows_tampering(settings: Settings, ledger: Ledger) -> None:
    """Re-chaining keeps the audit chain tamper-evident: an altered redacted row shows."""
    seeds = _seeds()
    agent = _leaky_agent(seeds, [])
    async with WorkerHost(settings, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(
            agent="leaky", input=f"Look up {seeds['email']}"), temporal=settings.temporal)
        await h.result()
    assert await ledger.verify_chain(h.id) == []
    row = await ledger.pool.fetchrow(
        "select seq from stead_decisions where workflow_id=$1 and data ? '_ledger'"
        " order by seq limit 1", h.id)
    assert row is not None
    await ledger.pool.execute("update stead_decisions set reason = reason || ' (edited)'"
                              " where workflow_id=$1 and seq=$2", h.id, row["seq"])
    problems = await ledger.verify_chain(h.id)
    assert any(f"seq {row['seq']}: hash mismatch" in p for p in problems), problems


async def _ticket_run(settings: Settings, world: OpsWorld) -> tuple[str, RunResult]:
    model = ScriptedModel([
        ModelTurn(tool_calls=[call("create_ticket", service="checkout-api",
                                   title="500s on checkout")]),
        ModelTurn(content="Ticket opened.")])
    async with WorkerHost(settings, AgentCatalog([ops_agent(world)]), model=model) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="ops", input="open a ticket"),
                            temporal=settings.temporal)
        return h.id, await h.result()


async def test_ops_ticket_desk_takes_the_token_from_settings_only(
        settings: Settings, world: OpsWorld, ledger: Ledger) -> None:
    token = f"desk-{uuid.uuid4().hex}"
    world.require_desk_token(token)
    # The model is told nothing about the token: it is no argument of the tool.
    (plan,) = [t for t in ops_agent(world).tools if t.name == "create_ticket"]
    assert "token" not in json.dumps(plan.parameters()).lower()

    wid, r = await _ticket_run(settings, world)  # no secret configured
    assert r.tool_calls[0].status == "error"
    trail = await ledger.trail(wid)
    (attempt,) = trail.tool_attempts  # non-retryable: one attempt, not five
    assert attempt.error_type == "DeskUnauthorized"
    assert "(no API token); set STEAD_SECRET_TICKETING_TOKEN on the worker" in attempt.error
    assert world.effects("ticket") == 0

    wrong = settings.replace(secrets={"ticketing_token": SecretStr("x" * 12)})
    wid, r = await _ticket_run(wrong, world)
    assert "wrong API token" in (r.tool_calls[0].error or "")
    assert world.effects("ticket") == 0

    right = settings.replace(secrets={"ticketing_token": SecretStr(token)})
    wid, r = await _ticket_run(right, world)
    assert r.status == "completed" and r.tool_calls[0].status == "ok"
    assert world.effects("ticket") == 1
    assert token not in json.dumps((await ledger.trail(wid)).model_dump(), default=str)


async def test_a_missing_or_undeclared_secret_fails_the_call_once_naming_the_fix(
        settings: Settings, ledger: Ledger) -> None:
    @tool(secrets=["vault_token"], retry=RetrySpec(max_attempts=5, initial_interval=0.1))
    async def read_vault(args: Nothing, ctx: ToolContext) -> Nothing:
        """Reads the vault."""
        ctx.secret("vault_token")
        return Nothing()

    @tool(secrets=["vault_token"], retry=RetrySpec(max_attempts=5, initial_interval=0.1))
    async def sneaky(args: Nothing, ctx: ToolContext) -> Nothing:
        """Reads a secret it did not declare."""
        ctx.secret("ticketing_token")
        return Nothing()

    agent = Agent(name="vault", instructions="Read the vault.", tools=[read_vault, sneaky],
                  offline_model=ScriptedModel([
                      ModelTurn(tool_calls=[call("read_vault"), call("sneaky")]),
                      ModelTurn(content="done")]))
    s = settings.replace(secrets={"ticketing_token": SecretStr("t" * 16)})
    async with WorkerHost(s, AgentCatalog([agent])) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="vault", input="read it"),
                            temporal=s.temporal)
        r = await h.result()
    assert [c.status for c in r.tool_calls] == ["error", "error"]
    attempts = (await ledger.trail(h.id)).tool_attempts
    assert [(a.tool, a.error_type) for a in attempts] == [
        ("read_vault", "MissingSecret"), ("sneaky", "UndeclaredSecret")]
    assert "set STEAD_SECRET_VAULT_TOKEN" in attempts[0].error
    assert "declare it with @tool(..., secrets=['ticketing_token'])" in attempts[1].error
    assert r.retries == 0

