"""MCP tools: the tools of Model Context Protocol servers, under the guarantees of native tools.

    desk = McpServer(name="desk", stdio=["python", "-m", "desk_server"],
                     tools={"lookup_ticket": McpToolSpec(side_effect="read", risk="low")})
    ops = Agent(name="ops", ..., mcp=[desk])

or, for agents defined elsewhere, in settings (``STEAD_MCP_SERVERS``, a JSON object)::

    {"desk": {"transport": "http", "url": "https://desk.internal/mcp",
              "headers": {"Authorization": "Bearer ${secret:desk_token}"},
              "agents": ["ops"],
              "tools": {"lookup_ticket": {"side_effect": "read", "risk": "low"}}}}

What a run sees. When a run starts (the ``run.start`` / ``run.plan`` activities), the worker
lists the tools of every MCP server declared for the agent; each becomes a ``ToolPlan`` named
``<server>__<tool>`` with the server's input schema and the declared classes. The plan is the
activity's result, so it is pinned in the run's history: a server that changes its tool list
later changes nothing for that run, and replay never asks the server again. The workflow gates
MCP calls exactly like native ones (schema check against the pinned schema, risk score,
policy, approvals); the tool activity claims the idempotency key in the ledger, records every
attempt and sends the key to the server in the request's ``_meta`` (``stead/idempotency-key``).

Declared classes (``McpToolSpec``) default to the conservative end: an undeclared tool is
``irreversible``, ``high`` risk and not idempotent, so the default policy asks a human before
it runs. A server's own annotations (``readOnlyHint`` ...) are hints from the outside world and
never loosen these.

Failures, and what the run does with them::

    McpUnavailable        cannot connect (nothing was sent)        retried per the tool's policy
    CallLost              the connection died or the read timed out while the request was out:
                          idempotent tools retry; others are reconciled (``reconcile`` tool)
                          or escalated as ToolOutcomeUnknown — never re-run blindly
    McpToolError          the server answered ``isError``           reported to the model
    McpMalformedResult    the result breaks the tool's output schema, lacks the structured
                          content it promised, or is not JSON-RPC   reported to the model
    McpToolRemoved        the tool left the server after the run pinned it   reported
    InvalidArguments      arguments break the server's current schema        reported

The worker keeps one session per server (a stdio subprocess, or a streamable HTTP session),
lists the server's tools before each call (the tool must still be there, and a session that
cannot list is replaced) and reconnects when the session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError
from temporalio.exceptions import ApplicationError

from stead.authoring.tools import CallLost, Tool, ToolContext
from stead.contracts.models import RetrySpec, Timeouts, ToolPlan
from stead.errors import SpecError
from stead.integrations.mcp_spec import (
    SECRET_REF,
    SEPARATOR,
    McpServer,
    McpServerSettings,
    McpToolSpec,
    parse_mcp_servers,
    stead_tool_name,
)
from stead.security.secrets import SecretError, Secrets

if TYPE_CHECKING:
    from mcp import Client
    from mcp.client._transport import Transport
    from mcp.client.stdio import StdioServerParameters
    from mcp_types import CallToolResult
    from mcp_types import Tool as McpToolDef

    from stead.authoring.agent import AgentCatalog
    from stead.settings import IntegrationSettings

log = logging.getLogger("stead.mcp")

IDEMPOTENCY_META_KEY: Final = "stead/idempotency-key"
"""``_meta`` key of a ``tools/call`` request that carries the call's idempotency key."""
ATTEMPT_META_KEY: Final = "stead/attempt"
"""``_meta`` key of the attempt number (1, 2, ...) of the call."""

# ApplicationError.type values of MCP tool calls (see the module docstring).
MCP_UNAVAILABLE: Final = "McpUnavailable"
MCP_TOOL_ERROR: Final = "McpToolError"
MCP_MALFORMED_RESULT: Final = "McpMalformedResult"
MCP_TOOL_REMOVED: Final = "McpToolRemoved"
MCP_SERVER_ERROR: Final = "McpServerError"

_MAX_DESCRIPTION = 1024
_DISCOVERY_SECONDS = 40.0
"""Bound on listing one server's tools at run start: ``run.start`` is a local activity with a
60-second timeout, and a slow server must cost the run its tools, not its start."""
_CONNECTION_CLOSED = -32000
_REQUEST_TIMEOUT = -32001
_CALLER_FAULTS = frozenset({-32600, -32601, -32602})  # invalid request, no method, bad params


