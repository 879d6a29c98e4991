"""Pictures of execution graphs (``stead.authoring.graph_render``) and ``stead graph``: Mermaid text
with every node and condition, a run's path highlighted exactly, SVG and PNG files that are
valid, and the command against a real run of the ``ops`` agent on the test stack."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from _cli import cli_env, stead
from _waits import wait_pending

from stead.agents.ops import OpsWorld, ops_agent
from stead.authoring.agent import AgentCatalog
from stead.authoring.graph import Graph, custom, grounded_numbers, react, when
from stead.authoring.graph_render import describe, layout, render_image, to_mermaid
from stead.client import start_run
from stead.contracts.models import RunRequest
from stead.errors import SpecError
from stead.settings import Settings
from stead.worker import WorkerHost

# What a run of the refund graph does when its first answer fails evaluation once.
RETRIED = ["route", "recall", "think", "act", "think", "check", "evaluate", "think", "check",
           "evaluate", "done"]


def _mermaid_nodes(text: str) -> dict[str, str]:
    """Mermaid id -> its label, from node declaration lines."""
    return dict(re.findall(r'^  (n_[a-z0-9_]+)[\[({>/]+"(.*?)"', text, flags=re.M))


def _classes(text: str, name: str) -> set[str]:
    found = re.findall(rf"^  class ([\w,]+) {name}$", text, flags=re.M)
    return {m for line in found for m in line.split(",")}


def _link_styles(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for indexes, style in re.findall(r"^  linkStyle ([\d,]+) (.+)$", text, flags=re.M):
        for i in indexes.split(","):
            out[int(i)] = style
    return out


def _links(text: str) -> list[tuple[str, str, str, str]]:
    """(src, arrow, label, dst) of every link line, in order (their linkStyle indexes)."""
    return re.findall(r'^  (n_\w+) (-->|-\.->|==>)(?:\|"(.*?)"\|)? (n_\w+)$', text, flags=re.M)


# ---------------------------------------------------------------------------- Mermaid


def test_mermaid_of_react_has_every_node_with_its_shape_and_every_edge_label() -> None:
    g = react(evaluators=[grounded_numbers()])
    text = to_mermaid(g)
    assert text.startswith("flowchart TD\n")
    nodes = _mermaid_nodes(text)
    assert set(nodes) == {f"n_{n}" for n in g.nodes}
    for nid, node in g.nodes.items():
        assert nodes[f"n_{nid}"].startswith(f"<b>{nid}</b><br/><i>{node.kind}"), nodes
    shapes = {"think": '("', "act": '[["', "check": '{{"', "evaluate": '{{"', "review": '[/"',
              "done": '(["', "route": '>"', "recall": '[("'}
    for nid, opening in shapes.items():
        assert f"  n_{nid}{opening}" in text, nid
    links = _links(text)
    assert [(s, d, label) for s, _, label, d in links[:len(g.edges)]] == [
        (f"n_{e.src}", f"n_{e.dst}", e.label) for e in g.edges]
    # The evaluate node's retry arrow comes after the edges: dotted, with its bound.
    assert links[-1] == ("n_evaluate", "-.->", "retry ≤ 1", "n_think")
    assert {"tool calls", "reask", "evaluate passed", "review approved", "retry ≤ 1"} <= {
        label for *_, label, _ in links}
    assert "finish: denied" in nodes["n_denied"] and _classes(text, "stopped") == {"n_denied"}
    assert _classes(text, "taken") == set()  # no path, nothing highlighted


def test_a_path_highlights_exactly_the_nodes_and_edges_taken_with_visit_counts() -> None:
    g = react(evaluators=[grounded_numbers()])
    text = to_mermaid(g, path=RETRIED)
    assert _classes(text, "taken") == {f"n_{n}" for n in set(RETRIED)}
    assert _classes(text, "idle") == {"n_review", "n_denied"}
    nodes = _mermaid_nodes(text)
    assert "think ×3" in nodes["n_think"] and "evaluate ×2" in nodes["n_evaluate"]
    assert "done ×1" in nodes["n_done"] and "×" not in nodes["n_review"]
    links = _links(text)
    styles = _link_styles(text)
    taken = {(s, d) for i, (s, _, _, d) in enumerate(links) if "stroke-width:3px" in styles[i]}
    assert taken == {("n_route", "n_recall"), ("n_recall", "n_think"), ("n_think", "n_act"),
                     ("n_act", "n_think"), ("n_think", "n_check"), ("n_check", "n_evaluate"),
                     ("n_evaluate", "n_think"), ("n_evaluate", "n_done")}
    assert len(styles) == len(links)  # every other link is drawn as not taken
    pic = describe(g, path=RETRIED)
    counts = {(e.src, e.dst, e.kind): e.taken for e in pic.edges if e.taken}
    assert counts[("think", "check", "edge")] == 2
    assert counts[("evaluate", "think", "retry")] == 1
    assert {n.id: n.visits for n in pic.nodes if n.visits}["think"] == 3


def test_labels_are_escaped_and_ids_are_safe_for_mermaid() -> None:
    odd = when.check('amount > 100 "large" #1', lambda s: True)
    g = (Graph("odd").branch("end").branch("a-b").branch("a_b").finish("done")
         .edge("end", "a-b", when=odd).edge("end", "a_b").edge("a-b", "done")
         .edge("a_b", "done"))
    text = to_mermaid(g)
    assert 'n_end -->|"amount #gt; 100 #quot;large#quot; #35;1"| n_a_b' in text
    ids = _mermaid_nodes(text)
    assert len(ids) == 4 and "n_end" in ids  # "end" alone would be a Mermaid keyword
    assert all(re.fullmatch(r"n_[a-z0-9_]+", i) for i in ids)
    assert '"' not in "".join(ids.values())


def test_patched_edges_are_thick_and_dashed() -> None:
    bare = (Graph("p").model("think").tools("act").tools("fan", parallel=True).finish("done")
            .edge("think", "fan", when=when.patched("fan-out"))
            .edge("think", "act", when=when.tool_calls).edge("think", "done")
            .edge("act", "think").edge("fan", "think"))
    text = to_mermaid(bare)
    assert '  n_think ==>|"patched fan-out"| n_fan' in text
    assert "stroke-dasharray" in _link_styles(text)[0]
    assert text.count("==>") == 1
    path_text = to_mermaid(bare, path=["think", "fan", "think", "done"])
    assert _link_styles(path_text)[0].startswith("stroke:#d62728,stroke-width:3px")
    assert "stroke-dasharray" in _link_styles(path_text)[0]


def test_a_path_that_does_not_fit_the_graph_is_refused_with_a_reason() -> None:
    g = react()
    with pytest.raises(SpecError, match="the path visits node 'evaluate', which graph "
                                        "react@1 does not have"):
        to_mermaid(g, path=["route", "recall", "think", "check", "evaluate"])
    with pytest.raises(SpecError, match="the path moves from 'route' to 'think', but graph "
                                        "react@1 has no edge or retry between them"):
        describe(g, path=["route", "think"])


def test_layout_layers_by_longest_path_and_bends_edges_that_skip_layers() -> None:
    lay = layout(react(evaluators=[grounded_numbers()]))
    assert lay.layer == {"route": 0, "recall": 1, "think": 2, "act": 3, "check": 3,
                         "evaluate": 4, "review": 5, "denied": 6, "done": 6}
    assert lay.back == {("act", "think"), ("check", "think")}
    # evaluate -> done skips the review layer: it bends beside review instead of through it.
    assert lay.bends == {("evaluate", "done"): ["evaluate>done:5"]}
    assert sorted(lay.order[5]) == ["evaluate>done:5", "review"]


# ---------------------------------------------------------------------------- images


def test_svg_is_valid_xml_with_every_node_name_and_the_visit_counts(tmp_path: Path) -> None:
    g = react(evaluators=[grounded_numbers(), custom("short", lambda s: True)])
    out = render_image(g, tmp_path / "refund.svg", path=RETRIED)
    assert out == tmp_path / "refund.svg"
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {(t.text or "").strip() for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(g.nodes) <= texts, texts
    assert {"evaluate: grounded-numbers, short", "tool calls", "retry ≤ 1", "×3"} <= texts
    assert "react@1  ·  digest " + g.digest() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["refund.svg"]  # no temporary left


def test_png_has_the_signature_and_a_real_picture(tmp_path: Path) -> None:
    out = render_image(react(), tmp_path / "react.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    # IHDR: width and height of a picture that holds six nodes in five layers.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 500


def test_bad_image_targets_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"must end in \.svg or \.png"):
        render_image(react(), tmp_path / "react.gif")
    with pytest.raises(SpecError, match=r"directory .*missing does not exist"):
        render_image(react(), tmp_path / "missing" / "react.svg")
    with pytest.raises(SpecError, match="the path visits node 'nope'"):
        render_image(react(), tmp_path / "react.svg", path=["nope"])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- stead graph


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """A CLI that draws served agents' graphs: no stack needed (nothing is contacted)."""
    return {**os.environ, "STEAD_DATA_DIR": str(tmp_path / "data")}


