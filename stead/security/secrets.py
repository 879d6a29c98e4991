"""Tool credentials and redaction: a secret reaches the tool that declared it, nothing else.

    @tool(side_effect="write", secrets=["ticketing_token"])
    async def create_ticket(args: NewTicket, ctx: ToolContext) -> Ticket:
        token = ctx.secret("ticketing_token")        # STEAD_SECRET_TICKETING_TOKEN

    redactor = Redactor.from_settings(settings)
    redactor.text("mail ana@example.com")            # "mail [REDACTED:email]"

Credentials live in the worker's settings — one ``STEAD_SECRET_<NAME>`` variable per secret, or
the ``STEAD_SECRETS`` JSON object — and are resolved inside the tool activity when the tool asks.
The model never sees them: they are not tool arguments, a tool reads only the secrets it
declared, and the tool activity scrubs their values from results and error messages before
anything goes back to the workflow (so to history and to the model).

Whatever stead stores or logs is redacted by a :class:`Redactor`: known secret values (tool
credentials and every other secret setting), the credential and personal-data patterns of
``stead.guardrails.detect``, and configured patterns (``STEAD_REDACT_PATTERNS``). The ledger redacts
each row on the way in; :func:`install_log_redaction` does the same for this process's logs.

Errors::

    SteadError
    └── SecretError
        ├── MissingSecret      a declared secret is not configured (names the variable to set)
        └── UndeclaredSecret   a tool asked for a secret it did not declare
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from pydantic import SecretStr

from stead.contracts.policy import PiiKind
from stead.errors import SettingsError
from stead.guardrails.detect import PII_KINDS, redact
from stead.security.tool_secrets import (
    MIN_SECRET_LENGTH,
    NO_SECRETS,
    SECRET_ENV_PREFIX,
    MissingSecret,
    SecretError,
    ToolSecrets,
    UndeclaredSecret,
    check_secret_name,
    secret_variable,
)
from stead.settings import compile_patterns

if TYPE_CHECKING:
    from stead.settings import SecuritySettings, Settings

J = TypeVar("J")


class Secrets:
    """The tool credentials a worker holds, by name. ``repr`` shows names, never values."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, str] = {}
        for name, value in (values or {}).items():
            check_secret_name(name)
            if len(value) < MIN_SECRET_LENGTH:
                raise ValueError(f"secret {name!r} is {len(value)} characters long; stead needs "
                                 f"at least {MIN_SECRET_LENGTH} to redact it reliably")
            self._values[name] = value
        self._known = _KnownValues(self._values.items())

    @classmethod
    def from_settings(cls, security: SecuritySettings, *,
                      environ: Mapping[str, str] | None = None) -> Secrets:
        """``security.secrets`` (``STEAD_SECRETS``) plus every ``STEAD_SECRET_<NAME>`` variable
        of ``environ`` (default: the process environment), which wins over the JSON object.
        Raises ``SettingsError`` naming the variable at fault."""
        env = os.environ if environ is None else environ
        values = {k: v.get_secret_value() for k, v in security.secrets.items()}
        for var, value in env.items():
            if var.startswith(SECRET_ENV_PREFIX) and len(var) > len(SECRET_ENV_PREFIX):
                name = var[len(SECRET_ENV_PREFIX):].lower()
                try:
                    check_secret_name(name)
                    cls({name: value})
                except ValueError as err:
                    raise SettingsError(f"invalid setting: {var}: {err}") from None
                values[name] = value
        try:
            return cls(values)
        except ValueError as err:  # from STEAD_SECRETS (settings validate it too)
            raise SettingsError(f"invalid setting: STEAD_SECRETS: {err}") from None

    def names(self) -> list[str]:
        return sorted(self._values)

    def items(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs, for redaction."""
        return sorted(self._values.items())

    def for_tool(self, tool: str, declared: Iterable[str]) -> ToolSecrets:
        """What the tool ``tool`` may read: its declared secrets, resolved from here."""
        wanted = frozenset(declared)
        return ToolSecrets(tool=tool, declared=wanted,
                           _values={k: v for k, v in self._values.items() if k in wanted})

    def scrub(self, value: J) -> J:
        """``value`` (text or JSON-like data) with every known secret value replaced by
        ``[REDACTED:secret/<name>]``; other content is left alone (the model needs it)."""
        return self._known.value(value)

    def __repr__(self) -> str:
        return f"Secrets({self.names()})"


# ---------------------------------------------------------------------------- redaction


class _KnownValues:
    """Exact-value replacement of secrets, longest value first (so a value containing another
    one is replaced whole)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        by_value: dict[str, str] = {}
        for name, value in pairs:
            if len(value) >= MIN_SECRET_LENGTH:
                by_value.setdefault(value, name)
        self._names = by_value
        self._regex = re.compile("|".join(re.escape(v) for v in
                                          sorted(by_value, key=len, reverse=True))) \
            if by_value else None

    def text(self, s: str) -> str:
        if self._regex is None:
            return s
        return self._regex.sub(lambda m: f"[REDACTED:secret/{self._names[m.group()]}]", s)

    def value(self, v: J) -> J:
        return _walk(v, self.text) if self._regex is not None else v


def _walk(v: J, text: Callable[[str], str]) -> J:
    """Apply ``text`` to every string in JSON-like data (keys included); other values as is."""
    out: Any
    if isinstance(v, str):
        out = text(v)
    elif isinstance(v, dict):
        out = {text(k) if isinstance(k, str) else k: _walk(x, text) for k, x in v.items()}
    elif isinstance(v, list):
        out = [_walk(x, text) for x in v]
    elif isinstance(v, tuple):
        out = tuple(_walk(x, text) for x in v)
    else:
        out = v
    return out  # type: ignore[no-any-return]


MEMO_ENTRIES: Final = 4096
"""Texts a redactor remembers the redaction of (then it forgets them all and starts again)."""
MEMO_MAX_CHARS: Final = 512
"""Longer texts are redacted every time: they seldom repeat, and the memo stays small."""


class Redactor:
    """Replaces secrets and personal data in text and JSON-like data with ``[REDACTED:<kind>]``.

    Known secret values go first (``[REDACTED:secret/<name>]``), then one pass of
    ``stead.guardrails.detect`` over credential patterns, the chosen PII kinds and the extra
    patterns (``[REDACTED:<label>]``), overlaps resolved as ``detect`` does."""

    def __init__(self, *, known: Iterable[tuple[str, str]] = (),
                 patterns: Sequence[tuple[str, re.Pattern[str]]] = (),
                 pii_kinds: Iterable[PiiKind] = PII_KINDS, detect_secrets: bool = True) -> None:
        self._known = _KnownValues(known)
        self._patterns = list(patterns)
        self._pii: tuple[PiiKind, ...] = tuple(pii_kinds)
        self._detect_secrets = detect_secrets
        # Redaction is a pure function of the text, and a ledger redacts the same short texts
        # over and over (JSON keys, tool names, statuses, reasons): each is scanned once.
        self._memo: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, secrets: Secrets | None = None,
                      also: Iterable[tuple[str, str]] = ()) -> Redactor:
        """Everything the settings know: tool credentials (``secrets``, default
        ``Secrets.from_settings``), every other secret setting (API keys, codec keys, tokens),
        database passwords, ``STEAD_REDACT_PATTERNS`` and ``STEAD_REDACT_PII``; plus ``also``,
        ``(name, value)`` pairs known elsewhere (model keys from the agents' own variables)."""
        creds = secrets if secrets is not None else Secrets.from_settings(settings.security)
        return cls(known=[*creds.items(), *_secret_settings(settings), *also],
                   patterns=compile_patterns(settings.security.redact_patterns),
                   pii_kinds=settings.security.redact_pii)

    def text(self, s: str) -> str:
        done = self._memo.get(s)
        if done is not None:
            return done
        out = redact(self._known.text(s), pii_kinds=self._pii, secrets=self._detect_secrets,
                     extra=self._patterns)
        if len(s) <= MEMO_MAX_CHARS:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[s] = out
        return out

    def value(self, v: J) -> J:
        """``v`` with every string inside it redacted (dict keys included)."""
        return _walk(v, self.text)

    def optional(self, s: str | None) -> str | None:
        return None if s is None else self.text(s)

    def scrub(self, v: J) -> J:
        """Known secret values only, for what goes back to the workflow and the model (tool
        results, model turns): a leaked credential must not travel on, but the e-mail address
        a tool looked up is data the model needs."""
        return self._known.value(v)


