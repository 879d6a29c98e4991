"""A tool's side of credentials: the names secrets go by, the variables that hold them, and
what one tool may read (``ToolSecrets``, held by its ``ToolContext``).

    secret_variable("ticketing_token")     # "STEAD_SECRET_TICKETING_TOKEN"
    check_secret_name("Desk")              # ValueError: lowercase [a-z][a-z0-9_]*
    ctx.secret("ticketing_token")          # ToolSecrets.get: MissingSecret / UndeclaredSecret

Tools, OpenAPI sources and settings check names here; the worker's store of credentials
(``Secrets``) and redaction are ``stead.security.secrets``, which re-exports these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from stead.errors import SteadError

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


class SecretError(SteadError):
    """A tool's credential could not be handed out."""

    error_type: str = "SecretError"
    """``ApplicationError.type`` of the failed tool call (shown in the Web UI and ledger)."""


class MissingSecret(SecretError):
    """A tool declared a secret that the worker's settings do not hold."""

    error_type = "MissingSecret"


class UndeclaredSecret(SecretError):
    """A tool asked for a secret it did not declare (least privilege for credentials)."""

    error_type = "UndeclaredSecret"


# ---------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class ToolSecrets:
    """The credentials one tool may read: the ones it declared. What ``ToolContext`` holds."""

    tool: str = ""
    declared: frozenset[str] = frozenset()
    _values: Mapping[str, str] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> str:
        """The secret's value; :class:`UndeclaredSecret` or :class:`MissingSecret` otherwise."""
        value = self.get_optional(name)
        if value is None:
            raise MissingSecret(
                f"tool {self.tool!r} needs the secret {name!r}, which is not configured: set "
                f"{secret_variable(name)} (or the key {name!r} of STEAD_SECRETS) in the "
                f"worker's environment")
        return value

    def get_optional(self, name: str) -> str | None:
        """The secret's value, or None when it is declared but not configured."""
        if name not in self.declared:
            raise UndeclaredSecret(
                f"tool {self.tool!r} asked for the secret {name!r} without declaring it; "
                f"declare it with @tool(..., secrets=[{name!r}]) so the worker knows which "
                f"credentials each tool holds")
        return self._values.get(name)


NO_SECRETS: Final = ToolSecrets()
"""For a ``ToolContext`` built outside a worker (tests): every ``secret()`` call fails."""



__all__ = [
    "MIN_SECRET_LENGTH",
    "NO_SECRETS",
    "SECRET_ENV_PREFIX",
    "MissingSecret",
    "SecretError",
    "ToolSecrets",
    "UndeclaredSecret",
    "check_secret_name",
    "secret_variable",
]
