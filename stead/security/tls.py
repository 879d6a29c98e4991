"""Secured connections to Temporal: TLS, mutual TLS and API keys, from settings.

    auth = temporal_auth(settings.temporal)   # SettingsError naming the variable to fix
    await Client.connect(address, tls=auth.tls, api_key=auth.api_key)

The variables are the Temporal CLI's own, so one environment configures ``temporal`` and
stead alike:

- ``TEMPORAL_TLS``: ``true``/``false``; unset means on when any variable below is set.
- ``TEMPORAL_TLS_SERVER_CA_CERT_PATH``: PEM CA bundle that signed the server's certificate
  (unset: the system's roots, as for Temporal Cloud).
- ``TEMPORAL_TLS_SERVER_NAME``: the name to verify the server's certificate against (also
  sent as SNI), when it differs from the host in ``TEMPORAL_ADDRESS``.
- ``TEMPORAL_TLS_CLIENT_CERT_PATH`` and ``TEMPORAL_TLS_CLIENT_KEY_PATH``: PEM client
  certificate (chain) and its unencrypted PEM private key, for mutual TLS; both or neither.
- ``TEMPORAL_API_KEY``: API key (Temporal Cloud); always over TLS.

Files are read and checked here, before any connection: a path that cannot be read, a file
that is not PEM, an encrypted key, a key that does not belong to the certificate, or a
certificate outside its validity period is a :class:`~stead.errors.SettingsError` that names
the variable, not an opaque handshake error from deep inside the Rust core.
:func:`explain_connect_error` turns the handshake failures that remain (unknown CA, wrong
name, client certificate refused, plaintext server) into a sentence naming what to change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from temporalio.service import TLSConfig

from stead.errors import SettingsError
from stead.settings import TemporalSettings

__all__ = ["TemporalAuth", "explain_connect_error", "temporal_auth"]

CERT = "TEMPORAL_TLS_CLIENT_CERT_PATH"
KEY = "TEMPORAL_TLS_CLIENT_KEY_PATH"
CA = "TEMPORAL_TLS_SERVER_CA_CERT_PATH"
SERVER_NAME = "TEMPORAL_TLS_SERVER_NAME"
TLS = "TEMPORAL_TLS"
API_KEY = "TEMPORAL_API_KEY"


@dataclass(frozen=True)
class TemporalAuth:
    """How to reach Temporal securely: the ``tls`` and ``api_key`` of ``Client.connect``."""

    tls: TLSConfig | bool
    """False: plaintext; True: TLS verified against the system's roots; a TLSConfig: custom
    CA, server name and/or client certificate."""
    api_key: str | None = None

    def describe(self) -> str:
        """A few words for error messages (never the key itself)."""
        if self.tls is False:
            return "plaintext"
        parts = ["TLS"]
        if isinstance(self.tls, TLSConfig):
            if self.tls.client_cert is not None:
                parts.append("client certificate")
            if self.tls.server_root_ca_cert is not None:
                parts.append("custom CA")
            if self.tls.domain:
                parts.append(f"server name {self.tls.domain}")
        if self.api_key is not None:
            parts.append("API key")
        return ", ".join(parts)


def temporal_auth(temporal: TemporalSettings) -> TemporalAuth:
    """Check the TLS and API-key settings and read their files; raise ``SettingsError``."""
    s = temporal
    options = {CERT: s.tls_client_cert_path, KEY: s.tls_client_key_path,
               CA: s.tls_server_ca_cert_path, SERVER_NAME: s.tls_server_name}
    given = [name for name, value in options.items() if value is not None]
    api_key = s.api_key.get_secret_value() if s.api_key is not None else None
    if api_key is not None and not api_key.strip():
        raise SettingsError(f"invalid setting: {API_KEY} is set but empty; unset it or give "
                            f"the key")
    if s.tls is False:
        if given:
            raise SettingsError(
                f"invalid setting: {TLS}=false contradicts {', '.join(given)}: TLS options "
                f"need TLS; unset {TLS} (TLS turns on by itself) or unset them")
        if api_key is not None:
            raise SettingsError(
                f"invalid setting: {API_KEY} with {TLS}=false: an API key is sent with every "
                f"call and must not cross the network in clear (Temporal Cloud refuses "
                f"plaintext); unset {TLS}")
        return TemporalAuth(tls=False)
    if s.tls is None and not given and api_key is None:
        return TemporalAuth(tls=False)
    if (s.tls_client_cert_path is None) != (s.tls_client_key_path is None):
        have, missing = (CERT, KEY) if s.tls_client_key_path is None else (KEY, CERT)
        raise SettingsError(f"invalid setting: {have} is set but {missing} is not: mutual TLS "
                            f"needs the client certificate and its private key")
    if s.tls_server_name is not None and not s.tls_server_name.strip():
        raise SettingsError(f"invalid setting: {SERVER_NAME} is empty; unset it to verify the "
                            f"host of TEMPORAL_ADDRESS")
    if not given:
        return TemporalAuth(tls=True, api_key=api_key)
    ca = (_certificates(CA, s.tls_server_ca_cert_path)[0]
          if s.tls_server_ca_cert_path is not None else None)
    cert = key = None
    if s.tls_client_cert_path is not None:
        assert s.tls_client_key_path is not None
        cert, chain = _certificates(CERT, s.tls_client_cert_path)
        key = _private_key(s.tls_client_key_path, chain[0])
        _check_validity(chain[0], s.tls_client_cert_path)
    return TemporalAuth(tls=TLSConfig(server_root_ca_cert=ca, domain=s.tls_server_name,
                                      client_cert=cert, client_private_key=key),
                        api_key=api_key)


def _read(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SettingsError(f"invalid setting: {name}={str(path)!r}: cannot read the file "
                            f"({err.strerror or err})") from None


def _certificates(name: str, path: Path) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(name, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        hint = (" (it holds a private key: swap the certificate and key paths?)"
                if b"PRIVATE KEY-----" in data else "")
        raise SettingsError(f"invalid setting: {name}={str(path)!r}: not a PEM certificate "
                            f"(expected -----BEGIN CERTIFICATE-----){hint}: {err}") from None
    return data, certs


def _private_key(path: Path, cert: x509.Certificate) -> bytes:
    data = _read(KEY, path)
    where = f"{KEY}={str(path)!r}"
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise SettingsError(f"invalid setting: {where}: the private key is encrypted; Temporal "
                            f"clients need it unencrypted (openssl pkey -in KEY -out "
                            f"PLAIN_KEY), kept readable by the worker only") from None
    except ValueError as err:
        hint = (" (it holds a certificate: swap the certificate and key paths?)"
                if b"BEGIN CERTIFICATE" in data else "")
        raise SettingsError(f"invalid setting: {where}: not a PEM private key (expected "
                            f"-----BEGIN PRIVATE KEY-----){hint}: {err}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise SettingsError(f"invalid setting: {where} is not the private key of the "
                            f"certificate in {CERT} ({cert.subject.rfc4514_string()})")
    return data


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise SettingsError(f"invalid setting: {CERT}={str(path)!r}: the client certificate "
                            f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the "
                            f"server will refuse it")
    if now < cert.not_valid_before_utc:
        raise SettingsError(f"invalid setting: {CERT}={str(path)!r}: the client certificate "
                            f"is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                            f"UTC (is this machine's clock right?)")


def explain_connect_error(message: str, auth: TemporalAuth) -> str | None:
    """What to change, for a failed connection whose error text is ``message``; None when the
    text says nothing about TLS (the server is down, the address is wrong...)."""
    if "UnknownIssuer" in message or "BadSignature" in message:
        return (f"the server's certificate is not signed by a CA this client trusts: set {CA} "
                f"to the CA that issued it" + (" (the one given did not)"
                                               if _has_ca(auth) else ""))
    if "NotValidForName" in message:
        return (f"the server's certificate is not valid for the name dialed: set {SERVER_NAME} "
                f"to a name it holds, or dial that name in TEMPORAL_ADDRESS")
    if "Expired" in message and "InvalidCertificate" in message:
        return "the server's certificate has expired (or this machine's clock is wrong)"
    if "InvalidContentType" in message or "CorruptMessage" in message:
        return (f"the server does not speak TLS: unset {TLS} and the TEMPORAL_TLS_* settings "
                f"for a plaintext server such as the dev server")
    # With TLS 1.3 the client finishes its handshake before the server has judged the client
    # certificate, so a refusal shows up as an alert or as the connection ending abruptly.
    # (hyper reports the last as "connection closed" when the close wins the race.)
    dropped = any(s in message for s in ("ConnectionReset", "BrokenPipe", "UnexpectedEof",
                                         "AlertReceived", "connection closed"))
    if auth.tls is not False and dropped:
        return ("the server closed the connection during or right after the TLS handshake: it "
                f"probably requires a client certificate it trusts ({CERT} and {KEY})")
    if auth.tls is False and dropped:
        return f"if the server requires TLS, set {TLS}=true (and its TEMPORAL_TLS_* settings)"
    if "Unauthenticated" in message or "PermissionDenied" in message:
        return (f"the server refused the credentials: check {API_KEY} or the client "
                f"certificate, and that they grant access to this namespace")
    return None


def _has_ca(auth: TemporalAuth) -> bool:
    return isinstance(auth.tls, TLSConfig) and auth.tls.server_root_ca_cert is not None
