"""The secured Temporal connection: TLS, mutual TLS and API-key settings.

Configuration errors are ``SettingsError``s naming the variable, raised before any traffic.
Then TLS for real: a TLS-terminating proxy (ALPN h2, client certificate required) in front of
the suite's dev server, with certificates made here: the right client certificate runs a
workflow end to end; a wrong CA, a wrong server name, no client certificate or one from
another CA are refused with a ``StackError`` that says what to change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _cli import cli_env, stead
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from temporalio.service import TLSConfig

from stead.authoring.agent import AgentCatalog
from stead.client import connect, start_run
from stead.contracts.models import RunRequest
from stead.errors import SettingsError, StackError
from stead.security.tls import temporal_auth
from stead.settings import Settings, load_settings
from stead.stack.embedded import EmbeddedStack
from stead.testing.tls_proxy import LocalPKI, TLSTerminatingProxy, issue_certificates
from stead.worker import WorkerHost

TLS_VARS = ("TEMPORAL_TLS", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_NAME", "TEMPORAL_API_KEY")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    return issue_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    """A second CA that trusts nothing of the first."""
    return issue_certificates(tmp_path_factory.mktemp("other-pki"), ca_name="another CA",
                              client_name="intruder")


@pytest.fixture
async def proxy(stack: EmbeddedStack, pki: LocalPKI) -> AsyncIterator[TLSTerminatingProxy]:
    """TLS with a required client certificate in front of the suite's dev server."""
    async with TLSTerminatingProxy(upstream=stack.temporal_address,
                                   certificate=pki.server_cert, key=pki.server_key,
                                   client_ca=pki.ca_cert) as p:
        yield p


@pytest.fixture(autouse=True)
def _no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TLS_VARS:
        monkeypatch.delenv(var, raising=False)


def mtls(settings: Settings, pki: LocalPKI, address: str, **changes: object) -> Settings:
    """``settings`` dialing ``address`` with ``pki``'s CA and client pair."""
    return settings.replace(**{
        "temporal_address": address, "temporal_tls_server_ca_cert_path": pki.ca_cert,
        "temporal_tls_client_cert_path": pki.client_cert,
        "temporal_tls_client_key_path": pki.client_key, **changes})


# ----------------------------------------------------------------- configuration


def test_variables_are_the_temporal_clis_own(monkeypatch: pytest.MonkeyPatch,
                                             pki: LocalPKI) -> None:
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(pki.client_cert))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(pki.client_key))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(pki.ca_cert))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-123")
    auth = temporal_auth(load_settings().temporal)
    assert isinstance(auth.tls, TLSConfig)
    assert auth.tls.client_cert == pki.client_cert.read_bytes()
    assert auth.tls.client_private_key == pki.client_key.read_bytes()
    assert auth.tls.server_root_ca_cert == pki.ca_cert.read_bytes()
    assert auth.tls.domain == "temporal.internal"
    assert auth.api_key == "key-123"
    assert auth.describe() == ("TLS, client certificate, custom CA, server name "
                               "temporal.internal, API key")
    assert "key-123" not in repr(load_settings())


def test_tls_is_off_by_default_and_on_with_any_tls_setting_or_api_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert temporal_auth(load_settings().temporal).tls is False
    monkeypatch.setenv("TEMPORAL_TLS", "true")
    assert temporal_auth(load_settings().temporal).tls is True  # system roots (Temporal Cloud)
    monkeypatch.delenv("TEMPORAL_TLS")
    monkeypatch.setenv("TEMPORAL_API_KEY", "k")
    auth = temporal_auth(load_settings().temporal)
    assert (auth.tls, auth.api_key) == (True, "k")
    monkeypatch.setenv("TEMPORAL_TLS", "maybe")
    with pytest.raises(SettingsError, match="TEMPORAL_TLS='maybe'"):
        load_settings()


def _bad(**fields: object) -> str:
    with pytest.raises(SettingsError) as caught:
        temporal_auth(Settings(**fields).temporal)  # type: ignore[arg-type]
    return str(caught.value)


