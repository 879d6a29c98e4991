"""A fake shop and payment provider for the refund agent: the "outside world" its tools act on.

State lives in a SQLite file so it outlives worker processes, like the ops world. Money is
kept in integer cents. The provider deduplicates refunds on the caller's idempotency key, as
real payment APIs do (Stripe's ``Idempotency-Key``), so a retried refund pays out once; the
``effects`` table counts the refunds that really paid out, for tests to check.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stead.agents._sqlite import SqliteWorld

CENT = Decimal("0.01")

SEED_ORDERS: list[dict[str, Any]] = [
    {"id": "ORD-1001", "customer": "Mila Novak", "email": "mila.novak@example.com",
     "item": "stoneware mug set", "paid": 8990, "status": "delivered", "refunded": 0},
    {"id": "ORD-1002", "customer": "Globex GmbH", "email": "purchasing@globex.example.com",
     "item": "48 standing desks (B2B)", "paid": 5240000, "status": "delivered", "refunded": 0},
    {"id": "ORD-1003", "customer": "Jonas Weber", "email": "jonas.weber@example.com",
     "item": "phone case", "paid": 2499, "status": "delivered", "refunded": 0},
    {"id": "ORD-1004", "customer": "Sara Lind", "email": "sara.lind@example.com",
     "item": "e-bike", "paid": 480000, "status": "delivered", "refunded": 0},
    {"id": "ORD-1005", "customer": "Tom Berger", "email": "tom.berger@example.com",
     "item": "noise-cancelling headphones", "paid": 32000, "status": "delivered",
     "refunded": 0},
    {"id": "ORD-1006", "customer": "Ana Silva", "email": "ana.silva@example.com",
     "item": "running shoes", "paid": 6000, "status": "delivered", "refunded": 2000},
    {"id": "ORD-1007", "customer": "Lea Fischer", "email": "lea.fischer@example.com",
     "item": "winter jacket", "paid": 14900, "status": "returned", "refunded": 14900},
    {"id": "ORD-1008", "customer": "Piotr Zielinski", "email": "piotr.z@example.com",
     "item": "desk lamp", "paid": 3550, "status": "shipped", "refunded": 0},
]

_SCHEMA = """
create table if not exists orders (id text primary key, customer text, email text, item text,
    paid_cents integer, currency text, status text, refunded_cents integer);
create table if not exists refunds (id integer primary key autoincrement,
    idempotency_key text unique, order_id text, amount_cents integer, reason text,
    created_at real);
create table if not exists notifications (id integer primary key autoincrement,
    idempotency_key text unique, order_id text, email text, message text, sent_at real);
