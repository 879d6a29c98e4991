"""The lifecycle the fake servers share: an aiohttp app on 127.0.0.1 and a free port."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.log import access_logger


class LocalHTTPServer:
    """Start/stop, port and ``async with`` for a local fake; subclasses build the app."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 shutdown_timeout: float = 2.0, access_log: bool = False) -> None:
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        # Set on close so a request held by a ``timeout`` fault ends now, not after its delay.
        self._closing = asyncio.Event()

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        runner = web.AppRunner(self.build_app(), handle_signals=False,
                               shutdown_timeout=self._shutdown_timeout,
                               access_log=access_logger if self._access_log else None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing.clear()
        self._bound_port = int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError(f"{type(self).__name__} is not started; use `async with` or "
                               f"start()")
        return self._bound_port
