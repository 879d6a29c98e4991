"""What the reference agents' fake outside worlds share: one SQLite file that outlives
worker processes (so tests can count real side effects after killing a worker), knobs the
tests and the demo turn, and a log of every side effect that really happened."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

K = TypeVar("K")

COMMON_SCHEMA = """
create table if not exists effects (id integer primary key autoincrement, kind text,
    idempotency_key text, at real);
create table if not exists knobs (name text primary key, value text);
"""


class SqliteWorld(Generic[K]):
    """Creates the schema on first use and seeds ``seed_table`` when it is empty.

    Subclasses set ``schema`` (their own tables), ``seed_table``, ``tables`` (what ``reset``
    empties) and ``knobs_type`` (a frozen dataclass whose defaults are the knobs' values).
    """

    schema: str = ""
    seed_table: str = ""
    tables: tuple[str, ...] = ()
    knobs_type: type[K]

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(COMMON_SCHEMA + self.schema)
            if db.execute(f"select count(*) from {self.seed_table}").fetchone()[0] == 0:
                self._seed(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("pragma journal_mode=wal")
            yield db
        finally:
            db.close()

    def _seed(self, db: sqlite3.Connection) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the seeded state: no effects, default knobs."""
        with self._db() as db:
            for t in (*self.tables, "effects", "knobs"):
                db.execute(f"delete from {t}")
            self._seed(db)

    def knobs(self) -> K:
        with self._db() as db:
            rows = {r["name"]: r["value"] for r in db.execute("select * from knobs")}
        base = self.knobs_type()
        values = {f.name: type(getattr(base, f.name))(rows[f.name])
                  for f in dataclasses.fields(base)  # type: ignore[arg-type]
                  if f.name in rows}
        return dataclasses.replace(base, **values)  # type: ignore[type-var]

    def set_knobs(self, **values: float | int) -> None:
        allowed = {f.name for f in dataclasses.fields(self.knobs_type)}  # type: ignore[arg-type]
        with self._db() as db:
            for k, v in values.items():
                if k not in allowed:
                    raise ValueError(f"unknown knob {k!r}; known: {sorted(allowed)}")
                db.execute("insert or replace into knobs values (?, ?)", (k, str(v)))

    def effects(self, kind: str | None = None, key_prefix: str = "") -> int:
        """How many side effects really happened (not deduplicated)."""
        with self._db() as db:
            q = "select count(*) from effects where idempotency_key like ?"
            args: list[Any] = [key_prefix + "%"]
            if kind:
                q += " and kind=?"
                args.append(kind)
            return int(db.execute(q, args).fetchone()[0])
