"""The chaos suite's outside world: a shop whose every side effect is counted per key.

One SQLite file shared by the harness and every worker process (it outlives SIGKILLed
workers, like :class:`stead.agents._sqlite.SqliteWorld`, which it extends). Three kinds of
provider stand behind the chaos tools:

- a stock service that honours idempotency keys (a second reservation with the same key is
  answered from the first: no new effect) — what ``idempotent=True`` tools rely on;
- a card processor that charges on every call but can be asked "did key K charge?" — a
  non-idempotent tool with a reconcile hook;
- a carrier that ships on every call and cannot be asked anything — a non-idempotent tool
  without one.

Besides effects it logs every *entry* into a tool body (``invocations``: key, attempt, worker
pid, how many effects the key already had), so the invariant checker can tell a legitimate
retry from a silent re-run, and it holds the *failpoints*: (workflow, point) pairs armed by
the harness, at which the worker process that reaches them SIGKILLs itself once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from stead.agents._sqlite import SqliteWorld

_SCHEMA = """
create table if not exists products (sku text primary key, stock integer);
create table if not exists reservations (id integer primary key autoincrement,
    idempotency_key text unique, sku text, qty integer, at real);
create table if not exists charges (id integer primary key autoincrement,
    idempotency_key text, order_id text, amount real, at real);
create table if not exists shipments (id integer primary key autoincrement,
    idempotency_key text, order_id text, at real);
create table if not exists invocations (id integer primary key autoincrement, tool text,
    idempotency_key text, attempt integer, pid integer, effects_before integer, at real);
create table if not exists failpoints (workflow_id text, point text, armed_at real,
    fired_at real, pid integer, primary key (workflow_id, point));
