"""Real MCP servers, written with the official ``mcp`` SDK, for tests and for trying stead out.

Each speaks MCP over stdio or streamable HTTP and keeps what it did in a state directory
(files, so counts survive a crashed and restarted stdio server)::

    python -m stead.testing.mcp_servers desk --state /tmp/desk              # stdio
    python -m stead.testing.mcp_servers desk --state /tmp/desk --http 8765  # http://127.0.0.1:8765/mcp

- ``desk`` — a ticket desk that behaves: ``lookup_ticket`` (read), ``create_ticket`` (a side
  effect, deduplicated by the idempotency key stead sends in ``_meta``), ``find_ticket`` (the
  reconcile tool: the ticket created under a key, or no content).
- ``pay`` — crashes mid-call: ``charge`` records its effect and then the process exits before
  answering, the first ``--crash-times`` times (default 1); ``find_charge`` reconciles.
- ``odd`` — returns malformed results: ``bad_shape`` breaks its output schema, ``html_page``
  promises structured output and sends HTML text, ``garbage`` writes a line that is not JSON-RPC
  on the channel (stdio), ``fails`` answers ``isError``, ``fine`` answers plain text.
- ``shift`` — its tool list changes: calling ``step_one`` removes ``step_two`` and adds
  ``step_three``.

Every call is appended to ``calls.jsonl`` (tool, arguments, idempotency key, attempt) and every
side effect to ``effects.jsonl`` in the state directory; :func:`calls` and :func:`effects` read
them back. :class:`McpHttpServer` runs one over HTTP in a child process for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel

KINDS = ("desk", "pay", "odd", "shift")
IDEMPOTENCY_META_KEY = "stead/idempotency-key"  # as stead.mcp sends it
ATTEMPT_META_KEY = "stead/attempt"


# ---------------------------------------------------------------------------- state files


def _append(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())  # a crash right after must not lose the line


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def calls(state: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """Every ``tools/call`` the server in ``state`` received (optionally of one tool)."""
    return [r for r in _rows(state / "calls.jsonl") if tool is None or r["tool"] == tool]


def effects(state: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """Every side effect the server in ``state`` made (optionally of one tool)."""
    return [r for r in _rows(state / "effects.jsonl") if tool is None or r["tool"] == tool]


class _State:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def call(self, tool: str, arguments: Mapping[str, Any], meta: Mapping[str, Any] | None) -> str:
        meta = meta or {}
        key = str(meta.get(IDEMPOTENCY_META_KEY) or "")
        _append(self.root / "calls.jsonl", {"tool": tool, "arguments": dict(arguments),
                                            "key": key, "attempt": meta.get(ATTEMPT_META_KEY)})
        return key

    def effect(self, tool: str, key: str, record: Mapping[str, Any]) -> None:
        _append(self.root / "effects.jsonl", {"tool": tool, "key": key, **record})

    def by_key(self, tool: str, key: str) -> dict[str, Any] | None:
        for r in effects(self.root, tool):
            if key and r["key"] == key:
                return r
        return None

    def bump(self, name: str) -> int:
        """Increment counter ``name`` and return its previous value."""
        path = self.root / f"{name}.count"
        before = int(path.read_text()) if path.exists() else 0
        path.write_text(str(before + 1))
        return before


def _meta(ctx: Any) -> Mapping[str, Any] | None:
    meta = ctx.request_context.meta
    return meta if isinstance(meta, Mapping) else None


# ---------------------------------------------------------------------------- servers


class Ticket(BaseModel):
    ticket_id: str
    title: str
    priority: str
    status: str


class Receipt(BaseModel):
    charge_id: str
    amount: int


def desk_server(state: _State) -> MCPServer:
    """A ticket desk that behaves (see the module docstring)."""
    app = MCPServer("desk", log_level="WARNING")

    @app.tool()
    def lookup_ticket(ticket_id: str, ctx: Context) -> Ticket:
        """Look up a support ticket by its id (e.g. T-1001)."""
        state.call("lookup_ticket", {"ticket_id": ticket_id}, _meta(ctx))
        for r in effects(state.root, "create_ticket"):
            if r["ticket_id"] == ticket_id:
                return Ticket(ticket_id=ticket_id, title=r["title"], priority=r["priority"],
                              status="open")
        return Ticket(ticket_id=ticket_id, title="Checkout returns 500s", priority="high",
                      status="investigating")

    @app.tool()
    def create_ticket(title: str, priority: Literal["low", "high"], ctx: Context) -> Ticket:
        """Open a new support ticket."""
        key = state.call("create_ticket", {"title": title, "priority": priority}, _meta(ctx))
        done = state.by_key("create_ticket", key)
        if done is None:  # the idempotency key makes a repeated call return the same ticket
            done = {"ticket_id": f"T-{2000 + len(effects(state.root, 'create_ticket'))}",
                    "title": title, "priority": priority}
            state.effect("create_ticket", key, done)
        return Ticket(ticket_id=done["ticket_id"], title=done["title"],
                      priority=done["priority"], status="open")

    @app.tool()
    def find_ticket(idempotency_key: str, ctx: Context) -> CallToolResult:
        """The ticket created under an idempotency key, or nothing (stead's reconcile)."""
        state.call("find_ticket", {"idempotency_key": idempotency_key}, _meta(ctx))
        done = state.by_key("create_ticket", idempotency_key)
        if done is None:
            return CallToolResult(content=[])
        ticket = {"ticket_id": done["ticket_id"], "title": done["title"],
                  "priority": done["priority"], "status": "open"}
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(ticket))],
                              structured_content=ticket)

    return app


