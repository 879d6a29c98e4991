"""``stead codec-server``: Temporal's remote codec protocol over real HTTP — round trips, bearer
token, CORS for the Web UI — and once end to end, the ``stead`` command serving the real
``temporal`` CLI, which shows plaintext through it while the stored history is ciphertext."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from _cli import cli_env, run_cmd, stead
from aiohttp.test_utils import TestServer
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.pydantic import pydantic_data_converter
from test_codec import Seeds, keyed, record

from stead.errors import SettingsError
from stead.security.codec import ENCODING, EncryptionCodec, KeyRing, new_key
from stead.security.codec_server import build_app, parse_origins
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, free_port

KEY = new_key()
TOKEN = "t0ken-" + new_key()[:16]
UI = "http://localhost:8233"
TEMPORAL = Path(sys.executable).parent / "temporal"


def payloads_json(*values: object) -> str:
    """What the Web UI and CLI send: Payloads as proto3 JSON (bytes fields in base64)."""
    message = Payloads(payloads=pydantic_data_converter.payload_converter.to_payloads(values))
    return json_format.MessageToJson(message)


def parse(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


@pytest.fixture
async def http() -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    """The codec server with a key, a token and the UI's origin, on a real port."""
    codec = EncryptionCodec(KeyRing({"k1": base64.b64decode(KEY)}, current="k1"))
    server = TestServer(build_app(codec, token=TOKEN, cors_origins=[UI]), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
        yield server, session
    await server.close()


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def test_encode_then_decode_round_trip_over_http(
        http: tuple[TestServer, aiohttp.ClientSession]) -> None:
    _, s = http
    body = payloads_json({"prompt": "refund order 4711"}, "plain text")
    async with s.post("/encode", data=body, headers=AUTH) as r:
        assert r.status == 200 and r.content_type == "application/json"
        encoded_text = await r.text()
    encoded = parse(encoded_text)
    assert [p.metadata["encoding"] for p in encoded] == [ENCODING, ENCODING]
    assert "4711" not in encoded_text and b"4711" not in encoded[0].data
    # The Web UI templates the namespace into the path and sends X-Namespace.
    async with s.post("/default/decode", data=encoded_text,
                      headers={**AUTH, "X-Namespace": "default"}) as r:
        assert r.status == 200
        decoded = parse(await r.text())
    assert decoded == parse(body)
    assert pydantic_data_converter.payload_converter.from_payloads(decoded) == [
        {"prompt": "refund order 4711"}, "plain text"]


async def test_decode_passes_unencrypted_payloads_and_reports_undecodable_ones(
        http: tuple[TestServer, aiohttp.ClientSession]) -> None:
    _, s = http
    plain = payloads_json({"recorded": "before encryption"})
    async with s.post("/decode", data=plain, headers=AUTH) as r:
        assert r.status == 200 and parse(await r.text()) == parse(plain)
    other = EncryptionCodec(KeyRing({"old": base64.b64decode(new_key())}, current="old"))
    foreign = json_format.MessageToJson(Payloads(payloads=await other.encode(parse(plain))))
    async with s.post("/decode", data=foreign, headers=AUTH) as r:
        assert r.status == 400
        assert "encrypted with key 'old', which is not in STEAD_CODEC_KEYS" in await r.text()
    async with s.post("/decode", data="{not json", headers=AUTH) as r:
        assert r.status == 400 and "not a Payloads message as proto3 JSON" in await r.text()
    async with s.post("/decode", data='{"payload": []}', headers=AUTH) as r:
        assert r.status == 400 and "payload" in await r.text()
    async with s.post("/decode", data="{}", headers=AUTH) as r:
        assert r.status == 200 and json.loads(await r.text()) == {"payloads": []}


async def test_unknown_paths_and_methods(http: tuple[TestServer, aiohttp.ClientSession]) -> None:
    _, s = http
    async with s.post("/decrypt", data="{}", headers=AUTH) as r:
        assert r.status == 404
    async with s.get("/decode", headers=AUTH) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST, OPTIONS"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer",
                                           f"Bearer {TOKEN}x"],
                         ids=["missing", "wrong", "not-bearer", "empty", "longer"])
async def test_encode_and_decode_need_the_bearer_token(
        http: tuple[TestServer, aiohttp.ClientSession], authorization: str | None) -> None:
    _, s = http
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for op in ("encode", "decode"):
        async with s.post(f"/{op}", data=payloads_json("secret"), headers=headers) as r:
            assert r.status == 401, op
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "secret" not in await r.text()