# ---------------------------------------------------------------------------- results


class McpArguments(BaseModel):
    """Arguments of an MCP tool call: any JSON object. The workflow checked them against the
    pinned schema; the activity checks them against the server's current one."""

    model_config = ConfigDict(extra="allow")


class McpResult(BaseModel):
    """What an MCP tool returned, as the model and the ledger see it: the structured content
    when the server sends one, else ``{"text": ...}`` (and ``content`` for non-text blocks)."""

    model_config = ConfigDict(extra="allow")


def result_payload(result: CallToolResult) -> dict[str, Any]:
    """The JSON object a run records for a successful ``tools/call`` result."""
    if result.structured_content is not None:
        return dict(result.structured_content)
    texts: list[str] = []
    others: list[dict[str, Any]] = []
    for block in result.content:
        kind = getattr(block, "type", "unknown")
        if kind == "text":
            texts.append(str(getattr(block, "text", "")))
        else:
            # Binary blocks stay out of history: their kind and size are what the model gets.
            data = getattr(block, "data", None) or getattr(block, "blob", None) or ""
            others.append({"type": kind, "mime_type": getattr(block, "mime_type", None),
                           "bytes": len(data) * 3 // 4 if isinstance(data, str) else None,
                           "uri": str(getattr(block, "uri", "") or "") or None})
    out: dict[str, Any] = {}
    if texts:
        out["text"] = "\n".join(texts)
    if others:
        out["content"] = others
    return out


def _error_text(result: CallToolResult) -> str:
    texts = [str(getattr(b, "text", "")) for b in result.content
             if getattr(b, "type", "") == "text"]
    return ("\n".join(t for t in texts if t) or "(no message)")[:2000]


# ---------------------------------------------------------------------------- connections


class _WireFault(Exception):
    """The server wrote something on the MCP channel that is not JSON-RPC."""


class _Connection:
    """One MCP session, owned by a background task.

    The SDK's transports are anyio task groups that must be entered and left by the same task,
    while activities run in tasks of their own: an owner task holds the session open until
    ``close``, and callers use it from anywhere."""

    def __init__(self, server: McpServer, secrets: Secrets) -> None:
        self.server = server
        self._secrets = secrets
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._fault = asyncio.Event()
        self._fault_error: Exception | None = None
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return (self._client is not None and not self._fault.is_set()
                and self._task is not None and not self._task.done())

    async def start(self) -> None:
        """Connect (spawn or handshake); ``McpUnavailable`` if that fails in time."""
        self._task = asyncio.create_task(self._own(), name=f"mcp:{self.server.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.server.connect_timeout_seconds)
        except TimeoutError:
            await self.close()
            raise _unavailable(self.server, f"no MCP handshake within "
                                            f"{self.server.connect_timeout_seconds:g}s") from None
        if self._client is None:
            await self.close()
            raise _unavailable(self.server, _describe(self._error))

    async def _own(self) -> None:
        from mcp import Client

        try:
            async with contextlib.AsyncExitStack() as stack:
                target = await self._target(stack)
                client = Client(target, message_handler=self._on_message, cache=None)
                self._client = await stack.enter_async_context(client)
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:  # reported to whoever waits for the session
            self._error = err
            if not isinstance(err, Exception):
                raise
        finally:
            self._client = None
            self._ready.set()

    async def _target(self, stack: contextlib.AsyncExitStack) -> Transport | StdioServerParameters:
        s = self.server
        if s.stdio is not None:
            from mcp.client.stdio import StdioServerParameters

            return StdioServerParameters(command=s.stdio[0], args=s.stdio[1:],
                                         env={k: self._resolve(v) for k, v in s.env.items()}
                                         or None)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        assert s.url is not None
        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers={k: self._resolve(v) for k, v in s.headers.items()},
            timeout=httpx2.Timeout(s.connect_timeout_seconds, read=300.0)))
        return streamable_http_client(s.url, http_client=http)

    def _resolve(self, value: str) -> str:
        secrets = self._secrets.for_tool(f"MCP server {self.server.name}",
                                         self.server.secret_refs())
        return SECRET_REF.sub(lambda m: secrets.get(m.group(1)), value)

    async def _on_message(self, message: object) -> None:
        if isinstance(message, ValueError):  # pydantic's ValidationError: not JSON-RPC
            # A line on the channel that is not JSON-RPC: the session cannot be trusted, and a
            # call waiting on it would wait for an answer that will never be parsed.
            self._fault_error = message
            self._fault.set()

    async def list_tools(self) -> list[McpToolDef]:
        client = self._require()
        tools: list[McpToolDef] = []
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang discovery
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def call(self, name: str, arguments: dict[str, Any], *, meta: dict[str, Any],
                   timeout: float) -> CallToolResult:
        """``tools/call``; raises ``_WireFault`` when the channel turns to garbage meanwhile."""
        client = self._require()
        call = asyncio.ensure_future(client.call_tool(
            name, arguments, read_timeout_seconds=timeout, meta=meta))  # type: ignore[arg-type]
        fault = asyncio.ensure_future(self._fault.wait())
        try:
            await asyncio.wait({call, fault}, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return call.result()
            raise _WireFault(_describe(self._fault_error))
        finally:
            for f in (call, fault):
                if not f.done():
                    f.cancel()
            with contextlib.suppress(BaseException):
                await call

    def _require(self) -> Client:
        if self._client is None:
            raise _unavailable(self.server, "not connected")
        return self._client

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except (TimeoutError, Exception):  # closing must not fail the caller
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "connection closed"
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in err.exceptions)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unavailable(server: McpServer, why: str) -> ApplicationError:
    where = " ".join(server.stdio or []) if server.stdio is not None else server.url
    return ApplicationError(f"MCP server {server.name!r} ({where}) is unavailable: {why}",
                            type=MCP_UNAVAILABLE)