async def test_stead_graph_prints_mermaid_and_json_and_writes_images(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    done = await stead("graph", "ops", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    assert done.out.startswith("flowchart TD\n  %% ops@1 (digest ")
    assert set(_mermaid_nodes(done.out)) == {f"n_{n}" for n in
                                             ("route", "recall", "think", "act", "check",
                                              "done")}

    drawn = await stead("graph", "refund", "--json", "--svg", "r.svg", "--png", "r.png",
                        env=env, cwd=tmp_path)
    assert drawn.code == 0, drawn.err
    data = drawn.json()
    assert (data["agent"], data["graph"], data["run"], data["path"]) == (
        "refund", "refund@1", None, [])
    assert [n["id"] for n in data["nodes"]] == ["route", "recall", "think", "act", "check",
                                                "evaluate", "review", "denied", "done"]
    assert {(e["src"], e["dst"], e["kind"], e["label"]) for e in data["edges"]} >= {
        ("evaluate", "think", "retry", "retry ≤ 1"), ("think", "act", "edge", "tool calls")}
    assert "wrote r.svg" in drawn.err and "wrote r.png" in drawn.err
    ET.parse(tmp_path / "r.svg")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


async def test_stead_graph_refuses_an_unknown_agent_and_a_wrong_suffix(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    unknown = await stead("graph", "nobody", env=env, cwd=tmp_path)
    assert unknown.code == 2
    assert "no agent 'nobody'; this worker serves ops, refund" in unknown.err
    wrong = await stead("graph", "ops", "--svg", "ops.png", env=env, cwd=tmp_path)
    assert wrong.code == 2
    assert "--svg ops.png: the file name must end in .svg" in wrong.err
    assert not (tmp_path / "ops.png").exists()


async def test_stead_graph_run_draws_the_path_of_a_finished_and_a_waiting_run(
        settings: Settings, worker: WorkerHost, tmp_path: Path) -> None:
    assert worker.client is not None
    env = cli_env(settings, STEAD_DATA_DIR=str(tmp_path / "data"))
    handle = await start_run(worker.client, RunRequest(agent="ops",
                                                       input="is auth-service healthy?"),
                             temporal=settings.temporal)
    result = await handle.result()
    assert result.path == ["route", "recall", "think", "act", "think", "check", "done"]

    done = await stead("graph", "ops", "--run", handle.id, "--json", "--svg", "run.svg",
                       env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    data = done.json()
    assert (data["run"], data["status"], data["graph"]) == (handle.id, "completed", "ops@1")
    assert data["path"] == result.path
    assert {n["id"]: n["visits"] for n in data["nodes"]}["think"] == 2
    taken = {(e["src"], e["dst"]) for e in data["edges"] if e["taken"]}
    assert taken == {("route", "recall"), ("recall", "think"), ("think", "act"),
                     ("act", "think"), ("think", "check"), ("check", "done")}
    svg_texts = {(t.text or "").strip() for t in ET.parse(tmp_path / "run.svg").getroot()
                 .iter("{http://www.w3.org/2000/svg}text")}
    assert "×2" in svg_texts

    mermaid = await stead("graph", "ops", "--run", handle.id, env=env, cwd=tmp_path)
    assert mermaid.code == 0, mermaid.err
    assert _classes(mermaid.out, "taken") == {f"n_{n}" for n in result.path}

    # A run still waiting (a restart needs a human): its path so far, from the state query.
    waiting = await start_run(worker.client, RunRequest(agent="ops",
                                                        input="restart auth-service"),
                              temporal=settings.temporal)
    try:
        await wait_pending(waiting)
        open_run = await stead("graph", "ops", "--run", waiting.id, "--json", env=env,
                               cwd=tmp_path)
        assert open_run.code == 0, open_run.err
        so_far = open_run.json()
        assert so_far["status"] == "running"
        assert so_far["path"][:3] == ["route", "recall", "think"]
        assert so_far["path"][-1] == "act"
    finally:
        await waiting.terminate("test over")


async def test_stead_graph_run_refuses_an_unknown_run_and_another_agents_run(
        settings: Settings, worker: WorkerHost, tmp_path: Path) -> None:
    env = cli_env(settings, STEAD_DATA_DIR=str(tmp_path / "data"))
    missing = await stead("graph", "ops", "--run", "default-ops-000000000000", env=env,
                          cwd=tmp_path)
    assert missing.code == 4
    assert "no run 'default-ops-000000000000'" in missing.err
    assert worker.client is not None
    handle = await start_run(worker.client, RunRequest(agent="ops",
                                                       input="is auth-service healthy?"),
                             temporal=settings.temporal)
    await handle.result()
    other = await stead("graph", "refund", "--run", handle.id, env=env, cwd=tmp_path)
    assert other.code == 2
    assert f"run {handle.id!r} is a run of agent 'ops', not 'refund'" in other.err


async def test_stead_graph_run_refuses_a_graph_version_this_process_does_not_have(
        settings: Settings, world: OpsWorld, tmp_path: Path) -> None:
    """A worker deployed with ops@2 ran it; this CLI only knows ops@1: it says so instead of
    drawing the wrong graph."""
    newer = replace(ops_agent(world), graph=react(name="ops", version=2))
    queue = settings.replace(task_queue=settings.temporal.task_queue + "-v2")
    async with WorkerHost(queue, AgentCatalog([newer])) as host:
        assert host.client is not None
        handle = await start_run(host.client, RunRequest(agent="ops",
                                                         input="is auth-service healthy?"),
                                 temporal=queue.temporal)
        assert (await handle.result()).graph == "ops@2"
    done = await stead("graph", "ops", "--run", handle.id,
                       env=cli_env(queue, STEAD_DATA_DIR=str(tmp_path / "data")), cwd=tmp_path)
    assert done.code == 2
    assert (f"run {handle.id!r} followed graph ops@2, which this process does not have (it "
            f"has ops@1)") in " ".join(done.err.split())
