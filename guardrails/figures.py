"""Grounding of an answer's figures in what a run saw, as people write figures. Pure.

    checks = check_figures("Error rate 12.3 %, p95 1.5 s, refund $1,234.50",
                           texts=[request], data=[{"error_rate": 0.1234, "p95_ms": 1500,
                                                   "amount_cents": 123450}])
    [c for c in checks if c.source is None]    # [] : every figure is grounded

A figure of the answer is grounded when a number the run saw (in a tool result, the request,
the instructions) gives it once it is read the way people restate numbers:

- **formatting**: ``1234.5`` is ``1,234.50``; ``$``/``€`` and currency codes are only labels;
  signs are ignored (``-0.12`` is "down 12 %");
- **rounding** to the precision shown: ``0.1234`` is ``12.3 %`` or ``12 %``, never ``12.5 %``;
  after "about", "around", "roughly", "~" an integer's trailing zeros are rounding too
  (``1,234`` is "about 1,200");
- **units**: a percentage of a fraction (``0.12`` is ``12 %``), scale words (``1.2k``,
  ``3.4 million``), time (``1500`` ms is ``1.5 s``, ``120`` s is ``2 minutes``), data sizes
  (decimal and binary), cents and currency units. A tool result's key names the unit when it
  ends in one (``p95_ms``, ``timeout_seconds``, ``error_pct``, ``amount_cents``,
  ``size_bytes``, ``*_rate``: a fraction); a number without a known unit may be in any unit of
  the answer's dimension, and a figure without a unit may be a hundredth or a thousandth of the
  number, or that many times it;
- **counts**: the length of a list in a tool result (``3 tickets`` for a list of three).

Identifiers with digits (``ORD-1042``, ``INC12345``) and version strings (``1.4.2``) must
appear as written. Dates and clock times, numbered-list markers, and bare integers below
``ignore_below`` (default 10: "2 services", "step 3") are not checked. Sums, differences and
ratios of two numbers are not derived: such a figure is reported as ungrounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = ["FigureCheck", "Unit", "check_figures", "ungrounded_figures", "unit_of_key"]

Dimension = str
"""``ratio``, ``count``, ``time``, ``data`` or ``money``."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit of one dimension: ``factor`` base units per one of it (``ms``: 0.001 s)."""

    name: str
    dimension: Dimension
    factor: Decimal


def _u(name: str, dimension: Dimension, factor: str | int) -> Unit:
    return Unit(name, dimension, Decimal(factor))


_PERCENT = _u("%", "ratio", "0.01")
_FRACTION = _u("fraction", "ratio", 1)
_ITEMS = _u("items", "count", 1)
_DIGITS = _u("digits", "id", 1)
"""A digit run inside a word or an id (``OPS-1042``): it grounds only that number, bare."""
_THOUSAND, _MILLION, _BILLION = (_u("k", "count", 10**3), _u("million", "count", 10**6),
                                 _u("billion", "count", 10**9))
_US, _MS, _S, _MIN, _H, _DAY = (_u("µs", "time", "0.000001"), _u("ms", "time", "0.001"),
                                _u("s", "time", 1), _u("min", "time", 60), _u("h", "time", 3600),
                                _u("day", "time", 86400))
_DATA = {n: _u(n, "data", f) for n, f in (
    ("B", 1), ("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12),
    ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40))}
_CURRENCY, _CENTS = _u("currency", "money", 1), _u("cents", "money", "0.01")

_DIMENSION_FACTORS: dict[Dimension, tuple[Decimal, ...]] = {
    "ratio": (Decimal(1), Decimal("0.01")),
    "count": (Decimal(1), Decimal(10**3), Decimal(10**6), Decimal(10**9)),
    "time": tuple(u.factor for u in (_US, _MS, _S, _MIN, _H, _DAY)),
    "data": tuple(u.factor for u in _DATA.values()),
    "money": (Decimal(1), Decimal("0.01")),
}
"""Every unit of a dimension, for a number whose unit is not known."""

_PLAIN_FACTORS = tuple(Decimal(f) for f in ("1", "100", "0.01", "1000", "0.001"))
"""How a figure without a unit may restate a number without a unit."""

