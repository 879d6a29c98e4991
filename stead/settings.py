"""Settings, read from the environment, in one section per concern.

    settings = load_settings()           # SettingsError naming the variable to fix
    settings.temporal.address            # TEMPORAL_ADDRESS; None: the embedded dev server
    Settings(data_dir=tmp, temporal_port=7300).replace(task_queue="q2")   # in tests

``Settings`` holds the sections (``stack``, ``temporal``, ``ledger``, ``models``, ``memory``,
``telemetry``, ``worker``, ``codec``, ``security``, ``integrations``, ``api``); a function takes
the section it needs. Each section field reads the variables its :class:`Env` names: the
``STEAD_*`` variable of its flat name plus the ecosystem's own names (``TEMPORAL_ADDRESS``,
``DATABASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``PINECONE_API_KEY``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, the Temporal CLI's ``TEMPORAL_TLS*`` / ``TEMPORAL_API_KEY``).
Keyword arguments of ``Settings(...)`` and ``replace(...)`` are those flat names (the variable
without ``STEAD_``, lowercase), or whole sections (``Settings(temporal=TemporalSettings(...))``).
An unset service address means "use the embedded default".

This module imports only the declarations its fields hold (``stead.integrations.mcp_spec``,
``stead.integrations.openapi_spec``), never the code that uses the settings.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stead.contracts.models import ModelEndpoint
from stead.contracts.policy import PiiKind
from stead.contracts.quota import ANY_TENANT, TenantQuota
from stead.errors import SettingsError
from stead.integrations.mcp_spec import McpServerSettings, parse_mcp_servers
from stead.integrations.openapi_spec import OpenAPISource


class Env:
    """The variables a section field reads, first set wins: ``STEAD_<NAME>``, then ``also``."""

    __slots__ = ("also", "name")

    def __init__(self, name: str, *also: str) -> None:
        self.name = name
        """The flat name: ``STEAD_<NAME>`` and the keyword of ``Settings(...)``/``replace()``."""
        self.also = also

    @property
    def variables(self) -> tuple[str, ...]:
        return (f"STEAD_{self.name.upper()}", *self.also)


_DAY = 86_400.0
"""Upper bound of the duration settings: beyond a day is a typo, and inf overflows timedelta."""


@functools.cache
def _package_version() -> str:
    """The installed stead package's version: the build id when ``STEAD_BUILD_ID`` is unset."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stead")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "dev"


class _Section(BaseModel):
    # A timeout of inf (or 1e15 s) overflows timedelta when a workflow builds activity
    # options: refuse it here, where the variable can still be named.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StackSettings(_Section):
    """The embedded stack: where it keeps its files and the ports it listens on."""

    data_dir: Annotated[Path, Env("data_dir")] = Path(".stead")
    """Where the embedded stack keeps its files (Temporal SQLite, PostgreSQL data, logs)."""
    temporal_port: Annotated[int, Env("temporal_port")] = Field(7233, ge=1, le=65535)
    """Port of the embedded Temporal dev server (and where an unset address connects)."""
    ui_port: Annotated[int, Env("ui_port")] = Field(8233, ge=1, le=65535)
    """Port of the embedded Temporal Web UI."""
    postgres_port: Annotated[int, Env("postgres_port")] = Field(55432, ge=1, le=65535)
    """Port of the embedded PostgreSQL (loopback only)."""


