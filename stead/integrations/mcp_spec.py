"""MCP server declarations: what an agent (``McpServer``) or ``STEAD_MCP_SERVERS``
(``McpServerSettings``) says about a server and its tools, checked when it is read.

    desk = McpServer(name="desk", url="https://desk.internal/mcp",
                     tools={"lookup_ticket": McpToolSpec(side_effect="read", risk="low")})
    stead_tool_name("desk", "lookup_ticket")          # "desk__lookup_ticket"

Plain pydantic models over the contracts (``stead.contracts.models``); the worker side that connects
to servers and calls their tools is ``stead.integrations.mcp``, which re-exports these.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stead.contracts.models import RiskTier, SideEffect

SEPARATOR: Final = "__"
"""Between server and tool in a stead tool name: ``desk__lookup_ticket``."""
SECRET_REF: Final = re.compile(r"\$\{secret:([^}]*)\}")
"""``${secret:<name>}`` in a server's env or header value: a worker secret."""

_SERVER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*(_[a-zA-Z0-9-]+)*$")
_MAX_NAME = 64  # OpenAI function names


# ---------------------------------------------------------------------------- declarations


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- declarations


class McpToolSpec(_Model):
    """What stead must know about one MCP tool that the server cannot be trusted to say."""

    side_effect: SideEffect = "irreversible"
    """``read``, ``write`` or ``irreversible``; unknown counts as irreversible."""
    risk: RiskTier = "high"
    """Risk tier for the gate's score; undeclared tools are high risk (ask under the default
    policy)."""
    idempotent: bool | None = None
    """Safe to run twice with the same key; default: only ``read`` tools are."""
    timeout_seconds: float = Field(30.0, gt=0, le=24 * 3600)
    """Seconds one attempt may take (the activity's start-to-close timeout)."""
    max_attempts: int = Field(3, ge=1, le=100)
    """Attempts including the first (1: never retry)."""
    reconcile: str | None = Field(None, min_length=1)
    """A tool of the same server that answers, for ``{"idempotency_key": ...}``, with the
    original call's result if that call took effect and with no content if it did not. Used
    when a non-idempotent call's answer was lost; without it such a call is escalated."""

    @property
    def is_idempotent(self) -> bool:
        return self.side_effect == "read" if self.idempotent is None else self.idempotent


def _check_server_name(name: str) -> str:
    if not _SERVER_NAME.match(name) or len(name) > 32:
        raise ValueError(f"name must start with a letter and use letters, digits, '-' and "
                         f"single '_' (at most 32 characters), got {name!r}: it prefixes tool "
                         f"names as <server>{SEPARATOR}<tool>")
    return name


def _check_url(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/mcp "
                         f"(got {url!r})")
    return url