DEFAULT_REDACTOR: Final = Redactor()
"""Credential patterns and every PII kind: what a ledger redacts when nobody configured more."""


def _secret_settings(settings: Settings) -> list[tuple[str, str]]:
    """Every secret-typed setting's value, and the passwords inside database URLs."""
    found: list[tuple[str, str]] = []
    for name, value in settings.flat_items():
        if name == "secrets":
            continue  # tool credentials: resolved (with STEAD_SECRET_*) by Secrets
        if isinstance(value, SecretStr):
            found.append((name, value.get_secret_value()))
            found.extend(_json_strings(name, value.get_secret_value()))
        elif isinstance(value, dict):
            found.extend((f"{name}.{k}", v.get_secret_value()) for k, v in value.items()
                         if isinstance(v, SecretStr))
        elif isinstance(value, str) and name.endswith("database_url"):
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append((f"{name}.password", password))
    return found


def _json_strings(name: str, text: str) -> list[tuple[str, str]]:
    """The string values of a secret that is a JSON object (``STEAD_CODEC_KEYS``): each key
    must be redacted on its own, not only the whole document."""
    if not text.lstrip().startswith("{"):
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    return [(f"{name}.{k}", v) for k, v in doc.items() if isinstance(v, str)]


# ---------------------------------------------------------------------------- logs


class _RedactingRecordFactory:
    """Wraps the process's log record factory: every record's message, arguments, traceback
    and stack are redacted when the record is made, before any handler or formatter (ours,
    pytest's, an OpenTelemetry exporter's) sees it."""

    def __init__(self, base: Callable[..., logging.LogRecord], redactor: Redactor) -> None:
        self.base = base
        self.redactor = redactor

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging itself reports it when emitting
            return record
        clean = self.redactor.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters render exc_text when it is set; the exception object itself (whose
            # message or chained causes may hold a secret) is not handed on.
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = self.redactor.text(text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return record


def install_log_redaction(redactor: Redactor) -> None:
    """Redact every log record this process makes from now on (message, arguments, traceback).

    Idempotent: installing again replaces the redactor (a worker built later with other
    settings), never stacks a second factory."""
    current = logging.getLogRecordFactory()
    if isinstance(current, _RedactingRecordFactory):
        current.redactor = redactor
    else:
        logging.setLogRecordFactory(_RedactingRecordFactory(current, redactor))


__all__ = [
    "DEFAULT_REDACTOR",
    "MIN_SECRET_LENGTH",
    "NO_SECRETS",
    "SECRET_ENV_PREFIX",
    "MissingSecret",
    "Redactor",
    "SecretError",
    "Secrets",
    "ToolSecrets",
    "UndeclaredSecret",
    "check_secret_name",
    "compile_patterns",
    "install_log_redaction",
    "secret_variable",
]