"""


class UnknownOrder(Exception):
    """No order has this id: retrying cannot help."""


class RefundExceedsPayment(Exception):
    """The refund is larger than what is left to refund on the order: retrying cannot help."""


def money(cents: int) -> Decimal:
    """Cents as a two-decimal amount: 8990 -> Decimal("89.90")."""
    return (Decimal(cents) / 100).quantize(CENT)


def to_cents(amount: float | Decimal) -> int:
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1)))


@dataclass(frozen=True)
class Order:
    order_id: str
    customer: str
    email: str
    item: str
    paid_cents: int
    currency: str
    status: str
    refunded_cents: int

    @property
    def refundable_cents(self) -> int:
        return max(self.paid_cents - self.refunded_cents, 0)


@dataclass(frozen=True)
class Refund:
    refund_id: int
    order_id: str
    amount_cents: int
    created: bool
    """False when this idempotency key had already paid the refund out."""


@dataclass(frozen=True)
class Knobs:
    """Timing settings the tests and the demo turn."""

    refund_seconds: float = 0.0
    """How long the provider takes after paying a refund out (to kill a worker mid-call)."""


class RefundWorld(SqliteWorld[Knobs]):
    """The shop's orders and the payment provider's refunds, in one SQLite file."""

    schema = _SCHEMA
    seed_table = "orders"
    tables = ("orders", "refunds", "notifications")
    knobs_type = Knobs

    def _seed(self, db: sqlite3.Connection) -> None:
        for o in SEED_ORDERS:
            db.execute("insert or replace into orders values (?,?,?,?,?,?,?,?)",
                       (o["id"], o["customer"], o["email"], o["item"], o["paid"], "EUR",
                        o["status"], o["refunded"]))

    # ------------------------------------------------------------------ reads

    def order_ids(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("select id from orders order by id")]

    def order(self, order_id: str) -> Order:
        with self._db() as db:
            row = db.execute("select * from orders where id=?", (order_id,)).fetchone()
        if row is None:
            raise UnknownOrder(f"no order {order_id!r}")
        return _order(row)

    # ------------------------------------------------------------------ writes

    def refund(self, *, key: str, order_id: str, amount_cents: int, reason: str) -> Refund:
        """Pay a refund out once per key; a repeated key returns the first refund."""
        with self._db() as db:
            db.execute("begin immediate")
            try:
                done = db.execute("select * from refunds where idempotency_key=?",
                                  (key,)).fetchone()
                if done is not None:
                    db.execute("commit")
                    return Refund(refund_id=done["id"], order_id=done["order_id"],
                                  amount_cents=done["amount_cents"], created=False)
                row = db.execute("select * from orders where id=?", (order_id,)).fetchone()
                if row is None:
                    raise UnknownOrder(f"no order {order_id!r}")
                order = _order(row)
                if amount_cents > order.refundable_cents:
                    raise RefundExceedsPayment(
                        f"a refund of {money(amount_cents)} {order.currency} on {order_id} "
                        f"exceeds the {money(order.refundable_cents)} {order.currency} left "
                        f"to refund (paid {money(order.paid_cents)}, already refunded "
                        f"{money(order.refunded_cents)})")
                cur = db.execute("insert into refunds(idempotency_key, order_id, amount_cents,"
                                 " reason, created_at) values (?,?,?,?,?)",
                                 (key, order_id, amount_cents, reason, time.time()))
                db.execute("update orders set refunded_cents = refunded_cents + ? where id=?",
                           (amount_cents, order_id))
                db.execute("insert into effects(kind, idempotency_key, at)"
                           " values ('refund',?,?)", (key, time.time()))
                db.execute("commit")
            except BaseException:
                if db.in_transaction:
                    db.execute("rollback")
                raise
            return Refund(refund_id=int(cur.lastrowid or 0), order_id=order_id,
                          amount_cents=amount_cents, created=True)

    def notify(self, *, key: str, order_id: str, message: str) -> tuple[int, bool]:
        """Email the order's customer once per key; returns (notification id, sent now)."""
        with self._db() as db:
            db.execute("begin immediate")
            done = db.execute("select id from notifications where idempotency_key=?",
                              (key,)).fetchone()
            if done is not None:
                db.execute("commit")
                return int(done[0]), False
            row = db.execute("select email from orders where id=?", (order_id,)).fetchone()
            if row is None:
                db.execute("rollback")
                raise UnknownOrder(f"no order {order_id!r}")
            cur = db.execute("insert into notifications(idempotency_key, order_id, email,"
                             " message, sent_at) values (?,?,?,?,?)",
                             (key, order_id, row["email"], message, time.time()))
            db.execute("insert into effects(kind, idempotency_key, at)"
                       " values ('notification',?,?)", (key, time.time()))
            db.execute("commit")
            return int(cur.lastrowid or 0), True

    # ------------------------------------------------------------------ what happened

    def refunds(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute("select * from refunds order by id")]

    def notifications(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute("select * from notifications order by id")]


def _order(row: sqlite3.Row) -> Order:
    return Order(order_id=row["id"], customer=row["customer"], email=row["email"],
                 item=row["item"], paid_cents=row["paid_cents"], currency=row["currency"],
                 status=row["status"], refunded_cents=row["refunded_cents"])
