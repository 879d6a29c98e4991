"""The ops agent's tools, acting on an :class:`~stead.agents.ops.world.OpsWorld`."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from stead.agents.ops.world import DeskUnauthorized, OpsWorld
from stead.authoring.tools import Tool, ToolContext, tool
from stead.contracts.models import RetrySpec, Timeouts
from stead.security.secrets import secret_variable


class UnknownService(Exception):
    """The named service does not exist: retrying cannot help."""


class MetricsUnavailable(Exception):
    """The metrics backend has no data for this service right now."""


class ProbeFailed(Exception):
    """The health probe could not reach the service."""


class LogBackendTimeout(Exception):
    """The log backend timed out (transient)."""


class NoArgs(BaseModel):
    pass


class ServiceRef(BaseModel):
    service: str = Field(description="Service name, e.g. checkout-api", min_length=1,
                         max_length=100)


class ServiceList(BaseModel):
    services: list[str]


class ServiceStatus(BaseModel):
    service: str
    status: Literal["healthy", "degraded", "down", "unknown"]
    error_rate: float
    p95_ms: int
    version: str
    source: str = Field(description="Which system answered: metrics or probe")


class LogsQuery(BaseModel):
    service: str = Field(min_length=1, max_length=100)
    limit: int = Field(20, ge=1, le=200)


class LogLines(BaseModel):
    service: str
    lines: list[str]
    errors: int


class NewTicket(BaseModel):
    service: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=3, max_length=200)
    priority: Literal["low", "medium", "high", "urgent"] = "medium"
    body: str = Field("", max_length=10_000)


class Ticket(BaseModel):
    ticket_id: str
    service: str
    priority: str
    created: bool = Field(description="False when this idempotency key had already opened it")


class RestartRequest(BaseModel):
    service: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=3, max_length=500)


class RestartResult(BaseModel):
    service: str
    restart_id: int
    status: str


_NON_RETRYABLE = ["UnknownService"]


def ops_tools(world: OpsWorld) -> list[Tool[Any, Any]]:
    """Build the ops tools bound to ``world``."""

    def known(service: str) -> Any:
        row = world.service(service)
        if row is None:
            raise UnknownService(
                f"no service named {service!r}; known services: "
                f"{', '.join(world.service_names())}")
        return row

    @tool(side_effect="read", risk="low")
    async def list_services(args: NoArgs, ctx: ToolContext) -> ServiceList:
        """List the names of all services in the fleet."""
        return ServiceList(services=world.service_names())

    @tool(side_effect="read", risk="low", fallbacks=["probe_health"],
          retry=RetrySpec(initial_interval=0.1, max_interval=0.5, max_attempts=3,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=5))
    async def service_status(args: ServiceRef, ctx: ToolContext) -> ServiceStatus:
        """Current health of a service from the metrics backend: status, error rate, p95
        latency, deployed version."""
        row = known(args.service)
        if not row["metrics_ok"]:
            raise MetricsUnavailable(f"metrics backend has no recent data for {args.service}")
        return ServiceStatus(service=row["name"], status=row["status"],
                             error_rate=row["error_rate"], p95_ms=row["p95_ms"],
                             version=row["version"], source="metrics")

    @tool(side_effect="read", risk="low",
          retry=RetrySpec(initial_interval=0.1, max_interval=0.5, max_attempts=2,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=5))
    async def probe_health(args: ServiceRef, ctx: ToolContext) -> ServiceStatus:
        """Health of a service from a direct health-check probe (slower, coarser)."""
        row = known(args.service)
        if not row["probe_ok"]:
            raise ProbeFailed(f"health probe could not reach {args.service}")
        return ServiceStatus(service=row["name"], status=row["status"],
                             error_rate=row["error_rate"], p95_ms=row["p95_ms"],
                             version=row["version"], source="probe")

    @tool(side_effect="read", risk="low",
          retry=RetrySpec(initial_interval=0.1, max_interval=1.0, max_attempts=4,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=5))
    async def recent_logs(args: LogsQuery, ctx: ToolContext) -> LogLines:
        """Most recent log lines of a service, newest last, with a count of ERROR lines."""
        row = known(args.service)
        failures = world.knobs().flaky_logs_failures
        if failures and world.count_attempt(ctx.idempotency_key) <= failures:
            raise LogBackendTimeout("log backend timed out after 2000 ms")
        lines: list[str] = json.loads(row["logs"])[-args.limit:]
        return LogLines(service=row["name"], lines=lines,
                        errors=sum(1 for ln in lines if ln.startswith("ERROR")))

    @tool(side_effect="write", risk="medium", idempotent=True,
          retry=RetrySpec(initial_interval=0.2, max_interval=2, max_attempts=5,
                          non_retryable=[*_NON_RETRYABLE, "DeskUnauthorized"]),
          timeouts=Timeouts(start_to_close=10, heartbeat=2), secrets=["ticketing_token"])
    async def create_ticket(args: NewTicket, ctx: ToolContext) -> Ticket:
        """Open an incident ticket for a service. Idempotent per call."""
        known(args.service)
        # The desk's API token (STEAD_SECRET_TICKETING_TOKEN) comes from the worker's settings,
        # never from the model; an open (demo) desk also takes tickets without one.
        token = ctx.secret("ticketing_token", required=False)
        try:
            ticket_id, created = world.create_ticket(
                key=ctx.idempotency_key, service=args.service, title=args.title,
                priority=args.priority, body=args.body, token=token)
        except DeskUnauthorized as err:
            hint = "" if token else f"; set {secret_variable('ticketing_token')} on the worker"
            raise DeskUnauthorized(f"{err}{hint}") from None
        await ctx.wait(world.knobs().ticket_seconds)
        return Ticket(ticket_id=f"OPS-{1000 + ticket_id}", service=args.service,
                      priority=args.priority, created=created)

    async def restart_done(args: RestartRequest, ctx: ToolContext) -> RestartResult | None:
        row = world.restart_for_key(ctx.idempotency_key)
        if row is None:
            return None
        return RestartResult(service=row["service"], restart_id=row["id"], status="restarted")

    @tool(side_effect="irreversible", risk="high", idempotent=False, reconcile=restart_done,
          retry=RetrySpec(initial_interval=0.5, max_interval=5, max_attempts=3,
                          non_retryable=_NON_RETRYABLE),
          timeouts=Timeouts(start_to_close=60, heartbeat=2))
    async def restart_service(args: RestartRequest, ctx: ToolContext) -> RestartResult:
        """Restart every instance of a service (drops in-flight requests). Use only when the
        service is down or a restart is explicitly requested."""
        known(args.service)
        restart_id = world.restart(key=ctx.idempotency_key, service=args.service,
                                   reason=args.reason)
        await ctx.wait(world.knobs().restart_seconds)
        return RestartResult(service=args.service, restart_id=restart_id, status="restarted")

    return [list_services, service_status, probe_health, recent_logs, create_ticket,
            restart_service]
