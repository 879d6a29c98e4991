"""The ``stead`` app: ``up``, ``demo`` and ``worker`` (the stack), every other command group
registered from its own module, and :func:`main`, the ``stead`` script.

Tables for people, ``--json`` for scripts. Exit codes: 0 success; 1 a run ended without
completing (or a check failed); 2 bad input or settings; 3 the stack is unreachable; 4 no such
run.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from stead.cli import (
    api,
    budget,
    chat,
    counterfactual,
    db,
    deploy,
    drift,
    grade,
    graph,
    memory,
    metrics,
    quota,
    replay,
    run_budget,
    runs,
    stuck,
    suites,
)
from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_NOT_COMPLETED,
    cli_settings,
    configure_cli_logging,
    err,
    fail,
    out,
    quiet_sdk_logs,
    resolved,
    run_async,
)
from stead.errors import SteadError
from stead.security import codec_server

app = typer.Typer(help="stead: durable execution for AI agents, on Temporal.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def up() -> None:
    """Run the embedded stack (Temporal + Web UI, PostgreSQL) and one worker until Ctrl-C.

    With TEMPORAL_ADDRESS / DATABASE_URL set, those servers are used instead of starting them.
    """
    from stead.stack.runner import serve

    settings = cli_settings()
    configure_cli_logging(settings)
    run_async(serve(settings, out))


@app.command()
def demo() -> None:
    """Run the reference agents through a scripted scenario and print a summary."""
    from stead.cli.demo import run_demo

    settings = cli_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_sdk_logs()
    ok = run_async(run_demo(settings, out))
    raise typer.Exit(0 if ok else EXIT_RUN_NOT_COMPLETED)


@app.command()
def worker() -> None:
    """Run one worker against TEMPORAL_ADDRESS / DATABASE_URL (or the embedded defaults)."""
    from stead.agents import served_catalog
    from stead.worker import WorkerHost, run_until_signal

    settings = resolved(cli_settings())
    configure_cli_logging(settings)
    try:
        catalog = served_catalog(settings)
    except SteadError as e:
        fail(str(e), EXIT_BAD_INPUT)
    run_async(run_until_signal(WorkerHost(settings, catalog)))


# Each command group lives in a module of its own with a ``register(app)``; the order here
# (after up, demo and worker) is the order of ``stead --help``.
for _group in (runs, memory, suites, replay, counterfactual, metrics, grade, drift, db,
               codec_server, stuck, api, chat, graph, budget, quota):
    _group.register(app)
deploy.register(app)
run_budget.register(app)  # stead raise-budget


def main() -> None:
    """Entry point of the ``stead`` script."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            err.print(e.code, highlight=False)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    # The Temporal client's Rust threads outlive asyncio.run(); tearing the interpreter down
    # with them alive aborts the process now and then (SIGABRT/SIGSEGV at exit, about 1 run in
    # 15 here; temporalio/sdk-python#300), turning exit code 0 or 4 into 134. All work is done
    # by now, so flush and leave without the teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
