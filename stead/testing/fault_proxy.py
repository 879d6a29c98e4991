"""A fault-injecting TCP proxy on loopback: a bad network between a client and one server.

Put it in front of PostgreSQL or the Temporal frontend and point the client at it; change
the faults while traffic flows::

    async with FaultProxy(upstream="127.0.0.1:5432", seed=7) as proxy:
        # DATABASE_URL=postgresql://...@{proxy.address}/...
        proxy.set_latency(up=0.2, down=0.2, jitter=0.1)  # seconds each way, ± jitter
        proxy.set_bandwidth(down=64_000)                 # bytes/s, None: unlimited
        proxy.drop()                                     # every open connection, RST
        proxy.refuse(3.0)                                # the port closed for 3 s
        proxy.stall(5.0)                                 # a half-dead link for 5 s
        proxy.clear()                                    # a healthy network again
        proxy.stats                                      # connections, drops, bytes

The faults are the ones a real network produces and a client library must survive:

- **latency** per direction, with jitter (bytes keep their order: jitter never reorders);
- **bandwidth** cap per direction;
- **drop**: open connections end now, with a reset (``how="reset"``, what a crashed
  middlebox or a restarted NAT sends) or a clean close (``"close"``);
- **refuse**: new connections fail for a while (``how="closed"``: the port is closed, the
  client sees ECONNREFUSED; ``"reset"``: accepted and reset at once);
- **stall**: bytes are accepted and held, nothing is forwarded, nobody is told — a link
  that went half-dead. With ``resume=True`` the held bytes flow on when the stall ends (a
  long freeze); with ``resume=False`` (the default) the connections it caught stay silent
  forever, the way a peer that vanished without a FIN or RST looks: only the client's own
  timeout or keepalive ends them. Connections opened after the stall are healthy.

Bytes are never parsed, so the proxy carries any protocol (PostgreSQL's, HTTP/2 for gRPC).
Jitter and the connections ``drop(fraction=...)`` picks come from ``seed``: the same calls in
the same order make the same choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy", "ProxyStats"]

_CHUNK = 65536


@dataclass
class ProxyStats:
    """What the proxy saw and did, counted since it started."""

    connections: int = 0
    """Client connections accepted and connected upstream."""
    refused: int = 0
    """Connection attempts refused (counted when ``how="reset"``; a closed port refuses
    in the kernel, unseen — those count once per ``refuse`` call in ``refusals``)."""
    refusals: int = 0
    """``refuse`` calls."""
    upstream_failures: int = 0
    """Accepted clients whose upstream connect failed (closed at once)."""
    dropped: int = 0
    """Connections ended by ``drop``."""
    drops: int = 0
    """``drop`` calls."""
    stalls: int = 0
    """``stall`` calls."""
    stalled: int = 0
    """Connections a stall caught (open during it, or opened while it lasted)."""
    hung: int = 0
    """Of those, connections left silent for good (``resume=False``) and still open."""
    bytes_up: int = 0
    """Client -> server bytes forwarded."""
    bytes_down: int = 0
    """Server -> client bytes forwarded."""
    bytes_held: int = 0
    """Bytes accepted during a stall and not forwarded (so far)."""
    open: int = 0
    """Connections open now."""


@dataclass
class _Direction:
    latency: float = 0.0
    bandwidth: float | None = None
    """Bytes per second; None: unlimited."""


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    n: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while bytes may be forwarded; cleared by a stall."""
    caught: bool = False
    """A stall held this link's bytes."""
    dead: bool = False
    """Silent for good: a stall with ``resume=False`` caught it."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class FaultProxy:
    """Listen on ``host:port`` (0: any free port) and forward each connection to ``upstream``,
    through whatever faults are set at the moment."""

    upstream: str
    """host:port of the real server."""
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    stats: ProxyStats = field(default_factory=ProxyStats)
    _up: _Direction = field(default_factory=_Direction, repr=False)
    _down: _Direction = field(default_factory=_Direction, repr=False)
    _jitter: float = field(default=0.0, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _links: dict[int, _Link] = field(default_factory=dict, repr=False)
    _server: asyncio.Server | None = field(default=None, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _refuse_until: float = field(default=0.0, repr=False)
    _refuse_how: str = field(default="closed", repr=False)
    _stall_until: float | None = field(default=None, repr=False)
    """None: no stall; inf: a stall until ``clear``/``end_stall``."""
    _stall_resume: bool = field(default=False, repr=False)
    _timers: list[asyncio.TimerHandle] = field(default_factory=list, repr=False)
    _count: int = field(default=0, repr=False)
    _stopping: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def address(self) -> str:
        """host:port to dial (the bound port once started)."""
        return f"{self.host}:{self.port}"

    def url_for(self, url: str) -> str:
        """``url`` (e.g. a PostgreSQL DSN) with its host:port replaced by the proxy's."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{user}@{self.address}" if user
                                         else self.address))

    # ------------------------------------------------------------------ faults

    def set_latency(self, up: float = 0.0, down: float = 0.0, jitter: float = 0.0) -> None:
        """Delay each chunk by ``up`` (client -> server) / ``down`` seconds, plus a uniform
        ``0..jitter`` each; 0 everywhere turns it off. Applies to bytes read from now on."""
        if min(up, down, jitter) < 0:
            raise ValueError("latency and jitter must not be negative")
        self._up.latency, self._down.latency, self._jitter = up, down, jitter

    def set_bandwidth(self, up: float | None = None, down: float | None = None) -> None:
        """Cap each direction at so many bytes per second (None: unlimited)."""
        for v in (up, down):
            if v is not None and v <= 0:
                raise ValueError("a bandwidth cap must be positive (None: unlimited)")
        self._up.bandwidth, self._down.bandwidth = up, down

    def drop(self, *, how: Literal["reset", "close"] = "reset", fraction: float = 1.0) -> int:
        """End open connections now: all of them, or ``fraction`` of them picked with the
        seeded generator. ``reset`` sends RST to both ends, ``close`` a FIN. Returns how many
        were dropped. Hung connections (a stall's) are dropped too: that is how they end."""
        links = sorted(self._links.values(), key=lambda lk: lk.n)
        if fraction < 1.0:
            k = round(len(links) * max(fraction, 0.0))
            links = sorted(self._rng.sample(links, k), key=lambda lk: lk.n)
        self.stats.drops += 1
        for link in links:
            self._end(link, reset=how == "reset")
            self.stats.dropped += 1
        return len(links)

    def refuse(self, seconds: float, *, how: Literal["closed", "reset"] = "closed") -> None:
        """Refuse new connections for ``seconds``: ``closed`` closes the listening port (the
        client gets ECONNREFUSED; open connections are untouched) and opens it again on the
        same port; ``reset`` keeps listening and resets each new connection at once."""
        self.stats.refusals += 1
        self._refuse_how = how
        self._refuse_until = max(self._refuse_until, time.monotonic() + seconds)
        if how == "closed" and self._server is not None:
            self._server.close()
            self._server = None
            self._later(seconds, self._reopen_soon)

    def stall(self, seconds: float | None = None, *, resume: bool = False) -> None:
        """Stop forwarding: every open connection, and every new one until the stall ends,
        has its bytes accepted and held. ``seconds`` None: until ``end_stall``/``clear``.
        At the end, ``resume=True`` delivers what was held and the connections go on;
        ``resume=False`` leaves the caught connections silent for good (half-dead)."""
        self.stats.stalls += 1
        self._stall_resume = resume
        self._stall_until = float("inf") if seconds is None else time.monotonic() + seconds
        for link in self._links.values():
            self._catch(link)
        if seconds is not None:
            self._later(seconds, self._stall_over)

    def end_stall(self) -> None:
        """End a stall now (as its timer would)."""
        self._stall_until = None
        for link in list(self._links.values()):
            if link.caught and not link.dead:
                if self._stall_resume:
                    link.flowing.set()
                else:
                    link.dead = True
                    self.stats.hung += 1

    def clear(self) -> None:
        """A healthy network: no latency, no caps, no refusal, no stall (caught connections
        end as the stall would have). Hung connections stay hung: ``drop`` ends them."""
        self.set_latency()
        self.set_bandwidth()
        self._refuse_until = 0.0
        if self._server is None and not self._stopping:
            self._reopen_soon()
        if self._stall_until is not None:
            self.end_stall()

    @property
    def refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    @property
    def stalling(self) -> bool:
        return self._stall_until is not None and time.monotonic() < self._stall_until

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._stopping = True
        for t in self._timers:
            t.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links.values()):
            self._end(link, reset=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _later(self, seconds: float, fn: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(seconds, fn))

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _reopen_soon(self) -> None:
        if self._server is None and not self._stopping and not (
                self.refusing and self._refuse_how == "closed"):
            self._spawn(self._reopen())

    async def _reopen(self) -> None:
        for _ in range(100):  # the port was ours a moment ago; retry if it lingers
            if self._server is not None or self._stopping:
                return
            try:
                self._server = await asyncio.start_server(self._accept, self.host, self.port)
                return
            except OSError:
                await asyncio.sleep(0.05)

    def _stall_over(self) -> None:
        if self._stall_until is not None and time.monotonic() >= self._stall_until - 1e-3:
            self.end_stall()

    def _catch(self, link: _Link) -> None:
        if not link.caught:
            link.caught = True
            self.stats.stalled += 1
        link.flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self._stopping:
            self.stats.refused += 1
            _reset(writer)
            return
        host, _, port = self.upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            self.stats.upstream_failures += 1
            _reset(writer)
            return
        self._count += 1
        link = _Link(n=self._count, client=writer, server=up_writer)
        link.flowing.set()
        if self.stalling:
            self._catch(link)
        self._links[link.n] = link
        self.stats.connections += 1
        self.stats.open += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        up = asyncio.create_task(self._pipe(link, reader, up_writer, self._up, "up"))
        down = asyncio.create_task(self._pipe(link, up_reader, writer, self._down, "down"))
        link.tasks = [up, down]
        # asyncio's stream callback must not see this task cancelled (it logs that as an
        # unhandled error): the link is over either way.
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._end(link, reset=False)
                await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _pipe(self, link: _Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, d: _Direction, name: str) -> None:
        """Read as fast as the peer sends; deliver each chunk when its delay has passed, at
        the capped rate, in order — and not at all while the link is stalled."""
        queue: asyncio.Queue[tuple[float, bytes, bool] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    delay = d.latency + (self._rng.uniform(0, self._jitter)
                                         if self._jitter else 0.0)
                    held = not link.flowing.is_set()
                    if held:
                        self.stats.bytes_held += len(data)
                    queue.put_nowait((time.monotonic() + delay, data, held))
            except OSError:
                pass
            if link.caught and name == "up":
                # The client gave up on a stalled link (its timeout): only now does the
                # server hear of it, as behind a proxy or NAT that resets on the way out.
                self._end(link, reset=False)
            queue.put_nowait(None)

        reading = asyncio.create_task(read())
        free_at = 0.0
        try:
            while True:
                item = await queue.get()
                if item is None:
                    if link.caught and name == "down":
                        # The server went away behind a dead link: the client hears nothing.
                        await asyncio.Event().wait()
                    return
                due, data, held = item
                while not link.flowing.is_set():
                    if link.dead:
                        await asyncio.Event().wait()  # silent for good
                    await link.flowing.wait()
                    due = time.monotonic()  # held bytes go on at once when a stall resumes
                now = time.monotonic()
                due = max(due, free_at)
                if due > now:
                    await asyncio.sleep(due - now)
                if d.bandwidth is not None:
                    free_at = max(due, time.monotonic()) + len(data) / d.bandwidth
                if held:
                    self.stats.bytes_held -= len(data)
                writer.write(data)
                await writer.drain()
                if name == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except OSError:
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    def _end(self, link: _Link, *, reset: bool) -> None:
        if self._links.pop(link.n, None) is None:
            return
        self.stats.open -= 1
        if link.dead:
            self.stats.hung -= 1
        for w in (link.client, link.server):
            if reset:
                _reset(w)
            else:
                w.close()
        for t in link.tasks:
            t.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
