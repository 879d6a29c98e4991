"""Windows of finished runs, loaded from the ledger for metrics and drift.

    window = Window(since=parse_when("8d", now=now), until=parse_when("24h", now=now))
    runs = await load_runs(ledger.pool, window, tenant="acme")

A :class:`RunSample` is what the statistics need about one run, flattened from the ledger's
tables: its outcome and latency, the ordered tool calls it made, every tool attempt's outcome,
the guardrail decisions it triggered, the request text and its online-evaluation verdict (task
success). Runs that stead started itself
(eval suites, counterfactual replays: ``metadata ? 'stead.synthetic'``) are left out unless
asked for, so production figures are not polluted by tests of the agents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from stead.contracts.drift import DEFAULT_LIMIT, Window
from stead.errors import SteadError
from stead.evals import SYNTHETIC_KEY
from stead.evals.online import task_verdicts

__all__ = [
    "DEFAULT_LIMIT",
    "GUARDRAIL_KINDS",
    "BadWindow",
    "DecisionSample",
    "RunSample",
    "ToolAttempt",
    "Window",
    "load_runs",
    "parse_duration",
    "parse_when",
]

GUARDRAIL_KINDS = ("route", "gate", "call_rejected", "output_rejected")
"""Decision kinds (``stead_decisions.kind``) that carry a guardrail's verdict."""

# Attempt outcomes that count as the tool having answered (``replayed``: served from the
# ledger's recorded result; ``reconciled``: an unknown outcome settled by the tool's hook).
_OK_ATTEMPTS = ("ok", "replayed", "reconciled")


class BadWindow(SteadError, ValueError):
    """A window or time expression that cannot be used (unparseable, empty, reversed)."""


@dataclass(frozen=True, slots=True)
class ToolAttempt:
    """One tool activity attempt: which tool, and whether it failed."""

    tool: str
    failed: bool


@dataclass(frozen=True, slots=True)
class DecisionSample:
    """A guardrail decision: ``kind`` (route, gate, call_rejected, output_rejected) and what
    was decided (``allow``/``ask``/``deny`` for gates, the route action, the rejection kind)."""

    kind: str
    decision: str


@dataclass(slots=True)
class RunSample:
    """What drift and metrics need about one finished run."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    status: str
    input: str
    started_at: datetime
    latency_ms: float
    tools: list[str] = field(default_factory=list)
    """Tool names in call order (step, then claim time), fallbacks included."""
    attempts: list[ToolAttempt] = field(default_factory=list)
    """Finished tool attempts, retries included (in-flight ones are left out)."""
    decisions: list[DecisionSample] = field(default_factory=list)
    task_success: bool | None = None
    """Online evaluation's verdict: True when the run completed and no evaluator failed it;
    None when it was not evaluated (or an evaluator could not grade it)."""

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @property
    def sequence(self) -> str:
        """The tool-call sequence as one category, e.g. ``service_status → restart``."""
        return " → ".join(self.tools) if self.tools else "(no tools)"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``, ``"1h30m"`` to a positive
    timedelta."""
    value = text.strip().lower()
    if not value or _DURATION.sub("", value) != "":
        raise BadWindow(f"{text!r} is not a duration; use numbers with units s, m, h, d, w, "
                        f"e.g. 30m, 24h, 7d, 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(value))
    if seconds <= 0:
        raise BadWindow(f"duration {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_when(text: str, *, now: datetime) -> datetime:
    """A point in time: ``now``, a duration ago (``"24h"``), or an ISO 8601 date/time (UTC
    when it has no zone)."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if value and _DURATION.sub("", value.lower()) == "":
        return now - parse_duration(value)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadWindow(f"{text!r} is neither a duration (30m, 24h, 7d, 1h30m) nor an ISO 8601 "
                        f"time (2025-01-31 or 2025-01-31T12:00:00Z)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def load_runs(pool: asyncpg.Pool, window: Window, *, agent: str | None = None,
                    tenant: str | None = None, include_synthetic: bool = False,
                    limit: int = DEFAULT_LIMIT) -> list[RunSample]:
    """Finished runs that started in ``window`` (oldest first), with their tool calls,
    attempts and guardrail decisions.

    At most ``limit`` runs: a larger window is sampled evenly by a hash of the run's ids, so
    the same query always returns the same runs.
    """
    if limit < 1:
        raise BadWindow(f"limit must be at least 1, got {limit}")
    async with pool.acquire() as conn:
        runs = await conn.fetch(
            "select workflow_id, run_id, agent, tenant, status, input, started_at,"
            " extract(epoch from (finished_at - started_at)) * 1000.0 as latency_ms"
            " from stead_runs"
            " where started_at >= $1 and started_at < $2"
            "  and finished_at is not null and status <> 'running'"
            "  and ($3::text is null or agent = $3) and ($4::text is null or tenant = $4)"
            "  and ($5 or not (metadata ? $6))"
            " order by md5(workflow_id || '/' || run_id) limit $7",
            window.since, window.until, agent, tenant, include_synthetic, SYNTHETIC_KEY,
            limit)
        samples = {(r["workflow_id"], r["run_id"]): RunSample(
            workflow_id=r["workflow_id"], run_id=r["run_id"], agent=r["agent"],
            tenant=r["tenant"], status=r["status"], input=r["input"],
            started_at=r["started_at"], latency_ms=max(0.0, float(r["latency_ms"])))
            for r in runs}
        if not samples:
            return []
        wids = [k[0] for k in samples]
        rids = [k[1] for k in samples]
        keys = "join unnest($1::text[], $2::text[]) as k(w, r) on x.workflow_id = k.w" \
               " and x.run_id = k.r"
        for r in await conn.fetch(
                f"select x.workflow_id, x.run_id, x.tool from stead_tool_calls x {keys}"
                " order by x.step, x.claimed_at, x.idempotency_key", wids, rids):
            samples[(r["workflow_id"], r["run_id"])].tools.append(r["tool"])
        for r in await conn.fetch(
                f"select x.workflow_id, x.run_id, x.tool, x.status from stead_tool_attempts x"
                f" {keys} where x.status = any($3::text[]) or x.status = 'error'"
                " order by x.step, x.started_at, x.attempt", wids, rids, list(_OK_ATTEMPTS)):
            samples[(r["workflow_id"], r["run_id"])].attempts.append(
                ToolAttempt(r["tool"], r["status"] == "error"))
        for r in await conn.fetch(
                f"select x.workflow_id, x.run_id, x.kind, x.decision from stead_decisions x"
                f" {keys} where x.kind = any($3::text[]) order by x.seq",
                wids, rids, list(GUARDRAIL_KINDS)):
            samples[(r["workflow_id"], r["run_id"])].decisions.append(
                DecisionSample(r["kind"], r["decision"]))
        for k, verdict in (await task_verdicts(conn, list(samples))).items():
            if verdict != "unknown":
                samples[k].task_success = verdict == "succeeded"
    return sorted(samples.values(), key=lambda s: s.started_at)

