"""Payload encryption (``stead.security.codec``): the codec on its own, key settings, and real runs
on the dev server whose stored history must hold no plaintext — checked with a client that has no
codec, against a control run without encryption that shows the same check finds plaintext."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.message import Message
from pydantic import BaseModel, SecretStr, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import AgentPlan, ModelTurn, RetrySpec, RunRequest, RunResult
from stead.errors import SettingsError
from stead.evals.replay import RecordedHistory, load_histories, production_replayer, replay
from stead.integrations.llm import ScriptedModel, call
from stead.security.codec import (
    ENCODING,
    KEY_ID_METADATA,
    PLAIN_CONVERTER,
    CodecError,
    EncryptionCodec,
    KeyRing,
    PlainCodec,
    SteadPayloadConverter,
    codec_of,
    data_converter,
    new_key,
)
from stead.settings import Settings, load_settings
from stead.worker import WorkerHost

CORPUS = Path(__file__).resolve().parent.parent / "evals" / "histories"
KEY_A, KEY_B = new_key(), new_key()


def keyed(settings: Settings, keys: dict[str, str], current: str | None) -> Settings:
    return settings.replace(
        codec_keys=SecretStr(json.dumps(keys)),
        codec_key_id=current)


def ring(**keys: str) -> KeyRing:
    current = next(iter(keys))
    return KeyRing({k: base64.b64decode(v) for k, v in keys.items()}, current=current)


# ---------------------------------------------------------------------------- the codec alone


async def test_round_trip_hides_data_and_metadata_and_names_the_key() -> None:
    codec = EncryptionCodec(ring(a=KEY_A))
    original = Payload(metadata={"encoding": b"json/plain", "messageType": b"Secret"},
                       data=b'{"card":"4111-1111"}')
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"a"
    assert b"4111" not in sealed.SerializeToString() and b"Secret" not in sealed.data
    assert await codec.decode([sealed]) == [original]
    [again] = await codec.encode([original])
    assert again.data != sealed.data  # a fresh nonce per payload


async def test_unencrypted_payloads_pass_through_decode_unchanged() -> None:
    """Histories recorded before encryption was turned on must still decode."""
    codec = EncryptionCodec(ring(a=KEY_A))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"x": 1}')
    binary = Payload(metadata={"encoding": b"binary/null"})
    assert await codec.decode([plain, binary]) == [plain, binary]


async def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old = EncryptionCodec(ring(a=KEY_A))
    rotated = EncryptionCodec(KeyRing({"a": base64.b64decode(KEY_A),
                                       "b": base64.b64decode(KEY_B)}, current="b"))
    p = Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    [under_a] = await old.encode([p])
    [under_b] = await rotated.encode([p])
    assert under_b.metadata[KEY_ID_METADATA] == b"b"
    assert await rotated.decode([under_a, under_b]) == [p, p]
    with pytest.raises(CodecError, match=r"key 'b', which is not in STEAD_CODEC_KEYS here "
                                         r"\(this process has a\)"):
        await old.decode([under_b])


async def test_undecodable_payloads_fail_with_a_reason() -> None:
    codec = EncryptionCodec(ring(a=KEY_A))
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    tampered = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes(
        [sealed.data[-1] ^ 1]))
    with pytest.raises(CodecError, match="key 'a' failed authentication"):
        await codec.decode([tampered])
    wrong_material = EncryptionCodec(ring(a=KEY_B))  # same id, different key
    with pytest.raises(CodecError, match="key 'a' failed authentication"):
        await wrong_material.decode([sealed])
    with pytest.raises(CodecError, match="truncated"):
        await codec.decode([Payload(metadata=dict(sealed.metadata), data=b"short")])
    no_id = Payload(metadata={"encoding": ENCODING}, data=sealed.data)
    with pytest.raises(CodecError, match="no 'encryption-key-id' metadata"):
        await codec.decode([no_id])


def test_key_ring_repr_shows_ids_never_key_material() -> None:
    r = ring(a=KEY_A)
    assert repr(r) == "KeyRing(current='a', ids=['a'])"
    assert KEY_A not in repr(r)


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("keys", "key_id", "says"),
    [
        ("{not json", None, "STEAD_CODEC_KEYS must be a JSON object"),
        ('["a"]', None, "STEAD_CODEC_KEYS must be a non-empty JSON object"),
        ("{}", None, "STEAD_CODEC_KEYS must be a non-empty JSON object"),
        ('{"a": 5}', None, "STEAD_CODEC_KEYS: key 'a' must be a base64 string"),
        ('{"a": "%%%not-base64%%%"}', None, "STEAD_CODEC_KEYS: key 'a' is not valid base64"),
        (json.dumps({"a": base64.b64encode(b"k" * 16).decode()}), None,
         "STEAD_CODEC_KEYS: key 'a' decodes to 16 bytes; AES-256 needs exactly 32"),
        (json.dumps({"a": KEY_A}), "b", "STEAD_CODEC_KEY_ID='b' is not a key id in "
                                        "STEAD_CODEC_KEYS \\(a\\)"),
        (json.dumps({"a": KEY_A, "b": KEY_B}), None,
         "STEAD_CODEC_KEY_ID is not set and STEAD_CODEC_KEYS holds 2 keys"),
        (json.dumps({"a b": KEY_A}), None, "STEAD_CODEC_KEYS: key id 'a b' must be"),
        (None, "a", "STEAD_CODEC_KEY_ID is set but STEAD_CODEC_KEYS is not"),
    ],
    ids=["not-json", "not-object", "empty", "not-string", "not-base64", "wrong-length",
         "current-missing", "current-ambiguous", "bad-id", "id-without-keys"])
def test_bad_key_settings_name_the_variable_and_hide_the_keys(
        monkeypatch: pytest.MonkeyPatch, keys: str | None, key_id: str | None,
        says: str) -> None:
    for var, value in (("STEAD_CODEC_KEYS", keys), ("STEAD_CODEC_KEY_ID", key_id)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    settings = load_settings()
    with pytest.raises(SettingsError, match=says) as caught:
        data_converter(settings.codec)
    assert KEY_A not in str(caught.value) and KEY_B not in str(caught.value)
    assert KEY_A not in repr(settings)


def test_keys_from_the_environment_build_one_shared_converter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One key needs no key id (empty counts as unset); url-safe base64 works; equal settings
    give the same object (so the worker's client and the replayer agree); no keys means the
    plain converter."""
    monkeypatch.setenv("STEAD_CODEC_KEYS", json.dumps(
        {"only": base64.urlsafe_b64encode(base64.b64decode(KEY_A)).decode().rstrip("=")}))
    monkeypatch.setenv("STEAD_CODEC_KEY_ID", "")  # as docker compose passes an unset variable
    converter = data_converter(load_settings().codec)
    assert converter is data_converter(load_settings().codec)
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.payload_codec.ring.current == "only"
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert converter.payload_converter_class is SteadPayloadConverter
    monkeypatch.delenv("STEAD_CODEC_KEYS")
    plain = data_converter(load_settings().codec)
    assert plain is PLAIN_CONVERTER and isinstance(plain.payload_codec, PlainCodec)
    assert plain.payload_converter_class is SteadPayloadConverter
    assert plain.failure_converter_class is pydantic_data_converter.failure_converter_class
    assert codec_of(load_settings().codec) is None


