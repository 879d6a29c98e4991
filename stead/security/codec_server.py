"""``stead codec-server``: Temporal's remote codec protocol, so the Web UI and CLI can decode.

    stead codec-server --port 8081
    temporal workflow show -w <run id> --codec-endpoint http://127.0.0.1:8081 \\
        --codec-auth "Bearer $STEAD_CODEC_SERVER_TOKEN"

The protocol (Temporal's codec server protocol, as the CLI and Web UI speak it):
``POST <anything>/encode`` and ``POST <anything>/decode`` take a ``temporal.api.common.v1.
Payloads`` message as proto3 JSON, ``{"payloads": [{"metadata": {"encoding": "<base64>"},
"data": "<base64>"}]}``, and answer the encoded or decoded payloads in the same shape. Only the
last path segment picks the operation, so an endpoint templated per namespace
(``http://host:8081/{namespace}``) works; the ``X-Namespace`` header the clients send is
accepted, and every namespace uses the same keys (``STEAD_CODEC_KEYS``). A body that is not
Payloads JSON, or a payload that cannot be decrypted, is a 400 with the reason.

Who may call it:

- ``STEAD_CODEC_SERVER_TOKEN`` set: ``/encode`` and ``/decode`` need ``Authorization: Bearer
  <token>`` (compared in constant time); otherwise 401. Without a token anyone who can reach
  the port can decrypt, so bind it to loopback or publish it to trusted hosts only.
- ``STEAD_CODEC_CORS_ORIGINS`` (comma-separated, e.g. ``http://localhost:8233``): the Web UI
  origins a browser may call it from. Preflight ``OPTIONS`` is answered without a token (a
  browser never sends one there) and allows ``Content-Type``, ``X-Namespace`` and
  ``Authorization`` with credentials, for the UI's "pass access token" and "include
  cross-origin credentials" options. A request from any other origin is refused (403).

Without ``STEAD_CODEC_KEYS`` nothing stead writes is encrypted: the server starts, says so, and
passes payloads through unchanged (an encrypted one is a 400 naming the key it needs).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_UNREACHABLE,
    cli_settings,
    configure_cli_logging,
    err,
    fail,
    out,
)
from stead.errors import SettingsError

if TYPE_CHECKING:  # aiohttp, protobuf and cryptography load when the server starts, not per CLI
    from aiohttp import web
    from temporalio.converter import PayloadCodec

    from stead.security.codec import EncryptionCodec

MAX_BODY_BYTES = 64 * 1024 * 1024
"""A Web UI page decodes a whole history's payloads; large histories are large."""
_ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def parse_origins(text: str) -> list[str]:
    """``STEAD_CODEC_CORS_ORIGINS``: comma-separated ``scheme://host[:port]`` origins."""
    origins: list[str] = []
    for part in text.split(","):
        origin = part.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*":
            raise SettingsError("invalid setting: STEAD_CODEC_CORS_ORIGINS: '*' is not allowed: "
                                "the codec server hands out decrypted data, so list the Web UI's "
                                "origins, e.g. http://localhost:8233")
        if not _ORIGIN.match(origin):
            raise SettingsError(f"invalid setting: STEAD_CODEC_CORS_ORIGINS: {origin!r} is not "
                                f"an origin (scheme://host[:port], no path), e.g. "
                                f"http://localhost:8233")
        origins.append(origin)
    return origins


