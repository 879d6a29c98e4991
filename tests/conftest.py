"""Session fixtures: one real embedded stack (Temporal dev server + PostgreSQL) per test run.

Every test gets its own task queue and its own fake outside world, so tests do not see each
other's runs or side effects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import AgentCatalog
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, free_port
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

# Real model calls are blocked in the suite: nothing may reach a paid API by accident.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PINECONE_API_KEY", "TEMPORAL_ADDRESS",
             "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def stack_dir() -> Iterator[Path]:
    # Not under pytest's tmp tree: pytest resets /tmp/pytest-of-<user> to 0700 whenever a
    # pytest process starts, and PostgreSQL (run as an unprivileged user when we are root)
    # must keep reaching its data directory.
    path = Path(tempfile.mkdtemp(prefix="stead-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def stack(stack_dir: Path) -> AsyncIterator[EmbeddedStack]:
    settings = Settings(data_dir=stack_dir, temporal_port=free_port(), ui_port=free_port(),
                        postgres_port=free_port())
    s = EmbeddedStack(settings, ui=False)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def settings(stack: EmbeddedStack) -> Settings:
    """Resolved settings with a fresh task queue for this test."""
    # Memory is off unless a test turns it on (tests/test_memory_runs.py): loading the
    # embedding model per worker would only slow every other test down.
    return stack.resolved_settings().replace(task_queue=f"test-{uuid.uuid4().hex[:10]}",
                                             memory_backend="off")


@pytest.fixture
async def ledger(stack: EmbeddedStack) -> AsyncIterator[Ledger]:
    lg = await Ledger.connect(stack.database_url)
    yield lg
    await lg.close()


@pytest.fixture
def world(tmp_path: Path) -> OpsWorld:
    return OpsWorld(tmp_path / "ops-world.sqlite")


@pytest.fixture
def catalog(world: OpsWorld) -> AgentCatalog:
    return AgentCatalog([ops_agent(world)])


@pytest.fixture
async def worker(settings: Settings, catalog: AgentCatalog) -> AsyncIterator[WorkerHost]:
    async with WorkerHost(settings, catalog) as host:
        yield host


@pytest.fixture
def client(worker: WorkerHost) -> Client:
    assert worker.client is not None
    return worker.client


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A scratch directory that an embedded PostgreSQL can own (see ``stack_dir``)."""
    path = Path(tempfile.mkdtemp(prefix="stead-svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
