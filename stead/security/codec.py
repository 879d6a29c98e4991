"""Payload encryption: an AES-256-GCM payload codec with a key ring, and the data converter.

    converter = data_converter(settings.codec)     # pydantic converter, encrypted when keys are set
    client = await Client.connect(address, data_converter=converter)

With ``STEAD_CODEC_KEYS`` set, every payload a stead client or worker hands to Temporal (run
requests and results, model transcripts, tool arguments and results, signal and update
arguments, memo, Web UI summaries and details) is encrypted before it leaves the process, so
the server's event history holds ciphertext. Failure messages and stack traces are moved into
an encoded payload (``DefaultFailureConverterWithEncodedAttributes``): the history shows
``Encoded failure`` in their place.

Wire format (the one Temporal's encryption samples use, so their codec servers interoperate):
metadata ``encoding: binary/encrypted`` and ``encryption-key-id: <id>``; data is a 12-byte
random nonce followed by AES-GCM ciphertext and tag of the whole serialized original payload,
so the original metadata (``json/plain``, message type names) is hidden too.

Key rotation: new payloads are encrypted with the current key (``STEAD_CODEC_KEY_ID``), and
decryption picks the key named in the payload, so old keys keep decrypting as long as they stay
in ``STEAD_CODEC_KEYS``. Retire a key only once no retained history uses it. Payloads without
the encrypted marker pass through decode unchanged: histories recorded before encryption was
turned on (``evals/histories/``) still replay.

What stays readable on the server: search attributes (``SteadAgent``, ``SteadTenant``,
``SteadAwaitingApproval``, ``SteadRisk``; Temporal indexes them and never passes them through a
codec), workflow and activity ids and types, task queues, timer and retry settings, failure
type names (``ToolFailed``), the OpenTelemetry trace context in headers, and the SDK's own
bookkeeping of local activities in their markers (activity type, attempt, times; the result
next to it is encrypted). Put nothing secret there.

A new key: ``python -c "from stead.codec import new_key; print(new_key())"``.

The converter is Temporal's pydantic JSON converter with one difference: an
:class:`~stead.contracts.models.AgentPlan` is decoded once per distinct payload and the
object shared (plans are frozen). Every run of an agent pins the same plan, and a worker
keeps each cached run's decoded values for as long as the run waits: 12 KiB per parked run
for a one-tool agent, 46 KiB for the ``ops`` reference agent, before sharing.

Errors (a :class:`stead.errors.SteadError`)::

    CodecError    a payload marked encrypted cannot be decrypted (key id unknown here,
                  authentication failed, malformed); the message says which key and why

Bad key settings raise :class:`stead.errors.SettingsError` naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
)

from stead.contracts.models import AgentPlan
from stead.errors import SettingsError, SteadError
from stead.settings import CodecSettings

ENCODING = b"binary/encrypted"
"""``encoding`` metadata of an encrypted payload."""
KEY_ID_METADATA = "encryption-key-id"
"""Metadata naming the key that encrypted a payload."""
KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""The GCM nonce size NIST recommends; random per payload."""
_TAG_BYTES = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CodecError(SteadError):
    """A payload marked encrypted cannot be decrypted; the message names the key id and why."""


