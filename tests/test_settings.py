"""Settings in sections: the variables they read, how code builds and copies them, and errors
that name the variable to fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from stead.errors import SettingsError
from stead.settings import VARIABLES, ModelPrice, Settings, TemporalSettings, load_settings

# The names users and deployments set today (docker-compose.yml, deploy/, the README): a
# restructure of the settings must not rename one.
NAMES = {
    "DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PINECONE_API_KEY", "TEMPORAL_ADDRESS", "TEMPORAL_API_KEY", "TEMPORAL_NAMESPACE",
    "TEMPORAL_TLS", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_NAME",
    *(f"STEAD_{n.upper()}" for n in (
        "agent_models",
        "auto_upgrade_agents", "build_id", "deployment_name",
        "api_host", "api_port", "api_secret", "blob_threshold_bytes", "capture_content",
        "codec_cors_origins", "codec_keys", "codec_key_id", "codec_server_token",
        "codec_server_url", "database_url", "data_dir", "db_command_timeout_seconds",
        "db_connect_timeout_seconds", "db_pool_max", "db_pool_min",
        "embedder", "embedder_api_key", "embedder_base_url",
        "embedding_dimension", "embedding_model", "eval_every_seconds", "eval_sample",
        "evict_parked_after_seconds",
        "ledger_retry_seconds", "log_format",
        "log_level", "max_cached_workflows", "max_concurrent_activities",
        "max_concurrent_workflow_tasks", "max_payload_bytes", "mcp_servers", "memory_backend",
        "memory_ef_search", "metrics_exporter", "metrics_export_interval_seconds",
        "migrate_database_url", "model_max_attempts", "quota_reservation_ttl_seconds",
        "tenant_quotas", "admission_recheck_seconds", "admission_recheck_max_seconds",
        "model_prices", "model_stream",
        "model_timeout_seconds",
        "oidc_algorithms", "oidc_audience", "oidc_claims", "oidc_http_timeout_seconds",
        "oidc_issuer", "oidc_jwks_cache_seconds", "oidc_jwks_refetch_seconds", "oidc_jwks_url",
        "oidc_leeway_seconds",
        "openai_api_key", "openai_base_url", "openai_model", "openapi_sources",
        "otel_exporter_otlp_endpoint", "pinecone_api_key", "pinecone_host", "postgres_port",
        "redact_patterns", "redact_pii", "secrets", "sticky_schedule_to_start_seconds",
        "task_queue", "temporal_address", "temporal_api_key",
        "temporal_keepalive_interval_seconds", "temporal_keepalive_timeout_seconds",
        "temporal_namespace",
        "temporal_port", "temporal_tls", "temporal_tls_client_cert_path",
        "temporal_tls_client_key_path", "temporal_tls_server_ca_cert_path",
        "temporal_tls_server_name", "traces_exporter", "ui_port", "workflow_sandbox")),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_sections_read_exactly_the_variables_stead_always_read() -> None:
    assert set(VARIABLES) == NAMES


@pytest.mark.parametrize(("variable", "value", "read"), [
    ("TEMPORAL_ADDRESS", "t.example:7233", lambda s: s.temporal.address),
    ("STEAD_TASK_QUEUE", "q9", lambda s: s.temporal.task_queue),
    ("TEMPORAL_TLS_SERVER_NAME", "t.example", lambda s: s.temporal.tls_server_name),
    ("STEAD_DATA_DIR", "/tmp/d", lambda s: s.stack.data_dir),
    ("DATABASE_URL", "postgresql://u@h/db", lambda s: s.ledger.database_url),
    ("STEAD_DB_POOL_MAX", "7", lambda s: s.ledger.pool_max),
    ("OPENAI_BASE_URL", "http://llm:8000/v1", lambda s: s.models.base_url),
    ("STEAD_MODEL_PRICES", '{"m": {"input": 1, "output": 2}}', lambda s: s.models.prices),
    ("STEAD_MEMORY_BACKEND", "off", lambda s: s.memory.backend),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", lambda s: s.telemetry.otlp_endpoint),
    ("STEAD_MAX_CACHED_WORKFLOWS", "3", lambda s: s.worker.max_cached_workflows),
    ("STEAD_CODEC_CORS_ORIGINS", "http://ui", lambda s: s.codec.cors_origins),
    ("STEAD_REDACT_PII", '["email"]', lambda s: s.security.redact_pii),
    ("STEAD_API_PORT", "8123", lambda s: s.api.port),
])
def test_each_variable_lands_in_its_section(clean_env: pytest.MonkeyPatch, variable: str,
                                            value: str, read: Callable[[Settings], object]) -> None:
    expected = {"STEAD_DATA_DIR": Path("/tmp/d"), "STEAD_DB_POOL_MAX": 7,
                "STEAD_MODEL_PRICES": {"m": ModelPrice(input=1, output=2)},
                "STEAD_MAX_CACHED_WORKFLOWS": 3, "STEAD_REDACT_PII": ["email"],
                "STEAD_API_PORT": 8123}.get(variable, value)
    assert read(load_settings()) != expected
    clean_env.setenv(variable, value)
    assert read(load_settings()) == expected


def test_the_stead_name_wins_over_the_ecosystem_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TEMPORAL_ADDRESS", "theirs:7233")
    clean_env.setenv("STEAD_TEMPORAL_ADDRESS", "ours:7233")
    assert load_settings().temporal.address == "ours:7233"


def test_code_builds_settings_by_flat_name_or_section_and_copies_them_validated(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("STEAD_TASK_QUEUE", "from-env")
    s = Settings(data_dir=tmp_path, temporal_port=7300, openai_api_key="sk-123456789")
    assert (s.stack.data_dir, s.stack.temporal_port, s.temporal.task_queue) == (
        tmp_path, 7300, "from-env")
    assert s.models.use_openai
    whole = Settings(temporal=TemporalSettings(task_queue="q1"), temporal_namespace="ns")
    assert (whole.temporal.task_queue, whole.temporal.namespace) == ("q1", "ns")

    copy = s.replace(task_queue="q2", memory_backend="off", api_secret=SecretStr("k" * 32))
    assert (copy.temporal.task_queue, copy.memory.backend, copy.stack.temporal_port) == (
        "q2", "off", 7300)
    assert s.temporal.task_queue == "from-env", "replace copies; the original stays"
    with pytest.raises(ValueError, match="at least 32 characters"):
        s.replace(api_secret=SecretStr("short"))
    with pytest.raises(TypeError, match="no setting 'temporal_adress'"):
        s.replace(temporal_adress="typo:7233")
    with pytest.raises(TypeError, match=r"use replace\(task_queue=\.\.\.\)"):
        s.model_copy(update={"task_queue": "q3"})


def test_errors_name_the_variable_of_a_section_field(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STEAD_DB_POOL_MAX", "0")
    clean_env.setenv("TEMPORAL_TLS", "maybe")
    clean_env.setenv("STEAD_WORKFLOW_SANDBOX", "sometimes")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "STEAD_DB_POOL_MAX='0': Input should be greater than or equal to 1" in str(err.value)
    assert "STEAD_TEMPORAL_TLS or TEMPORAL_TLS='maybe'" in str(err.value)
    assert "STEAD_WORKFLOW_SANDBOX='sometimes'" in str(err.value)
    clean_env.delenv("STEAD_DB_POOL_MAX")
    clean_env.delenv("TEMPORAL_TLS")
    clean_env.delenv("STEAD_WORKFLOW_SANDBOX")
    clean_env.setenv("STEAD_SECRETS", "{not json")
    with pytest.raises(SettingsError, match="invalid setting: STEAD_SECRETS must be JSON"):
        load_settings()