class TemporalSettings(_Section):
    """The connection to Temporal: address, namespace, task queue, TLS and API key."""

    address: Annotated[str | None, Env("temporal_address", "TEMPORAL_ADDRESS")] = None
    """host:port of a Temporal frontend; unset means start the embedded dev server."""
    namespace: Annotated[str, Env("temporal_namespace", "TEMPORAL_NAMESPACE")] = "default"
    task_queue: Annotated[str, Env("task_queue")] = "stead"
    tls: Annotated[bool | None, Env("temporal_tls", "TEMPORAL_TLS")] = None
    """TLS to Temporal; unset: on when a TEMPORAL_TLS_* path/name or TEMPORAL_API_KEY is set
    (as in the Temporal CLI). Checked by ``stead.security.tls.temporal_auth``."""
    tls_client_cert_path: Annotated[Path | None, Env(
        "temporal_tls_client_cert_path", "TEMPORAL_TLS_CLIENT_CERT_PATH")] = None
    tls_client_key_path: Annotated[Path | None, Env(
        "temporal_tls_client_key_path", "TEMPORAL_TLS_CLIENT_KEY_PATH")] = None
    tls_server_ca_cert_path: Annotated[Path | None, Env(
        "temporal_tls_server_ca_cert_path", "TEMPORAL_TLS_SERVER_CA_CERT_PATH")] = None
    tls_server_name: Annotated[str | None, Env(
        "temporal_tls_server_name", "TEMPORAL_TLS_SERVER_NAME")] = None
    api_key: Annotated[SecretStr | None, Env("temporal_api_key", "TEMPORAL_API_KEY")] = None
    """API key for Temporal Cloud (sent over TLS only)."""
    deployment_name: Annotated[str | None, Env("deployment_name")] = None
    """Temporal Worker Deployment the worker belongs to (``STEAD_DEPLOYMENT_NAME``); set, the
    worker declares the version ``<deployment_name>.<build_id>`` and a run stays on the build
    that started it (pinned) unless its agent is in ``auto_upgrade_agents``; unset: no
    versioning, every worker of the task queue takes any run. See docs/deployment.md,
    "Versioned rollouts", and ``stead deploy``."""
    build_id: Annotated[str, Env("build_id")] = Field(default_factory=_package_version)
    """Build id of this worker's code within ``deployment_name`` (``STEAD_BUILD_ID``); unset:
    the installed stead package's version. Two builds with different code need different
    ids: a pinned run only ever meets the code of its own build."""
    auto_upgrade_agents: Annotated[list[str], Env("auto_upgrade_agents")] = Field(
        default_factory=list)
    """Agents whose runs move to the deployment's current build at their next workflow task
    instead of staying pinned (a JSON list, ``STEAD_AUTO_UPGRADE_AGENTS``): their workflow code
    must replay across builds (the replay gate, ``stead replay``). Checked against the
    worker's catalog when it starts."""
    keepalive_interval_seconds: Annotated[float, Env("temporal_keepalive_interval_seconds")] = \
        Field(30.0, ge=1, le=_DAY)
    """How often the client pings Temporal over HTTP/2 (the SDK's default). The ping is what
    notices a half-dead connection (nothing comes back, no reset): until then a worker's
    polls hang on it. Servers refuse pings much more often than every 10 s."""
    keepalive_timeout_seconds: Annotated[float, Env("temporal_keepalive_timeout_seconds")] = \
        Field(15.0, gt=0, le=_DAY)
    """How long a ping may go unanswered before the connection is dropped and made again: a
    worker behind a link that went half-dead is deaf for up to interval + timeout (45 s)."""

    @field_validator("deployment_name")
    @classmethod
    def _deployment_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # What Temporal refuses (measured on the dev server, Server 1.32): "." and ":" separate
        # a version's deployment name from its build id, "__" starts its reserved names.
        if not v.strip():
            raise ValueError("must not be empty (unset it for no versioning)")
        if "." in v or ":" in v:
            raise ValueError("must not contain '.' or ':' (Temporal separates the deployment "
                             "name from the build id with them)")
        if v.startswith("__"):
            raise ValueError("must not start with '__' (reserved by Temporal)")
        if len(v) > 1000 or v != v.strip() or any(not c.isprintable() for c in v):
            raise ValueError("must be at most 1000 printable characters without leading or "
                             "trailing spaces")
        return v

    @field_validator("build_id")
    @classmethod
    def _build_id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty (unset it for the package version)")
        if v.startswith("__"):
            raise ValueError("must not start with '__' (reserved by Temporal, e.g. "
                             "__unversioned__)")
        if len(v) > 255:
            raise ValueError(f"is {len(v)} characters; Temporal takes at most 255")
        if v != v.strip() or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must not contain spaces or control characters")
        return v

    @field_validator("auto_upgrade_agents")
    @classmethod
    def _agent_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError("agent names must not be empty")
        return v

    @property
    def versioned(self) -> bool:
        """Workers declare a Worker Deployment version (``STEAD_DEPLOYMENT_NAME`` is set)."""
        return self.deployment_name is not None


class LedgerSettings(_Section):
    """The ledger's PostgreSQL: where it is, its pool, and how long to wait for it."""

    database_url: Annotated[str | None, Env("database_url", "DATABASE_URL")] = None
    """PostgreSQL DSN of the ledger; unset means start the embedded PostgreSQL."""
    migrate_database_url: Annotated[str | None, Env("migrate_database_url")] = None
    """DSN of the ledger's owner role, used only to apply migrations
    (``STEAD_MIGRATE_DATABASE_URL``); unset: DATABASE_URL. See ``stead/storage/dbroles.py``."""
    pool_min: Annotated[int, Env("db_pool_min")] = Field(1, ge=0)
    pool_max: Annotated[int, Env("db_pool_max")] = Field(10, ge=1)
    retry_seconds: Annotated[float, Env("ledger_retry_seconds")] = Field(30.0, ge=0, le=_DAY)
    """How long an activity keeps retrying an unreachable ledger before it fails its attempt."""
    blob_threshold_bytes: Annotated[int, Env("blob_threshold_bytes")] = Field(8192, ge=0)
    """A tool result whose JSON is larger travels through history as a reference to
    ``stead_blobs`` (``{"$blob": digest, "bytes": n, "preview": ...}``); the model still sees
    it in full. 0 stores every result. See ``stead.storage.blobs``."""
    command_timeout_seconds: Annotated[float, Env("db_command_timeout_seconds")] = Field(
        60.0, gt=0, le=_DAY)
    """Longest a ledger statement may take. Past it the statement counts as the database
    being away (the connection is dropped, the operation retried on another): a link that went
    half-dead mid-statement would otherwise hang its caller — and its cancellation — forever."""
    connect_timeout_seconds: Annotated[float, Env("db_connect_timeout_seconds")] = Field(
        10.0, gt=0, le=_DAY)
    """Longest one connection attempt to the ledger may take (asyncpg's default is 60 s)."""

    @property
    def migration_database_url(self) -> str | None:
        """Where migrations run: STEAD_MIGRATE_DATABASE_URL, else DATABASE_URL."""
        return self.migrate_database_url or self.database_url


