"""Serving the API inside a running event loop (``stead api``, ``stead up``, tests).

    async with ApiServer(create_app(settings), host="127.0.0.1", port=8000) as server:
        print(server.url)

The socket is bound before uvicorn starts, so a taken port is a clear ``StackError`` instead of
uvicorn exiting the process; signals stay with the caller, which decides when to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from stead.errors import StackError

GRACE_SECONDS = 3
"""How long open requests may finish when the server stops."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Ctrl-C belongs to the host process (stead up stops the worker too).
        yield


class ApiServer:
    """uvicorn serving ``app`` on ``host:port`` (port 0: any free port) until the block
    ends."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
                 log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise StackError(f"the HTTP API cannot listen on {self.host}:{self.port}: "
                             f"{e.strerror or e}; choose another with STEAD_API_PORT or "
                             f"--port") from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="on",
                                timeout_graceful_shutdown=GRACE_SECONDS, access_log=False)
        self._server = server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise StackError("the HTTP API stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            closing = getattr(self.app.state, "closing", None)
            if isinstance(closing, asyncio.Event):
                closing.set()  # endless responses (event streams) end now, not after the grace
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
