"""Tool declarations: ``@tool`` over an async function with pydantic input and output models.

    @tool(side_effect="write", risk="medium", retry=RetrySpec(max_attempts=5))
    async def create_ticket(args: NewTicket, ctx: ToolContext) -> Ticket: ...

A :class:`Tool` carries its spec (what the workflow and the model are told) and its function
(what the activity runs). :class:`ToolRegistry` validates a set of tools at worker start.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, get_type_hints, overload

from pydantic import BaseModel, ValidationError

from stead.contracts.models import RetrySpec, RiskTier, SideEffect, Timeouts, ToolPlan, ToolSchema
from stead.errors import SpecError
from stead.security.tool_secrets import NO_SECRETS, ToolSecrets, check_secret_name

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """What a tool gets besides its arguments."""

    idempotency_key: str
    """Stable across retries and worker crashes; pass it on (e.g. as an Idempotency-Key header)."""
    attempt: int
    """1 for the first attempt of this activity, 2 for its first retry, ..."""
    workflow_id: str
    run_id: str
    tenant: str
    heartbeat: Callable[..., None] = field(default=lambda *details: None)
    """Report liveness from a long tool; required when the tool declares a heartbeat timeout."""
    secrets: ToolSecrets = NO_SECRETS
    """The credentials this tool declared, resolved from the worker's settings."""

    @overload
    def secret(self, name: str) -> str: ...

    @overload
    def secret(self, name: str, *, required: Literal[False]) -> str | None: ...

    def secret(self, name: str, *, required: bool = True) -> str | None:
        """The credential ``name`` (``STEAD_SECRET_<NAME>``), read at call time so it never
        travels through the model, the arguments or history. A tool may read only the secrets
        it declared (``@tool(secrets=[...])``); a required one that is not configured fails the
        call without retries, naming the variable to set
        (``stead.security.secrets.MissingSecret``)."""
        return self.secrets.get(name) if required else self.secrets.get_optional(name)

    async def wait(self, seconds: float, *, every: float = 0.5) -> None:
        """Sleep for ``seconds`` while heartbeating, so a lost worker is noticed quickly."""
        remaining = seconds
        while remaining > 0:
            self.heartbeat()
            step = min(every, remaining)
            await asyncio.sleep(step)
            remaining -= step


ToolFn = Callable[[In, ToolContext], Awaitable[Out]]
ReconcileFn = Callable[[In, ToolContext], Awaitable[Out | None]]


@dataclass(frozen=True, kw_only=True)
class Tool(Generic[In, Out]):
    """A declared tool: its function and everything the runtime needs to call it safely."""

    name: str
    description: str
    fn: ToolFn[In, Out]
    input_model: type[In]
    output_model: type[Out]
    side_effect: SideEffect
    risk: RiskTier
    idempotent: bool
    retry: RetrySpec
    timeouts: Timeouts
    fallbacks: tuple[str, ...] = ()
    reconcile: ReconcileFn[In, Out] | None = None
    """For non-idempotent tools: asks the outside world whether the call with this
    idempotency key already took effect (its result) or not (None). Used when a worker died
    mid-call; without it such a call is escalated instead of re-run."""
    secrets: tuple[str, ...] = ()
    """Names of the credentials the tool may read with ``ctx.secret`` (and no others)."""

    @property
    def activity_name(self) -> str:
        return activity_name(self.name)

    def parameters(self) -> dict[str, Any]:
        schema = self.input_model.model_json_schema()
        schema.pop("title", None)
        return schema

    def plan(self) -> ToolPlan:
        return ToolPlan(
            name=self.name,
            description=self.description,
            parameters=self.parameters(),
            side_effect=self.side_effect,
            risk=self.risk,
            idempotent=self.idempotent,
            retry=self.retry,
            timeouts=self.timeouts,
            fallbacks=list(self.fallbacks),
        )

    def openai_schema(self) -> dict[str, Any]:
        """The tool in OpenAI's function-calling format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters(),
            },
        }

    def schema(self) -> ToolSchema:
        return ToolSchema(name=self.name, description=self.description,
                          parameters=self.parameters())

    async def __call__(self, args: In, ctx: ToolContext) -> Out:
        return await self.fn(args, ctx)


class CallLost(Exception):
    """Raise from a tool when its request reached the outside world and the answer was lost
    (the connection dropped mid-call, the read timed out). An idempotent tool is retried; a
    non-idempotent one is treated like a call whose worker died: reconciled through its
    ``reconcile`` hook, or escalated as ``ToolOutcomeUnknown`` — never re-run blindly."""


class DynamicTools(Protocol):
    """Tools a worker finds by name when they are called instead of registering an activity
    for each (MCP servers' tools, discovered per run: ``stead.integrations.mcp.McpTools``)."""

    def resolve(self, name: str) -> Tool[Any, Any] | None:
        """The tool behind activity type ``name`` (``tool.<tool name>``), None if unknown."""
        ...

    def allows(self, agent: str, name: str) -> bool:
        """Whether ``agent`` may call tool ``name`` (its allowlist of dynamic tools)."""
        ...


def activity_name(tool_name: str) -> str:
    """Activity type of a tool, as shown in the Web UI and metrics."""
    return f"tool.{tool_name}"


@overload
def tool(fn: ToolFn[In, Out], /) -> Tool[In, Out]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    risk: RiskTier = "low",
    idempotent: bool | None = None,
    retry: RetrySpec | None = None,
    timeouts: Timeouts | None = None,
    fallbacks: Sequence[str] = (),
    reconcile: ReconcileFn[Any, Any] | None = None,
    secrets: Sequence[str] = (),
) -> Callable[[ToolFn[In, Out]], Tool[In, Out]]: ...