# ---------------------------------------------------------------------------- real runs


class Note(BaseModel):
    text: str


class Receipt(BaseModel):
    receipt: str


@dataclass(frozen=True)
class Seeds:
    """Strings that must never reach the server in plaintext once encryption is on."""

    prompt: str
    argument: str
    result: str
    failure: str
    answer: str

    @classmethod
    def fresh(cls) -> Seeds:
        return cls(*(f"{label}{uuid.uuid4().hex}"
                     for label in ("prompt", "argument", "result", "failure", "answer")))

    def all(self) -> dict[str, str]:
        return dict(vars(self))


def vault_agent(seeds: Seeds) -> Agent:
    """Stashes the argument seed (its receipt carries the result seed), then calls a tool that
    fails with the failure seed, then answers with the answer seed."""

    @tool(name="vault_stash")
    async def stash(args: Note, ctx: ToolContext) -> Receipt:
        """Keep a note, return a receipt."""
        return Receipt(receipt=f"{seeds.result} for {len(args.text)} chars")

    @tool(name="vault_jam", retry=RetrySpec(max_attempts=1))
    async def jam(args: Note, ctx: ToolContext) -> Receipt:
        """Always fails."""
        raise RuntimeError(f"the vault is jammed: {seeds.failure}")

    model = ScriptedModel([ModelTurn(tool_calls=[call("vault_stash", text=seeds.argument)]),
                           ModelTurn(tool_calls=[call("vault_jam", text="again")]),
                           ModelTurn(content=f"done: {seeds.answer}")])
    return Agent(name="vault", instructions="Keep notes in the vault.", tools=[stash, jam],
                 offline_model=model)


async def record(settings: Settings, seeds: Seeds) -> tuple[str, RunResult]:
    """One vault run on a worker (and client) built from ``settings``."""
    async with WorkerHost(settings, AgentCatalog([vault_agent(seeds)])) as host:
        assert host.client is not None
        handle = await start_run(host.client, RunRequest(
            agent="vault", input=f"please keep {seeds.prompt} safe"), temporal=settings.temporal)
        return handle.id, await asyncio.wait_for(handle.result(), timeout=60)