def pay_server(state: _State, *, crash_times: int) -> MCPServer:
    """Crashes mid-call: the effect happens, the answer never leaves (see the docstring)."""
    app = MCPServer("pay", log_level="WARNING")

    @app.tool()
    def charge(amount: int, ctx: Context) -> Receipt:
        """Charge the customer's card."""
        key = state.call("charge", {"amount": amount}, _meta(ctx))
        done = state.by_key("charge", key)
        if done is None:
            done = {"charge_id": f"ch_{uuid.uuid4().hex[:8]}", "amount": amount}
            state.effect("charge", key, done)
        if state.bump("crashes") < crash_times:
            os._exit(17)  # after the effect, before the answer: the caller cannot know
        return Receipt(charge_id=done["charge_id"], amount=done["amount"])

    @app.tool()
    def find_charge(idempotency_key: str, ctx: Context) -> CallToolResult:
        """The charge made under an idempotency key, or nothing (stead's reconcile)."""
        state.call("find_charge", {"idempotency_key": idempotency_key}, _meta(ctx))
        done = state.by_key("charge", idempotency_key)
        if done is None:
            return CallToolResult(content=[])
        body = {"charge_id": done["charge_id"], "amount": done["amount"]}
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(body))],
                              structured_content=body)

    return app


_N_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def odd_server(state: _State) -> Server[Any]:
    """A low-level server that returns malformed results (see the module docstring)."""
    specs = {
        "bad_shape": ("Count things (breaks its own output schema).", _N_SCHEMA),
        "html_page": ("Count pages (promises JSON, sends HTML).", _N_SCHEMA),
        "garbage": ("Write a line that is not JSON-RPC on the channel.", None),
        "fails": ("Always fails with isError.", None),
        "fine": ("Answers in plain text.", None),
    }

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=name, description=text, output_schema=schema,
                       input_schema={"type": "object", "properties": {
                           "note": {"type": "string"}}})
            for name, (text, schema) in specs.items()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        state.call(params.name, params.arguments or {}, params.meta)
        text = types.TextContent
        if params.name == "bad_shape":
            return types.CallToolResult(content=[text(type="text", text='{"n": "seven"}')],
                                        structured_content={"n": "seven"})
        if params.name == "html_page":
            return types.CallToolResult(content=[text(type="text", text="<html>502</html>")])
        if params.name == "garbage":
            from mcp.server import stdio as wire

            # The SDK guards fd 1 against stray prints; write to the channel it really uses.
            claim = wire._claims.get(1)
            fd = claim.private_fd if claim is not None and claim.private_fd is not None else 1
            os.write(fd, b"<html>this is not JSON-RPC</html>\n")
            await anyio.sleep(3600)
        if params.name == "fails":
            return types.CallToolResult(content=[text(type="text", text="disk full on /var")],
                                        is_error=True)
        if params.name == "fine":
            return types.CallToolResult(content=[text(type="text", text="all good")])
        return types.CallToolResult(content=[text(type="text", text=f"no tool {params.name}")],
                                    is_error=True)

    return Server("odd", on_list_tools=list_tools, on_call_tool=call_tool)


