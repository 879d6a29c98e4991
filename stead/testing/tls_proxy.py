"""A TLS-terminating TCP proxy and a throwaway certificate authority, to test secured clients.

Temporal's dev server speaks plaintext gRPC only. Put this proxy in front of it and the client
sees what a secured cluster or Temporal Cloud shows: a TLS handshake with ALPN ``h2``, the
server's certificate, and (with ``client_ca``) a demand for a client certificate::

    pki = issue_certificates(tmp_dir)                      # CA, server and client pairs
    async with TLSTerminatingProxy(upstream="127.0.0.1:7233", certificate=pki.server_cert,
                                   key=pki.server_key, client_ca=pki.ca_cert) as proxy:
        # TEMPORAL_ADDRESS=proxy.address TEMPORAL_TLS_SERVER_CA_CERT_PATH=pki.ca_cert ...
        ...
        proxy.handshake_failures   # why refused clients were refused, as the server saw it

After the handshake the proxy copies bytes both ways unchanged: HTTP/2 over TLS and HTTP/2 in
the clear (what the dev server expects) are the same frames, so nothing is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LocalPKI", "TLSTerminatingProxy", "issue_certificates"]


@dataclass(frozen=True)
class LocalPKI:
    """PEM files of a one-level certificate authority and the two leaves it signed."""

    ca_cert: Path
    """The CA certificate: the client's TEMPORAL_TLS_SERVER_CA_CERT_PATH, the proxy's
    ``client_ca``."""
    server_cert: Path
    """Valid for ``localhost`` and ``127.0.0.1``, for server authentication."""
    server_key: Path
    client_cert: Path
    """For client authentication (mTLS): TEMPORAL_TLS_CLIENT_CERT_PATH."""
    client_key: Path
    """PKCS#8, unencrypted: TEMPORAL_TLS_CLIENT_KEY_PATH."""


def issue_certificates(directory: Path, *, server_name: str = "localhost",
                       client_name: str = "stead-worker", ca_name: str = "stead test CA",
                       valid_days: int = 2) -> LocalPKI:
    """Create a CA and a server and a client certificate under ``directory``.

    Keys are EC P-256 (fast to make, accepted by rustls, which Temporal's client uses). Each
    call makes a new CA, so two calls give two CAs that do not trust each other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder()
          .subject_name(ca_subject).issuer_name(ca_subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name: str, usage: x509.ObjectIdentifier,
             sans: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert, key

    server, server_key = leaf(server_name, ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH,
                              [x509.DNSName(client_name)])

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    return LocalPKI(ca_cert=write("ca.pem", ca.public_bytes(pem)),
                    server_cert=write("server.pem", server.public_bytes(pem)),
                    server_key=write("server-key.pem", key_pem(server_key)),
                    client_cert=write("client.pem", client.public_bytes(pem)),
                    client_key=write("client-key.pem", key_pem(client_key)))


@dataclass
class TLSTerminatingProxy:
    """Accept TLS on ``host:port`` (0: any free port) and forward the plaintext to ``upstream``.

    ``client_ca``: require a client certificate signed by this CA (mutual TLS); None accepts
    clients without one.
    """

    upstream: str
    """host:port of the plaintext server behind the proxy."""
    certificate: Path
    key: Path
    client_ca: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    alpn: tuple[str, ...] = ("h2",)
    """Protocols offered in the handshake; gRPC clients insist on ``h2``."""
    handshake_failures: list[str] = field(default_factory=list)
    """Why each refused client was refused (the server side's TLS error), oldest first."""
    connections: int = 0
    """Clients that completed the handshake."""
    _server: asyncio.Server | None = field(default=None, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def address(self) -> str:
        """host:port to dial (the bound port once started)."""
        return f"{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certificate, self.key)
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.client_ca))
        ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    async def start(self) -> None:
        ctx = self._context()
        # TLS is started by hand after accepting, so a failed handshake is recorded here
        # rather than logged by asyncio's server as an unhandled error.
        self._server = await asyncio.start_server(
            lambda r, w: self._spawn(self._serve(r, w, ctx)), self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ctx: ssl.SSLContext) -> None:
        try:
            await writer.start_tls(ctx)
        except (ssl.SSLError, OSError, asyncio.IncompleteReadError) as err:
            self.handshake_failures.append(f"{type(err).__name__}: {err}")
            await _close(writer)
            return
        self.connections += 1
        host, _, port = self.upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await _close(writer)
            return
        # HTTP/2 never half-closes: when either side is done, the connection is.
        pipes = [asyncio.create_task(_pipe(reader, up_writer)),
                 asyncio.create_task(_pipe(up_reader, writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await _close(up_writer)
            await _close(writer)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TLSTerminatingProxy:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the reading side closes or fails."""
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
        await writer.wait_closed()