# ---------------------------------------------------------------------------- the worker's view


class McpTools:
    """The MCP servers of one worker: discovery for run plans, and tools for the activity.

    Implements ``stead.authoring.tools.DynamicTools``: the tool activity resolves
    ``tool.<server>__<tool>`` activity types here and asks ``allows`` whether the invoking agent
    declared that server.
    """

    def __init__(self, servers: Iterable[McpServer], grants: Mapping[str, Iterable[str]], *,
                 secrets: Secrets | None = None,
                 native_tools: Mapping[str, Iterable[str]] | None = None) -> None:
        """``grants``: agent name -> names of the servers it may use. ``native_tools``: agent
        name -> its own tool names, which an MCP tool must not shadow."""
        self._servers: dict[str, McpServer] = {}
        for s in servers:
            if s.name in self._servers and self._servers[s.name] != s:
                raise SpecError(f"two different MCP servers are named {s.name!r}; server names "
                                f"prefix tool names and must be unique on a worker")
            self._servers[s.name] = s
        self._grants = {a: sorted(set(names)) for a, names in grants.items()}
        for agent, names in self._grants.items():
            for n in names:
                if n not in self._servers:
                    raise SpecError(f"agent {agent!r} is granted unknown MCP server {n!r}")
        self._native = {a: set(ts) for a, ts in (native_tools or {}).items()}
        self._secrets = secrets if secrets is not None else Secrets()
        missing = self._missing_secrets()
        if missing:
            raise SpecError("MCP servers refer to secrets the worker does not have:\n  - "
                            + "\n  - ".join(missing))
        self._connections: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._resolved: dict[str, Tool[McpArguments, McpResult]] = {}

    @classmethod
    def from_catalog(cls, catalog: AgentCatalog, integrations: IntegrationSettings, *,
                     secrets: Secrets | None = None) -> McpTools | None:
        """The servers the catalog's agents declare plus those of ``STEAD_MCP_SERVERS``;
        None when there are none. Raises ``SpecError`` listing every problem."""
        servers: list[McpServer] = []
        grants: dict[str, list[str]] = {a.name: [] for a in catalog.agents()}
        problems: list[str] = []
        for a in catalog.agents():
            seen: set[str] = set()
            for s in a.mcp:
                if s.name in seen:
                    problems.append(f"agent {a.name!r} declares MCP server {s.name!r} twice")
                seen.add(s.name)
                servers.append(s)
                grants[a.name].append(s.name)
        for name, entry in integrations.mcp_servers.items():
            server = entry.server(name)
            servers.append(server)
            for agent in entry.agents:
                if agent not in grants:
                    problems.append(f"STEAD_MCP_SERVERS: server {name!r} names agent {agent!r}, "
                                    f"which this worker does not serve (it serves: "
                                    f"{', '.join(catalog.names())})")
                    continue
                grants[agent].append(name)
        by_name: dict[str, McpServer] = {}
        for s in servers:
            if by_name.setdefault(s.name, s) != s:
                problems.append(f"two different MCP servers are named {s.name!r} (in agent "
                                f"declarations or STEAD_MCP_SERVERS); server names prefix tool "
                                f"names and must be unique on a worker")
        if problems:
            raise SpecError("invalid MCP servers:\n  - " + "\n  - ".join(problems))
        if not servers:
            return None
        return cls(by_name.values(), grants, secrets=secrets,
                   native_tools={a.name: a.registry.names() for a in catalog.agents()})

    def _missing_secrets(self) -> list[str]:
        out: list[str] = []
        for s in self._servers.values():
            for ref in s.secret_refs():
                try:
                    self._secrets.for_tool(f"MCP server {s.name}", [ref]).get(ref)
                except (SecretError, ValueError) as err:
                    out.append(f"server {s.name!r}: {err}")
        return out

    @property
    def servers(self) -> list[McpServer]:
        return list(self._servers.values())

    def servers_of(self, agent: str) -> list[McpServer]:
        return [self._servers[n] for n in self._grants.get(agent, [])]

    # ------------------------------------------------------------------ discovery

    async def plans(self, agent: str) -> list[ToolPlan]:
        """The tools of the agent's MCP servers, listed now, as plans to pin in a run.

        A server that cannot be reached in time contributes no tools (logged): the run goes on
        with what it has rather than failing to start because one integration is down."""
        servers = self.servers_of(agent)
        if not servers:
            return []
        listed = await asyncio.gather(
            *(asyncio.wait_for(self._discover(s), _DISCOVERY_SECONDS) for s in servers),
            return_exceptions=True)
        plans: list[ToolPlan] = []
        taken = set(self._native.get(agent, ()))
        for server, got in zip(servers, listed, strict=True):
            if isinstance(got, BaseException):
                log.warning("MCP server %r: tools not offered to this run of agent %r: %s",
                            server.name, agent, _describe(got))
                continue
            for p in got:
                if p.name in taken:
                    log.warning("MCP tool %r is left out: agent %r already has a tool of that "
                                "name", p.name, agent)
                    continue
                taken.add(p.name)
                plans.append(p)
        return plans

    async def _discover(self, server: McpServer) -> list[ToolPlan]:
        _, tools = await self._listing(server)
        names = [stead_tool_name(server.name, t.name) for t in tools]
        plans: list[ToolPlan] = []
        for t, name in zip(tools, names, strict=True):
            if names.count(name) > 1:
                log.warning("MCP server %r: tools named like %r clash once made model-safe; "
                            "left out", server.name, t.name)
                continue
            problem = _schema_problem(t.input_schema)
            if problem:
                log.warning("MCP server %r: tool %r left out: %s", server.name, t.name, problem)
                continue
            spec = server.tools.get(t.name, McpToolSpec())
            description = (t.description or t.title or t.name).strip()
            plans.append(ToolPlan(
                name=name, description=f"{description} [MCP server {server.name}]"[
                    :_MAX_DESCRIPTION],
                parameters=_parameters(t.input_schema), side_effect=spec.side_effect,
                risk=spec.risk, idempotent=spec.is_idempotent,
                retry=RetrySpec(max_attempts=spec.max_attempts),
                timeouts=Timeouts(start_to_close=spec.timeout_seconds)))
        listed = {t.name for t in tools}
        for declared in server.tools:
            if declared not in listed:
                log.warning("MCP server %r does not list the declared tool %r", server.name,
                            declared)
        return plans

    # ------------------------------------------------------------------ DynamicTools

    def allows(self, agent: str, name: str) -> bool:
        server, sep, _ = name.partition(SEPARATOR)
        return bool(sep) and server in self._grants.get(agent, [])

    def resolve(self, name: str) -> Tool[Any, Any] | None:
        """The tool behind activity type ``tool.<server>__<tool>`` (or the bare tool name)."""
        name = name.removeprefix("tool.")
        hit = self._resolved.get(name)
        if hit is not None:
            return hit
        server_name, sep, _ = name.partition(SEPARATOR)
        server = self._servers.get(server_name)
        if not sep or server is None:
            return None
        spec = next((s for t, s in server.tools.items()
                     if stead_tool_name(server.name, t) == name), McpToolSpec())

        async def run(args: McpArguments, ctx: ToolContext) -> McpResult:
            return await self._call(server, name, spec, args, ctx)

        reconcile = None
        if spec.reconcile is not None and not spec.is_idempotent:
            via = spec.reconcile

            async def reconcile_fn(args: McpArguments, ctx: ToolContext) -> McpResult | None:
                return await self._reconcile(server, via, ctx)

            reconcile = reconcile_fn
        tool: Tool[McpArguments, McpResult] = Tool(
            name=name, description=f"MCP tool of server {server.name}", fn=run,
            input_model=McpArguments, output_model=McpResult, side_effect=spec.side_effect,
            risk=spec.risk, idempotent=spec.is_idempotent,
            retry=RetrySpec(max_attempts=spec.max_attempts),
            timeouts=Timeouts(start_to_close=spec.timeout_seconds), reconcile=reconcile)
        self._resolved[name] = tool
        return tool

    # ------------------------------------------------------------------ calls

    async def _call(self, server: McpServer, name: str, spec: McpToolSpec, args: McpArguments,
                    ctx: ToolContext) -> McpResult:
        conn, live = await self._listing(server)
        tool = next((t for t in live if stead_tool_name(server.name, t.name) == name), None)
        if tool is None:
            raise ApplicationError(
                f"{name}: MCP server {server.name!r} no longer offers this tool (it was listed "
                f"when the run started and has been removed since); it was not called",
                type=MCP_TOOL_REMOVED, non_retryable=True)
        arguments = args.model_dump(mode="json")
        from stead.guardrails.calls import schema_problems

        problems = schema_problems(tool.input_schema, arguments)
        if problems:
            raise ApplicationError(
                f"invalid arguments for {name!r} (the server's current schema): "
                + "; ".join(problems), type="InvalidArguments", non_retryable=True)
        meta = {IDEMPOTENCY_META_KEY: ctx.idempotency_key, ATTEMPT_META_KEY: ctx.attempt}
        # Our read timeout ends the attempt a little before Temporal's, so a silent server is
        # reported as a lost call (CallLost) rather than as an attempt that vanished.
        result = await self._send(server, conn, name, tool.name, arguments, meta,
                                  spec.timeout_seconds * 0.9)
        if result.is_error:
            raise ApplicationError(f"{name}: the tool reported an error: {_error_text(result)}",
                                   type=MCP_TOOL_ERROR, non_retryable=True)
        return McpResult.model_validate(result_payload(result))

    async def _send(self, server: McpServer, conn: _Connection, name: str, tool: str,
                    arguments: dict[str, Any], meta: dict[str, Any],
                    timeout: float) -> CallToolResult:
        from mcp import MCPError

        try:
            return await conn.call(tool, arguments, meta=meta, timeout=timeout)
        except _WireFault as err:
            await self._drop(server, conn)
            raise ApplicationError(f"{name}: MCP server {server.name!r} answered with something "
                                   f"that is not JSON-RPC ({err})", type=MCP_MALFORMED_RESULT,
                                   non_retryable=True) from None
        except (RuntimeError, ValidationError) as err:
            # The SDK checks results against the protocol and the tool's output schema.
            raise ApplicationError(f"{name}: MCP server {server.name!r} returned a malformed "
                                   f"result: {_describe(err)}", type=MCP_MALFORMED_RESULT,
                                   non_retryable=True) from None
        except MCPError as err:
            if err.code in (_CONNECTION_CLOSED, _REQUEST_TIMEOUT):
                await self._drop(server, conn)
                raise CallLost(f"{name}: the request reached MCP server {server.name!r} and "
                               f"no answer came back ({err.message})") from None
            raise ApplicationError(f"{name}: MCP server {server.name!r} refused the call: "
                                   f"{err.message} (JSON-RPC {err.code})",
                                   type=MCP_SERVER_ERROR,
                                   non_retryable=err.code in _CALLER_FAULTS) from None
        except Exception as err:
            await self._drop(server, conn)
            raise CallLost(f"{name}: the connection to MCP server {server.name!r} failed while "
                           f"the request was out ({_describe(err)})") from None

    async def _reconcile(self, server: McpServer, via: str, ctx: ToolContext) -> McpResult | None:
        """Ask the server's reconcile tool whether the call with this key took effect."""
        conn = await self._connection(server)
        result = await self._send(server, conn, f"{server.name}{SEPARATOR}{via}", via,
                                  {"idempotency_key": ctx.idempotency_key},
                                  {IDEMPOTENCY_META_KEY: ctx.idempotency_key,
                                   ATTEMPT_META_KEY: ctx.attempt},
                                  server.connect_timeout_seconds)
        if result.is_error:
            raise ApplicationError(f"reconcile tool {via!r} of MCP server {server.name!r} "
                                   f"failed: {_error_text(result)}", type=MCP_TOOL_ERROR)
        if result.structured_content is None and not result.content:
            return None  # the call did not take effect
        return McpResult.model_validate(result_payload(result))

    # ------------------------------------------------------------------ sessions

    async def _listing(self, server: McpServer) -> tuple[_Connection, list[McpToolDef]]:
        """A session to ``server`` and its tool list right now. Listing doubles as the
        liveness check (MCP 2026-07-28 has no ping): a session that cannot list is replaced
        once; ``McpUnavailable`` (retryable, nothing was called) if the new one cannot
        either."""
        for fresh in (False, True):
            conn = await self._connection(server, fresh=fresh)
            try:
                tools = await asyncio.wait_for(conn.list_tools(), server.connect_timeout_seconds)
            except Exception as err:
                await self._drop(server, conn)
                if fresh:
                    raise _unavailable(server, f"listing tools failed: {_describe(err)}") \
                        from None
                continue
            return conn, tools
        raise AssertionError("unreachable")

    async def _connection(self, server: McpServer, *, fresh: bool = False) -> _Connection:
        """The session to ``server``, opened if there is none (or ``fresh``);
        ``McpUnavailable`` when connecting fails."""
        lock = self._locks.setdefault(server.name, asyncio.Lock())
        async with lock:
            conn = self._connections.get(server.name)
            if conn is not None and conn.open and not fresh:
                return conn
            if conn is not None:
                self._connections.pop(server.name, None)
                await conn.close()
            conn = _Connection(server, self._secrets)
            await conn.start()
            self._connections[server.name] = conn
            return conn

    async def _drop(self, server: McpServer, conn: _Connection) -> None:
        if self._connections.get(server.name) is conn:
            self._connections.pop(server.name, None)
        await conn.close()

    async def close(self) -> None:
        """Close every session (stdio servers exit)."""
        conns, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


def _schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why an input schema cannot be pinned: the workflow validates arguments with it, so it
    must be a valid JSON Schema (2020-12) for an object, usable without the network."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if schema.get("type", "object") != "object":
        return f"its input schema is not for a JSON object (type {schema.get('type')!r})"
    try:
        Draft202012Validator.check_schema(dict(schema))
        list(Draft202012Validator(dict(schema)).iter_errors({}))
    except SchemaError as err:
        return f"its input schema is not valid JSON Schema: {err.message}"
    except Exception as err:  # unresolvable $ref and the like
        return f"its input schema cannot be used: {_describe(err)}"
    return None


def _parameters(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k not in ("title", "$schema")}
    out.setdefault("type", "object")
    return out


__all__ = [
    "ATTEMPT_META_KEY",
    "IDEMPOTENCY_META_KEY",
    "MCP_MALFORMED_RESULT",
    "MCP_SERVER_ERROR",
    "MCP_TOOL_ERROR",
    "MCP_TOOL_REMOVED",
    "MCP_UNAVAILABLE",
    "McpArguments",
    "McpResult",
    "McpServer",
    "McpServerSettings",
    "McpToolSpec",
    "McpTools",
    "parse_mcp_servers",
    "result_payload",
    "stead_tool_name",
]
