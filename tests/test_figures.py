"""Grounding of an answer's figures (``stead.guardrails.figures``): derived figures count as
grounded, invented ones do not. Pure; no server."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stead.guardrails.figures import check_figures, ungrounded_figures, unit_of_key

DATA = [{"service": "checkout-api", "error_rate": 0.1234, "p95_ms": 1500, "wait_s": 120,
         "amount_cents": 123450, "total": 1234.5, "size_bytes": 12582912, "users": 3412345,
         "version": "2.3.1", "order": "ORD-1042", "tickets": ["T-1", "T-2", "T-3"],
         "share_pct": 45}]


@pytest.mark.parametrize(("answer", "source", "factor"), [
    ("error rate 12.3 %", "error_rate=0.1234", Decimal(100)),       # a fraction as a percentage
    ("error rate 12%", "error_rate=0.1234", Decimal(100)),          # ... rounded to the unit
    ("error rate 12 percent", "error_rate=0.1234", Decimal(100)),
    ("0.1234 of requests", "error_rate=0.1234", Decimal(1)),
    ("p95 1.5 s", "p95_ms=1500", Decimal("0.001")),                  # ms as seconds
    ("p95 1,500 ms", "p95_ms=1500", Decimal(1)),
    ("waited 2 minutes", "wait_s=120", Decimal(1) / 60),
    ("refunded $1,234.50", "amount_cents=123450", Decimal("0.01")),  # cents as currency
    ("a total of 1,234.50", "total=1234.5", Decimal(1)),            # separators, precision
    ("a total of 1,234.5 EUR", "amount_cents=123450", Decimal("0.01")),  # known units first
    ("about 1,200 in total", "total=1234.5", Decimal(1)),           # "about": rounding
    ("12 MB", "size_bytes=12582912", Decimal(1) / 2**20),            # binary megabytes
    ("3.4 million users", "users=3412345", Decimal("0.000001")),    # scale words
    ("3.41M users", "users=3412345", Decimal("0.000001")),
    ("3 tickets", "len(tickets)=3", None),                          # a list's length
    ("45 % of them", "share_pct=45", Decimal(1)),                   # the key names the unit
    ("down 12.34 %", "error_rate=0.1234", Decimal(100)),            # signs are words
])
def test_derived_figures_are_grounded(answer: str, source: str, factor: Decimal | None) -> None:
    [c] = check_figures(answer, data=DATA, ignore_below=0)
    assert c.grounded and c.source == source, c
    if factor is not None:
        assert c.factor is not None and abs(c.factor - factor) < Decimal("1e-20"), c


@pytest.mark.parametrize("answer", [
    "error rate 17 %",          # not in any tool result
    "error rate 12.5 %",        # 12.34 shown with one decimal is 12.3, not 12.5
    "p95 2.5 s",
    "refunded $1,234.56",
    "a total of 1,200",         # rounding to hundreds needs "about"
    "4 tickets",
    "waited 3 minutes",
    "45 ms",                    # share_pct is a percentage: not a duration
])
def test_invented_figures_are_not(answer: str) -> None:
    [c] = check_figures(answer, data=DATA, ignore_below=0)
    assert not c.grounded, c


def test_identifiers_and_versions_must_appear_as_written() -> None:
    answer = "Refunded ORD-1042 and ORD-9999 on checkout-api, version 2.3.1 (not 2.3.2)."
    assert ungrounded_figures(answer, data=DATA) == ["ORD-9999", "2.3.2"]


def test_the_request_and_other_texts_ground_figures_too() -> None:
    answer = "Refunded 25.00 EUR (you asked for €25), within the 50 EUR limit."
    assert ungrounded_figures(answer, texts=["refund 25 EUR please"]) == ["50 EUR"]
    assert ungrounded_figures(answer, texts=["refund 25 EUR please",
                                             "refunds above 50 EUR need approval"]) == []


def test_what_is_not_checked() -> None:
    """Dates, clock times, list markers, ordinals and small bare integers are not figures."""
    answer = ("1. On 2024-06-01 at 14:05 the 2nd restart of 3 services ran.\n"
              "2. It took 3x longer.")
    assert check_figures(answer, data=[]) == []
    assert ungrounded_figures("restarted 12 services", data=[]) == ["12"]
    assert ungrounded_figures("restarted 12 services", data=[], ignore=["12"]) == []
    assert ungrounded_figures("restarted 3 services", data=[], ignore_below=0) == ["3"]


def test_numbers_inside_ids_and_text_of_tool_results_count() -> None:
    assert ungrounded_figures("ticket 1042 is open", data=[{"id": "OPS-1042"}]) == []
    assert ungrounded_figures("it took 250 ms", data=[{"log": "request done in 250ms"}]) == []


def test_keys_name_units_by_their_last_word() -> None:
    for key, unit in (("p95_ms", "ms"), ("timeoutSeconds", "s"), ("error_rate", "fraction"),
                      ("amount_cents", "cents"), ("disk-MB", "MB"), ("errorPct", "%")):
        got = unit_of_key(key)
        assert got is not None and got.name == unit, key
    assert unit_of_key("count") is None and unit_of_key("") is None


def test_each_figure_is_checked_once_in_the_order_written() -> None:
    checks = check_figures("12 % then 17 % then 12 % again", data=[{"rate": 0.12}])
    assert [(c.text, c.grounded) for c in checks] == [("12 %", True), ("17 %", False)]
