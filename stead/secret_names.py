"""The rules for names of tool secrets and for redaction patterns.

    secret_variable("ticketing_token")     # "STEAD_SECRET_TICKETING_TOKEN"
    check_secret_name("Desk")              # ValueError: lowercase [a-z][a-z0-9_]*

Checked where settings are read (``stead.settings``), where tools and OpenAPI sources declare
secrets, and where the worker resolves them (``stead.secrets``). Depends on nothing of stead's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

SECRET_ENV_PREFIX: Final = "STEAD_SECRET_"
"""``STEAD_SECRET_TICKETING_TOKEN`` holds the secret a tool reads as ``ticketing_token``."""
MIN_SECRET_LENGTH: Final = 8
"""Shorter values cannot be redacted without mangling ordinary text (``"abc"`` is everywhere)."""

_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def secret_variable(name: str) -> str:
    """The environment variable that holds secret ``name``."""
    return SECRET_ENV_PREFIX + name.upper()


def check_secret_name(name: str) -> str:
    """``name`` if it is a valid secret name (lowercase ``[a-z][a-z0-9_]*``), else ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"secret name {name!r} must match {_NAME.pattern} (lowercase letters, "
                         f"digits, underscores)")
    return name


def compile_patterns(patterns: Sequence[str] | Mapping[str, str],
                     ) -> list[tuple[str, re.Pattern[str]]]:
    """``(label, regex)`` pairs of ``STEAD_REDACT_PATTERNS``: a list (labelled ``pattern``) or an
    object of label -> regex. Raises ValueError naming the first bad entry."""
    items = list(patterns.items()) if isinstance(patterns, Mapping) else \
        [("pattern", p) for p in patterns]
    out: list[tuple[str, re.Pattern[str]]] = []
    for i, (label, source) in enumerate(items):
        where = f"[{label!r}]" if isinstance(patterns, Mapping) else f"[{i}]"
        if isinstance(patterns, Mapping) and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,40}",
                                                              label):
            raise ValueError(f"pattern label {label!r} must be a short word "
                             f"(letters, digits, _ . -)")
        try:
            compiled = re.compile(source)
        except re.error as err:
            raise ValueError(f"pattern {where} {source!r} is not a valid regular expression: "
                             f"{err}") from None
        if compiled.fullmatch(""):
            raise ValueError(f"pattern {where} {source!r} matches the empty string; it would "
                             f"redact nothing useful or everything")
        out.append((label, compiled))
    return out


__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_ENV_PREFIX",
    "check_secret_name",
    "compile_patterns",
    "secret_variable",
]