def new_key() -> str:
    """A fresh random key, base64-encoded, for a ``STEAD_CODEC_KEYS`` entry."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class KeyRing:
    """Encryption keys by id, and the id of the one that encrypts new payloads.

        ring = KeyRing({"2025-01": old, "2025-06": new}, current="2025-06")

    Raises ``ValueError`` for a key that is not 32 bytes, a malformed id, or a current id that
    is not in ``keys``. Its repr names key ids only, never key material.
    """

    def __init__(self, keys: Mapping[str, bytes], *, current: str) -> None:
        if not keys:
            raise ValueError("no keys given")
        for kid, key in keys.items():
            if not _KEY_ID.match(kid):
                raise ValueError(f"key id {kid!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r} is {len(key)} bytes; AES-256 needs exactly "
                                 f"{KEY_BYTES} random bytes")
        if current not in keys:
            raise ValueError(f"the current key id {current!r} is not one of the keys "
                             f"({', '.join(sorted(keys))})")
        self._keys = dict(keys)
        self._current = current

    @property
    def current(self) -> str:
        return self._current

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def key(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    @classmethod
    def from_settings(cls, codec: CodecSettings) -> KeyRing | None:
        """The ring ``STEAD_CODEC_KEYS`` / ``STEAD_CODEC_KEY_ID`` describe; None when no keys
        are set. ``STEAD_CODEC_KEY_ID`` may be left out when there is exactly one key."""
        raw = codec.keys.get_secret_value() if codec.keys else ""
        if not raw.strip():
            if codec.key_id:
                raise SettingsError("invalid setting: STEAD_CODEC_KEY_ID is set but "
                                    "STEAD_CODEC_KEYS is not; set both to encrypt payloads")
            return None
        keys = _parse_keys(raw)
        current = codec.key_id or None  # compose passes unset variables as ""
        if current is None:
            if len(keys) != 1:
                raise SettingsError(
                    f"invalid setting: STEAD_CODEC_KEY_ID is not set and STEAD_CODEC_KEYS holds "
                    f"{len(keys)} keys ({', '.join(sorted(keys))}); name the one that encrypts "
                    f"new payloads")
            current = next(iter(keys))
        if current not in keys:
            raise SettingsError(
                f"invalid setting: STEAD_CODEC_KEY_ID={current!r} is not a key id in "
                f"STEAD_CODEC_KEYS ({', '.join(sorted(keys))})")
        try:
            return cls(keys, current=current)
        except ValueError as e:
            raise SettingsError(f"invalid setting: STEAD_CODEC_KEYS: {e}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyRing) and (self._current, self._keys) == (
            other._current, other._keys)

    def __hash__(self) -> int:
        return hash((self._current, tuple(sorted(self._keys.items()))))

    def __repr__(self) -> str:
        return f"KeyRing(current={self._current!r}, ids={self.ids!r})"


def _parse_keys(raw: str) -> dict[str, bytes]:
    # Messages name the variable and the key id, never the value: it is secret.
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SettingsError(f"invalid setting: STEAD_CODEC_KEYS must be a JSON object of key "
                            f"id -> base64 key, e.g. {{\"k1\": \"<base64 of 32 bytes>\"}} "
                            f"(not JSON: {e.msg} at character {e.pos})") from None
    if not isinstance(doc, dict) or not doc:
        raise SettingsError("invalid setting: STEAD_CODEC_KEYS must be a non-empty JSON object "
                            "of key id -> base64 key, e.g. {\"k1\": \"<base64 of 32 bytes>\"}")
    keys: dict[str, bytes] = {}
    for kid, value in doc.items():
        if not isinstance(value, str):
            raise SettingsError(f"invalid setting: STEAD_CODEC_KEYS: key {kid!r} must be a "
                                f"base64 string")
        try:
            keys[kid] = _b64(value)
        except (binascii.Error, ValueError):
            raise SettingsError(f"invalid setting: STEAD_CODEC_KEYS: key {kid!r} is not valid "
                                f"base64") from None
        if len(keys[kid]) != KEY_BYTES:
            raise SettingsError(
                f"invalid setting: STEAD_CODEC_KEYS: key {kid!r} decodes to {len(keys[kid])} "
                f"bytes; AES-256 needs exactly {KEY_BYTES} (make one with "
                f"`python -c \"from stead.codec import new_key; print(new_key())\"`)")
    return keys


def _b64(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    s = text.strip()
    s += "=" * (-len(s) % 4)
    if "-" in s or "_" in s:
        return base64.b64decode(s, altchars=b"-_", validate=True)
    return base64.b64decode(s, validate=True)


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads; see the module docstring for the format.

        codec = EncryptionCodec(KeyRing({"k1": key}, current="k1"))
    """

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._aead = {kid: AESGCM(ring.key(kid) or b"") for kid in ring.ids}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self.ring.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[kid].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: kid.encode()},
                       data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; one without the encrypted marker is returned as it is."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_METADATA)
        if raw_id is None:
            raise CodecError(f"an encrypted payload has no {KEY_ID_METADATA!r} metadata, so no "
                             f"key can be chosen to decrypt it")
        kid = raw_id.decode("utf-8", errors="replace")
        aead = self._aead.get(kid)
        if aead is None:
            raise CodecError(
                f"a payload was encrypted with key {kid!r}, which is not in STEAD_CODEC_KEYS "
                f"here (this process has {', '.join(self.ring.ids)}); add that key back: retired "
                f"keys must stay as long as histories encrypted with them are kept")
        if len(payload.data) < NONCE_BYTES + _TAG_BYTES:
            raise CodecError(f"a payload encrypted with key {kid!r} is truncated "
                             f"({len(payload.data)} bytes)")
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise CodecError(
                f"a payload encrypted with key {kid!r} failed authentication: the key stored "
                f"under {kid!r} here is not the one that encrypted it, or the payload was "
                f"altered") from None
        try:
            return Payload.FromString(plain)
        except DecodeError as e:
            raise CodecError(f"a payload decrypted with key {kid!r} is not a Temporal payload "
                             f"({e})") from None