class ModelPrice(BaseModel):
    """List price of a model in USD per 1M tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class ModelSettings(_Section):
    """The chat model: the OpenAI(-compatible) server, the model call's limits, list prices."""

    api_key: Annotated[SecretStr | None, Env("openai_api_key", "OPENAI_API_KEY")] = None
    """Set: the worker calls OpenAI (or ``base_url``); unset: the agents' offline models."""
    base_url: Annotated[str | None, Env("openai_base_url", "OPENAI_BASE_URL")] = None
    model: Annotated[str, Env("openai_model")] = "gpt-4o-mini"
    timeout_seconds: Annotated[float, Env("model_timeout_seconds")] = Field(60.0, gt=0,
                                                                            le=_DAY)
    """Start-to-close timeout of one model call activity."""
    max_attempts: Annotated[int, Env("model_max_attempts")] = Field(5, ge=1)
    prices: Annotated[dict[str, ModelPrice], Env("model_prices")] = Field(
        default_factory=lambda: {"gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
                                 "gpt-4o": ModelPrice(input=2.50, output=10.00)})
    """USD per 1M tokens by model name, for ``stead metrics`` cost estimates; JSON in
    ``STEAD_MODEL_PRICES`` replaces the table. A model matches its longest listed prefix
    (``gpt-4o-mini`` prices ``gpt-4o-mini-2024-07-18``); others cost 0, labelled unpriced."""
    agent_models: Annotated[dict[str, list[ModelEndpoint]], Env("agent_models")] = Field(
        default_factory=dict)
    """Model chains by agent name, replacing what the agent declares (``Agent(models=...)``):
    JSON in ``STEAD_AGENT_MODELS``, e.g. ``{"ops": [{"model": "gpt-5-mini", "api":
    "responses"}, {"model": "gpt-4o-mini"}]}``. Checked when the worker starts."""
    stream: Annotated[bool, Env("model_stream")] = True
    """Ask the model server to stream (``stream=True``), so each call's text reaches the token
    stream (``stead run --stream``, ``GET /v1/runs/{id}/events``) as it is written; false, for
    servers that cannot stream: whole answers, each published as one piece."""

    @property
    def use_openai(self) -> bool:
        return self.api_key is not None


class MemorySettings(_Section):
    """Semantic memory: the embedder, chosen on its own, and the vector store (pgvector or
    Pinecone)."""

    embedder: Annotated[Literal["auto", "local", "openai", "none"], Env("embedder")] = "auto"
    """Which embedder turns memory texts into vectors: ``local`` = the offline all-MiniLM-L6-v2
    (384 dimensions, the ``embeddings`` extra); ``openai`` = an OpenAI-compatible embeddings
    endpoint (``embedder_base_url``, ``embedder_api_key``, ``embedding_model``,
    ``embedding_dimension``); ``none`` = memory off. ``auto``: ``openai`` when one of those four
    is set, else ``local`` (the hashing embedder, with a warning, when the extra is missing).
    The chat model's OPENAI_API_KEY and OPENAI_BASE_URL never choose it. Checked when a worker
    starts (``stead.storage.memory.embedders.embedder_config``)."""
    embedder_base_url: Annotated[str | None, Env("embedder_base_url")] = None
    """Base URL of the ``openai`` embedder's server (``http://127.0.0.1:8080/v1``); unset:
    OpenAI's own API. OPENAI_BASE_URL is the chat model's and is not used for embeddings."""
    embedder_api_key: Annotated[SecretStr | None, Env("embedder_api_key")] = None
    """Key of the ``openai`` embedder's server; unset: OPENAI_API_KEY, but only when the
    embeddings go to the chat model's server too (both base URLs unset, or the same)."""
    embedding_model: Annotated[str | None, Env("embedding_model")] = None
    """Model of the ``openai`` embedder; unset: ``text-embedding-3-small``."""
    embedding_dimension: Annotated[int | None, Env("embedding_dimension")] = Field(None, gt=0)
    """Vector size of the ``openai`` embedder: needed for models stead does not know (other
    servers' models); below a ``text-embedding-3-*`` model's own, the API shortens vectors."""
    backend: Annotated[Literal["auto", "pgvector", "pinecone", "off"],
                       Env("memory_backend")] = "auto"
    """Where semantic memory lives: auto = Pinecone when PINECONE_API_KEY and
    STEAD_PINECONE_HOST are set, else pgvector in the ledger database."""
    ef_search: Annotated[int, Env("memory_ef_search")] = Field(100, ge=1, le=1000)
    """pgvector HNSW search breadth: higher recalls more, slower (see bench/RESULTS.md)."""
    pinecone_host: Annotated[str | None, Env("pinecone_host")] = None
    """Data-plane host of the Pinecone index (serverless index host)."""
    pinecone_api_key: Annotated[SecretStr | None,
                                Env("pinecone_api_key", "PINECONE_API_KEY")] = None

    @field_validator("embedder_base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL such as "
                             "http://127.0.0.1:8080/v1")
        return v

    @property
    def off(self) -> bool:
        """Memory is off: ``STEAD_MEMORY_BACKEND=off`` or ``STEAD_EMBEDDER=none``."""
        return self.backend == "off" or self.embedder == "none"


