"""The embedded stack: health checks, migrations, and `stead up` in the foreground."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from stead.errors import StackError
from stead.settings import Settings
from stead.stack.embedded import EmbeddedPostgres, EmbeddedStack, EmbeddedTemporal, free_port
from stead.storage.ledger import migrate


async def test_taken_port_gives_a_clear_error_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port}.*STEAD_TEMPORAL_PORT"):
            await EmbeddedTemporal(tmp_path, port=port, ui_port=None).start()
        with pytest.raises(StackError, match=rf"port {port}.*STEAD_POSTGRES_PORT"):
            await EmbeddedPostgres(tmp_path, port=port).start()


async def test_migrations_apply_once_and_are_recorded(stack: EmbeddedStack) -> None:
    again = await migrate(stack.database_url)
    assert again == []  # the session stack already applied them
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("select version, name from stead_schema_migrations")
        assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
        assert rows[0]["name"] == "0001_ledger.sql"
        assert await conn.fetchval("select count(*) from pg_extension where extname='vector'")
    finally:
        await conn.close()


async def test_stead_up_serves_until_ctrl_c_then_stops_everything(service_dir: Path) -> None:
    """`stead up` starts Temporal, PostgreSQL and a worker; SIGINT stops all of them."""
    ports = {"STEAD_TEMPORAL_PORT": free_port(), "STEAD_UI_PORT": free_port(),
             "STEAD_POSTGRES_PORT": free_port(), "STEAD_API_PORT": free_port()}
    env = {**os.environ, "STEAD_DATA_DIR": str(service_dir), "STEAD_TASK_QUEUE": "up-test",
           **{k: str(v) for k, v in ports.items()}}
    stead = str(Path(sys.executable).parent / "stead")
    proc = await asyncio.create_subprocess_exec(stead, "up", env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    try:
        while b"stead is up" not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), 90)
            assert line, f"stead up exited early:\n{seen.decode()}"
            seen += line
        # It really serves runs: start one from the CLI against it.
        run = await asyncio.create_subprocess_exec(
            stead, "run", "ops", "is auth-service healthy?", "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(run.communicate(), 90)
        assert run.returncode == 0, err.decode()
        assert b'"status": "completed"' in out
        # And the HTTP API with it.
        async with httpx.AsyncClient() as http:
            api = await http.get(f"http://127.0.0.1:{ports['STEAD_API_PORT']}/openapi.json")
        assert api.status_code == 200 and "/v1/runs" in api.json()["paths"]
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, (seen + rest).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for port in ports.values():  # nothing left listening
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


async def test_runs_survive_a_restart_of_the_stack(service_dir: Path) -> None:
    """The SQLite file keeps workflow histories across a stop/start of the dev server."""
    from temporalio.client import Client

    settings = Settings(data_dir=service_dir, temporal_port=free_port(), ui_port=free_port(),
                        postgres_port=free_port())
    stack = EmbeddedStack(settings, ui=False)
    async with stack:
        client = await Client.connect(stack.temporal_address)
        handle = await client.start_workflow("NoSuchWorkflowType", id="survivor",
                                             task_queue="nobody-polls")
        run_id = handle.result_run_id
    async with stack:
        client = await Client.connect(stack.temporal_address)
        desc = await client.get_workflow_handle("survivor").describe()
        assert desc.run_id == run_id
