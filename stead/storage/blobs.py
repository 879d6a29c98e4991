"""Content-addressed payloads in PostgreSQL (``stead_blobs``): what history carries by reference.

    blobs = BlobStore(ledger.pool)
    digest = await blobs.put(b"...")                 # "sha256:<64 hex>", stored once
    ctx = await blobs.put_manifest(messages)         # a conversation, as a context manifest
    messages = await blobs.load_manifest(ctx)

Two kinds of payload live here:

- **tool results** over ``STEAD_BLOB_THRESHOLD_BYTES``: the tool activity stores the result's
  JSON and returns a reference ``{"$blob": digest, "bytes": n, "preview": "..."}`` instead
  (:func:`reference`); the model activity expands references before calling the model
  (:meth:`BlobStore.expand_message`).
- **conversation context**: a *context manifest* is a blob holding a JSON list of message
  digests, each message stored once under its own digest, so a 200-turn conversation stores
  each message once plus one small manifest per model call, not the transcript again and
  again. Messages are stored as the workflow sent them (tool results still as references):
  loading a manifest gives the messages back, :meth:`BlobStore.expand_message` the full text.

The empty conversation is :data:`EMPTY_CONTEXT`, the digest of the manifest ``[]``. Every
store knows its body without a database row (no migration inserts it), so a client may start
a conversation with it on any database; ``put_manifest([])`` stores it like any other blob.

Bodies are stored as given: tool results were already scrubbed of known secret values by the
tool activity, model answers by the model activity; the ledger keeps the redacted audit copy.
A body over :data:`MAX_BLOB_BYTES` is refused (:class:`BlobTooLarge`) before any write.

Errors::

    SteadError
    └── BlobError
        ├── BlobMissing       no blob with this digest (names the digest)
        ├── BlobTooLarge      a body over the store's limit
        └── BlobCorrupt       a stored body that is not what its digest or kind promises
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from stead.contracts.models import Message
from stead.errors import SteadError
from stead.storage.ledger import retrying

MAX_BLOB_BYTES = 64 * 1024 * 1024
"""Largest body one blob may hold: beyond it a payload is a bulk-data problem, not a context."""

BLOB_KEY = "$blob"
"""Key of a reference object in a tool result: ``{"$blob": digest, "bytes": n, "preview": s}``."""

PREVIEW_CHARS = 300
"""How much of a referenced result's JSON a reference shows (for history readers and guards)."""

BLOB_MISSING = "BlobMissing"
BLOB_TOO_LARGE = "BlobTooLarge"
"""``ApplicationError.type`` values of blob failures (both non-retryable)."""

T = TypeVar("T")

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class BlobError(SteadError):
    """A blob could not be stored or read."""


class BlobMissing(BlobError):
    """No blob has this digest: it was never stored here (another database?) or was deleted."""

    def __init__(self, digests: Sequence[str]) -> None:
        self.digests = list(digests)
        listed = ", ".join(self.digests[:5]) + (" ..." if len(self.digests) > 5 else "")
        super().__init__(f"blob{'s' if len(self.digests) > 1 else ''} not found in stead_blobs: "
                         f"{listed}")


class BlobTooLarge(BlobError):
    """A body over the store's size limit."""


class BlobCorrupt(BlobError):
    """A stored body is not what its digest or its kind (manifest, message) promises."""


