"""Versioned rollouts with Temporal Worker Deployments, on the real dev server.

Two builds of the same code serve one task queue (``STEAD_BUILD_ID`` ``build-a`` and
``build-b`` of one ``STEAD_DEPLOYMENT_NAME``); where each run ran is read from Temporal — the
run's versioning info and the version recorded on every completed workflow task in its
history — never from what the workers say. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from _cli import cli_env, stead
from _waits import wait_pending
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import AgentCatalog
from stead.client import connect, start_run
from stead.contracts.models import ApprovalDecision, RunRequest, RunResult
from stead.deployments import (
    describe_deployment,
    set_current,
    set_ramping,
    wait_drained,
    wait_version,
)
from stead.errors import DeploymentNotFound, SettingsError
from stead.settings import Settings, load_settings
from stead.worker import WorkerHost

Handle = WorkflowHandle[Any, RunResult]
WAITS = "restart search-worker please"  # the ops agent asks on-call before a restart
QUICK = "check the status of checkout-api"


def catalog(world: OpsWorld) -> AgentCatalog:
    """``ops`` (pinned) and ``ops-auto``, the same agent under a name that auto-upgrades."""
    ops = ops_agent(world)
    return AgentCatalog([ops, dataclasses.replace(ops, name="ops-auto")])


def versioned(settings: Settings, build_id: str) -> Settings:
    return settings.replace(deployment_name=f"dep-{settings.temporal.task_queue}",
                            build_id=build_id, auto_upgrade_agents=["ops-auto"])


async def ran_on(h: WorkflowHandle[Any, Any]) -> tuple[str, list[str]]:
    """The build the run's versioning info names, and the build of each completed workflow
    task of its history, in order."""
    d = await h.describe()
    info = d.raw_description.workflow_execution_info.versioning_info
    tasks = [e.workflow_task_completed_event_attributes.deployment_version.build_id
             async for e in h.fetch_history_events()
             if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    return info.deployment_version.build_id, tasks


async def approve(h: Handle) -> None:
    p = await wait_pending(h)
    await h.signal("approve", ApprovalDecision(approval_id=p.approval_id, by="on-call"))


def test_bad_versioning_settings_stop_the_process_naming_the_field(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value, reason in [
        ("STEAD_DEPLOYMENT_NAME", "", "must not be empty"),
        ("STEAD_DEPLOYMENT_NAME", "shop.v2", "must not contain '.' or ':'"),
        ("STEAD_DEPLOYMENT_NAME", "__stead", "must not start with '__'"),
        ("STEAD_BUILD_ID", "", "must not be empty"),
        ("STEAD_BUILD_ID", "__unversioned__", "must not start with '__'"),
        ("STEAD_BUILD_ID", "1.2 beta", "must not contain spaces"),
        ("STEAD_BUILD_ID", "x" * 256, "Temporal takes at most 255"),
        ("STEAD_AUTO_UPGRADE_AGENTS", "ops", "must be JSON"),
        ("STEAD_AUTO_UPGRADE_AGENTS", '[""]', "agent names must not be empty"),
    ]:
        monkeypatch.setenv(var, value)
        with pytest.raises(SettingsError, match=var) as e:
            load_settings()
        assert reason in str(e.value), (var, value, str(e.value))
        monkeypatch.delenv(var)
    s = load_settings()
    assert not s.temporal.versioned and s.temporal.build_id  # the package version
    import importlib.metadata

    assert s.temporal.build_id == importlib.metadata.version("stead")


async def test_an_unknown_auto_upgrade_agent_stops_the_worker_at_start(
        settings: Settings, world: OpsWorld) -> None:
    bad = versioned(settings, "build-a").replace(auto_upgrade_agents=["ops", "opz"])
    with pytest.raises(SettingsError, match=r"STEAD_AUTO_UPGRADE_AGENTS names 'opz'"):
        async with WorkerHost(bad, catalog(world)):
            pass


async def test_stead_worker_with_a_bad_versioning_setting_exits_2_naming_it(
        settings: Settings) -> None:
    for extra, said in [
        ({"STEAD_BUILD_ID": "__next"}, "STEAD_BUILD_ID='__next': Value error, must not start "
                                       "with '__'"),
        ({"STEAD_DEPLOYMENT_NAME": "shop", "STEAD_AUTO_UPGRADE_AGENTS": '["ops", "opps"]'},
         "STEAD_AUTO_UPGRADE_AGENTS names 'opps', not an agent of this worker"),
    ]:
        done = await stead("worker", env=cli_env(settings, **extra), timeout=60)
        assert done.code == 2 and said in " ".join(done.err.split()), done.err


async def test_pinned_runs_finish_on_their_build_new_runs_go_to_the_promoted_one(
        settings: Settings, world: OpsWorld) -> None:
    """Build A holds two runs waiting for an approval, one pinned and one of an auto-upgrade
    agent; build B is promoted. The pinned run finishes on A, the auto-upgrade run moves to B,
    a new run starts on B, and A then drains."""
    sa, sb = versioned(settings, "build-a"), versioned(settings, "build-b")
    name = sa.temporal.deployment_name
    assert name is not None
    client = await connect(sa)
    cat = catalog(world)
    async with WorkerHost(sa, cat), WorkerHost(sb, cat) as host_b:
        await wait_version(client, name, "build-a", timeout=30)
        await set_current(client, name, "build-a")
        pinned = await start_run(client, RunRequest(agent="ops", input=WAITS),
                                 temporal=sa.temporal)
        auto = await start_run(client, RunRequest(agent="ops-auto", input=WAITS),
                               temporal=sa.temporal)
        await wait_pending(pinned)
        await wait_pending(auto)
        assert (await ran_on(pinned))[0] == (await ran_on(auto))[0] == "build-a"

        await wait_version(client, name, "build-b", timeout=30)
        status = await set_current(client, name, "build-b")
        assert status.current_build_id == "build-b" and status.routing_settled
        fresh = await start_run(client, RunRequest(agent="ops", input=QUICK),
                                temporal=sb.temporal)
        await approve(pinned)
        await approve(auto)
        results = [await asyncio.wait_for(h.result(), 60) for h in (pinned, auto, fresh)]
        assert [r.status for r in results] == ["completed"] * 3, results

        build, tasks = await ran_on(pinned)
        assert build == "build-a" and set(tasks) == {"build-a"}, tasks
        build, tasks = await ran_on(auto)
        assert build == "build-b" and tasks[0] == "build-a" and tasks[-1] == "build-b", tasks
        build, tasks = await ran_on(fresh)
        assert build == "build-b" and set(tasks) == {"build-b"}, tasks

        drained = await wait_drained(client, name, "build-a", timeout=60)
        assert drained.state == "drained"
        final = await describe_deployment(client, name)
        assert final.version("build-b") is not None
        assert final.version("build-b").state == "current"  # type: ignore[union-attr]
        assert host_b.worker is not None


async def test_stead_deploy_status_ramp_and_promote(settings: Settings, world: OpsWorld) -> None:
    """The CLI over two polling builds: status lists both with their pollers, ramp and
    promote move the routing, an unknown build or deployment exits 4 naming it."""
    sa, sb = versioned(settings, "build-a"), versioned(settings, "build-b")
    name = sa.temporal.deployment_name
    assert name is not None
    env = cli_env(settings, STEAD_DEPLOYMENT_NAME=name)
    client = await connect(sa)
    cat = catalog(world)
    async with WorkerHost(sa, cat) as host_a, WorkerHost(sb, cat) as host_b:
        said = await host_a.report_deployment_routing()
        assert said is not None and "has no current version" in said
        assert "`stead deploy promote build-a`" in said
        await wait_version(client, name, "build-b", timeout=30)

        done = await stead("deploy", "promote", "build-a", "--json", env=env)
        assert done.code == 0, done.err
        assert done.json()["current_build_id"] == "build-a"

        done = await stead("deploy", "ramp", "build-b", "25", "--wait", "30", env=env)
        assert done.code == 0, done.err
        assert "build-b ramping at 25%" in done.out

        done = await stead("deploy", "status", "--json", env=env)
        assert done.code == 0, done.err
        report = done.json()
        assert (report["current_build_id"], report["ramping_build_id"],
                report["ramping_percent"]) == ("build-a", "build-b", 25.0)
        by_build = {v["build_id"]: v for v in report["versions"]}
        assert by_build["build-a"]["state"] == "current"
        assert by_build["build-b"]["state"] == "ramping"
        assert by_build["build-a"]["pollers"] >= 1 and by_build["build-b"]["pollers"] >= 1
        assert report["task_queues"] == [settings.temporal.task_queue]

        said = await host_b.report_deployment_routing()
        assert said is not None and "is ramping: it takes 25% of new runs" in said
        said = await host_a.report_deployment_routing()
        assert said is not None and "build-a is the current version" in said

        done = await stead("deploy", "unramp", env=env)  # second thoughts: back to A
        assert done.code == 0, done.err
        assert "no build ramping" in done.out
        status = await describe_deployment(client, name)
        assert (status.current_build_id, status.ramping_build_id) == ("build-a", None)
        done = await stead("deploy", "ramp", "build-b", "25", env=env)
        assert done.code == 0, done.err

        done = await stead("deploy", "promote", "build-b", env=env)
        assert done.code == 0, done.err
        said = await host_a.report_deployment_routing()
        assert said is not None and "takes no new runs: the current version is build-b" in said
        assert "build-b is current" in done.out
        status = await describe_deployment(client, name)
        assert (status.current_build_id, status.ramping_build_id) == ("build-b", None)

        done = await stead("deploy", "promote", "build-z", env=env)
        assert done.code == 4 and "has no version 'build-z'" in done.err, done.err
        assert "'build-a'" in done.err  # the known builds are listed
        done = await stead("deploy", "status", "--deployment", f"nope-{uuid.uuid4().hex[:6]}",
                           env=env)
        assert done.code == 4 and "no Worker Deployment 'nope-" in done.err, done.err
        done = await stead("deploy", "ramp", "build-a", "150", env=env)
        assert done.code == 2, done.err
        done = await stead("deploy", "promote", "build-y", "--wait", "1", env=env)
        assert done.code == 4 and "does not poll the current version's task queues" in \
            done.err, done.err

    with pytest.raises(DeploymentNotFound, match="has no version 'build-z'"):
        await set_ramping(client, name, "build-z", 10)


async def test_every_starter_marks_auto_upgrade_agents_and_leaves_the_rest_pinned(
        settings: Settings) -> None:
    """``start_run`` and ``start_conversation`` give an auto-upgrade agent's run Temporal's
    override at start (read back from the server, no worker needed), pinned agents none, and
    nothing at all without a deployment name."""
    from stead.conversation import ConversationStart, start_conversation

    sa = versioned(settings, "build-a")
    client = await connect(sa)
    starts = {
        "run ops-auto": await start_run(client, RunRequest(agent="ops-auto", input=QUICK),
                                        temporal=sa.temporal),
        "run ops": await start_run(client, RunRequest(agent="ops", input=QUICK),
                                   temporal=sa.temporal),
        "chat ops-auto": await start_conversation(client, ConversationStart(agent="ops-auto"),
                                                  temporal=sa.temporal),
        "unversioned ops-auto": await start_run(
            client, RunRequest(agent="ops-auto", input=QUICK),
            temporal=settings.replace(auto_upgrade_agents=["ops-auto"]).temporal),
    }
    seen = {}
    for what, h in starts.items():
        d = await h.describe()
        seen[what] = d.raw_description.workflow_execution_info.versioning_info.\
            versioning_override.auto_upgrade
        await h.terminate(reason="test over")
    assert seen == {"run ops-auto": True, "run ops": False, "chat ops-auto": True,
                    "unversioned ops-auto": False}


async def test_conversation_turns_follow_their_conversation_across_a_promotion(
        settings: Settings, world: OpsWorld) -> None:
    """A turn is a child workflow on the same task queue: a pinned conversation's turns stay
    on its build after B is promoted, continue-as-new included; an auto-upgrade conversation
    moves to B with its turns."""
    from stead.conversation import ConversationStart, say, start_conversation

    sa, sb = versioned(settings, "build-a"), versioned(settings, "build-b")
    name = sa.temporal.deployment_name
    assert name is not None
    client = await connect(sa)
    cat = catalog(world)
    async with WorkerHost(sa, cat), WorkerHost(sb, cat):
        await wait_version(client, name, "build-a", timeout=30)
        await wait_version(client, name, "build-b", timeout=30)
        await set_current(client, name, "build-a")
        # A short history: the conversations continue-as-new after a turn or two.
        chats = {agent: await start_conversation(client, ConversationStart(
                     agent=agent, max_history_events=20), temporal=sa.temporal)
                 for agent in ("ops", "ops-auto")}
        first = {a: await asyncio.wait_for(say(h, QUICK), 60) for a, h in chats.items()}
        await set_current(client, name, "build-b")
        second = {a: await asyncio.wait_for(say(h, QUICK), 60) for a, h in chats.items()}
        for h in chats.values():
            await asyncio.wait_for(say(h, QUICK), 60)
        builds: dict[str, object] = {}
        for agent, h in chats.items():
            builds[agent] = [
                (await ran_on(client.get_workflow_handle(t[agent].run_id)))[0]
                for t in (first, second)]
            builds[f"{agent} chat"] = (await ran_on(h))[0]  # its latest run
            runs = [w.run_id async for w in client.list_workflows(f"WorkflowId = '{h.id}'")]
            builds[f"{agent} runs"] = len(runs) > 1
            await h.terminate(reason="test over")
    assert [t.status for t in (*first.values(), *second.values())] == ["completed"] * 4
    # Both continued-as-new; the pinned one's new run stayed on A.
    assert builds == {"ops": ["build-a", "build-a"], "ops chat": "build-a", "ops runs": True,
                      "ops-auto": ["build-a", "build-b"], "ops-auto chat": "build-b",
                      "ops-auto runs": True}
