"""``stead demo``: the reference agents through a scripted scenario on the embedded stack.

Each scenario states what it shows and what must hold; the demo fails (exit 1) if any does
not, so it doubles as a smoke test of a fresh install.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from stead.embedded import EmbeddedStack, port_is_free
from stead.models import RunRequest, RunResult
from stead.settings import Settings


@dataclass(frozen=True)
class Scenario:
    shows: str
    request: RunRequest
    check: Callable[[RunResult], bool]


SCENARIOS: list[Scenario] = [
    Scenario(
        "model slip (bad args) corrected, metrics down -> fallback, flaky logs -> retry",
        RunRequest(agent="ops", user="demo",
                   input="Checkout API is throwing 500s. Check its status and recent logs, "
                         "then open a ticket."),
        lambda r: r.status == "completed" and r.rejected_calls >= 1 and r.fallbacks >= 1
        and r.retries >= 1),
    Scenario(
        "model calls a tool that does not exist, then picks another path",
        RunRequest(agent="ops", user="demo", input="payments-db is very slow, page the on-call"),
        lambda r: r.status == "completed" and r.rejected_calls == 1
        and any(c.tool == "create_ticket" and c.status == "ok" for c in r.tool_calls)),
    Scenario(
        "irreversible tool with idempotency key and reconcile hook",
        RunRequest(agent="ops", user="demo", input="search-worker is down, restart it"),
        lambda r: r.status == "completed"
        and any(c.tool == "restart_service" and c.status == "ok" for c in r.tool_calls)),
    Scenario(
        "a tool and its fallback both fail: structured failure, clear answer, no hang",
        RunRequest(agent="ops", user="demo", input="How is legacy-batch doing?"),
        lambda r: r.status == "completed" and "could not determine" in (r.answer or "")),
]


async def run_demo(settings: Settings, console: Console) -> bool:
    from agents import reference_catalog
    from agents.ops import default_world
    from stead.client import start_run
    from stead.worker import WorkerHost

    stack = EmbeddedStack(settings)
    reuse = (settings.temporal_address is None and not port_is_free(settings.temporal_port)
             and settings.database_url is None and not port_is_free(settings.postgres_port))
    if reuse:
        console.print(f"using the running stack on 127.0.0.1:{settings.temporal_port}")
    else:
        console.print("starting the embedded stack (Temporal dev server, PostgreSQL)…")
        await stack.start()
    try:
        resolved = stack.resolved_settings().model_copy(
            update={"task_queue": f"stead-demo-{uuid.uuid4().hex[:6]}"})
        default_world(settings.data_dir).reset()
        results: list[tuple[Scenario, str, RunResult, float, bool]] = []
        async with WorkerHost(resolved, reference_catalog(settings.data_dir)) as host:
            assert host.client is not None
            for sc in SCENARIOS:
                started = time.perf_counter()
                handle = await start_run(host.client, sc.request, settings=resolved)
                result = await handle.result()
                took = time.perf_counter() - started
                results.append((sc, handle.id, result, took, sc.check(result)))
        _report(console, results, stack.ui_url if not reuse else
                f"http://127.0.0.1:{settings.ui_port}")
        return all(ok for *_, ok in results)
    finally:
        if not reuse:
            await stack.stop()


def _report(console: Console, results: list[tuple[Scenario, str, RunResult, float, bool]],
            ui_url: str | None) -> None:
    table = Table(title="stead demo — one line per run")
    for col in ("run", "agent", "outcome", "steps", "retries", "fallbacks", "rejected",
                "approvals", "duration", "check"):
        table.add_column(col, justify="right" if col in {"steps", "retries", "fallbacks",
                                                         "rejected", "approvals",
                                                         "duration"} else "left")
    for sc, wid, r, took, ok in results:
        table.add_row(wid, sc.request.agent, r.status, str(r.steps), str(r.retries),
                      str(r.fallbacks), str(r.rejected_calls), str(r.approvals),
                      f"{took * 1000:.0f} ms", "[green]ok[/]" if ok else "[red]FAILED[/]")
    console.print(table)
    model = results[0][2].model if results else ""
    console.print(f"model: [bold]{model}[/]" + (" (offline scripted planner — set "
                                                  "OPENAI_API_KEY for a real model)"
                                                  if model.startswith("scripted") else ""))
    for sc, wid, r, _, _ok in results:
        console.print(f"\n[bold]{wid}[/] — {sc.shows}", highlight=False)
        console.print(f"  asked:  {sc.request.input}", highlight=False)
        console.print(f"  answer: {r.answer or r.error}", highlight=False)
    if ui_url:
        console.print(f"\nTemporal Web UI: [bold]{ui_url}[/] (while the stack runs: "
                      f"`make up`); ledger trail: `stead audit RUN_ID`")
