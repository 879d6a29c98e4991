"""``stead graph``: an agent's execution graph as Mermaid, SVG or PNG, optionally with the
path one run took through it (see ``stead.authoring.graph_render``).

    stead graph ops                                  # Mermaid on stdout
    stead graph refund --svg refund.svg --png refund.png
    stead graph ops --run default-ops-1a2b3c4d5e6f --svg run.svg
    stead graph ops --json

Exit codes: 0 drawn; 2 bad input (unknown agent, a file name without .svg/.png, a run of
another agent, a graph version this process does not have); 3 the stack is unreachable;
4 no such run.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from stead.cli.common import (
    EXIT_BAD_INPUT,
    cli_settings,
    err,
    fail,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)
from stead.errors import RunNotFound, SpecError, SteadError

if TYPE_CHECKING:
    from stead.authoring.agent import Agent
    from stead.authoring.graph import Graph
    from stead.settings import Settings


def register(app: typer.Typer) -> None:
    """Add ``graph`` to the ``stead`` app."""
    app.command("graph")(graph_cmd)


def graph_cmd(
    agent: str = typer.Argument(..., help="Agent name, e.g. ops"),
    svg: Path | None = typer.Option(None, "--svg", help="Also draw the graph to this .svg file"),
    png: Path | None = typer.Option(None, "--png", help="Also draw the graph to this .png file"),
    run: str | None = typer.Option(
        None, "--run", help="Workflow id of a run: draw the graph it followed and its path"),
    as_json: bool = typer.Option(False, "--json", help="Print nodes, edges and path as JSON"),
) -> None:
    """Print an agent's execution graph as Mermaid (paste it into any Mermaid viewer), or
    draw it to SVG/PNG without network or browser. With --run, the graph version the run
    started with is drawn, with the nodes and edges it took highlighted and visit counts."""
    from stead.authoring.graph_render import describe, render_image, to_mermaid

    for option, target, suffix in (("--svg", svg, ".svg"), ("--png", png, ".png")):
        if target is not None and target.suffix.lower() != suffix:
            fail(f"{option} {target}: the file name must end in {suffix}", EXIT_BAD_INPUT)
    settings = cli_settings()
    the_agent = _agent(settings, agent)
    graph: Graph = the_agent.graph
    path: list[str] | None = None
    status: str | None = None
    if run is not None:
        if not run.strip():
            fail("--run: the workflow id must not be empty", EXIT_BAD_INPUT)
        graph, path, status = run_async(_run_path(resolved(settings), the_agent, run))
    try:
        picture = describe(graph, path=path)
        mermaid = to_mermaid(graph, path=path)
        written = [render_image(graph, target, path=path)
                   for target in (svg, png) if target is not None]
    except SpecError as e:
        fail(str(e), EXIT_BAD_INPUT)
    if as_json:
        print_json({"agent": agent, "run": run, "status": status,
                    **picture.model_dump(mode="json")})
        for f in written:
            err.print(f"wrote {f}", highlight=False)
    elif written:
        for f in written:
            out.print(f"wrote {f}", highlight=False)
    else:
        # Plain print: Mermaid's brackets would read as rich markup.
        typer.echo(mermaid, nl=False)


def _agent(settings: Settings, name: str) -> Agent:
    """The agent as the worker of these settings serves it (its graphs are registered then)."""
    from stead.agents import served_catalog

    try:
        catalog = served_catalog(settings)
    except SteadError as e:
        fail(str(e), EXIT_BAD_INPUT)
    if name not in catalog:
        fail(f"no agent {name!r}; this worker serves {', '.join(catalog.names())}",
             EXIT_BAD_INPUT)
    return catalog[name]


async def _run_path(settings: Settings, agent: Agent,
                    run_id: str) -> tuple[Graph, list[str], str]:
    """The graph a run followed, the nodes it visited and its status: from the result of a
    closed run, or from the ``state`` query of one still running (or closed without a
    result, e.g. failed: a worker replays it to answer)."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.common import SearchAttributeKey
    from temporalio.service import RPCError, RPCStatusCode

    from stead.authoring.graph import DEFAULT, REGISTRY
    from stead.contracts.models import GraphPin, RunResult, RunState

    client = await temporal_client(settings)
    handle = client.get_workflow_handle(run_id, result_type=RunResult)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise RunNotFound(f"no run {run_id!r} on {settings.temporal.address}") from None
        raise
    owner = desc.typed_search_attributes.get(SearchAttributeKey.for_keyword("SteadAgent"))
    if owner is not None and owner != agent.name:
        fail(f"run {run_id!r} is a run of agent {owner!r}, not {agent.name!r}; try "
             f"`stead graph {owner} --run {run_id}`", EXIT_BAD_INPUT)
    pinned: str
    path: list[str]
    status: str
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        pinned, path, status = result.graph, result.path, result.status
    else:
        try:
            state = await handle.query("state", result_type=RunState,
                                       rpc_timeout=timedelta(seconds=5))
        except RPCError as e:
            what = desc.status.name.lower() if desc.status else "unknown"
            fail(f"run {run_id!r} is {what} and no worker answered its state query, which "
                 f"is where its path is kept: {e.message}", EXIT_BAD_INPUT)
        pinned, path, status = state.graph, state.path, state.status
    if not pinned:  # runs recorded before graphs followed the default graph
        return DEFAULT, path, status
    name, _, version = pinned.rpartition("@")
    if not name or not version.isdigit():
        fail(f"run {run_id!r} names its graph {pinned!r}, which is not name@version",
             EXIT_BAD_INPUT)
    graph = agent.graph if (agent.graph.name, agent.graph.version) == (name, int(version)) \
        else REGISTRY.find(GraphPin(name=name, version=int(version), digest=""))
    if graph is None:
        known = ", ".join(f"{name}@{v}" for v in REGISTRY.versions(name)) or "none"
        fail(f"run {run_id!r} followed graph {pinned}, which this process does not have "
             f"(it has {known}); keep old versions in Agent(previous_graphs=[...])",
             EXIT_BAD_INPUT)
    return graph, path, status
