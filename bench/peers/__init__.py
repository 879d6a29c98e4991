"""The peer benchmark: stead next to plain temporalio (and the engine's floor), the agent
frameworks that run on Temporal (pydantic-ai, the OpenAI Agents SDK), LangGraph on its
PostgreSQL checkpointer and DBOS, the same scripted agent work on each, in one invocation.

    python -m bench.peers            # the full run (~15 min on 2 cores); see bench/RESULTS.md
    python -m bench.peers --quick    # a smoke run
    python -m bench --workload peers # the same, from the main entry point

The peers are optional: ``pip install -e '.[bench]'`` (``make bench-peers`` does it).

- ``workload``: the work itself, shared by every system (planner, tool bodies, checks);
- ``temporal_run``, ``plain_workflow``, ``models``: stead (full / minimal) and plain
  temporalio (activities, local tools, the floor) as systems, on one embedded stack;
- ``pydantic_ai_run`` + ``pydantic_ai_workflow``, ``openai_agents_run`` +
  ``openai_agents_workflow`` (+ ``openai_sdk``, which imports the SDK past the repository's
  own ``agents/``): the agent frameworks on Temporal, on the same server, each through its
  own plugin, driven by the same scripted planner through its own model seam;
- ``langgraph_run``, ``dbos_run``: the peers, each on a database of its own
  (``databases``) on the same PostgreSQL server;
- ``runner``: the workloads; ``rss``: worker memory per parked run, in a fresh process;
- ``report``: tables and JSON.
"""

from __future__ import annotations

import importlib

EXTRA = "pip install -e '.[bench]'"
_MODULES = ("langgraph", "langgraph.checkpoint.postgres.aio", "psycopg", "psycopg_pool", "dbos",
            "pydantic_ai.durable_exec.temporal", "bench.peers.openai_sdk")


def missing_extra() -> str | None:
    """Why the peers cannot be imported (naming the extra to install), or None."""
    missing = []
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if not missing:
        return None
    return (f"the peer benchmark needs the 'bench' extra: {EXTRA} (or make bench-peers). "
            f"Missing: {', '.join(missing)}")