def tool(
    fn: ToolFn[In, Out] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    risk: RiskTier = "low",
    idempotent: bool | None = None,
    retry: RetrySpec | None = None,
    timeouts: Timeouts | None = None,
    fallbacks: Sequence[str] = (),
    reconcile: ReconcileFn[Any, Any] | None = None,
    secrets: Sequence[str] = (),
) -> Any:
    """Declare a tool. Use bare (``@tool``) or with keyword options.

    ``idempotent`` defaults to True for ``read`` tools and False otherwise: a non-idempotent
    tool whose outcome is unknown after a crash is never silently re-run. ``secrets`` names
    the credentials the tool reads with ``ctx.secret(name)`` (see ``stead.security.secrets``).
    """

    def wrap(f: ToolFn[In, Out]) -> Tool[In, Out]:
        if not inspect.iscoroutinefunction(f):
            raise SpecError(f"tool {f.__name__!r}: must be an async function")
        hints = get_type_hints(f)
        params = list(inspect.signature(f).parameters)
        if len(params) != 2:
            raise SpecError(
                f"tool {f.__name__!r}: signature must be (args: InputModel, ctx: ToolContext)"
            )
        in_model = hints.get(params[0])
        out_model = hints.get("return")
        for label, model in (("input", in_model), ("output", out_model)):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise SpecError(
                    f"tool {f.__name__!r}: {label} must be annotated with a pydantic model, "
                    f"got {model!r}"
                )
        doc = inspect.getdoc(f) or ""
        return Tool(
            name=name or f.__name__,
            description=description or doc,
            fn=f,
            input_model=in_model,  # type: ignore[arg-type]
            output_model=out_model,  # type: ignore[arg-type]
            side_effect=side_effect,
            risk=risk,
            idempotent=(side_effect == "read") if idempotent is None else idempotent,
            retry=retry or RetrySpec(),
            timeouts=timeouts or Timeouts(),
            fallbacks=tuple(fallbacks),
            reconcile=reconcile,
            secrets=tuple(secrets),
        )

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """A validated, name-indexed set of tools."""

    def __init__(self, tools: Iterable[Tool[Any, Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any, Any]] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool[Any, Any]) -> None:
        if t.name in self._tools and self._tools[t.name] is not t:
            raise SpecError(f"tool {t.name!r} is declared twice")
        self._tools[t.name] = t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool[Any, Any]:
        return self._tools[name]

    def __iter__(self) -> Any:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def validate(self) -> None:
        """Check every spec; raise ``SpecError`` listing every problem found."""
        problems: list[str] = []
        for t in self._tools.values():
            problems.extend(_problems(t, self._tools))
        if problems:
            raise SpecError("invalid tool declarations:\n  - " + "\n  - ".join(problems))


def _problems(t: Tool[Any, Any], tools: dict[str, Tool[Any, Any]]) -> list[str]:
    out: list[str] = []
    p = f"tool {t.name!r}"
    if not _NAME.match(t.name):
        out.append(f"{p}: name must match {_NAME.pattern} (OpenAI function-name rules)")
    if not t.description.strip():
        out.append(f"{p}: needs a description (the model chooses tools by it)")
    try:
        schema = t.parameters()
        if schema.get("type") != "object":
            out.append(f"{p}: input model must produce a JSON object schema")
    except Exception as err:  # pydantic raises several error kinds for unschemable models
        out.append(f"{p}: input model has no JSON schema: {err}")
    if t.retry.max_interval < t.retry.initial_interval:
        out.append(f"{p}: retry.max_interval is below retry.initial_interval")
    to = t.timeouts
    if to.schedule_to_close is not None and to.schedule_to_close < to.start_to_close:
        out.append(f"{p}: timeouts.schedule_to_close is below timeouts.start_to_close")
    if to.heartbeat is not None and to.heartbeat > to.start_to_close:
        out.append(f"{p}: timeouts.heartbeat exceeds timeouts.start_to_close")
    if t.reconcile is not None and not inspect.iscoroutinefunction(t.reconcile):
        out.append(f"{p}: reconcile must be an async function")
    for name in t.secrets:
        try:
            check_secret_name(name)
        except ValueError as err:
            out.append(f"{p}: {err}")
    if len(set(t.secrets)) != len(t.secrets):
        out.append(f"{p}: a secret is declared twice")
    seen: set[str] = set()
    for fb in t.fallbacks:
        if fb == t.name:
            out.append(f"{p}: lists itself as a fallback")
        elif fb not in tools:
            out.append(f"{p}: fallback {fb!r} is not a registered tool")
        elif fb in seen:
            out.append(f"{p}: fallback {fb!r} listed twice")
        else:
            fbt = tools[fb]
            if fbt.input_model.model_json_schema() != t.input_model.model_json_schema():
                out.append(f"{p}: fallback {fb!r} takes different arguments")
            if _rank(fbt.side_effect) > _rank(t.side_effect):
                out.append(
                    f"{p}: fallback {fb!r} has a stronger side effect "
                    f"({fbt.side_effect} > {t.side_effect})"
                )
        seen.add(fb)
    return out


def _rank(s: SideEffect) -> int:
    return {"read": 0, "write": 1, "irreversible": 2}[s]


def validate_arguments(t: Tool[Any, Any], arguments: dict[str, Any]) -> BaseModel:
    """Parse arguments with the tool's input model (raises pydantic ``ValidationError``)."""
    return cast(BaseModel, t.input_model.model_validate(arguments))


__all__ = [
    "CallLost",
    "DynamicTools",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ValidationError",
    "activity_name",
    "tool",
    "validate_arguments",
]
