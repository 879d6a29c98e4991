"""``stead up``: the embedded stack plus one worker, in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal

from rich.console import Console
from rich.table import Table

from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack


async def serve(settings: Settings, console: Console) -> None:
    from stead.agents import served_catalog
    from stead.api import ApiServer, create_app
    from stead.worker import WorkerHost

    stack = EmbeddedStack(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print("starting the stack…")
    async with stack:
        resolved = stack.resolved_settings()
        async with WorkerHost(resolved, served_catalog(resolved)) as host, \
                ApiServer(create_app(resolved, client=host.client), host=resolved.api.host,
                          port=resolved.api.port) as api:
            await host.keep_evaluation_schedule()
            await host.report_deployment_routing()
            table = Table(title="stead is up", show_header=False)
            table.add_row("Temporal", resolved.temporal.address or "")
            table.add_row("Web UI", stack.ui_url or "(external server: see its own UI)")
            table.add_row("PostgreSQL", resolved.ledger.database_url or "")
            table.add_row("task queue", resolved.temporal.task_queue)
            table.add_row("HTTP API", f"{api.url} (docs /docs, inbox /inbox; a token: "
                                      "stead api token --sub NAME --tenant default --role "
                                      "approver)")
            table.add_row("data dir", str(settings.stack.data_dir.resolve()))
            console.print(table)
            console.print('try: [bold]stead run ops "is checkout-api healthy?"[/]   '
                          "(Ctrl-C stops everything)")
            await stop.wait()
            console.print("stopping: worker finishes in-flight activities…")
    console.print("stopped.")