_Exporter = Literal["auto", "otlp", "console", "none"]


class TelemetrySettings(_Section):
    """Metrics, traces and logs: where they go and what they carry."""

    otlp_endpoint: Annotated[str | None, Env("otel_exporter_otlp_endpoint",
                                             "OTEL_EXPORTER_OTLP_ENDPOINT")] = None
    """Base URL of an OTLP/HTTP receiver (e.g. ``http://collector:4318``); metrics go to
    ``<endpoint>/v1/metrics``."""
    metrics_exporter: Annotated[_Exporter, Env("metrics_exporter")] = "auto"
    """Where the worker exports OpenTelemetry metrics: auto = OTLP when
    OTEL_EXPORTER_OTLP_ENDPOINT is set, else nowhere (instruments are no-ops)."""
    metrics_export_interval_seconds: Annotated[float, Env("metrics_export_interval_seconds")] \
        = Field(30.0, gt=0, le=_DAY)
    """How often the worker pushes metrics (stead's and Temporal SDK's own)."""
    traces_exporter: Annotated[_Exporter, Env("traces_exporter")] = "auto"
    """Where the worker and ``stead run`` export traces: auto = OTLP (``<endpoint>/v1/traces``)
    when OTEL_EXPORTER_OTLP_ENDPOINT is set, else nowhere (no interceptor, no cost)."""
    capture_content: Annotated[bool, Env("capture_content")] = False
    """Record prompts, completions, tool arguments/results and memory texts on spans (each
    redacted first). Off by default: spans carry names, ids, tokens and outcomes only."""
    log_format: Annotated[Literal["text", "json"], Env("log_format")] = "text"
    """``json``: one JSON object per log line, with trace, span, workflow and run ids."""
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], Env("log_level")] = "INFO"


class WorkerSettings(_Section):
    """One worker's capacity and the largest payload it lets into history."""

    max_concurrent_activities: Annotated[int, Env("max_concurrent_activities")] = Field(200,
                                                                                        ge=1)
    max_concurrent_workflow_tasks: Annotated[int, Env("max_concurrent_workflow_tasks")] = \
        Field(200, ge=1)
    max_cached_workflows: Annotated[int, Env("max_cached_workflows")] = Field(1000, ge=0)
    """Runs the worker keeps in memory between their workflow tasks (Temporal's sticky cache,
    least recently used out first). A cached run's next task goes on where it stopped; an
    evicted run is first rebuilt by replaying its whole history, once, and is cached again.

    1000 from the data (``python -m bench.parked``, 2 cores, under load): a run waiting for
    an approval after one model call holds 92 KiB while cached and 15 KiB once evicted, and
    its approval-to-result takes 65 ms evicted against 61 ms cached; after 50 tool calls it
    holds 1.8 MiB (Temporal core keeps every scheduled activity's input, and each model call
    carries the transcript) and takes 306 ms evicted against 66 ms. A waiting run is the least
    recently used, so it is what a full cache evicts first (a ``state`` query, as the Web UI
    and ``stead pending`` send, touches it again); stead evicts it itself once it has waited
    ``evict_parked_after_seconds``. Fewer slots than runs in flight make runs
    evict each other and replay on every task: 200 runs in flight with 100 slots finished 3.1
    runs/s instead of 10.6, at 456 ms of CPU per run instead of 173 (with 200 slots: no
    change; ``python -m bench.peers.experiment cache-100 --levels 200``). Lower it to bound
    memory where many long runs wait (at most
    ``max_cached_workflows`` × a run's size); 0 replays every task, and stalls runs whose local
    activities are in flight when many run at once."""
    evict_parked_after_seconds: Annotated[float, Env("evict_parked_after_seconds")] = Field(
        30.0, ge=0, le=_DAY)
    """A run that has waited this long on a person (an approval, a conversation's next
    message), with nothing else in flight, leaves the cache (``stead.parking``); 0 keeps it
    cached until the LRU cache pushes it out. Once out, a parked run holds a fraction of its
    memory (30 KiB instead of 114 for a short run), and resuming it replays its history
    once: tens of milliseconds for a short run, a few hundred after 50 tool calls, against the
    minutes a person takes (``python -m bench.parked``: bench/RESULTS.md). 30 s lets an
    approval given at once, as in a demo or a chat, resume from the cache."""
    sticky_schedule_to_start_seconds: Annotated[float, Env(
        "sticky_schedule_to_start_seconds")] = Field(10.0, gt=0, le=_DAY)
    """How long a run's next workflow task waits for the worker that cached it before any
    worker may take it. Lower it to recover faster from a crashed worker."""
    max_payload_bytes: Annotated[int, Env("max_payload_bytes")] = Field(1_500_000, ge=1024)
    """Largest tool result or model answer (serialized JSON) that may travel through workflow
    history; a bigger one fails its call at once (``PayloadTooLarge``, not retried) instead of
    being retried against Temporal's 2 MiB payload limit."""
    workflow_sandbox: Annotated[bool, Env("workflow_sandbox")] = False
    """Run stead's workflows in Temporal's workflow sandbox. Off by default: every module the
    workflows use is stead's own and passed through the sandbox, whose checks do not reach
    code imported outside it, so it guards little here and costs each run 8-17% of its latency
    and CPU (``python -m bench.profile stead-local --no-profile``, with and without the
    setting: bench/RESULTS.md). stead keeps its workflow code
    deterministic by a test that reads it (``tests/test_workflow_contracts.py``) and by
    replaying the recorded corpus. On, Temporal also refuses a restricted call (the clock,
    randomness, I/O) that graph conditions or evaluators (they run in the workflow) reach
    through an import made while the workflow runs; what their modules imported at load time
    is not checked either way."""