@dataclass
class Stored:
    """What the server keeps about a run, fetched without any codec."""

    history: WorkflowHistory
    blob: bytes
    """Every event and the run's description, as protobuf bytes and as JSON text."""

    def payloads(self) -> list[tuple[str, Payload]]:
        """(field path, payload) of every payload in the history."""
        found: list[tuple[str, Payload]] = []
        for e in self.history.events:
            _walk(e, EventType.Name(e.event_type), found)
        return found


def _walk(msg: Message, path: str, found: list[tuple[str, Payload]]) -> None:
    if isinstance(msg, Payload):
        found.append((path, msg))
        return
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    _walk(v, f"{path}.{fd.name}[{k}]", found)
        elif fd.is_repeated:
            for i, v in enumerate(value):
                _walk(v, f"{path}.{fd.name}[{i}]", found)
        else:
            _walk(value, f"{path}.{fd.name}", found)


@pytest.fixture
async def raw(settings: Settings) -> AsyncIterator[Client]:
    """A client with Temporal's default converter and no codec: it sees what the server
    stores."""
    assert settings.temporal.address is not None
    yield await Client.connect(settings.temporal.address, namespace=settings.temporal.namespace)


async def stored(raw: Client, workflow_id: str) -> Stored:
    handle = raw.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    description = await handle.describe()
    blob = b"".join(e.SerializeToString() for e in history.events)
    blob += description.raw_description.SerializeToString()
    blob += history.to_json().encode()
    return Stored(history, blob)


def _readable_by_design(path: str) -> bool:
    """Search attributes (never passed through a codec), and the SDK core's bookkeeping of a
    local activity (its type, attempt, times; the result next to it is encrypted) and of a
    patch (the patch id the workflow code asked about)."""
    return ".search_attributes.indexed_fields[" in path or path.startswith(
        ("EVENT_TYPE_MARKER_RECORDED.marker_recorded_event_attributes.details[data]",
         "EVENT_TYPE_MARKER_RECORDED.marker_recorded_event_attributes.details[patch-data]"))


def leaked(blob: bytes, seeds: Seeds) -> list[str]:
    return [name for name, text in seeds.all().items() if text.encode() in blob]


def fresh_queue(settings: Settings) -> Settings:
    return settings.replace(task_queue=f"test-{uuid.uuid4().hex[:10]}")


def test_a_decoded_plan_is_shared_between_runs_and_refuses_changes(tmp_path: Path) -> None:
    """Every run of an agent pins the same plan payload: the converter decodes it once and
    hands every run (each has its own converter) that one frozen object, so a worker holds a
    plan per agent rather than per cached run. Another plan is another object; other types
    decode afresh, as with Temporal's pydantic converter."""
    plan = ops_agent(OpsWorld(tmp_path / "ops.sqlite")).plan(model="scripted:ops")
    to = PLAIN_CONVERTER.payload_converter

    def decode(value: BaseModel, as_type: type[BaseModel]) -> object:
        [payload] = to.to_payloads([value])
        return SteadPayloadConverter().from_payloads([payload], [as_type])[0]

    first, second = decode(plan, AgentPlan), decode(plan, AgentPlan)
    assert first is second and first == plan
    assert isinstance(first, AgentPlan)
    with pytest.raises(ValidationError):
        first.max_steps = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        first.tools[0].risk = "low"  # type: ignore[misc]
    longer = decode(plan.model_copy(update={"max_steps": plan.max_steps + 1}), AgentPlan)
    assert longer is not first and isinstance(longer, AgentPlan)
    assert longer.max_steps == plan.max_steps + 1
    request = RunRequest(agent="ops", input="restart checkout")
    assert decode(request, RunRequest) is not decode(request, RunRequest)