async def test_cors_preflight_and_responses_for_the_web_ui_origin(
        http: tuple[TestServer, aiohttp.ClientSession]) -> None:
    """A browser's preflight carries no token and must pass; the UI may send credentials and
    the Authorization header; other origins are refused."""
    _, s = http
    preflight = {"Origin": UI, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
    async with s.options("/default/decode", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == UI
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "x-namespace"} <= allowed
    async with s.post("/decode", data=payloads_json("x"), headers={**AUTH, "Origin": UI}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == UI
    async with s.post("/decode", data=payloads_json("x"), headers={"Origin": UI}) as r:
        # The UI can read why it was refused.
        assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == UI
    evil = {**preflight, "Origin": "http://evil.example"}
    async with s.options("/decode", headers=evil) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    async with s.post("/decode", data=payloads_json("x"),
                      headers={**AUTH, "Origin": "http://evil.example"}) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_without_keys_or_token_payloads_pass_through() -> None:
    """Nothing is encrypted without keys; an encrypted payload still gets a reason."""
    server = TestServer(build_app(None), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as s:
            body = payloads_json({"a": 1})
            async with s.post(server.make_url("/encode"), data=body) as r:
                assert r.status == 200 and parse(await r.text()) == parse(body)
            async with s.post(server.make_url("/decode"), data=body) as r:
                assert r.status == 200 and parse(await r.text()) == parse(body)
            codec = EncryptionCodec(KeyRing({"k1": base64.b64decode(KEY)}, current="k1"))
            sealed = json_format.MessageToJson(Payloads(payloads=await codec.encode(parse(body))))
            async with s.post(server.make_url("/decode"), data=sealed) as r:
                assert r.status == 400
                assert "encrypted (key 'k1') but STEAD_CODEC_KEYS is not set" in await r.text()
    finally:
        await server.close()


def test_cors_origins_setting() -> None:
    assert parse_origins(" http://localhost:8233/, https://ui.example.com ,") == [
        "http://localhost:8233", "https://ui.example.com"]
    assert parse_origins("") == []
    with pytest.raises(SettingsError, match="STEAD_CODEC_CORS_ORIGINS: '\\*' is not allowed"):
        parse_origins("*")
    with pytest.raises(SettingsError, match="'localhost:8233' is not an origin"):
        parse_origins("localhost:8233")
    with pytest.raises(SettingsError, match="is not an origin"):
        parse_origins("http://ui.example.com/path")


@pytest.mark.parametrize(
    ("env", "says"),
    [({"STEAD_CODEC_KEYS": '{"k1": "c2hvcnQ="}'}, "STEAD_CODEC_KEYS: key 'k1' decodes to 5 bytes"),
     ({"STEAD_CODEC_KEYS": json.dumps({"k1": KEY}), "STEAD_CODEC_KEY_ID": "k2"},
      "STEAD_CODEC_KEY_ID='k2' is not a key id"),
     ({"STEAD_CODEC_CORS_ORIGINS": "localhost:8233"}, "STEAD_CODEC_CORS_ORIGINS")],
    ids=["short-key", "unknown-current", "bad-origin"])
async def test_command_rejects_bad_settings_with_exit_2(env: dict[str, str], says: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEAD_CODEC")}
    done = await stead("codec-server", "--port", str(free_port()), env={**base, **env})
    assert done.code == 2, done
    assert says in " ".join(done.err.split())
    assert KEY not in done.err


@pytest.fixture
async def codec_server_process(settings: Settings) -> AsyncIterator[str]:
    """``stead codec-server`` as users run it; yields its URL."""
    port = free_port()
    env = cli_env(settings, STEAD_CODEC_KEYS=json.dumps({"k1": KEY}), STEAD_CODEC_KEY_ID="k1",
                  STEAD_CODEC_SERVER_TOKEN=TOKEN, STEAD_CODEC_CORS_ORIGINS=UI)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "stead"), "codec-server", "--port", str(port),
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert b"codec server on" in banner, banner
        for _ in range(200):  # the banner is printed just before the socket is bound
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_temporal_cli_shows_plaintext_through_the_codec_server(
        settings: Settings, codec_server_process: str) -> None:
    """The real ``temporal workflow show`` prints ciphertext from the server's history, and
    the run's prompt, tool argument and answer through ``stead codec-server``; a wrong token
    gets it nothing."""
    seeds = Seeds.fresh()
    run_id, result = await record(keyed(settings, {"k1": KEY}, "k1"), seeds)
    assert result.status == "completed"
    assert settings.temporal.address is not None
    show = [str(TEMPORAL), "workflow", "show", "--workflow-id", run_id,
            "--address", settings.temporal.address, "--output", "json"]

    raw = await run_cmd(*show)
    assert raw.code == 0, raw
    assert visible(raw.out, seeds) == []

    decoded = await run_cmd(*show, "--codec-endpoint", codec_server_process,
                            "--codec-auth", f"Bearer {TOKEN}")
    assert decoded.code == 0, decoded
    assert visible(decoded.out, seeds) == list(seeds.all())

    # The CLI retries a refused decode until its deadline, then fails.
    refused = await run_cmd(*show, "--codec-endpoint", codec_server_process,
                            "--codec-auth", "Bearer wrong", "--command-timeout", "2s")
    assert refused.code != 0 and visible(refused.out, seeds) == []


def visible(show_json: str, seeds: Seeds) -> list[str]:
    """Seeds readable in ``temporal workflow show --output json``: in its text, or in any
    payload's base64 ``data``, which is where a decoded payload's JSON is."""
    texts = [show_json]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                texts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    if show_json.strip():
        walk(json.loads(show_json))
    text = "\n".join(texts)
    return [name for name, seed in seeds.all().items() if seed in text]


async def test_embedded_web_ui_uses_the_codec_server_when_its_url_is_set(tmp_path: Path) -> None:
    """STEAD_CODEC_SERVER_URL reaches the embedded Web UI's settings; unset, no flag is passed."""
    base = Settings(data_dir=tmp_path, temporal_port=free_port(), ui_port=free_port(),
                    database_url="postgresql://unused")  # only Temporal is embedded here
    plain = EmbeddedStack(base).temporal
    assert plain is not None and "--ui-codec-endpoint" not in plain.command()

    url = "http://127.0.0.1:8081"
    temporal = EmbeddedStack(base.replace(codec_server_url=url)).temporal
    assert temporal is not None
    await temporal.start()
    try:
        async with aiohttp.ClientSession() as s:
            ui_settings: dict[str, dict[str, str]] = {}
            for _ in range(100):  # the UI server comes up just after the frontend
                try:
                    async with s.get(f"{temporal.ui_url}/api/v1/settings") as r:
                        ui_settings = await r.json()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        assert ui_settings["Codec"]["Endpoint"] == url
    finally:
        await temporal.stop()