class CodecSettings(_Section):
    """Payload encryption (``stead.security.codec``) and the codec server the Web UI decodes
    with."""

    keys: Annotated[SecretStr | None, Env("codec_keys")] = None
    """Payload encryption keys, a JSON object of key id -> base64 of 32 random bytes. Set:
    everything stead stores in Temporal's history is AES-256-GCM encrypted
    (``stead.security.codec``; search attributes stay readable). Keep retired keys while their
    histories are kept."""
    key_id: Annotated[str | None, Env("codec_key_id")] = None
    """Id of the key in ``STEAD_CODEC_KEYS`` that encrypts new payloads (optional with one key)."""
    server_token: Annotated[SecretStr | None, Env("codec_server_token")] = None
    """Bearer token ``stead codec-server`` requires on /encode and /decode."""
    cors_origins: Annotated[str, Env("codec_cors_origins")] = ""
    """Comma-separated Web UI origins (``http://localhost:8233``) allowed to call the codec
    server from a browser."""
    server_url: Annotated[str | None, Env("codec_server_url")] = None
    """Codec server URL the embedded Web UI decodes payloads with (``--ui-codec-endpoint``)."""


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


class SecuritySettings(_Section):
    """Tool credentials and what the ledger and logs redact."""

    secrets: Annotated[dict[str, SecretStr], Env("secrets")] = Field(default_factory=dict)
    """Tool credentials by name, a JSON object (``STEAD_SECRETS``); each ``STEAD_SECRET_<NAME>``
    variable adds one and wins. Only a tool that declares a secret can read it
    (``ctx.secret(name)``); names and lengths are checked when the worker starts
    (``stead.security.secrets.Secrets.from_settings``), and the ledger and logs redact every
    value."""
    redact_patterns: Annotated[list[str] | dict[str, str], Env("redact_patterns")] = Field(
        default_factory=list)
    """More regular expressions the ledger and logs redact (configured personal data such as
    employee ids): a JSON list, or a JSON object of label -> regex for ``[REDACTED:<label>]``."""
    redact_pii: Annotated[list[PiiKind], Env("redact_pii")] = Field(
        default_factory=lambda: list(get_args(PiiKind)))
    """Personal-data kinds the ledger and logs redact, a JSON list (``[]``: none)."""

    @field_validator("redact_patterns")
    @classmethod
    def _compilable(cls, v: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        compile_patterns(v)
        return v


class IntegrationSettings(_Section):
    """Tools from outside: MCP servers and OpenAPI operations."""

    mcp_servers: Annotated[dict[str, McpServerSettings], Env("mcp_servers")] = Field(
        default_factory=dict)
    """MCP servers whose tools agents may call, a JSON object (``STEAD_MCP_SERVERS``) of
    server name -> ``{"transport": "stdio" | "http", "command", "env", "url", "headers",
    "agents", "tools": {tool: {"side_effect", "risk", "idempotent", "timeout_seconds",
    "max_attempts", "reconcile"}}}``; see ``stead.integrations.mcp``. Agents may also declare
    servers in Python (``Agent(mcp=[...])``)."""
    openapi_sources: Annotated[dict[str, OpenAPISource], Env("openapi_sources")] = Field(
        default_factory=dict)
    """OpenAPI operations that become tools, a JSON object of source name -> ``{"document",
    "base_url", "operations", "agents", "auth", "overrides"}`` (``STEAD_OPENAPI_SOURCES``);
    a worker adds them to those agents with ``stead.integrations.openapi.with_openapi_sources``."""

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _mcp_servers(cls, v: object) -> object:
        return parse_mcp_servers(v)


class ApiSettings(_Section):
    """The HTTP API: its token key and where it listens."""

    secret: Annotated[SecretStr | None, Env("api_secret")] = None
    """HS256 key of the HTTP API's bearer tokens (at least 32 characters); unset: a random
    key kept in ``<data dir>/api-secret``, shared by ``stead api``, ``stead up`` and
    ``stead api token`` on this machine (see ``stead.api``)."""
    host: Annotated[str, Env("api_host")] = "127.0.0.1"
    """Interface the HTTP API listens on (``stead api``, ``stead up``)."""
    port: Annotated[int, Env("api_port")] = Field(8000, ge=1, le=65535)
    """Port of the HTTP API."""

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v


_OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                    "ES512")
"""Signature algorithms an identity provider's tokens may use: public-key ones only (``none``
and the HS* family would let anyone holding the public JWKS forge a token)."""
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def secure_url(url: str) -> str:
    """``url`` if it is https, or http to this machine (a local test provider)."""
    m = re.fullmatch(r"(https?)://(\[[^\]]+\]|[^/:?#\s]+)(:\d+)?([/?#]\S*)?", url)
    if m is None:
        raise ValueError("must be an https:// URL such as https://login.example.com/realms/acme")
    host = m.group(2).strip("[]").lower()
    if m.group(1) == "http" and host not in _LOOPBACK:
        raise ValueError(f"must be https:// (plain http is accepted for loopback only, not "
                         f"{host!r}): keys fetched over plain http can be swapped in transit")
    return url


