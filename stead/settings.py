"""Settings, read from the environment.

``Settings()`` reads ``STEAD_*`` variables plus the ecosystem's own names (``TEMPORAL_ADDRESS``,
``DATABASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``PINECONE_API_KEY``,
``OTEL_EXPORTER_OTLP_ENDPOINT``). An unset service address means "use the embedded default".
Use :func:`load_settings` at process start: it turns a validation error into a
:class:`~stead.errors.SettingsError` that names the variable to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from stead.errors import SettingsError
from stead.mcp import McpServerSettings, parse_mcp_servers
from stead.openapi import OpenAPISource
from stead.policy import PiiKind


def _env(name: str, *also: str) -> AliasChoices:
    return AliasChoices(f"STEAD_{name.upper()}", *also)


class ModelPrice(BaseModel):
    """List price of a model in USD per 1M tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


_DAY = 86_400.0
"""Upper bound of the duration settings: beyond a day is a typo, and inf overflows timedelta."""


class Settings(BaseSettings):
    """All knobs of a stead process. Field names map to ``STEAD_<FIELD>`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="STEAD_", extra="ignore", populate_by_name=True, frozen=True,
        # A timeout of inf (or 1e15 s) overflows timedelta when a workflow builds activity
        # options: refuse it here, where the variable can still be named.
        allow_inf_nan=False,
    )

    data_dir: Path = Path(".stead")
    """Where the embedded stack keeps its files (Temporal SQLite, PostgreSQL data, logs)."""

    temporal_address: str | None = Field(
        None, validation_alias=_env("temporal_address", "TEMPORAL_ADDRESS")
    )
    """host:port of a Temporal frontend; unset means start the embedded dev server."""
    temporal_namespace: str = Field("default", validation_alias=_env("temporal_namespace",
                                                                     "TEMPORAL_NAMESPACE"))
    task_queue: str = "stead"
    temporal_port: int = Field(7233, ge=1, le=65535)
    """Port of the embedded Temporal dev server."""
    ui_port: int = Field(8233, ge=1, le=65535)
    """Port of the embedded Temporal Web UI."""

    database_url: str | None = Field(None, validation_alias=_env("database_url", "DATABASE_URL"))
    """PostgreSQL DSN of the ledger; unset means start the embedded PostgreSQL."""
    postgres_port: int = Field(55432, ge=1, le=65535)
    """Port of the embedded PostgreSQL (loopback only)."""
    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(10, ge=1)
    migrate_database_url: str | None = None
    """DSN of the ledger's owner role, used only to apply migrations
    (``STEAD_MIGRATE_DATABASE_URL``); unset: DATABASE_URL. See ``stead/dbroles.py``."""

    temporal_tls: bool | None = Field(None, validation_alias=_env("temporal_tls", "TEMPORAL_TLS"))
    """TLS to Temporal; unset: on when a TEMPORAL_TLS_* path/name or TEMPORAL_API_KEY is set
    (as in the Temporal CLI). Checked by ``stead.tls.temporal_auth``."""
    temporal_tls_client_cert_path: Path | None = Field(None, validation_alias=_env(
        "temporal_tls_client_cert_path", "TEMPORAL_TLS_CLIENT_CERT_PATH"))
    temporal_tls_client_key_path: Path | None = Field(None, validation_alias=_env(
        "temporal_tls_client_key_path", "TEMPORAL_TLS_CLIENT_KEY_PATH"))
    temporal_tls_server_ca_cert_path: Path | None = Field(None, validation_alias=_env(
        "temporal_tls_server_ca_cert_path", "TEMPORAL_TLS_SERVER_CA_CERT_PATH"))
    temporal_tls_server_name: str | None = Field(None, validation_alias=_env(
        "temporal_tls_server_name", "TEMPORAL_TLS_SERVER_NAME"))
    temporal_api_key: SecretStr | None = Field(None, validation_alias=_env(
        "temporal_api_key", "TEMPORAL_API_KEY"))
    """API key for Temporal Cloud (sent over TLS only)."""

    openai_api_key: SecretStr | None = Field(
        None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=_env("openai_base_url", "OPENAI_BASE_URL")
    )
    openai_model: str = "gpt-4o-mini"
    model_timeout_seconds: float = Field(60.0, gt=0, le=_DAY)
    """Start-to-close timeout of one model call activity."""
    model_max_attempts: int = Field(5, ge=1)

    embedding_model: str = "text-embedding-3-small"
    """OpenAI embedding model, used when OPENAI_API_KEY is set."""
    embedding_dimension: int | None = Field(None, gt=0)
    """Vector size for models stead does not know (OpenAI-compatible servers)."""
    memory_backend: Literal["auto", "pgvector", "pinecone", "off"] = "auto"
    """Where semantic memory lives: auto = Pinecone when PINECONE_API_KEY and
    STEAD_PINECONE_HOST are set, else pgvector in the ledger database."""
    memory_ef_search: int = Field(100, ge=1, le=1000)
    """pgvector HNSW search breadth: higher recalls more, slower (see bench/RESULTS.md)."""
    pinecone_host: str | None = None
    """Data-plane host of the Pinecone index (serverless index host)."""

    pinecone_api_key: SecretStr | None = Field(
        None, validation_alias=_env("pinecone_api_key", "PINECONE_API_KEY")
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias=_env("otel_exporter_otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """Base URL of an OTLP/HTTP receiver (e.g. ``http://collector:4318``); metrics go to
    ``<endpoint>/v1/metrics``."""
    metrics_exporter: Literal["auto", "otlp", "console", "none"] = "auto"
    """Where the worker exports OpenTelemetry metrics: auto = OTLP when
    OTEL_EXPORTER_OTLP_ENDPOINT is set, else nowhere (instruments are no-ops)."""
    metrics_export_interval_seconds: float = Field(30.0, gt=0, le=_DAY)
    """How often the worker pushes metrics (stead's and Temporal SDK's own)."""
    traces_exporter: Literal["auto", "otlp", "console", "none"] = "auto"
    """Where the worker and ``stead run`` export traces: auto = OTLP (``<endpoint>/v1/traces``)
    when OTEL_EXPORTER_OTLP_ENDPOINT is set, else nowhere (no interceptor, no cost)."""
    capture_content: bool = False
    """Record prompts, completions, tool arguments/results and memory texts on spans (each
    redacted first). Off by default: spans carry names, ids, tokens and outcomes only."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, with trace, span, workflow and run ids."""
    model_prices: dict[str, ModelPrice] = Field(default_factory=lambda: {
        "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
        "gpt-4o": ModelPrice(input=2.50, output=10.00)})
    """USD per 1M tokens by model name, for ``stead metrics`` cost estimates; JSON in
    ``STEAD_MODEL_PRICES`` replaces the table. A model matches its longest listed prefix
    (``gpt-4o-mini`` prices ``gpt-4o-mini-2024-07-18``); others cost 0, labelled unpriced."""

    max_concurrent_activities: int = Field(200, ge=1)
    max_concurrent_workflow_tasks: int = Field(200, ge=1)
    max_cached_workflows: int = Field(1000, ge=0)
    sticky_schedule_to_start_seconds: float = Field(10.0, gt=0, le=_DAY)
    """How long a run's next workflow task waits for the worker that cached it before any
    worker may take it. Lower it to recover faster from a crashed worker."""
    ledger_retry_seconds: float = Field(30.0, ge=0, le=_DAY)
    """How long an activity keeps retrying an unreachable ledger before it fails its attempt."""
    max_payload_bytes: int = Field(1_500_000, ge=1024)
    """Largest tool result or model answer (serialized JSON) that may travel through workflow
    history; a bigger one fails its call at once (``PayloadTooLarge``, not retried) instead of
    being retried against Temporal's 2 MiB payload limit."""
    blob_threshold_bytes: int = Field(8192, ge=0)
    """A tool result whose JSON is larger travels through history as a reference to
    ``stead_blobs`` (``{"$blob": digest, "bytes": n, "preview": ...}``); the model still sees
    it in full. 0 stores every result. See ``stead.blobs``."""

    codec_keys: SecretStr | None = None
    """Payload encryption keys, a JSON object of key id -> base64 of 32 random bytes. Set:
    everything stead stores in Temporal's history is AES-256-GCM encrypted (``stead.codec``;
    search attributes stay readable). Keep retired keys while their histories are kept."""
    codec_key_id: str | None = None
    """Id of the key in ``STEAD_CODEC_KEYS`` that encrypts new payloads (optional with one key)."""
    codec_server_token: SecretStr | None = None
    """Bearer token ``stead codec-server`` requires on /encode and /decode."""
    codec_cors_origins: str = ""
    """Comma-separated Web UI origins (``http://localhost:8233``) allowed to call the codec
    server from a browser."""
    codec_server_url: str | None = None
    """Codec server URL the embedded Web UI decodes payloads with (``--ui-codec-endpoint``)."""
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    """Tool credentials by name, a JSON object (``STEAD_SECRETS``); each ``STEAD_SECRET_<NAME>``
    variable adds one and wins. Only a tool that declares a secret can read it
    (``ctx.secret(name)``); names and lengths are checked when the worker starts
    (``stead.secrets.Secrets.from_settings``), and the ledger and logs redact every value."""
    redact_patterns: list[str] | dict[str, str] = Field(default_factory=list)
    """More regular expressions the ledger and logs redact (configured personal data such as
    employee ids): a JSON list, or a JSON object of label -> regex for ``[REDACTED:<label>]``."""
    redact_pii: list[PiiKind] = Field(default_factory=lambda: list(get_args(PiiKind)))
    """Personal-data kinds the ledger and logs redact, a JSON list (``[]``: none)."""
    openapi_sources: dict[str, OpenAPISource] = Field(default_factory=dict)
    """OpenAPI operations that become tools, a JSON object of source name -> ``{"document",
    "base_url", "operations", "agents", "auth", "overrides"}`` (``STEAD_OPENAPI_SOURCES``);
    a worker adds them to those agents with ``stead.openapi.with_openapi_sources``."""

    mcp_servers: dict[str, McpServerSettings] = Field(default_factory=dict)
    """MCP servers whose tools agents may call, a JSON object (``STEAD_MCP_SERVERS``) of
    server name -> ``{"transport": "stdio" | "http", "command", "env", "url", "headers",
    "agents", "tools": {tool: {"side_effect", "risk", "idempotent", "timeout_seconds",
    "max_attempts", "reconcile"}}}``; see ``stead.mcp``. Agents may also declare servers in
    Python (``Agent(mcp=[...])``)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    api_secret: SecretStr | None = None
    """HS256 key of the HTTP API's bearer tokens (at least 32 characters); unset: a random
    key kept in ``<data dir>/api-secret``, shared by ``stead api``, ``stead up`` and
    ``stead api token`` on this machine (see ``stead.api``)."""
    api_host: str = "127.0.0.1"
    """Interface the HTTP API listens on (``stead api``, ``stead up``)."""
    api_port: int = Field(8000, ge=1, le=65535)
    """Port of the HTTP API."""

    @field_validator("api_secret")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _mcp_servers(cls, v: object) -> object:
        return parse_mcp_servers(v)

    @field_validator("redact_patterns")
    @classmethod
    def _compilable(cls, v: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        from stead.secrets import compile_patterns

        compile_patterns(v)
        return v

    @property
    def migration_database_url(self) -> str | None:
        """Where migrations run: STEAD_MIGRATE_DATABASE_URL, else DATABASE_URL."""
        return self.migrate_database_url or self.database_url

    @property
    def use_openai(self) -> bool:
        return self.openai_api_key is not None


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ``SettingsError`` naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except EnvParseError as err:  # a JSON-valued variable (STEAD_MODEL_PRICES) is not JSON
        field = str(err).partition('field "')[2].partition('"')[0]
        raise SettingsError(f"invalid setting: {_env_name(field)} must be JSON ({err})") from None
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else "?"
            problems.append(f"{_env_name(field)}={e.get('input')!r}: {e['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None


def _env_name(field: str) -> str:
    """The variable(s) users set for ``field``, which may be a field name or, in pydantic's
    error locations, one of its aliases (``stead_temporal_tls``)."""
    if field not in Settings.model_fields:
        for name, f in Settings.model_fields.items():
            if isinstance(f.validation_alias, AliasChoices) and field.lower() in (
                    str(c).lower() for c in f.validation_alias.choices):
                field = name
                break
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return " or ".join(str(c) for c in info.validation_alias.choices)
    return f"STEAD_{field.upper()}"
