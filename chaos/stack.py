"""The throwaway embedded stack both ``python -m chaos`` and ``python -m chaos.soak`` run on."""

from __future__ import annotations

import tempfile
from pathlib import Path

from stead.settings import Settings
from stead.stack.embedded import free_port


def throwaway_settings(prefix: str, **extra: object) -> Settings:
    """Settings of a fresh embedded stack: its own data dir and three distinct free ports,
    nothing from the environment that would point elsewhere (servers, model, telemetry)."""
    # Not under pytest's tmp tree: PostgreSQL runs as an unprivileged user when we are root,
    # and pytest resets /tmp/pytest-of-<user> to 0700 whenever a session starts.
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    ports: list[int] = []
    while len(ports) < 3:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return Settings(data_dir=data_dir, temporal_port=ports[0], ui_port=ports[1],
                    postgres_port=ports[2], temporal_address=None, database_url=None,
                    openai_api_key=None, openai_base_url=None, memory_backend="off",
                    metrics_exporter="none", otel_exporter_otlp_endpoint=None,
                    log_level="WARNING", **extra)