create table if not exists attempts (key text primary key, n integer);
create table if not exists workers (pid integer primary key, ready_at real);
create index if not exists effects_key on effects(idempotency_key);
create index if not exists charges_key on charges(idempotency_key);
"""

SKUS = ("sku-1", "sku-2", "sku-3", "sku-4")


@dataclass(frozen=True)
class Knobs:
    """Nothing to turn yet: faults are armed per run (failpoints) or chosen by the request."""

    hold_seconds: float = 0.0
    """How long the effectful tools hold after their effect (widens the kill window)."""


@dataclass(frozen=True)
class Effect:
    """One side effect that really happened in the world."""

    kind: str
    key: str
    at: float


@dataclass(frozen=True)
class Invocation:
    """One entry into a tool body: the world saw the tool start running."""

    tool: str
    key: str
    attempt: int
    pid: int
    effects_before: int
    """Effects the key already had when the body started (>0 for a non-idempotent tool is
    a silent re-run of something that took effect)."""
    at: float


@dataclass(frozen=True)
class Failpoint:
    workflow_id: str
    point: str
    armed_at: float
    fired_at: float | None
    pid: int | None


class ChaosWorld(SqliteWorld[Knobs]):
    """The shop's providers and the chaos bookkeeping, in one SQLite file."""

    schema = _SCHEMA
    seed_table = "products"
    tables = ("products", "reservations", "charges", "shipments", "invocations", "failpoints",
              "attempts", "workers")
    knobs_type = Knobs

    def __init__(self, path: Path, *, allow_kill: bool = False) -> None:
        """``allow_kill``: failpoints SIGKILL this process. Only worker processes started by
        the harness set it; anywhere else an armed failpoint is recorded but not acted on."""
        super().__init__(path)
        self.allow_kill = allow_kill

    def _seed(self, db: sqlite3.Connection) -> None:
        for sku in SKUS:
            db.execute("insert or replace into products values (?, ?)", (sku, 1_000_000))

    # ------------------------------------------------------------------ tool bookkeeping

    def invoked(self, *, tool: str, key: str, attempt: int) -> int:
        """Log an entry into a tool body; return the attempt number per key as the world
        counted it (1 for the first entry), for faults that hit only early attempts."""
        with self._db() as db:
            db.execute("begin immediate")
            before = int(db.execute("select count(*) from effects where idempotency_key=?",
                                    (key,)).fetchone()[0])
            db.execute("insert into invocations(tool, idempotency_key, attempt, pid,"
                       " effects_before, at) values (?,?,?,?,?,?)",
                       (tool, key, attempt, os.getpid(), before, time.time()))
            n = int(db.execute("select count(*) from invocations where idempotency_key=?",
                               (key,)).fetchone()[0])
            db.execute("commit")
            return n

    # ------------------------------------------------------------------ providers

    def reserve(self, *, key: str, sku: str, qty: int) -> tuple[int, bool]:
        """Reserve stock once per key (the provider deduplicates); (reservation, created)."""
        with self._db() as db:
            db.execute("begin immediate")
            row = db.execute("select id from reservations where idempotency_key=?",
                             (key,)).fetchone()
            if row is not None:
                db.execute("commit")
                return int(row[0]), False
            cur = db.execute("insert into reservations(idempotency_key, sku, qty, at)"
                             " values (?,?,?,?)", (key, sku, qty, time.time()))
            db.execute("update products set stock = stock - ? where sku=?", (qty, sku))
            self._effect(db, "reserve", key)
            db.execute("commit")
            return int(cur.lastrowid or 0), True

    def charge(self, *, key: str, order_id: str, amount: float) -> int:
        """Charge a card. Not idempotent: every call is a new charge."""
        with self._db() as db:
            db.execute("begin immediate")
            cur = db.execute("insert into charges(idempotency_key, order_id, amount, at)"
                             " values (?,?,?,?)", (key, order_id, amount, time.time()))
            self._effect(db, "charge", key)
            db.execute("commit")
            return int(cur.lastrowid or 0)

    def charge_for_key(self, key: str) -> int | None:
        """The processor's lookup by idempotency key: the charge id, or None."""
        with self._db() as db:
            row = db.execute("select id from charges where idempotency_key=? order by id",
                             (key,)).fetchone()
            return None if row is None else int(row[0])

    def ship(self, *, key: str, order_id: str) -> int:
        """Hand a parcel to the carrier. Not idempotent, and nobody can tell afterwards."""
        with self._db() as db:
            db.execute("begin immediate")
            cur = db.execute("insert into shipments(idempotency_key, order_id, at)"
                             " values (?,?,?)", (key, order_id, time.time()))
            self._effect(db, "ship", key)
            db.execute("commit")
            return int(cur.lastrowid or 0)

    @staticmethod
    def _effect(db: sqlite3.Connection, kind: str, key: str) -> None:
        db.execute("insert into effects(kind, idempotency_key, at) values (?,?,?)",
                   (kind, key, time.time()))

    def count_attempt(self, key: str) -> int:
        """Count calls per key, surviving worker restarts (faults on early attempts only)."""
        with self._db() as db:
            db.execute("insert into attempts values (?, 1) on conflict(key) do update"
                       " set n = n + 1", (key,))
            return int(db.execute("select n from attempts where key=?", (key,)).fetchone()[0])

    # ------------------------------------------------------------------ failpoints

    def arm(self, workflow_id: str, *points: str) -> None:
        with self._db() as db:
            db.executemany("insert or ignore into failpoints(workflow_id, point, armed_at)"
                           " values (?,?,?)", [(workflow_id, p, time.time()) for p in points])

    def failpoint(self, workflow_id: str, point: str) -> None:
        """If ``point`` is armed for this run and has not fired: record it and SIGKILL this
        worker process (when allowed). The record is committed first, so every kill counts."""
        with self._db() as db:
            cur = db.execute("update failpoints set fired_at=?, pid=? where workflow_id=? and"
                             " point=? and fired_at is null",
                             (time.time(), os.getpid(), workflow_id, point))
            fired = cur.rowcount == 1
        if fired and self.allow_kill:
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ workers

    def worker_ready(self, pid: int, at: float) -> None:
        """A worker process reports that it polls (the harness times replacements by it)."""
        with self._db() as db:
            db.execute("insert or replace into workers values (?, ?)", (pid, at))

    def ready_workers(self) -> dict[int, float]:
        """pid -> when that worker process started polling."""
        with self._db() as db:
            return {int(r[0]): float(r[1]) for r in db.execute("select * from workers")}

    # ------------------------------------------------------------------ what happened

    def all_effects(self) -> list[Effect]:
        with self._db() as db:
            return [Effect(kind=r["kind"], key=r["idempotency_key"], at=r["at"])
                    for r in db.execute("select * from effects order by id")]

    def invocations(self) -> list[Invocation]:
        with self._db() as db:
            return [Invocation(tool=r["tool"], key=r["idempotency_key"], attempt=r["attempt"],
                               pid=r["pid"], effects_before=r["effects_before"], at=r["at"])
                    for r in db.execute("select * from invocations order by id")]

    def failpoints(self) -> list[Failpoint]:
        with self._db() as db:
            return [Failpoint(**{f.name: r[f.name] for f in dataclasses.fields(Failpoint)})
                    for r in db.execute("select * from failpoints order by armed_at")]

    def plant_effect(self, kind: str, key: str) -> None:
        """Record an effect that no tool made (the checker's own test: a planted duplicate)."""
        with self._db() as db:
            self._effect(db, kind, key)
