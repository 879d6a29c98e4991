"""Detectors for personal data and secrets in text. Pure, deterministic, stdlib ``re`` only.

    find_pii("mail ana@example.com", ["email"])   # [("email", "ana@example.com")]
    find_secrets("key AKIAIOSFODNN7EXAMPLE")      # [("aws_access_key", "AKIAIOSFODNN7EXAMPLE")]
    redact("card 4111 1111 1111 1111")            # "card [REDACTED:credit_card]"

Candidates are found by regular expression and then checked where a checksum exists (Luhn for
card numbers, ISO 13616 mod-97 for IBANs), so random digit runs, order ids and amounts are not
reported. Where matches overlap, the earliest wins, then the longest, then the more specific kind:
a phone-shaped run inside an IBAN is part of the IBAN, a JWT after ``Bearer`` is a JWT. Results
come back in text order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Final, get_args

from stead.contracts.policy import PiiKind

PII_KINDS: Final[tuple[PiiKind, ...]] = get_args(PiiKind)
"""Every kind of personal data the detectors know, as ``PiiKind`` declares them."""

SECRET_KINDS: Final[tuple[str, ...]] = (
    "private_key", "aws_access_key", "github_token", "slack_token", "openai_key", "jwt",
    "bearer_token", "credential")
"""Every kind of secret the detectors know, most specific first."""

_Span = tuple[int, int, str]
"""(start, end, kind) of one finding."""
_SHAPED: Final = "_shaped"
"""Kind of a span that looks like an IBAN but fails its checksum (never reported)."""

# --- personal data ------------------------------------------------------------------------------

_EMAIL = r"""
    (?<![\w.%+-])
    [A-Za-z0-9][A-Za-z0-9._%+-]*
    @
    [A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}
    (?![\w-])
"""

# Phone numbers need a shape that plain numbers, amounts and ids do not have: a leading "+"
# (international, E.164), a parenthesised area code, ddd-ddd-dddd with one consistent separator,
# or a national trunk prefix "0" with separators. A number glued to letters, "-", "." or "/"
# (ORD-5551234567, 1.555.1234, 2024/555/1234) is something else.
_PHONE = r"""
    (?<![\w+.\-/])
    (?:
        \+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}
      | \(\d{3}\)[ .-]?\d{3}[ .-]\d{4}
      | \d{3}(?P<sep1>[.-])\d{3}(?P=sep1)\d{4}
      | 0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}
    )
    (?![\w\-/]|[.,]\d)
"""

# 13-19 digits, contiguous or in groups split by one kind of separator (4-4-4-4, 4-6-5, ...).
_CARD = r"""
    (?<![\w.,\-])
    (?:
        \d{13,19}
      | \d{4}(?P<sep>[ -])\d{3,6}(?:(?P=sep)\d{2,6}){1,3}
    )
    (?![\w\-]|[.,]\d)
"""

_IBAN = r"""
    (?<![\w\-])
    [A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?
    (?![\w\-])
"""

# Area 000, 666 and 9xx, group 00 and serial 0000 are never issued.
_SSN = r"""
    (?<![\w\-])
    (?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}
    (?![\w\-])
"""

# --- secrets ------------------------------------------------------------------------------------

_PRIVATE_KEY = r"""
    -----BEGIN[ ](?P<algo>(?:[A-Z0-9]+[ ])*)PRIVATE[ ]KEY-----
    (?:[\s\S]{0,20000}?-----END[ ](?P=algo)PRIVATE[ ]KEY-----)?
"""
_AWS = r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Za-z0-9])"
_GITHUB = r"""
    (?<![A-Za-z0-9_])
    (?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})
    (?![A-Za-z0-9_])
"""
_SLACK = r"""
    (?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9-]{10,}
  | https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}
