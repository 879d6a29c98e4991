"""``stead deploy``: versioned rollouts with Temporal Worker Deployments (``stead.deployments``).

    stead deploy status                    # current / ramping build, each build's drainage
    stead deploy ramp 0.2.0 10             # 10 % of new runs to build 0.2.0
    stead deploy unramp                    # end the ramp: new runs to the current build
    stead deploy promote 0.2.0             # every new run to 0.2.0; pinned runs stay put
    stead deploy promote 0.2.0 --wait 120  # once 0.2.0's workers poll (a deploy script)

The deployment is ``STEAD_DEPLOYMENT_NAME`` unless ``--deployment`` names one. Exit codes: 0
done; 2 bad input, or Temporal refused the change; 3 the stack is unreachable; 4 no such
deployment or build (or, with ``--wait``, its workers did not poll in time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_NOT_FOUND,
    cli_settings,
    fail,
    out,
    print_json,
    resolved,
    run_async,
    temporal_client,
)

if TYPE_CHECKING:
    from stead.deployments import DeploymentStatus
    from stead.settings import Settings

deploy_app = typer.Typer(help="Versioned rollouts: Worker Deployment status, ramp, promote.",
                         no_args_is_help=True)

_DEPLOYMENT = typer.Option(None, "--deployment", "-d",
                           help="Worker Deployment name (default: STEAD_DEPLOYMENT_NAME)")
_JSON = typer.Option(False, "--json", help="Print JSON")
_NO_POLLERS = typer.Option(False, "--allow-no-pollers",
                           help="Route to a build none of whose workers is polling yet")
_WAIT = typer.Option(0.0, "--wait", min=0,
                     help="First wait up to this many seconds for the build's workers to poll "
                          "every task queue the current build's do (for deploy scripts)")
_MISSING_QUEUES = typer.Option(
    False, "--ignore-missing-task-queues",
    help="Allow a build that polls fewer task queues than the one it replaces")


def register(app: typer.Typer) -> None:
    """Add ``deploy`` to the ``stead`` app."""
    app.add_typer(deploy_app, name="deploy")


def _name(settings: Settings, given: str | None) -> str:
    name = given or settings.temporal.deployment_name
    if not name:
        fail("no Worker Deployment: set STEAD_DEPLOYMENT_NAME (as the workers do) or pass "
             "--deployment", EXIT_BAD_INPUT)
    return name


def _run(settings: Settings, action: str, name: str, build_id: str | None = None,
         percent: float = 0.0, *, allow_no_pollers: bool = False,
         ignore_missing_task_queues: bool = False, wait: float = 0.0) -> DeploymentStatus:
    from stead.deployments import (
        describe_deployment,
        end_ramp,
        set_current,
        set_ramping,
        wait_version,
    )
    from stead.errors import DeploymentNotFound

    async def change() -> DeploymentStatus:
        client = await temporal_client(settings)
        if action == "status":
            return await describe_deployment(client, name)
        if action == "unramp":
            await end_ramp(client, name)
            return await describe_deployment(client, name)
        assert build_id is not None
        if wait:
            try:
                await wait_version(client, name, build_id, timeout=wait)
            except TimeoutError as e:
                fail(f"{e}; are its workers running (STEAD_BUILD_ID={build_id})?",
                     EXIT_NOT_FOUND)
        opts = {"allow_no_pollers": allow_no_pollers,
                "ignore_missing_task_queues": ignore_missing_task_queues}
        if action == "promote":
            await set_current(client, name, build_id, **opts)
        else:
            await set_ramping(client, name, build_id, percent, **opts)
        return await describe_deployment(client, name)

    async def go() -> DeploymentStatus:
        try:
            return await change()
        except DeploymentNotFound as e:  # exit 4, not run_async's 2 for other SteadErrors
            fail(str(e), EXIT_NOT_FOUND)

    return run_async(go())


@deploy_app.command("status")
def status_cmd(deployment: str | None = _DEPLOYMENT, as_json: bool = _JSON) -> None:
    """The deployment's current and ramping build, and each build's state (current, ramping,
    draining, drained, inactive), drainage and workflow pollers."""
    settings = resolved(cli_settings())
    report = _run(settings, "status", _name(settings, deployment))
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        _print(report)


@deploy_app.command("promote")
def promote_cmd(build_id: str = typer.Argument(..., help="Build id to make current"),
                deployment: str | None = _DEPLOYMENT, wait: float = _WAIT,
                allow_no_pollers: bool = _NO_POLLERS,
                ignore_missing_task_queues: bool = _MISSING_QUEUES,
                as_json: bool = _JSON) -> None:
    """Make BUILD_ID the current version: new runs (and auto-upgrading ones) go to it, runs
    pinned to another build finish there. Ends any ramp."""
    settings = resolved(cli_settings())
    report = _run(settings, "promote", _name(settings, deployment), build_id,
                  allow_no_pollers=allow_no_pollers,
                  ignore_missing_task_queues=ignore_missing_task_queues, wait=wait)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        out.print(f"{report.name}: build {build_id} is current", highlight=False)
        _print(report)


@deploy_app.command("ramp")
def ramp_cmd(build_id: str = typer.Argument(..., help="Build id to ramp"),
             percent: float = typer.Argument(..., min=0, max=100,
                                             help="Share of new runs it takes, 0-100"),
             deployment: str | None = _DEPLOYMENT, wait: float = _WAIT,
             allow_no_pollers: bool = _NO_POLLERS,
             ignore_missing_task_queues: bool = _MISSING_QUEUES,
             as_json: bool = _JSON) -> None:
    """Send PERCENT of new runs to BUILD_ID, the rest to the current build (`promote` it
    once it holds up)."""
    settings = resolved(cli_settings())
    report = _run(settings, "ramp", _name(settings, deployment), build_id, percent,
                  allow_no_pollers=allow_no_pollers,
                  ignore_missing_task_queues=ignore_missing_task_queues, wait=wait)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        out.print(f"{report.name}: build {build_id} ramping at {percent:g}%", highlight=False)
        _print(report)


@deploy_app.command("unramp")
def unramp_cmd(deployment: str | None = _DEPLOYMENT, as_json: bool = _JSON) -> None:
    """End the ramp: every new run goes to the current build again; the build that was
    ramping finishes the runs pinned to it, then drains."""
    settings = resolved(cli_settings())
    report = _run(settings, "unramp", _name(settings, deployment))
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        out.print(f"{report.name}: no build ramping", highlight=False)
        _print(report)


def _print(report: DeploymentStatus) -> None:
    ramp = (f", ramping {report.ramping_build_id} at {report.ramping_percent:g}%"
            if report.ramping_build_id else "")
    settling = "" if report.routing_settled else " (routing change still propagating)"
    current = (f"current {report.current_build_id}" if report.current_build_id else
               "no current version (new runs go to unversioned workers: `stead deploy "
               "promote BUILD_ID`)")
    out.print(f"Worker Deployment [bold]{report.name}[/]: {current}{ramp}{settling}",
              highlight=False)
    table = Table()
    for col in ("build id", "state", "drainage", "drainage checked (UTC)", "pollers"):
        table.add_column(col)
    for v in report.versions:
        checked = v.drainage_checked_at.strftime("%H:%M:%S") \
            if v.drainage and v.drainage_checked_at else ""
        table.add_row(v.build_id, v.state, v.drainage or "", checked, str(v.pollers))
    out.print(table)