def build_app(codec: EncryptionCodec | None, *, token: str | None = None,
              cors_origins: Sequence[str] = ()) -> web.Application:
    """The codec server as an aiohttp application (``codec=None`` passes payloads through).

        runner = web.AppRunner(build_app(codec, token="s3cret", cors_origins=[ui_origin]))
    """
    from aiohttp import hdrs, web

    from stead.security.codec import PlainCodec

    allowed = frozenset(cors_origins)
    expected = token.encode() if token else None
    apply: PayloadCodec = codec or PlainCodec()

    def cors(request: web.Request) -> dict[str, str]:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin not in allowed:
            return {}
        return {hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true", hdrs.VARY: "Origin"}

    def authorized(request: web.Request) -> bool:
        if expected is None:
            return True
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  expected)

    def refuse(status: int, text: str, headers: dict[str, str]) -> web.Response:
        return web.Response(status=status, text=text + "\n", headers=headers)

    async def handle(request: web.Request) -> web.StreamResponse:
        op = request.path.rstrip("/").rpartition("/")[2]
        if op not in ("encode", "decode"):
            return refuse(404, f"no such endpoint {request.path!r}: POST .../encode or "
                               f".../decode", {})
        headers = cors(request)
        if hdrs.ORIGIN in request.headers and not headers:
            return refuse(403, f"origin {request.headers[hdrs.ORIGIN]!r} is not allowed; add "
                               f"it to STEAD_CODEC_CORS_ORIGINS", {})
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(status=204, headers={
                **headers, hdrs.ACCESS_CONTROL_ALLOW_METHODS: "POST, OPTIONS",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _ALLOWED_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: "600"})
        if request.method != hdrs.METH_POST:
            return refuse(405, f"{request.method} is not allowed; POST a Payloads JSON body",
                          {**headers, hdrs.ALLOW: "POST, OPTIONS"})
        if not authorized(request):
            return refuse(401, "a valid 'Authorization: Bearer <token>' header is required",
                          {**headers, hdrs.WWW_AUTHENTICATE: 'Bearer realm="stead-codec"'})
        return await _apply(apply, op, await request.read(), headers)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _apply(codec: PayloadCodec, op: str, body: bytes,
                 headers: dict[str, str]) -> web.Response:
    from aiohttp import web
    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payloads

    from stead.security.codec import CodecError

    try:
        message = json_format.Parse(body, Payloads())
    except (json_format.ParseError, UnicodeDecodeError) as e:
        return web.Response(status=400, headers=headers,
                            text=f"the body is not a Payloads message as proto3 JSON "
                                 f"({{\"payloads\": [...]}}): {e}\n")
    try:
        if op == "encode":
            result = await codec.encode(message.payloads)
        else:
            result = await codec.decode(message.payloads)
    except CodecError as e:
        return web.Response(status=400, headers=headers, text=f"cannot {op}: {e}\n")
    text = json_format.MessageToJson(Payloads(payloads=result), indent=None,
                                     always_print_fields_with_no_presence=True)
    return web.Response(status=200, headers=headers, text=text, content_type="application/json")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def codec_server_cmd(
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (0.0.0.0 inside a container)"),
    port: int = typer.Option(8081, "--port", min=1, max=65535, help="Port to listen on"),
) -> None:
    """Serve Temporal's remote codec protocol so the Web UI and `temporal` CLI can decrypt.

    Keys from STEAD_CODEC_KEYS / STEAD_CODEC_KEY_ID, bearer token from
    STEAD_CODEC_SERVER_TOKEN, browser origins from STEAD_CODEC_CORS_ORIGINS."""
    from aiohttp import web

    from stead.security.codec import codec_of

    settings = cli_settings()
    configure_cli_logging(settings)
    try:
        codec = codec_of(settings.codec)
        origins = parse_origins(settings.codec.cors_origins)
    except SettingsError as e:
        fail(str(e), EXIT_BAD_INPUT)
    token = settings.codec.server_token.get_secret_value() if settings.codec.server_token \
        else ""
    if codec is None:
        err.print("[yellow]note:[/] STEAD_CODEC_KEYS is not set: nothing is encrypted, payloads "
                  "pass through unchanged", highlight=False)
    if not token and not _loopback(host):
        err.print(f"[yellow]warning:[/] no STEAD_CODEC_SERVER_TOKEN: anyone who reaches "
                  f"{host}:{port} can decrypt payloads; publish the port to trusted hosts only",
                  highlight=False)
    keys = (f"keys {', '.join(codec.ring.ids)} (current {codec.ring.current})" if codec
            else "no keys")
    out.print(f"codec server on http://{host}:{port}: {keys}; "
              f"{'bearer token required' if token else 'no token'}; "
              f"CORS origins: {', '.join(origins) or 'none'}", highlight=False)
    app = build_app(codec, token=token or None, cors_origins=origins)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}", EXIT_UNREACHABLE)


def register(app: typer.Typer) -> None:
    """Add ``stead codec-server`` to the ``stead`` app."""
    app.command("codec-server")(codec_server_cmd)


__all__ = ["MAX_BODY_BYTES", "build_app", "codec_server_cmd", "parse_origins", "register"]