def digest_of(body: bytes) -> str:
    """The content address of ``body``: ``sha256:<64 hex>``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that stead hashes (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode()


EMPTY_MANIFEST = canonical_json([])
EMPTY_CONTEXT = digest_of(EMPTY_MANIFEST)
"""The empty conversation: pass it as ``RunRequest.context`` to start one."""


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


def reference(digest: str, body: bytes) -> dict[str, Any]:
    """The object that stands in for a stored result in history."""
    return {BLOB_KEY: digest, "bytes": len(body),
            "preview": body[:PREVIEW_CHARS * 4].decode(errors="ignore")[:PREVIEW_CHARS]}


def is_reference(value: object) -> bool:
    return (isinstance(value, dict) and set(value) <= {BLOB_KEY, "bytes", "preview"}
            and is_digest(value.get(BLOB_KEY)))


def _message_body(m: Message) -> bytes:
    return canonical_json(m.model_dump(mode="json"))


class BlobStore:
    """Puts and gets content-addressed bodies in ``stead_blobs`` over a ledger's pool.

    Operations that fail because the database is unreachable are retried inside the call for
    ``retry_seconds``, like the ledger's: a database coming back must not use up a tool's own
    retry budget (the tool already ran when its result is stored)."""

    def __init__(self, pool: asyncpg.Pool, *, max_bytes: int = MAX_BLOB_BYTES,
                 retry_seconds: float = 30.0) -> None:
        self.pool = pool
        self.max_bytes = max_bytes
        self.retry_seconds = retry_seconds

    async def _retrying(self, op: Callable[[asyncpg.Connection], Awaitable[T]],
                        on_wait: Callable[[], None] | None) -> T:
        return await retrying(self.pool, op, seconds=self.retry_seconds, on_wait=on_wait,
                              fail=lambda why: BlobError(f"blob store unavailable for {why}"))

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.max_bytes:
            raise BlobTooLarge(f"a {len(body):,}-byte payload is over the {self.max_bytes:,}-"
                               f"byte blob limit; store bulk data elsewhere and pass a link")

    # ------------------------------------------------------------------ bytes

    async def put(self, body: bytes, *, on_wait: Callable[[], None] | None = None) -> str:
        """Store ``body`` (once: an existing digest is left alone) and return its digest."""
        return (await self.put_many([body], on_wait=on_wait))[0]

    async def put_many(self, bodies: Sequence[bytes], *,
                       on_wait: Callable[[], None] | None = None) -> list[str]:
        """Store several bodies in one round trip; their digests in order."""
        for b in bodies:
            self._check_size(b)  # before any write: nothing is stored half-way
        digests = [digest_of(b) for b in bodies]
        unique = dict(zip(digests, bodies, strict=True))
        if not unique:
            return digests

        async def op(c: asyncpg.Connection) -> None:
            await c.execute(
                "insert into stead_blobs(digest, size_bytes, body)"
                " select * from unnest($1::text[], $2::int[], $3::bytea[])"
                " on conflict (digest) do nothing",
                list(unique), [len(b) for b in unique.values()], list(unique.values()))

        await self._retrying(op, on_wait)
        return digests

    async def get(self, digest: str, *, on_wait: Callable[[], None] | None = None) -> bytes:
        """The body stored under ``digest``; :class:`BlobMissing` names it when absent."""
        return (await self.get_many([digest], on_wait=on_wait))[digest]

    async def get_many(self, digests: Sequence[str], *,
                       on_wait: Callable[[], None] | None = None) -> dict[str, bytes]:
        """Bodies by digest, in one round trip; :class:`BlobMissing` lists every absent one."""
        bad = [d for d in digests if not is_digest(d)]
        if bad:
            raise BlobError(f"not a blob digest (want sha256:<64 hex>): {bad[0]!r}")
        wanted = set(digests)
        found: dict[str, bytes] = {}
        if EMPTY_CONTEXT in wanted:
            found[EMPTY_CONTEXT] = EMPTY_MANIFEST
            wanted.discard(EMPTY_CONTEXT)
        if wanted:
            async def op(c: asyncpg.Connection) -> list[Any]:
                rows: list[Any] = await c.fetch(
                    "select digest, body from stead_blobs where digest = any($1::text[])",
                    list(wanted))
                return rows

            rows = await self._retrying(op, on_wait)
            found.update((r["digest"], bytes(r["body"])) for r in rows)
        missing = [d for d in dict.fromkeys(digests) if d not in found]
        if missing:
            raise BlobMissing(missing)
        return found

    # ------------------------------------------------------------------ JSON

    async def put_json(self, value: object, *,
                       on_wait: Callable[[], None] | None = None) -> str:
        return await self.put(canonical_json(value), on_wait=on_wait)

    async def get_json(self, digest: str, *, on_wait: Callable[[], None] | None = None) -> Any:
        body = await self.get(digest, on_wait=on_wait)
        try:
            return json.loads(body)
        except ValueError as err:
            raise BlobCorrupt(f"blob {digest} is not JSON: {err}") from None

    # ------------------------------------------------------------------ conversations

    async def put_messages(self, messages: Sequence[Message], *,
                           on_wait: Callable[[], None] | None = None) -> list[str]:
        """Store each message under its own digest; the digests in order."""
        return await self.put_many([_message_body(m) for m in messages], on_wait=on_wait)

    async def put_manifest(self, messages: Sequence[Message], *,
                           on_wait: Callable[[], None] | None = None) -> str:
        """Store a conversation: its messages, then the manifest listing them."""
        digests = await self.put_messages(messages, on_wait=on_wait)
        return await self.put(canonical_json(digests), on_wait=on_wait)

    async def manifest(self, digest: str, *,
                       on_wait: Callable[[], None] | None = None) -> list[str]:
        """The message digests a context manifest lists."""
        listed = await self.get_json(digest, on_wait=on_wait)
        if not isinstance(listed, list) or not all(is_digest(d) for d in listed):
            raise BlobCorrupt(f"blob {digest} is not a context manifest (a JSON list of "
                              f"message digests)")
        return listed

    async def load_manifest(self, digest: str, *,
                            on_wait: Callable[[], None] | None = None) -> list[Message]:
        """The messages of a context manifest, in order (tool results still as references)."""
        listed = await self.manifest(digest, on_wait=on_wait)
        bodies = await self.get_many(listed, on_wait=on_wait)
        out: list[Message] = []
        for d in listed:
            try:
                out.append(Message.model_validate_json(bodies[d]))
            except ValueError as err:
                raise BlobCorrupt(f"blob {d} (listed by context {digest}) is not a message: "
                                  f"{err}") from None
        return out

    async def extend_manifest(self, digest: str | None, messages: Sequence[Message], *,
                              on_wait: Callable[[], None] | None = None) -> str:
        """A new manifest: the one at ``digest`` (None: empty) followed by ``messages``."""
        listed = [] if digest is None else await self.manifest(digest, on_wait=on_wait)
        added = await self.put_messages(messages, on_wait=on_wait)
        return await self.put(canonical_json([*listed, *added]), on_wait=on_wait)

    # ------------------------------------------------------------------ references

    async def expand(self, value: Any, *, on_wait: Callable[[], None] | None = None) -> Any:
        """``value`` with every reference object replaced by the JSON it stands for."""
        refs: list[str] = []
        _collect(value, refs)
        if not refs:
            return value
        bodies = await self.get_many(refs, on_wait=on_wait)
        loaded: dict[str, Any] = {}
        for d, body in bodies.items():
            try:
                loaded[d] = json.loads(body)
            except ValueError as err:
                raise BlobCorrupt(f"blob {d} is not JSON: {err}") from None
        return _replace(value, loaded)

    async def expand_messages(self, messages: Sequence[Message], *,
                              on_wait: Callable[[], None] | None = None) -> list[Message]:
        """``messages`` with each tool message whose JSON content holds references carrying
        the full results instead (one round trip for all); other messages unchanged. Expanded
        content is serialized as the workflow writes tool messages."""
        parsed: dict[int, Any] = {}
        for i, m in enumerate(messages):
            if m.role == "tool" and m.content and BLOB_KEY in m.content:
                try:
                    parsed[i] = json.loads(m.content)
                except ValueError:
                    continue
        expanded = await self.expand(list(parsed.values()), on_wait=on_wait)
        out = list(messages)
        for i, value in zip(parsed, expanded, strict=True):
            if value != parsed[i]:
                text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
                out[i] = messages[i].model_copy(update={"content": text})
        return out


def _collect(value: Any, into: list[str]) -> None:
    if is_reference(value):
        into.append(value[BLOB_KEY])
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, into)
    elif isinstance(value, list):
        for v in value:
            _collect(v, into)


def _replace(value: Any, loaded: dict[str, Any]) -> Any:
    if is_reference(value):
        return loaded[value[BLOB_KEY]]
    if isinstance(value, dict):
        return {k: _replace(v, loaded) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, loaded) for v in value]
    return value
