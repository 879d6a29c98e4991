"""A fake fleet and ticket desk for the ops agent: the "outside world" its tools act on.

State lives in a SQLite file so it outlives worker processes: the reliability tests kill
workers mid-call and then count, from here, how many side effects really happened. Every
write honours the caller's idempotency key, as a real ticketing or deploy API would.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from stead.agents._sqlite import SqliteWorld

SEED_SERVICES: list[dict[str, Any]] = [
    {"name": "checkout-api", "status": "degraded", "error_rate": 0.12, "p95_ms": 840,
     "version": "2026.11.3", "metrics_ok": 0, "probe_ok": 1,
     "logs": ["ERROR connection pool exhausted (payments-db) after 5000 ms",
              "ERROR connection pool exhausted (payments-db) after 5000 ms",
              "WARN retrying POST /charge (attempt 2)",
              "ERROR upstream payments-db timeout",
              "INFO deploy 2026.11.3 finished"]},
    {"name": "payments-db", "status": "degraded", "error_rate": 0.0, "p95_ms": 2300,
     "version": "16.4", "metrics_ok": 1, "probe_ok": 1,
     "logs": ["WARN slow query: 2211 ms select * from charges where ...",
              "WARN connections 498/500", "INFO checkpoint complete"]},
    {"name": "search-worker", "status": "down", "error_rate": 1.0, "p95_ms": 0,
     "version": "1.8.0", "metrics_ok": 1, "probe_ok": 1,
     "logs": ["ERROR OOMKilled: container exceeded 2Gi", "INFO restarting (backoff 5m)",
              "ERROR OOMKilled: container exceeded 2Gi"]},
    {"name": "auth-service", "status": "healthy", "error_rate": 0.001, "p95_ms": 45,
     "version": "3.2.1", "metrics_ok": 1, "probe_ok": 1,
     "logs": ["INFO token issued", "INFO token issued"]},
    {"name": "legacy-batch", "status": "unknown", "error_rate": 0.0, "p95_ms": 0,
     "version": "0.9", "metrics_ok": 0, "probe_ok": 0,
     "logs": ["ERROR agent unreachable"]},
]

_SCHEMA = """
create table if not exists services (name text primary key, status text, error_rate real,
    p95_ms integer, version text, metrics_ok integer, probe_ok integer, logs text);
create table if not exists tickets (id integer primary key autoincrement,
    idempotency_key text unique, service text, title text, priority text, body text,
    created_at real);
create table if not exists restarts (id integer primary key autoincrement,
    idempotency_key text unique, service text, reason text, at real);
create table if not exists attempts (key text primary key, n integer);
"""


@dataclass(frozen=True)
class Knobs:
    """Fault and timing settings the tests and the demo turn."""

    restart_seconds: float = 0.05
    """How long a restart waits for the service to come back (after the restart itself)."""
    ticket_seconds: float = 0.0
    """How long ticket creation waits after writing the ticket."""
    flaky_logs_failures: int = 1
    """How many attempts of each recent_logs call fail before one succeeds."""
    desk_token: str = ""
    """API token the ticket desk requires ("": an open desk that takes anonymous tickets, as
    in the demo). Set it with :meth:`OpsWorld.require_desk_token`."""


class DeskUnauthorized(Exception):
    """The ticket desk refused the request: no API token, or the wrong one (HTTP 401)."""


class OpsWorld(SqliteWorld[Knobs]):
    """The fleet and the ticket desk, in one SQLite file."""

    schema = _SCHEMA
    seed_table = "services"
    tables = ("services", "tickets", "restarts", "attempts")
    knobs_type = Knobs

    def _seed(self, db: sqlite3.Connection) -> None:
        for s in SEED_SERVICES:
            db.execute("insert or replace into services values (?,?,?,?,?,?,?,?)",
                       (s["name"], s["status"], s["error_rate"], s["p95_ms"], s["version"],
                        s["metrics_ok"], s["probe_ok"], json.dumps(s["logs"])))

    # ------------------------------------------------------------------ faults

    def count_attempt(self, key: str) -> int:
        """Count calls per key (for deterministic flakiness that survives worker restarts)."""
        with self._db() as db:
            db.execute("insert into attempts values (?, 1) on conflict(key) do update"
                       " set n = n + 1", (key,))
            return int(db.execute("select n from attempts where key=?", (key,)).fetchone()[0])

    # ------------------------------------------------------------------ reads

    def service_names(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("select name from services order by name")]

    def service(self, name: str) -> sqlite3.Row | None:
        with self._db() as db:
            row: sqlite3.Row | None = db.execute("select * from services where name=?",
                                                 (name,)).fetchone()
            return row

    # ------------------------------------------------------------------ writes

    def require_desk_token(self, token: str) -> None:
        """From now on the ticket desk takes only requests that carry ``token``."""
        with self._db() as db:
            db.execute("insert or replace into knobs values ('desk_token', ?)", (token,))

    def create_ticket(self, *, key: str, service: str, title: str, priority: str,
                      body: str, token: str | None = None) -> tuple[int, bool]:
        """Open a ticket once per key; returns (ticket id, created now). A desk with a token
        (``require_desk_token``) refuses requests without it: :class:`DeskUnauthorized`."""
        required = self.knobs().desk_token
        if required and not hmac.compare_digest((token or "").encode(), required.encode()):
            raise DeskUnauthorized("ticket desk: 401 Unauthorized ("
                                   + ("wrong API token" if token else "no API token") + ")")
        with self._db() as db:
            db.execute("begin immediate")
            row = db.execute("select id from tickets where idempotency_key=?", (key,)).fetchone()
            if row is not None:
                db.execute("commit")
                return int(row[0]), False
            cur = db.execute("insert into tickets(idempotency_key, service, title, priority,"
                             " body, created_at) values (?,?,?,?,?,?)",
                             (key, service, title, priority, body, time.time()))
            db.execute("insert into effects(kind, idempotency_key, at) values ('ticket',?,?)",
                       (key, time.time()))
            db.execute("commit")
            return int(cur.lastrowid or 0), True

    def restart(self, *, key: str, service: str, reason: str) -> int:
        """Restart a service. Not idempotent by itself: every call is a real restart."""
        with self._db() as db:
            db.execute("begin immediate")
            cur = db.execute("insert into restarts(idempotency_key, service, reason, at)"
                             " values (?,?,?,?) on conflict(idempotency_key) do update"
                             " set at=excluded.at",
                             (key, service, reason, time.time()))
            db.execute("insert into effects(kind, idempotency_key, at) values ('restart',?,?)",
                       (key, time.time()))
            db.execute("update services set status='healthy', error_rate=0.0 where name=?",
                       (service,))
            db.execute("commit")
            return int(cur.lastrowid or 0)

    def restart_for_key(self, key: str) -> sqlite3.Row | None:
        with self._db() as db:
            row: sqlite3.Row | None = db.execute(
                "select * from restarts where idempotency_key=?", (key,)).fetchone()
            return row

    # ------------------------------------------------------------------ what happened

    def tickets(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute("select * from tickets order by id")]