class OidcClaims(BaseModel):
    """How a provider's token claims become stead's principal (``STEAD_OIDC_CLAIMS``).

    A claim name may be a dotted path into nested claims (``realm_access.roles``); a name
    that exists as it is (``https://example.com/roles``) is read as it is first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = Field("sub", min_length=1)
    """Claim naming who calls (recorded as requester or approver): ``sub``, ``email``,
    ``preferred_username``..."""
    tenant_claim: str | None = Field("tenant", min_length=1)
    """Claim holding the tenant; unset (null) with ``tenant`` for one fixed tenant."""
    tenant: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[\w.@:-]+$")
    """The tenant of every token of this provider (instead of ``tenant_claim``)."""
    roles_claim: str = Field("roles", min_length=1)
    """Claim holding the caller's groups or roles: a list (or a space-separated string)."""
    roles: dict[str, list[Literal["requester", "approver", "auditor"]]] | None = None
    """Provider group -> stead role(s) (``{"stead-approvers": "approver"}``); groups not
    listed give no role. Unset: the claim's values that are stead role names count."""
    approval_role_claim: str | None = Field("approval_role", min_length=1)
    """Claim holding the approval role the caller decides as (e.g. ``support-lead``)."""
    approval_roles: dict[str, str] = Field(default_factory=dict)
    """Provider group -> approval role, used when ``approval_role_claim`` is absent from a
    token: the first of the caller's groups listed here gives it."""

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("tenant") is not None:
            if data.get("tenant_claim") is not None:
                raise ValueError("give either tenant (one fixed tenant) or tenant_claim, "
                                 "not both")
            data["tenant_claim"] = None  # a fixed tenant replaces the default claim
        roles = data.get("roles")
        if isinstance(roles, dict):  # {"group": "approver"} is short for ["approver"]
            data["roles"] = {k: [v] if isinstance(v, str) else v for k, v in roles.items()}
        return data

    @model_validator(mode="after")
    def _one_tenant_source(self) -> OidcClaims:
        if self.tenant is None and self.tenant_claim is None:
            raise ValueError("name the tenant: tenant_claim (a claim) or tenant (a fixed one)")
        return self