# Units written after a number, exactly as written (case matters: M is a million, m is not
# read at all; B is bytes).
_EXACT: dict[str, Unit] = {
    "%": _PERCENT, "pp": _PERCENT, "k": _THOUSAND, "K": _THOUSAND, "M": _MILLION,
    "mn": _MILLION, "bn": _BILLION, "µs": _US, "ms": _MS, "s": _S, "h": _H,
    "USD": _CURRENCY, "EUR": _CURRENCY, "GBP": _CURRENCY, "CHF": _CURRENCY, "JPY": _CURRENCY,
    "€": _CURRENCY, "$": _CURRENCY, "£": _CURRENCY, "¥": _CURRENCY, **_DATA, "kB": _DATA["KB"],
}
# Unit words in any case.
_WORDS: dict[str, Unit] = {
    **{w: _PERCENT for w in ("percent", "per cent", "pct", "percentage")},
    "thousand": _THOUSAND, **{w: _MILLION for w in ("million", "millions")},
    **{w: _BILLION for w in ("billion", "billions")},
    **{w: _US for w in ("microsecond", "microseconds")},
    **{w: _MS for w in ("msec", "msecs", "millisecond", "milliseconds")},
    **{w: _S for w in ("sec", "secs", "second", "seconds")},
    **{w: _MIN for w in ("min", "mins", "minute", "minutes")},
    **{w: _H for w in ("hr", "hrs", "hour", "hours")},
    **{w: _DAY for w in ("day", "days")},
    **{w: _DATA["B"] for w in ("byte", "bytes")},
    **{w: _CURRENCY for w in ("dollar", "dollars", "euro", "euros", "pound", "pounds")},
    **{w: _CENTS for w in ("cent", "cents", "ct")},
}
# The last word of a JSON key, when it names the value's unit.
_KEY_WORDS: dict[str, Unit] = {
    **{w: _US for w in ("us", "micros", "microseconds")},
    **{w: _MS for w in ("ms", "msec", "millis", "milliseconds")},
    **{w: _S for w in ("s", "sec", "secs", "seconds")},
    **{w: _MIN for w in ("min", "mins", "minutes")},
    **{w: _H for w in ("h", "hours", "hrs")},
    "days": _DAY,
    **{w: _PERCENT for w in ("pct", "percent", "percentage")},
    **{w: _FRACTION for w in ("rate", "ratio", "fraction", "share")},
    "bytes": _DATA["B"], **{n.lower(): u for n, u in _DATA.items() if n != "B"},
    "cents": _CENTS,
    **{w: _CURRENCY for w in ("usd", "eur", "gbp", "chf", "jpy", "dollars", "euros")},
}

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?|\.\d+"
_FIGURE = re.compile(
    rf"(?<![\w.])(?P<cur>[$€£¥]\s?)?(?P<num>{_NUMBER})"
    r"(?P<gap>\s?)(?P<unit>%|per\scent|[A-Za-zµ€$£¥]+)?")
# Identifier-like: letters then segments joined by "-" or "_" with a digit somewhere
# (ORD-1234, web-3), or capitals glued to digits (INC12345).
_IDENTIFIER = re.compile(
    r"(?<![\w-])(?:[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)+|[A-Z]{2,}\d{2,}[A-Z0-9]*)(?![\w-])")
_VERSION = re.compile(r"(?<![\w.])v?\d+(?:\.\d+){2,}(?![\w.]*\d)")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
                   r"(?:Z|[+-]\d{2}:?\d{2})?)?\b|\b\d{1,2}:\d{2}(?::\d{2})?\b")
_LIST_MARKER = re.compile(r"(?m)^[ \t]*(?:[-*][ \t]+)?\d{1,3}[.)](?=[ \t])")
_APPROXIMATE = re.compile(r"(?:about|around|roughly|approximately|approx\.?|nearly|almost|"
                          r"some|~|≈)\s*[$€£¥]?\s*$", re.IGNORECASE)
_PLAIN_DIGITS = re.compile(r"\d+(?:\.\d+)?")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True, slots=True)
class _Source:
    value: Decimal
    unit: Unit | None
    text: str
    """How the run saw it, for explanations: ``p95_ms=1500``, ``"12 %"``, ``len(tickets)=3``."""


