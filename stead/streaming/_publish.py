"""The publishing side: one model call attempt's message, written to the token stream in
batches while the provider is still answering.

    publisher = TurnPublisher(ledger, ref, attempt=info.attempt)
    turn = await client.stream(messages, tools, publisher)   # a TurnSink
    rows = publisher.end(turn, model=client.name)   # queues the rest and the end: [] back
    await ledger.record_model_call(ref, record, stream=rows)
    await publisher.drained()       # every row written (or given up on), bounded in time

A turn that arrives whole (a model that does not stream, or streaming off) starts no writer:
``end`` hands back its rows (start, text, end) for the caller to store in the same statement as
the call's own record (``Ledger.record_model_call(..., stream=rows)``): one round trip per call
instead of two.

Batching: the first write goes out as soon as there is something to write; while a write is
under way, and for ``interval`` seconds after a write with text, deltas pile up and go out
together. A token storm is therefore a few rows a second, not one round trip per token.

Redaction: rows hold what the ledger would hold. The publisher redacts the message so far (the
ledger's redactor) and sends the part past what it sent before; it holds back what may still
grow into something the redactor replaces (the word being written, numbers in groups,
``password: ...``; see :func:`held_from`), so a credential or card number split across deltas
is found whole. When redacting more
text changes what was already sent (a pattern with spaces completed), it sends a ``reset`` with
the message's whole text instead. The end of the message is redacted whole, so the pieces
always add up to exactly the content ``stead_model_calls`` records.

The stream is best effort: a failed write is logged once and the rest of the attempt is not
published; the model call itself never fails or waits long because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Final

from stead.contracts.models import ModelTurn, RunRef
from stead.security.secrets import Redactor
from stead.storage.ledger import Ledger, StreamPiece

log = logging.getLogger("stead.streaming")

INTERVAL: Final = 0.02
"""Seconds between two writes with text (the first one is not delayed)."""
DRAIN_SECONDS: Final = 2.0
"""Longest ``drained()`` waits for the last rows before giving up on them."""
WINDOW: Final = 512
"""Characters before the unsent text that are redacted again with it on each write; earlier
text is taken as settled (a credential or personal-data pattern is shorter)."""

HOLD_MAX: Final = 96
"""Most characters held back before the word being written (see :func:`held_from`)."""

_NAMES_A_SECRET = re.compile(
    r"(?i)(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|access[_-]?"
    r"token|auth[_-]?token|token|private[_-]?key|bearer|authorization)[\"']?[:=]?")
_JOINERS = frozenset({":", "=", "+", "(", "-"})


def _word_start(raw: str, end: int) -> int:
    """Start of the run of printable ASCII (no spaces) that ends at ``end``."""
    i = end
    while i > 0 and "!" <= raw[i - 1] <= "~":
        i -= 1
    return i


def held_from(raw: str) -> int:
    """Where the part of ``raw`` that may still grow into something the redactor replaces
    begins; it is held back until it is complete.

    That is the word being written (trailing printable ASCII: credentials, keys, addresses are
    made of it; text in scripts without spaces is not held), and before it, joined by spaces,
    words that hold digits or name a credential (a card number in groups, a phone number,
    ``password: ...``, ``Bearer ...``), at most ``HOLD_MAX`` characters; and a private key
    block from its ``-----BEGIN`` line until its ``-----END`` line arrives."""
    begin = raw.rfind("-----BEGIN ")
    if begin >= 0 and raw.find("-----END ", begin) < 0:
        return begin
    start = _word_start(raw, len(raw))
    floor = len(raw) - HOLD_MAX
    numeric = _numeric(raw[start:])
    while start > max(floor, 0):
        gap = start
        while gap > 0 and raw[gap - 1] in " \t":
            gap -= 1
        if gap == start:
            break  # the word starts the text, or follows a newline or other script
        w = _word_start(raw, gap)
        word = raw[w:gap]
        if not word:
            break
        # What follows a credential's name is its value; digits in groups are one number.
        if word in _JOINERS or _NAMES_A_SECRET.fullmatch(word):
            numeric = True
        elif not (numeric and _numeric(word)):
            break
        start = w
    return start


def _numeric(word: str) -> bool:
    return word in _JOINERS or any(c.isdigit() for c in word)


class TurnPublisher:
    """Publishes one attempt of one model call (a :class:`~stead.integrations.llm.TurnSink`)."""

    def __init__(self, ledger: Ledger, ref: RunRef, *, attempt: int, fallback: int = 0,
                 interval: float = INTERVAL) -> None:
        """``attempt``: the activity's attempt; ``fallback``: the called model's place in the
        agent's chain. A message of a later attempt or of a fallback model restarts."""
        self._ledger = ledger
        self._fallback = fallback
        self._redactor: Redactor = ledger.redactor
        self._ref = ref
        self._attempt = attempt
        self._interval = interval
        self._queue: list[StreamPiece] = []
        self._open = False
        self._begun = False
        self._raw = ""
        self._sent = ""
        """The redacted text sent so far (of the current message)."""
        self._cut = 0
        """How much of ``_raw`` ``_sent`` stands for."""
        self._settled = (0, "")
        """(raw length, its redaction) of the part no longer redacted again."""
        self._tools: list[str] = []
        self._final: StreamPiece | None = None
        self._closing = False
        self._broken = False
        self._inline = False
        """The message came whole and its rows went to the caller (:meth:`end`)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rows = 0
        """Rows written so far (for tests and benchmarks)."""
        self.writes = 0
        """Round trips made so far."""

    # ----------------------------------------------------------------- TurnSink

    def begin(self, model: str) -> None:
        restart = self._attempt > 1 or self._fallback > 0 or self._begun
        self._begun = self._open = True
        self._raw, self._sent, self._cut, self._settled = "", "", 0, (0, "")
        self._tools = []
        # Text of an earlier message of this attempt that was not sent yet is moot now.
        self._queue = [p for p in self._queue if p.kind not in ("text", "reset")]
        self._queue.append(StreamPiece("start", data={"model": model, "restart": restart}))
        self._kick()

    def text(self, delta: str) -> None:
        if not self._open:
            self.begin("")
        self._raw += delta
        self._kick()

    def tool_call(self, name: str) -> None:
        if not self._open:
            self.begin("")
        self._tools.append(name)

    # ----------------------------------------------------------------- ending

    def finish(self, turn: ModelTurn) -> None:
        """The call answered ``turn``: queue the rest of its text and the end."""
        if not self._open:
            self.begin(turn.model)
        self._raw = turn.content or ""
        piece = self._text_piece(final=True)
        if piece is not None:
            self._queue.append(piece)
        tools = self._tools or [c.name for c in turn.tool_calls]
        self._final = StreamPiece("end", data={"finish_reason": turn.finish_reason,
                                               "tool_calls": tools, "model": turn.model})
        self._close()

    def end(self, turn: ModelTurn, *, model: str) -> list[StreamPiece]:
        """The call answered ``turn``. A message published as it came has its rest and its end
        queued (this publisher writes them; ``[]`` is returned). One that came whole, with
        nothing written yet, is returned as its rows instead (``model`` names the called model
        in its ``start``), for the caller to store with the call's record in one statement."""
        if self._begun:  # a writer may be at work: it writes the rest
            self.finish(turn)
            return []
        self._inline = True  # no writer task: the caller writes what _take returns
        self.begin(model)
        self.finish(turn)
        return self._take()

    def fail(self, error: str) -> None:
        """The call failed with ``error`` (already redacted): queue an ``error`` row."""
        if self._begun:
            self._final = StreamPiece("error", data={"error": error[:2000]})
        self._close()

    async def drained(self) -> None:
        """Wait until every queued row is written, at most ``DRAIN_SECONDS``."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("stream of %s step %d: last rows not written within %.0f s",
                        self._ref.workflow_id, self._ref.step, DRAIN_SECONDS)
            await self.cancel()

    async def cancel(self) -> None:
        """Stop publishing at once (what is queued is dropped)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _close(self) -> None:
        self._closing = True
        self._open = False
        if self._final is not None or self._queue:
            self._kick()
        elif self._task is not None:
            self._wake.set()

    # ----------------------------------------------------------------- writing

    def _kick(self) -> None:
        if self._broken or self._inline:
            return
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        last_text = -1e9
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing and self._raw_pending():
                gap = last_text + self._interval - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
            pieces = self._take()
            if pieces:
                try:
                    await self._ledger.append_stream(self._ref, attempt=self._attempt,
                                                     fallback=self._fallback, pieces=pieces)
                except Exception as err:  # the stream is best effort; the call goes on
                    self._broken = True
                    log.warning("stream of %s step %d not published: %s: %s",
                                self._ref.workflow_id, self._ref.step, type(err).__name__, err)
                    return
                self.rows += len(pieces)
                self.writes += 1
                if any(p.kind in ("text", "reset") for p in pieces):
                    last_text = time.monotonic()
            if self._closing and not self._queue and self._final is None:
                return

    def _raw_pending(self) -> bool:
        return self._open and len(self._raw) > self._cut

    def _take(self) -> list[StreamPiece]:
        if self._open:
            piece = self._text_piece(final=False)
            if piece is not None:
                self._queue.append(piece)
        out, self._queue = self._queue, []
        if self._final is not None:
            out.append(self._final)
            self._final = None
        return out

    def _text_piece(self, *, final: bool) -> StreamPiece | None:
        """The next ``text`` (or ``reset``) piece of the current message, or None."""
        raw = self._raw
        if final:
            # Exactly what the ledger stores for the content.
            text = self._clean(raw)
            self._settled = (len(raw), text)
        else:
            cut = held_from(raw)
            if cut <= self._cut:
                return None
            text = self._redacted_prefix(cut)
        self._cut = len(raw) if final else cut
        sent, self._sent = self._sent, text
        if text.startswith(sent):
            return StreamPiece("text", text[len(sent):]) if len(text) > len(sent) else None
        return StreamPiece("reset", text)

    def _redacted_prefix(self, cut: int) -> str:
        settled_at, settled_text = self._settled
        start = self._raw.rfind(" ", settled_at, max(settled_at, cut - WINDOW))
        if start > settled_at:
            # Text this far back is settled: redact it one last time and keep the result.
            settled_text += self._clean(self._raw[settled_at:start])
            settled_at = start
            self._settled = (settled_at, settled_text)
        return settled_text + self._clean(self._raw[settled_at:cut])

    def _clean(self, s: str) -> str:
        return self._redactor.text(s).replace("\x00", "\ufffd")