class OidcSettings(_Section):
    """Single sign-on for the HTTP API: tokens of an OpenID Connect identity provider,
    accepted besides the HS256 tokens of ``STEAD_API_SECRET`` (see ``stead.api._oidc``)."""

    issuer: Annotated[str | None, Env("oidc_issuer")] = None
    """Issuer URL of the provider, exactly as its tokens' ``iss`` says; keys are found through
    ``<issuer>/.well-known/openid-configuration``. Unset: single sign-on is off."""
    jwks_url: Annotated[str | None, Env("oidc_jwks_url")] = None
    """The provider's JWKS URL, skipping discovery."""
    audience: Annotated[str | None, Env("oidc_audience")] = Field(None, min_length=1,
                                                                  validate_default=True)
    """What a token's ``aud`` must contain (the client id or API identifier stead has at the
    provider); required with an issuer."""
    algorithms: Annotated[list[str], Env("oidc_algorithms")] = Field(
        default_factory=lambda: ["RS256", "ES256"], min_length=1)
    """Signature algorithms accepted, a JSON list; public-key ones only."""
    leeway_seconds: Annotated[float, Env("oidc_leeway_seconds")] = Field(60.0, ge=0, le=3600)
    """Clock skew allowed when checking ``exp``, ``nbf`` and ``iat``."""
    claims: Annotated[OidcClaims, Env("oidc_claims")] = Field(default_factory=OidcClaims)
    """How the provider's claims map to stead's ``sub``, ``tenant``, ``roles`` and
    ``approval_role``, a JSON object (:class:`OidcClaims`)."""
    jwks_cache_seconds: Annotated[float, Env("oidc_jwks_cache_seconds")] = Field(
        300.0, gt=0, le=_DAY)
    """How long fetched keys are used before the JWKS is fetched again."""
    jwks_refetch_seconds: Annotated[float, Env("oidc_jwks_refetch_seconds")] = Field(
        30.0, ge=0, le=_DAY)
    """Least time between two fetches caused by tokens naming an unknown key (a rotated key
    is picked up at once; a flood of made-up key ids does not reach the provider more often)."""
    http_timeout_seconds: Annotated[float, Env("oidc_http_timeout_seconds")] = Field(
        5.0, gt=0, le=120)
    """Timeout of one request to the provider (discovery, JWKS)."""

    @field_validator("issuer")
    @classmethod
    def _secure_issuer(cls, v: str | None) -> str | None:
        return None if v is None else secure_url(v)

    @field_validator("jwks_url")
    @classmethod
    def _secure_jwks_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and "issuer" in info.data and info.data["issuer"] is None:
            raise ValueError("is set, but no issuer is: set the issuer URL as well, which "
                             "every token's `iss` is checked against")
        return None if v is None else secure_url(v)

    @field_validator("audience")
    @classmethod
    def _audience_with_issuer(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("issuer") is not None:
            raise ValueError("is required with STEAD_OIDC_ISSUER: the client id or API "
                             "identifier tokens for stead carry in `aud`")
        return v

    @field_validator("algorithms")
    @classmethod
    def _public_key_algorithms(cls, v: list[str]) -> list[str]:
        for alg in v:
            if alg not in _OIDC_ALGORITHMS:
                why = (" (a shared-key or unsigned algorithm: anyone with the provider's "
                       "public keys could forge tokens)" if alg.upper().startswith("HS")
                       or alg.lower() == "none" else "")
                raise ValueError(f"{alg!r} is not accepted{why}; use some of "
                                 f"{', '.join(_OIDC_ALGORITHMS)}")
        return list(dict.fromkeys(v))

    @property
    def enabled(self) -> bool:
        return self.issuer is not None


class EvalSettings(_Section):
    """Online evaluation of finished runs (``stead.authoring.evaluation``)."""

    sample: Annotated[float | None, Env("eval_sample")] = Field(None, ge=0, le=1)
    """Share of finished runs evaluated, the same for every agent of the worker (0: none, 1:
    all); unset: each agent's ``OnlineEvals(sample=...)``."""
    every_seconds: Annotated[float, Env("eval_every_seconds")] = Field(60.0, ge=0, le=_DAY)
    """How often the evaluation sweep runs. ``stead up``, ``stead worker`` and ``worker.py``
    create the task queue's schedule with it when an agent declares evaluators and no such
    schedule exists (0: they create none; ``stead grade --schedule`` changes one)."""


class TenantSettings(_Section):
    """Per-tenant spending windows and admission (``stead.contracts.quota``)."""

    quotas: Annotated[dict[str, TenantQuota], Env("tenant_quotas")] = Field(
        default_factory=dict)
    """Quotas by tenant, JSON in ``STEAD_TENANT_QUOTAS``: ``{"acme": {"usd_per_day": 20,
    "runs_in_flight": 50}, "*": {"starts_per_minute": 60, "over_quota": "refuse"}}``; ``"*"``
    applies to every tenant not listed; empty: no tenant limits."""
    reservation_ttl_seconds: Annotated[float, Env("quota_reservation_ttl_seconds")] = Field(
        900.0, gt=0, le=_DAY)
    """How long a model call's reservation against its tenant's windows holds before it is
    released as abandoned (a worker that died mid-call): above the longest model call."""
    admission_recheck_seconds: Annotated[float, Env("admission_recheck_seconds")] = Field(
        30.0, gt=0, le=_DAY)
    """How often a queued run looks again for its turn when no ending run wakes it, at first:
    the interval doubles with the time the run has been queued, up to
    ``admission_recheck_max_seconds``."""
    admission_recheck_max_seconds: Annotated[
        float, Env("admission_recheck_max_seconds")] = Field(300.0, gt=0, le=_DAY)
    """The longest a queued run waits between two looks of its own (the ``admit`` signal wakes
    it sooner): bounds its history to ~6 events per look, ~1,700 a day at 300 s. Below
    ``admission_recheck_seconds`` it is that interval (no back-off)."""

    @field_validator("quotas")
    @classmethod
    def _tenant_names(cls, v: dict[str, TenantQuota]) -> dict[str, TenantQuota]:
        for name in v:
            if name != ANY_TENANT and not re.fullmatch(r"[\w.@:-]{1,200}", name):
                raise ValueError(f"{name!r} is not a tenant name (letters, digits, "
                                 f"'_.@:-', at most 200) nor {ANY_TENANT!r}")
        return v


class Settings(BaseSettings):
    """All knobs of a stead process, one section per concern."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    stack: StackSettings = Field(default_factory=StackSettings)
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)

    def __init__(self, **values: Any) -> None:
        """Sections from the environment; ``values`` (flat names or sections) win."""
        super().__init__(**_by_section(values))

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Variables(settings_cls)

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (flat names or sections), the environment unread:
        ``settings.replace(memory_backend="pgvector")``."""
        current: dict[str, Any] = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate(_by_section(changes, current))

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Settings:
        """Pydantic's copy; ``update`` takes sections only (flat names: :meth:`replace`), as
        pydantic would otherwise keep an unknown key as a stray attribute nobody reads."""
        stray = sorted(set(update or {}) - set(type(self).model_fields))
        if stray:
            raise TypeError(f"Settings.model_copy(update=...) takes sections; use "
                            f"replace({', '.join(f'{k}=...' for k in stray)})")
        return super().model_copy(update=update, deep=deep)

    def flat_items(self) -> list[tuple[str, object]]:
        """``(flat name, value)`` of every field of every section (e.g. for redaction)."""
        return [(FLAT_NAMES[(section, name)], getattr(getattr(self, section), name))
                for section, name in FLAT_NAMES]


def _env_of(info: FieldInfo) -> Env:
    found = [m for m in info.metadata if isinstance(m, Env)]
    assert len(found) == 1, "every section field names its variables with Env(...)"
    return found[0]


_FIELDS: dict[tuple[str, str], FieldInfo] = {
    (section, name): info
    for section, s_info in Settings.model_fields.items()
    for name, info in s_info.annotation.model_fields.items()  # type: ignore[union-attr]
}
FLAT_NAMES: dict[tuple[str, str], str] = {key: _env_of(info).name for key, info in
                                          _FIELDS.items()}
"""(section, field) -> flat name: ``("temporal", "address")`` -> ``"temporal_address"``."""
_BY_FLAT_NAME = {flat: key for key, flat in FLAT_NAMES.items()}
VARIABLES: dict[str, str] = {v: _env_of(info).name for info in _FIELDS.values()
                             for v in _env_of(info).variables}
"""Every environment variable ``Settings`` reads, to the flat name of its setting
(``TEMPORAL_TLS`` -> ``temporal_tls``); ``STEAD_SECRET_<NAME>`` aside: that is
``stead.security.secrets``'."""


def _by_section(values: dict[str, Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """``values`` with flat names moved into their sections (a section given whole stays)."""
    out = dict(into or {})
    for key, value in values.items():
        if key in Settings.model_fields:
            out[key] = value
    for key, value in values.items():
        if key in Settings.model_fields:
            continue
        if key not in _BY_FLAT_NAME:
            raise TypeError(f"Settings has no setting {key!r} (STEAD_{key.upper()})")
        section, name = _BY_FLAT_NAME[key]
        given = out.get(section, {})
        # Not dict(model): it would call CodecSettings.keys, a field, as a mapping's keys().
        fields = ({n: getattr(given, n) for n in type(given).model_fields}
                  if isinstance(given, BaseModel) else dict(given))
        out[section] = {**fields, name: value}
    return out


class _Variables(PydanticBaseSettingsSource):
    """Each section field from the first of its variables that is set (names case-insensitive;
    JSON for dicts, lists and models)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # values come from __call__, by section

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        out: dict[str, dict[str, Any]] = {}
        for (section, name), info in _FIELDS.items():
            var = next((v for v in _env_of(info).variables if v in env), None)
            if var is None:
                continue
            value: Any = env[var]
            if _takes_json(info.annotation):
                try:
                    value = json.loads(value)
                except ValueError as err:
                    raise SettingsError(f"invalid setting: {var} must be JSON ({err})") from None
            out.setdefault(section, {})[name] = value
        return out


def _takes_json(annotation: object) -> bool:
    """Dicts, lists and models (or a union of them) are JSON in their variable."""
    union = get_origin(annotation) in (Union, UnionType)
    return any(get_origin(a) in (dict, list) or (isinstance(a, type) and issubclass(a, BaseModel))
               for a in (get_args(annotation) if union else (annotation,)))


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise ``SettingsError`` naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            inner = e["loc"][2:]  # inside a JSON value: where, e.g. ``ops.0.api``
            at = f" at {'.'.join(map(str, inner))}" if inner else ""
            problems.append(f"{_variables_of(e['loc'])}{at}={e.get('input')!r}: {e['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None


def _variables_of(loc: tuple[int | str, ...]) -> str:
    """The variable(s) users set for the value at ``loc`` (``("temporal", "tls")`` ->
    ``STEAD_TEMPORAL_TLS or TEMPORAL_TLS``) in a validation error of ``Settings``."""
    info = _FIELDS.get((str(loc[0]), str(loc[1]))) if len(loc) >= 2 else None
    if info is None:
        return ".".join(map(str, loc)) or "?"
    return " or ".join(_env_of(info).variables)