class PlainCodec(PayloadCodec):
    """The codec without keys: nothing is encrypted, but an encrypted payload (a history
    written by workers that have keys) fails with a reason instead of "unknown encoding"."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for p in payloads:
            if p.metadata.get("encoding") == ENCODING:
                kid = p.metadata.get(KEY_ID_METADATA, b"?").decode("utf-8", errors="replace")
                raise CodecError(
                    f"a payload is encrypted (key {kid!r}) but STEAD_CODEC_KEYS is not set "
                    f"here; configure the keys of the workers that wrote it")
        return list(payloads)


@functools.lru_cache(maxsize=256)
def _shared_plan(data: bytes) -> AgentPlan:
    return AgentPlan.model_validate_json(data)


class _SharingJSONConverter(PydanticJSONPlainPayloadConverter):
    """pydantic JSON; an ``AgentPlan`` comes from :func:`_shared_plan` (the same bytes, the
    same object). One instance serves every converter, so its type adapters are built once
    per process instead of once per workflow run."""

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        if type_hint is AgentPlan:
            return _shared_plan(payload.data)
        return super().from_payload(payload, type_hint)


_JSON = _SharingJSONConverter()


class SteadPayloadConverter(CompositePayloadConverter):
    """Temporal's pydantic payload converter, sharing decoded plans (see the module doc).
    Nullary: the worker builds one per workflow run."""

    def __init__(self) -> None:
        super().__init__(*(_JSON if isinstance(c, JSONPlainPayloadConverter) else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters))


_PYDANTIC = dataclasses.replace(pydantic_data_converter,
                                payload_converter_class=SteadPayloadConverter)

PLAIN_CONVERTER = dataclasses.replace(_PYDANTIC, payload_codec=PlainCodec())
"""The data converter without keys: pydantic JSON, payloads stored as they are."""


def data_converter(codec: CodecSettings, *, encode_failures: bool = True) -> DataConverter:
    """stead's data converter: pydantic JSON, encrypted when ``STEAD_CODEC_KEYS`` is set.

    Clients, workers and the replayer all take it from here, so they agree; the same key
    settings give the same converter object. ``encode_failures=False`` keeps failure messages
    out of the encrypted payload: for the replayer, which writes nothing to the server and
    whose reports would otherwise read ``Encoded failure`` (decoding works either way)."""
    ring = KeyRing.from_settings(codec)
    return PLAIN_CONVERTER if ring is None else _encrypted_converter(ring, encode_failures)


@functools.lru_cache(maxsize=8)
def _encrypted_converter(ring: KeyRing, encode_failures: bool) -> DataConverter:
    return dataclasses.replace(
        _PYDANTIC, payload_codec=EncryptionCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes
        if encode_failures else _PYDANTIC.failure_converter_class)


def codec_of(codec: CodecSettings) -> EncryptionCodec | None:
    """The codec of :func:`data_converter` (None without keys), e.g. for the codec server."""
    payload_codec = data_converter(codec).payload_codec
    return payload_codec if isinstance(payload_codec, EncryptionCodec) else None


__all__ = ["ENCODING", "KEY_BYTES", "KEY_ID_METADATA", "NONCE_BYTES", "PLAIN_CONVERTER",
           "CodecError", "EncryptionCodec", "KeyRing", "PlainCodec", "SteadPayloadConverter",
           "codec_of", "data_converter", "new_key"]
