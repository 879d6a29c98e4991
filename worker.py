"""Run one stead worker: ``python worker.py``.

Settings come from the environment (see stead/settings.py). ``TEMPORAL_ADDRESS`` and
``DATABASE_URL`` must point at running servers; for everything on one machine use
``stead up`` instead, which starts the embedded stack and a worker.
"""

from __future__ import annotations

import asyncio
import sys

from stead.agents import served_catalog
from stead.errors import SteadError
from stead.observability.logs import configure_logging
from stead.settings import load_settings
from stead.worker import WorkerHost, run_until_signal


def main() -> int:
    try:
        settings = load_settings()
        configure_logging(settings)  # STEAD_LOG_FORMAT=json: one JSON object per line
        if settings.temporal.address is None or settings.ledger.database_url is None:
            print("worker.py needs TEMPORAL_ADDRESS and DATABASE_URL; "
                  "run `stead up` for the embedded stack", file=sys.stderr)
            return 2
        host = WorkerHost(settings, served_catalog(settings))
        asyncio.run(run_until_signal(host))
    except SteadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