@dataclass(frozen=True, slots=True)
class FigureCheck:
    """One figure of the answer and what grounds it (``source`` None: nothing does)."""

    text: str
    """The figure as the answer writes it: ``12.3 %``, ``$1,234.50``, ``ORD-1042``."""
    kind: str
    """``number`` or ``identifier`` (versions count as identifiers)."""
    source: str | None = None
    """What grounds it, e.g. ``error_rate=0.1234``; None when nothing does."""
    factor: Decimal | None = None
    """The number was multiplied by this (100: a fraction shown as a percentage)."""

    @property
    def grounded(self) -> bool:
        return self.source is not None


def unit_of_key(key: str) -> Unit | None:
    """The unit a JSON key names by its last word (``p95_ms``: ms, ``errorRate``: fraction)."""
    words = [w for w in re.split(r"[_\-\s.]+", _CAMEL.sub("_", key).lower()) if w]
    return _KEY_WORDS.get(words[-1]) if words else None


def _unit(word: str | None) -> Unit | None:
    if not word:
        return None
    word = word.strip()
    return _EXACT.get(word) or _WORDS.get(word.lower())


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    return abs(value) if value.is_finite() else None


def _masked(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _token_in(token: str, texts: Sequence[str]) -> bool:
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", re.IGNORECASE)
    return any(pattern.search(t) for t in texts)


@dataclass(frozen=True, slots=True)
class _Figure:
    text: str
    start: int
    value: Decimal
    decimals: int
    unit: Unit | None
    approximate: bool
    money: bool


def _figures(text: str, *, glued_words: bool = False) -> Iterator[_Figure]:
    """Numbers with the unit written after them. A number glued to a word that is not a unit
    (``2nd``, ``3x``) is not a figure, unless ``glued_words`` (sources: ``12ms`` or ``v2``
    still hold the number)."""
    for m in _FIGURE.finditer(text):
        num = m.group("num")
        value = _decimal(num)
        if value is None:
            continue
        word = m.group("unit")
        unit = _unit(word)
        if word and unit is None and not m.group("gap") and not glued_words:
            continue
        cur = m.group("cur")
        if cur and unit is None:
            unit = _CURRENCY
        decimals = len(num.partition(".")[2])
        shown = (cur or "") + num + (m.group("gap") + word if unit is not None and word else "")
        approximate = bool(_APPROXIMATE.search(text[max(0, m.start() - 16):m.start()]))
        yield _Figure(shown.strip(), m.start(), value, decimals, unit, approximate,
                      money=bool(cur) or (unit is not None and unit.dimension == "money"))


def _sources(texts: Sequence[str], data: Sequence[object]) -> list[_Source]:
    out: list[_Source] = []

    def from_text(text: str) -> None:
        # Numbers of ids, versions and dates are only digit runs: "T-3" holds a 3, but no
        # figure of 3 seconds or 3 %.
        prose = _masked(text, [m.span() for p in (_IDENTIFIER, _VERSION, _DATE)
                               for m in p.finditer(text)])
        for f in _figures(prose, glued_words=True):
            out.append(_Source(f.value, f.unit, repr(f.text)))
        for m in _PLAIN_DIGITS.finditer(text):  # digit runs inside ids and dates count too
            value = _decimal(m.group())
            if value is not None:
                out.append(_Source(value, _DIGITS, repr(m.group())))

    def walk(value: object, key: str) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            d = _decimal(repr(value)) if isinstance(value, float) else Decimal(abs(value))
            if d is not None:
                out.append(_Source(d, unit_of_key(key) if key else None,
                                   f"{key or 'value'}={value!r}"))
        elif isinstance(value, str):
            from_text(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            out.append(_Source(Decimal(len(value)), _ITEMS,
                               f"len({key or 'list'})={len(value)}"))
            for v in value:
                walk(v, key)

    for text in texts:
        from_text(text)
    for value in data:
        walk(value, "")
    return out


def _factors(source: Unit | None, answer: Unit | None) -> list[tuple[Decimal, int]]:
    """What ``source``'s number may be multiplied by to read in the answer's unit, each with
    how direct a reading it is (0: both units known, 1: as it is, 2: a guessed unit)."""
    if source is _DIGITS:
        return [] if answer is not None else [(Decimal(1), 1)]
    if source is not None and answer is not None:
        if source.dimension != answer.dimension:
            return []  # the key says what the number is, and it is something else
        if answer.dimension == "data":  # people mix decimal and binary sizes
            twin = {u.factor for u in _DATA.values() if u.name[0] == answer.name[0]}
            return [(source.factor / f, 0) for f in twin]
        return [(source.factor / answer.factor, 0)]
    if answer is not None:
        options = {f / answer.factor for f in _DIMENSION_FACTORS[answer.dimension]}
    elif source is not None:
        options = {source.factor / f for f in _DIMENSION_FACTORS[source.dimension]}
    else:
        options = set(_PLAIN_FACTORS)
    return [(f, 1 if f == 1 else 2) for f in options]


def _tolerance(f: _Figure) -> Decimal:
    """Half a unit of the last digit shown (after "about": of the last non-zero digit)."""
    if f.approximate and f.decimals == 0:
        digits = str(int(f.value))
        zeros = len(digits) - len(digits.rstrip("0")) if f.value else 0
        return Decimal(5) * Decimal(10) ** (zeros - 1)
    return Decimal(5) * Decimal(10) ** (-f.decimals - 1)


def _grounding(f: _Figure, sources: Sequence[_Source]) -> tuple[_Source, Decimal] | None:
    """The most direct reading of a number the run saw that gives ``f``: known units first,
    then the number as it is, then guessed units; the closest of those."""
    tol = _tolerance(f) * (1 + Decimal("1e-9"))
    best: tuple[int, Decimal, _Source, Decimal] | None = None
    for s in sources:
        for factor, rank in _factors(s.unit, f.unit):
            off = abs(s.value * factor - f.value)
            if off <= tol and (best is None or (rank, off) < best[:2]):
                best = (rank, off, s, factor)
    return (best[2], best[3]) if best is not None else None


def check_figures(answer: str, *, texts: Sequence[str] = (), data: Sequence[object] = (),
                  ignore: Iterable[str] = (), ignore_below: int = 10) -> list[FigureCheck]:
    """Every figure and identifier of ``answer`` with what grounds it in ``texts`` (the
    request, instructions, anything the run was told) or ``data`` (tool results as JSON
    values), in the order the answer states them. ``ignore``: figures (as written) never
    checked."""
    skip = set(ignore)
    sources = _sources(texts, data)
    source_texts = [*texts, *(_json_text(v) for v in data)]
    found: list[tuple[int, FigureCheck]] = []
    tokens = [*((m, "identifier") for m in _IDENTIFIER.finditer(answer)
                if any(ch.isdigit() for ch in m.group())),
              *((m, "identifier") for m in _VERSION.finditer(answer))]
    seen: set[str] = set()
    for m, kind in tokens:
        token = m.group()
        if token in skip or token.casefold() in seen:
            continue
        seen.add(token.casefold())
        found.append((m.start(), FigureCheck(
            token, kind, source=repr(token) if _token_in(token, source_texts) else None)))
    prose = _masked(answer, [m.span() for m, _ in tokens]
                    + [m.span() for m in _DATE.finditer(answer)]
                    + [m.span() for m in _LIST_MARKER.finditer(answer)])
    for f in _figures(prose):
        if f.text in skip or f.text.casefold() in seen:
            continue
        if f.unit is None and not f.money and f.decimals == 0 and f.value < ignore_below:
            continue
        seen.add(f.text.casefold())
        hit = _grounding(f, sources)
        found.append((f.start, FigureCheck(f.text, "number", source=hit[0].text if hit else None,
                                           factor=hit[1] if hit else None)))
    return [c for _, c in sorted(found, key=lambda p: p[0])]


def ungrounded_figures(answer: str, *, texts: Sequence[str] = (), data: Sequence[object] = (),
                       ignore: Iterable[str] = (), ignore_below: int = 10) -> list[str]:
    """The figures and identifiers of ``answer`` that nothing grounds, as written."""
    return [c.text for c in check_figures(answer, texts=texts, data=data, ignore=ignore,
                                          ignore_below=ignore_below) if not c.grounded]


def _json_text(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, default=str)