async def test_stored_history_holds_no_plaintext_and_the_codec_reads_it_back(
        settings: Settings, raw: Client) -> None:
    """Prompt, tool argument, tool result, failure message and answer are all in the stored
    history of a run without encryption, and none of them with it; every payload but the
    search attributes is ciphertext; the codec's client still gets the right result."""
    plain_seeds, secret_seeds = Seeds.fresh(), Seeds.fresh()
    plain_id, plain_result = await record(settings, plain_seeds)
    encrypted = keyed(fresh_queue(settings), {"k1": KEY_A}, "k1")
    secret_id, secret_result = await record(encrypted, secret_seeds)

    # The control run shows the check finds plaintext where it is stored.
    assert plain_result.status == secret_result.status == "completed"
    control = await stored(raw, plain_id)
    assert leaked(control.blob, plain_seeds) == list(plain_seeds.all())

    history = await stored(raw, secret_id)
    assert leaked(history.blob, secret_seeds) == []
    readable = [path for path, p in history.payloads() if p.metadata.get("encoding") != ENCODING]
    assert readable and all(_readable_by_design(path) for path in readable), readable
    # A failed activity's failure, or a failed local activity's (on its marker).
    failures = [e.activity_task_failed_event_attributes.failure for e in history.history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    failures += [e.marker_recorded_event_attributes.failure for e in history.history.events
                 if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                 and e.marker_recorded_event_attributes.HasField("failure")]
    assert failures and all(f.message == "Encoded failure" and not f.stack_trace
                            for f in failures)

    # Decrypted, the same bytes are the run: the result, the tool input, the failure message.
    assert secret_seeds.answer in (secret_result.answer or "")
    codec_client = await connect(encrypted)
    assert (await codec_client.get_workflow_handle(
        secret_id, result_type=RunResult).result()) == secret_result
    codec = codec_of(encrypted.codec)
    assert codec is not None
    decoded = await codec.decode([p for _, p in history.payloads()])
    plaintext = b"".join(p.data for p in decoded)
    assert all(text.encode() in plaintext for text in secret_seeds.all().values())


async def test_key_rotation_decrypts_old_runs_and_fails_clearly_without_the_old_key(
        settings: Settings, raw: Client) -> None:
    """A run recorded under key a, then the current key switches to b (a kept): new payloads
    are encrypted with b, both runs decode and replay; with a dropped, decoding and replay of
    the old run fail naming key a."""
    under_a = keyed(settings, {"a": KEY_A}, "a")
    rotated = keyed(settings, {"a": KEY_A, "b": KEY_B}, "b")
    only_b = keyed(settings, {"b": KEY_B}, "b")
    old_id, old_result = await record(under_a, Seeds.fresh())
    new_id, new_result = await record(rotated, Seeds.fresh())

    def key_ids(s: Stored) -> set[bytes]:
        return {p.metadata[KEY_ID_METADATA] for _, p in s.payloads()
                if p.metadata.get("encoding") == ENCODING}

    old, new = await stored(raw, old_id), await stored(raw, new_id)
    assert key_ids(old) == {b"a"} and key_ids(new) == {b"b"}

    client = await connect(rotated)
    assert await client.get_workflow_handle(old_id, result_type=RunResult).result() == old_result
    assert await client.get_workflow_handle(new_id, result_type=RunResult).result() == new_result
    recorded = [RecordedHistory(old.history, "server"), RecordedHistory(new.history, "server")]
    report = await replay(recorded, replayer=production_replayer(codec=rotated.codec))
    assert [o.status for o in report.outcomes] == ["ok", "ok"]

    without_a = await connect(only_b)
    with pytest.raises(CodecError, match="key 'a', which is not in STEAD_CODEC_KEYS here"):
        await without_a.get_workflow_handle(old_id, result_type=RunResult).result()
    report = await replay(recorded[:1], replayer=production_replayer(codec=only_b.codec))
    [outcome] = report.outcomes
    assert outcome.status == "failed"
    assert "key 'a', which is not in STEAD_CODEC_KEYS here" in (outcome.detail or "")


async def test_histories_recorded_before_encryption_still_replay(settings: Settings) -> None:
    """The corpus has no encrypted payloads: with a codec configured they pass through."""
    report = await replay(load_histories([CORPUS]),
                          replayer=production_replayer(
                              codec=keyed(settings, {"a": KEY_A}, "a").codec))
    assert report.outcomes and report.ok, [o for o in report.outcomes if o.status != "ok"]


async def test_without_any_keys_an_encrypted_history_says_so(
        settings: Settings, raw: Client) -> None:
    """A client, or the replayer, where STEAD_CODEC_KEYS is not set meets an encrypted run:
    the error says the payloads are encrypted and which key they need."""
    run_id, _ = await record(keyed(settings, {"a": KEY_A}, "a"), Seeds.fresh())
    says = "a payload is encrypted (key 'a') but STEAD_CODEC_KEYS is not set here"
    no_keys = await connect(settings)
    with pytest.raises(CodecError, match=re.escape(says)):
        await no_keys.get_workflow_handle(run_id, result_type=RunResult).result()
    history = (await stored(raw, run_id)).history
    report = await replay([RecordedHistory(history, "server")],
                          replayer=production_replayer(codec=settings.codec))
    [outcome] = report.outcomes
    assert outcome.status == "failed" and says in (outcome.detail or "")


def test_public_names_are_exported() -> None:
    import stead.security.codec
    import stead.security.codec_server

    for module in (stead.security.codec, stead.security.codec_server):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