class McpServer(_Model):
    """An MCP server an agent may use: ``stdio=[command, *args]`` or ``url=`` (streamable HTTP).

    ``env`` (stdio) and ``headers`` (HTTP) values may name worker secrets as
    ``${secret:<name>}`` (``STEAD_SECRET_<NAME>``), resolved when the worker connects.
    """

    name: str
    stdio: list[str] | None = None
    """Command line that starts the server as a subprocess speaking MCP on stdin/stdout."""
    url: str | None = None
    """Streamable HTTP endpoint, e.g. ``http://127.0.0.1:8000/mcp``."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of a stdio server (besides a minimal safe set; the worker's own variables
    are not inherited)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers of every request to an HTTP server (e.g. Authorization)."""
    tools: dict[str, McpToolSpec] = Field(default_factory=dict)
    """Declared classes per MCP tool name; tools not listed get ``McpToolSpec()``."""
    connect_timeout_seconds: float = Field(10.0, gt=0, le=600)
    """How long connecting (and listing tools at run start) may take."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_server_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.stdio is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: give exactly one of stdio=[command, "
                             f"...] and url=...")
        if self.stdio is not None and (not self.stdio or not self.stdio[0].strip()):
            raise ValueError(f"MCP server {self.name!r}: stdio needs a command")
        if self.stdio is not None and self.headers:
            raise ValueError(f"MCP server {self.name!r}: headers are for HTTP servers")
        if self.url is not None and self.env:
            raise ValueError(f"MCP server {self.name!r}: env is for stdio servers")
        for tool, spec in self.tools.items():
            if spec.reconcile == tool:
                raise ValueError(f"MCP server {self.name!r}: tool {tool!r} cannot reconcile "
                                 f"itself")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.stdio is not None else "http"

    def secret_refs(self) -> list[str]:
        """Names of the worker secrets the env/header values refer to."""
        values = [*self.env.values(), *self.headers.values()]
        return sorted({m.group(1) for v in values for m in SECRET_REF.finditer(v)})

    def tool_names(self) -> list[str]:
        """stead names of the tools declared in ``tools`` (for policies that name them)."""
        return [stead_tool_name(self.name, t) for t in self.tools]


class McpServerSettings(_Model):
    """One entry of ``STEAD_MCP_SERVERS``: ``{name: {"transport": ..., ...}}``."""

    transport: Literal["stdio", "http"]
    command: list[str] = Field(default_factory=list)
    """stdio: the command line."""
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = None
    """http: the streamable HTTP endpoint."""
    headers: dict[str, str] = Field(default_factory=dict)
    agents: list[str] = Field(min_length=1)
    """Agents that may call this server's tools (their allowlist grows by these tools)."""
    tools: dict[str, McpToolSpec] = Field(default_factory=dict)
    connect_timeout_seconds: float = Field(10.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @model_validator(mode="after")
    def _transport_fields(self) -> McpServerSettings:
        if self.transport == "stdio":
            if not self.command or not self.command[0].strip():
                raise ValueError('transport "stdio" needs "command": [program, args...]')
            if self.url is not None or self.headers:
                raise ValueError('"url" and "headers" are for transport "http"')
        else:
            if self.url is None:
                raise ValueError('transport "http" needs "url"')
            if self.command or self.env:
                raise ValueError('"command" and "env" are for transport "stdio"')
        return self

    def server(self, name: str) -> McpServer:
        return McpServer(name=name, stdio=self.command if self.transport == "stdio" else None,
                         url=self.url, env=self.env, headers=self.headers, tools=self.tools,
                         connect_timeout_seconds=self.connect_timeout_seconds)


def parse_mcp_servers(value: object) -> dict[str, McpServerSettings]:
    """Validate ``STEAD_MCP_SERVERS``; raise an error naming the server and the field
    (pydantic reports it under the setting's name)

    Every entry is also checked as a server declaration (URL, names, reconcile), so a bad
    setting fails when settings are read, not when the first run reaches the server."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _problem(f"not JSON: {err}") from None
    if not isinstance(value, Mapping):
        raise _problem('must be a JSON object of server name -> {"transport": "stdio" | '
                       '"http", ...}')
    out: dict[str, McpServerSettings] = {}
    problems: list[str] = []
    for name, entry in value.items():
        where = f"server {name!r}"
        try:
            _check_server_name(str(name))
            parsed = (entry if isinstance(entry, McpServerSettings)
                      else McpServerSettings.model_validate(entry))
            parsed.server(str(name))
        except ValidationError as err:
            problems.extend(f"{where}: {_where(e['loc'])}{_message(e['msg'])}"
                            for e in err.errors())
            continue
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        out[str(name)] = parsed
    if problems:
        raise _problem("; ".join(problems))
    return out


def _problem(text: str) -> PydanticCustomError:
    # Not ValueError: pydantic would prefix "Value error, " to a message that is one already.
    return PydanticCustomError("mcp_servers", "{problem}", {"problem": text})


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) + ": " if loc else ""


def stead_tool_name(server: str, tool: str) -> str:
    """The stead tool name (and activity type ``tool.<name>``) of MCP tool ``tool``.

    MCP allows more characters in names than model APIs do: others become ``_``, and a name
    over 64 characters is cut and suffixed with a hash so it stays unique."""
    name = f"{server}{SEPARATOR}{re.sub(r'[^a-zA-Z0-9_-]', '_', tool)}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[:_MAX_NAME - 9]}_{digest}"


__all__ = [
    "SECRET_REF",
    "SEPARATOR",
    "McpServer",
    "McpServerSettings",
    "McpToolSpec",
    "parse_mcp_servers",
    "stead_tool_name",
]