def shift_server(state: _State) -> MCPServer:
    """A server whose tool list changes when ``step_one`` is called."""
    app = MCPServer("shift", log_level="WARNING")

    def step_three() -> str:
        """The third step (appears after step_one)."""
        return "three done"

    @app.tool()
    async def step_one(ctx: Context) -> str:
        """The first step; the server's tool list changes after it."""
        state.call("step_one", {}, _meta(ctx))
        if app._tool_manager.get_tool("step_two") is not None:
            app.remove_tool("step_two")
            app.add_tool(step_three)
            await ctx.notify_tools_changed()
        return "one done"

    @app.tool()
    def step_two(ctx: Context) -> str:
        """The second step (disappears when step_one is called)."""
        state.call("step_two", {}, _meta(ctx))
        return "two done"

    return app


def build(kind: str, state: Path, *, crash_times: int = 1) -> MCPServer | Server[Any]:
    """The server ``kind`` (an ``MCPServer`` or a low-level ``Server``) keeping state in
    ``state``."""
    st = _State(state)
    if kind == "desk":
        return desk_server(st)
    if kind == "pay":
        return pay_server(st, crash_times=crash_times)
    if kind == "odd":
        return odd_server(st)
    if kind == "shift":
        return shift_server(st)
    raise ValueError(f"unknown MCP test server {kind!r}; choose from {', '.join(KINDS)}")


async def serve(kind: str, state: Path, *, port: int | None = None,
                crash_times: int = 1) -> None:
    """Serve ``kind`` over stdio, or over streamable HTTP on 127.0.0.1:``port`` (``/mcp``)."""
    app = build(kind, state, crash_times=crash_times)
    low: Server[Any] = app._lowlevel_server if isinstance(app, MCPServer) else app
    if port is None:
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await low.run(read, write, low.create_initialization_options())
        return
    import uvicorn

    config = uvicorn.Config(low.streamable_http_app(), host="127.0.0.1", port=port,
                            log_level="warning")
    await uvicorn.Server(config).serve()


def stdio_command(kind: str, state: Path, *, crash_times: int = 1) -> list[str]:
    """The command line that runs ``kind`` as a stdio MCP server (for ``McpServer(stdio=)``)."""
    return [sys.executable, "-m", "stead.testing.mcp_servers", kind, "--state", str(state),
            "--crash-times", str(crash_times)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class McpHttpServer:
    """``kind`` served over streamable HTTP by a child process, for one test::

        with McpHttpServer("desk", tmp_path / "desk") as srv:
            McpServer(name="desk", url=srv.url)
    """

    def __init__(self, kind: str, state: Path, *, crash_times: int = 1,
                 startup_timeout: float = 30.0) -> None:
        self.kind = kind
        self.state = state
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._crash_times = crash_times
        self._timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        log = (self.state / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [*stdio_command(self.kind, self.state, crash_times=self._crash_times),
             "--http", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MCP test server {self.kind!r} exited with "
                                   f"{self.proc.returncode}; see {self.state / 'server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"MCP test server {self.kind!r} did not listen on port {self.port} "
                           f"within {self._timeout:g}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--state", type=Path, required=True,
                        help="directory for calls.jsonl, effects.jsonl and counters")
    parser.add_argument("--http", type=int, metavar="PORT",
                        help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio")
    parser.add_argument("--crash-times", type=int, default=1,
                        help="pay: how many charge calls crash the server (default 1)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kind, args.state, port=args.http, crash_times=args.crash_times))


if __name__ == "__main__":
    main()