def test_a_client_certificate_needs_its_key_and_the_other_way_round(pki: LocalPKI) -> None:
    message = _bad(temporal_tls_client_cert_path=pki.client_cert)
    assert ("TEMPORAL_TLS_CLIENT_CERT_PATH is set but TEMPORAL_TLS_CLIENT_KEY_PATH is not"
            in message)
    message = _bad(temporal_tls_client_key_path=pki.client_key)
    assert ("TEMPORAL_TLS_CLIENT_KEY_PATH is set but TEMPORAL_TLS_CLIENT_CERT_PATH is not"
            in message)


def test_files_must_be_readable_pem_of_the_right_kind(pki: LocalPKI, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    message = _bad(temporal_tls_server_ca_cert_path=missing)
    assert f"TEMPORAL_TLS_SERVER_CA_CERT_PATH='{missing}': cannot read the file" in message
    assert "No such file" in message
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    message = _bad(temporal_tls_server_ca_cert_path=garbage)
    assert "TEMPORAL_TLS_SERVER_CA_CERT_PATH" in message and "not a PEM certificate" in message
    # Certificate and key swapped: each error says so.
    message = _bad(temporal_tls_client_cert_path=pki.client_key,
                   temporal_tls_client_key_path=pki.client_cert)
    assert "TEMPORAL_TLS_CLIENT_CERT_PATH" in message and "swap" in message
    message = _bad(temporal_tls_client_cert_path=pki.client_cert,
                   temporal_tls_client_key_path=pki.ca_cert)
    assert "TEMPORAL_TLS_CLIENT_KEY_PATH" in message and "not a PEM private key" in message


def test_key_must_be_unencrypted_and_belong_to_the_certificate(
        pki: LocalPKI, other_pki: LocalPKI, tmp_path: Path) -> None:
    message = _bad(temporal_tls_client_cert_path=pki.client_cert,
                   temporal_tls_client_key_path=other_pki.client_key)
    assert ("TEMPORAL_TLS_CLIENT_KEY_PATH" in message
            and "is not the private key of the certificate" in message
            and "CN=stead-worker" in message)
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2")))
    message = _bad(temporal_tls_client_cert_path=pki.client_cert,
                   temporal_tls_client_key_path=locked)
    assert "TEMPORAL_TLS_CLIENT_KEY_PATH" in message and "encrypted" in message


def test_an_expired_client_certificate_is_refused_before_connecting(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old-worker")])
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(long_ago).not_valid_after(long_ago + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    message = _bad(temporal_tls_client_cert_path=tmp_path / "c.pem",
                   temporal_tls_client_key_path=tmp_path / "k.pem")
    assert "TEMPORAL_TLS_CLIENT_CERT_PATH" in message and "expired on 2020-01-31" in message


def test_tls_explicitly_off_contradicts_tls_options_and_api_keys(pki: LocalPKI) -> None:
    message = _bad(temporal_tls=False, temporal_api_key="k")
    assert "TEMPORAL_API_KEY with TEMPORAL_TLS=false" in message and "in clear" in message
    message = _bad(temporal_tls=False, temporal_tls_server_ca_cert_path=pki.ca_cert,
                   temporal_tls_server_name="x")
    assert ("TEMPORAL_TLS=false contradicts TEMPORAL_TLS_SERVER_CA_CERT_PATH, "
            "TEMPORAL_TLS_SERVER_NAME") in message
    assert "TEMPORAL_TLS_SERVER_NAME is empty" in _bad(temporal_tls_server_name=" ")
    assert "TEMPORAL_API_KEY is set but empty" in _bad(temporal_api_key="")


async def test_connect_raises_the_settings_error_before_any_traffic(
        settings: Settings, proxy: TLSTerminatingProxy, pki: LocalPKI) -> None:
    bad = settings.replace(
        temporal_address=proxy.address,
        temporal_tls_client_cert_path=pki.client_cert)
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_CLIENT_KEY_PATH is not"):
        await connect(bad)
    assert (proxy.connections, proxy.handshake_failures) == (0, [])


async def test_cli_exits_2_naming_the_variable(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings, TEMPORAL_TLS="false", TEMPORAL_API_KEY="secret-key-value")
    done = await stead("run", "ops", "is auth-service healthy?", env=env, cwd=tmp_path)
    assert done.code == 2, done.err
    assert "TEMPORAL_API_KEY with TEMPORAL_TLS=false" in done.err
    assert "secret-key-value" not in done.err + done.out


# ----------------------------------------------------------------- TLS for real


async def test_mutual_tls_through_the_proxy_runs_a_workflow(
        settings: Settings, catalog: AgentCatalog, proxy: TLSTerminatingProxy,
        pki: LocalPKI) -> None:
    """Worker and client both dial the TLS proxy with the right client certificate."""
    secured = mtls(settings, pki, proxy.address, temporal_tls_server_name="localhost")
    async with WorkerHost(secured, catalog) as host:
        client = await connect(secured)
        handle = await start_run(client, RunRequest(agent="ops",
                                                    input="is auth-service healthy?"),
                                 temporal=secured.temporal)
        result = await asyncio.wait_for(handle.result(), 60)
        assert host.client is not None
    assert result.status == "completed" and "auth-service is healthy" in (result.answer or "")
    assert proxy.connections >= 2 and proxy.handshake_failures == []


async def test_an_api_key_travels_over_tls(settings: Settings, stack: EmbeddedStack,
                                           pki: LocalPKI) -> None:
    """Temporal Cloud's shape: server-authenticated TLS plus a key (the dev server ignores
    the key; the point is that the SDK takes TLS and key together from our settings)."""
    async with TLSTerminatingProxy(upstream=stack.temporal_address,
                                   certificate=pki.server_cert, key=pki.server_key) as p:
        cloudy = settings.replace(
            temporal_address=p.address,
            temporal_tls_server_ca_cert_path=pki.ca_cert,
            temporal_api_key=SecretStr("tc-key"))
        client = await connect(cloudy)
        assert client.api_key == "tc-key"
        assert await client.count_workflows("WorkflowType = 'NoSuchType'") is not None
        assert p.connections >= 1


async def test_a_server_certificate_from_an_unknown_ca_is_refused(
        settings: Settings, proxy: TLSTerminatingProxy, pki: LocalPKI,
        other_pki: LocalPKI) -> None:
    wrong_ca = mtls(settings, pki, proxy.address,
                    temporal_tls_server_ca_cert_path=other_pki.ca_cert)
    with pytest.raises(StackError) as caught:
        await connect(wrong_ca)
    message = str(caught.value)
    assert f"cannot reach Temporal at {proxy.address} (TLS, client certificate, custom CA)" \
        in message
    assert ("not signed by a CA this client trusts: set TEMPORAL_TLS_SERVER_CA_CERT_PATH to "
            "the CA that issued it (the one given did not)") in message


async def test_a_server_name_the_certificate_lacks_is_refused(
        settings: Settings, proxy: TLSTerminatingProxy, pki: LocalPKI) -> None:
    renamed = mtls(settings, pki, proxy.address, temporal_tls_server_name="temporal.example")
    with pytest.raises(StackError, match="not valid for the name dialed: set "
                                         "TEMPORAL_TLS_SERVER_NAME"):
        await connect(renamed)


async def test_no_client_certificate_or_one_from_another_ca_is_refused(
        settings: Settings, proxy: TLSTerminatingProxy, pki: LocalPKI,
        other_pki: LocalPKI) -> None:
    anonymous = settings.replace(
        temporal_address=proxy.address,
        temporal_tls_server_ca_cert_path=pki.ca_cert)
    with pytest.raises(StackError, match="requires a client certificate it trusts "
                                         r"\(TEMPORAL_TLS_CLIENT_CERT_PATH and "
                                         r"TEMPORAL_TLS_CLIENT_KEY_PATH\)"):
        await connect(anonymous)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in proxy.handshake_failures[-1]

    intruder = anonymous.replace(
        temporal_tls_client_cert_path=other_pki.client_cert,
        temporal_tls_client_key_path=other_pki.client_key)
    with pytest.raises(StackError, match="requires a client certificate it trusts"):
        await connect(intruder)
    assert "certificate verify failed" in proxy.handshake_failures[-1]
    assert proxy.connections == 0


async def test_tls_to_a_plaintext_server_says_so(settings: Settings, pki: LocalPKI) -> None:
    assert settings.temporal.address is not None
    secured = mtls(settings, pki, settings.temporal.address)
    with pytest.raises(StackError, match="the server does not speak TLS: unset TEMPORAL_TLS"):
        await connect(secured)