"""
_OPENAI = r"(?<![A-Za-z0-9_-])sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{20,}(?:[-_][A-Za-z0-9_]+)*"
_JWT = r"""
    (?<![A-Za-z0-9_-])
    eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*
    (?![A-Za-z0-9_-])
"""
_BEARER = r"(?i:\bbearer)[ \t]+(?P<value>[A-Za-z0-9\-._~+/]{16,}=*)"
# ``password=hunter2`` always counts; with ``:`` the value must be quoted or contain something
# other than letters, so prose such as "Secret: the answer" is not a credential.
_CREDENTIAL = r"""
    (?i:\b(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key
          |access[_-]?token|auth[_-]?token|token|private[_-]?key)["']?)
    [ \t]*
    (?:
        =[ \t]*["']?(?P<value>(?!\[REDACTED)[^\s"'&,;]{4,})
      | :[ \t]*["'](?P<quoted>(?!\[REDACTED)[^\s"']{4,})["']
      | :[ \t]*(?P<bare>(?![A-Za-z]+\b)(?!\[REDACTED)[^\s"'&,;]{4,})
    )
"""


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.VERBOSE)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rotated)
    return int(number) % 97 == 1


def _longest_valid(candidate: str, separators: str, ok: Callable[[str], bool]) -> int:
    """Length of the longest prefix of ``candidate`` ending at a group boundary whose compact
    form passes ``ok`` (0: none). A regex may swallow a trailing group that is not part of the
    number (an expiry month, the next word); cutting at group boundaries recovers the number."""
    cuts = [i for i, ch in enumerate(candidate) if ch in separators]
    for end in [len(candidate), *reversed(cuts)]:
        if ok("".join(ch for ch in candidate[:end] if ch not in separators)):
            return end
    return 0


def _card_ok(compact: str) -> bool:
    return 13 <= len(compact) <= 19 and _luhn_ok(compact)


def _phone_ok(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    return 8 <= digits <= 15 if text.startswith("+") else 10 <= digits <= 13


def _simple(pattern: str, kind: str, check: Callable[[str], bool] | None = None,
            ) -> Callable[[str], list[_Span]]:
    def spans(text: str) -> list[_Span]:
        return [(m.start(), m.end(), kind) for m in _compiled(pattern).finditer(text)
                if check is None or check(m.group())]
    return spans


def _grouped(pattern: str, kind: str, separators: str, ok: Callable[[str], bool], *,
             claim_invalid: bool = False) -> Callable[[str], list[_Span]]:
    """With ``claim_invalid``, a candidate failing its checksum is kept as a ``_shaped`` span:
    it is reported as nothing, but its digit groups are not read as a phone or card number."""
    def spans(text: str) -> list[_Span]:
        out: list[_Span] = []
        for m in _compiled(pattern).finditer(text):
            n = _longest_valid(m.group(), separators, ok)
            if n:
                out.append((m.start(), m.start() + n, kind))
            elif claim_invalid:
                out.append((m.start(), m.end(), _SHAPED))
        return out
    return spans


def _valued(pattern: str, kind: str) -> Callable[[str], list[_Span]]:
    """Only the value is the secret: ``password=[REDACTED:credential]`` keeps its key."""
    def spans(text: str) -> list[_Span]:
        out: list[_Span] = []
        for m in _compiled(pattern).finditer(text):
            for group in ("value", "quoted", "bare"):
                if group in m.re.groupindex and m.group(group) is not None:
                    out.append((m.start(group), m.end(group), kind))
                    break
        return out
    return spans


_PII_DETECTORS: Final[dict[str, Callable[[str], list[_Span]]]] = {
    "credit_card": _grouped(_CARD, "credit_card", " -", _card_ok),
    "iban": _grouped(_IBAN, "iban", " ", _iban_ok, claim_invalid=True),
    "ssn": _simple(_SSN, "ssn"),
    "email": _simple(_EMAIL, "email"),
    "phone": _simple(_PHONE, "phone", _phone_ok),
}

_SECRET_DETECTORS: Final[dict[str, Callable[[str], list[_Span]]]] = {
    "private_key": _simple(_PRIVATE_KEY, "private_key"),
    "aws_access_key": _simple(_AWS, "aws_access_key"),
    "github_token": _simple(_GITHUB, "github_token"),
    "slack_token": _simple(_SLACK, "slack_token"),
    "openai_key": _simple(_OPENAI, "openai_key"),
    "jwt": _simple(_JWT, "jwt"),
    "bearer_token": _valued(_BEARER, "bearer_token"),
    "credential": _valued(_CREDENTIAL, "credential"),
}

_PRIORITY: Final[dict[str, int]] = {
    kind: i for i, kind in enumerate((*SECRET_KINDS, *_PII_DETECTORS, _SHAPED))}


def _resolve(spans: Iterable[_Span]) -> list[_Span]:
    """Non-overlapping spans in text order: earliest, then longest, then most specific wins."""
    out: list[_Span] = []
    end = -1
    # Custom kinds (``extra`` patterns) rank after every built-in kind.
    for span in sorted(spans, key=lambda s: (s[0], s[0] - s[1],
                                             _PRIORITY.get(s[2], len(_PRIORITY)))):
        if span[0] >= end:
            out.append(span)
            end = span[1]
    return out


def _pii_spans(text: str, kinds: Iterable[str]) -> list[_Span]:
    wanted = set(kinds)
    unknown = wanted - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {list(PII_KINDS)}")
    if not wanted or not text:
        return []
    # Every detector runs so that, say, digits inside an IBAN are never reported as a phone.
    found = _resolve(s for detect in _PII_DETECTORS.values() for s in detect(text))
    return [s for s in found if s[2] in wanted]


def _secret_spans(text: str) -> list[_Span]:
    if not text:
        return []
    return _resolve(s for detect in _SECRET_DETECTORS.values() for s in detect(text))


def find_pii(text: str, kinds: Iterable[PiiKind] = PII_KINDS) -> list[tuple[str, str]]:
    """Personal data of the given kinds in ``text``, as ``(kind, matched text)`` in text order."""
    return [(kind, text[a:b]) for a, b, kind in _pii_spans(text, kinds)]


def find_secrets(text: str) -> list[tuple[str, str]]:
    """Credentials and keys in ``text``, as ``(kind, secret)`` in text order. For assignments
    (``password=...``) and ``Bearer ...`` the secret is the value alone."""
    return [(kind, text[a:b]) for a, b, kind in _secret_spans(text)]


def locate(text: str, *, pii_kinds: Iterable[PiiKind] = PII_KINDS, secrets: bool = True,
           extra: Iterable[tuple[str, re.Pattern[str]]] = ()) -> list[tuple[int, int, str]]:
    """Where the findings are: non-overlapping ``(start, end, kind)`` in text order.

    ``extra``: more ``(kind, compiled pattern)`` pairs (configured PII patterns such as
    employee ids); their non-empty matches compete with the built-in kinds for overlaps."""
    spans = _pii_spans(text, pii_kinds)
    if secrets:
        spans += _secret_spans(text)
    spans += [(m.start(), m.end(), kind) for kind, pattern in extra
              for m in pattern.finditer(text) if m.end() > m.start()]
    return _resolve(spans)


def redact(text: str, *, pii_kinds: Iterable[PiiKind] = PII_KINDS, secrets: bool = True,
           extra: Iterable[tuple[str, re.Pattern[str]]] = ()) -> str:
    """``text`` with every finding replaced by ``[REDACTED:<kind>]``."""
    spans = locate(text, pii_kinds=pii_kinds, secrets=secrets, extra=extra)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for a, b, kind in spans:
        parts.append(text[pos:a])
        parts.append(f"[REDACTED:{kind}]")
        pos = b
    parts.append(text[pos:])
    return "".join(parts)
