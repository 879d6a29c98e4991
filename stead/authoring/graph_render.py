"""Pictures of execution graphs: Mermaid text, SVG and PNG images, with a run's path.

    print(to_mermaid(agent.graph))                              # paste into any Mermaid viewer
    render_image(agent.graph, Path("ops.svg"), path=result.path)  # or .png

Mermaid needs a browser (or node.js) to become an image, so images are drawn here with
matplotlib instead, offline: nodes sit in layers by their longest path from the start node,
edges that go back up (loops) are curved to the right, an evaluate node's retry arrow is
dotted and curved to the left. Both pictures come from one description (:func:`describe`),
which is also what ``stead graph --json`` prints, so they always agree on which nodes and
edges a run took.

Shapes say what a node does: a model call is rounded, tool calls are subroutine boxes, guard
and evaluate nodes are hexagons, a branch is a rhombus, an approval a trapezoid, a sub-agent a
double box (a double circle in Mermaid), memory a cylinder, a finish a stadium, routing a
flag. Edges are labelled with their condition; ``when.patched`` edges are dashed orange.
"""

from __future__ import annotations

import itertools
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from stead.authoring.graph import Graph, Node, NodeKind
from stead.errors import SpecError

if TYPE_CHECKING:  # matplotlib loads only when an image is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.path import Path as MplPath

# ---------------------------------------------------------------------------- description


class PictureNode(BaseModel):
    """One node as drawn."""

    id: str
    kind: NodeKind
    detail: str = ""
    """What the kind alone does not say: the tool, the sub-agent, evaluators, final status."""
    label: str = ""
    """The author's label (``Graph.model(label=...)``), if any."""
    start: bool = False
    visits: int = 0
    """How many times the run visited the node (0 without a path)."""


class PictureEdge(BaseModel):
    """One arrow as drawn; ``index`` is its Mermaid link number (``linkStyle`` uses it)."""

    index: int
    src: str
    dst: str
    kind: Literal["edge", "retry"]
    """``retry``: an evaluate node sending the run back to its ``retry`` node."""
    label: str = ""
    """The condition's name (empty: the default edge), or ``retry ≤ N``."""
    patch: str | None = None
    """The change id of a ``when.patched`` edge."""
    taken: int = 0
    """How many times the run moved along this arrow (0 without a path)."""


class GraphPicture(BaseModel):
    """A graph reduced to what pictures show, plus the path a run took through it."""

    graph: str
    """``name@version``."""
    digest: str
    description: str = ""
    start: str
    nodes: list[PictureNode]
    edges: list[PictureEdge]
    path: list[str] = Field(default_factory=list)


def _detail(n: Node) -> str:
    if n.kind == "tool":
        return next(iter(n.branches.values())).tool if n.branches else ""
    if n.kind == "parallel":
        return ", ".join(b.tool for b in n.branches.values())
    if n.kind == "tools" and n.parallel:
        return "parallel"
    if n.kind == "model" and n.tools_offered is not None:
        return ", ".join(n.tools_offered) or "no tools"
    if n.kind == "evaluate":
        return ", ".join(e.name for e in n.evaluators)
    if n.kind == "subagent":
        return n.agent or ""
    if n.kind == "finish":
        return n.status
    return ""


def describe(graph: Graph, *, path: Sequence[str] | None = None) -> GraphPicture:
    """Nodes, arrows (edges in declaration order, then retry arrows) and, given the path of
    a run (``RunResult.path``), how often each was taken.

    Raises SpecError when the path does not fit the graph (a node it lacks, a move along no
    arrow): the run followed another version of it."""
    walked = list(path or [])
    visits: dict[str, int] = {}
    for nid in walked:
        if nid not in graph.nodes:
            raise SpecError(f"the path visits node {nid!r}, which graph {graph.name}@"
                            f"{graph.version} does not have (the run followed another "
                            f"version of the graph?)")
        visits[nid] = visits.get(nid, 0) + 1
    edges = [PictureEdge(index=i, src=e.src, dst=e.dst, kind="edge", label=e.label,
                         patch=e.when.patch if e.when is not None else None)
             for i, e in enumerate(graph.edges)]
    for n in graph.nodes.values():
        if n.kind == "evaluate" and n.retry is not None:
            edges.append(PictureEdge(index=len(edges), src=n.id, dst=n.retry, kind="retry",
                                     label=f"retry ≤ {n.max_retries}"))
    for a, b in itertools.pairwise(walked):
        # Two arrows can join the same nodes (an edge and a retry, or edges with different
        # conditions); the path does not say which one held, so each shows the move.
        hits = [e for e in edges if e.src == a and e.dst == b]
        if not hits:
            raise SpecError(f"the path moves from {a!r} to {b!r}, but graph {graph.name}@"
                            f"{graph.version} has no edge or retry between them (the run "
                            f"followed another version of the graph?)")
        for e in hits:
            e.taken += 1
    start = graph.start
    nodes = [PictureNode(id=n.id, kind=n.kind, detail=_detail(n), label=n.label,
                         start=n.id == start, visits=visits.get(n.id, 0))
             for n in graph.nodes.values()]
    return GraphPicture(graph=f"{graph.name}@{graph.version}", digest=graph.digest(),
                        description=graph.description, start=start, nodes=nodes, edges=edges,
                        path=walked)


# ---------------------------------------------------------------------------- Mermaid

# (opening, closing) of each kind's Mermaid shape.
_MERMAID_SHAPE: dict[str, tuple[str, str]] = {
    "route": (">", "]"), "recall": ("[(", ")]"), "remember": ("[(", ")]"),
    "model": ("(", ")"), "tools": ("[[", "]]"), "tool": ("[[", "]]"),
    "parallel": ("[[", "]]"), "guard": ("{{", "}}"), "evaluate": ("{{", "}}"),
    "branch": ("{", "}"), "approval": ("[/", "\\]"), "subagent": ("(((", ")))"),
    "finish": ("([", "])"),
}

# Fill and stroke per kind, shared by Mermaid (classDef) and the images.
_COLOURS: dict[str, tuple[str, str]] = {
    "route": ("#eeeeee", "#666666"), "recall": ("#fff5cc", "#b8860b"),
    "remember": ("#fff5cc", "#b8860b"), "model": ("#dbe9f6", "#2c6fad"),
    "tools": ("#e2f4dc", "#3b8a2e"), "tool": ("#e2f4dc", "#3b8a2e"),
    "parallel": ("#e2f4dc", "#3b8a2e"), "guard": ("#fdebd0", "#c0722a"),
    "evaluate": ("#fdebd0", "#c0722a"), "branch": ("#f2f2f2", "#555555"),
    "approval": ("#fde0ef", "#b0407a"), "subagent": ("#e8e0f5", "#6a4fa3"),
    "finish": ("#d9f0d3", "#2e7d32"),
}
_FAILED_FINISH = ("#f8d7da", "#a33a3a")
_TAKEN = "#d62728"
_IDLE = "#b0b0b0"
_PATCHED = "#e67e00"
_RETRY = "#7b3fa0"


def _esc(text: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for what Mermaid would parse)."""
    text = " ".join(text.split()).replace("#", "#35;")
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _mermaid_ids(graph: Graph) -> dict[str, str]:
    """Node ids are ``[a-z][a-z0-9_-]*``; Mermaid reads ``-`` as part of an arrow and ``end``
    as a keyword, so every id gets a prefix and ``_`` for ``-`` (made unique if that clashes)."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for i, nid in enumerate(graph.nodes):
        mid = "n_" + nid.replace("-", "_")
        if mid in used:
            mid = f"{mid}_{i}"
        ids[nid] = mid
        used.add(mid)
    return ids


def to_mermaid(graph: Graph, *, path: Sequence[str] | None = None) -> str:
    """The graph as a Mermaid ``flowchart TD``; with ``path`` (``RunResult.path``) the nodes
    and edges the run took are highlighted and each taken node shows its visit count."""
    pic = describe(graph, path=path)
    ids = _mermaid_ids(graph)
    lines = ["flowchart TD", f"  %% {pic.graph} (digest {pic.digest})"]
    if pic.description:
        lines.append(f"  %% {' '.join(pic.description.split())}")
    for n in pic.nodes:
        head = n.id + (f": {n.label}" if n.label else "")
        if n.visits:
            head += f" ×{n.visits}"
        kind = n.kind + (f": {n.detail}" if n.detail else "")
        left, right = _MERMAID_SHAPE[n.kind]
        lines.append(f'  {ids[n.id]}{left}"<b>{_esc(head)}</b><br/><i>{_esc(kind)}</i>"{right}')
    for e in pic.edges:
        arrow = "-.->" if e.kind == "retry" else "==>" if e.patch is not None else "-->"
        label = f'|"{_esc(e.label)}"|' if e.label else ""
        lines.append(f"  {ids[e.src]} {arrow}{label} {ids[e.dst]}")
    # One class per kind in use (colours), "stopped" for a finish that is not a success.
    classes: dict[str, list[str]] = {}
    for n in pic.nodes:
        stopped = n.kind == "finish" and n.detail != "completed"
        classes.setdefault("stopped" if stopped else n.kind, []).append(ids[n.id])
    for name, members in classes.items():
        fill, stroke = _FAILED_FINISH if name == "stopped" else _COLOURS[name]
        lines.append(f"  classDef {name} fill:{fill},stroke:{stroke},color:#111")
        lines.append(f"  class {','.join(members)} {name}")
    lines.append("  classDef start stroke-width:3px")
    lines.append(f"  class {ids[pic.start]} start")
    styles: dict[str, list[int]] = {}
    for e in pic.edges:
        style = ""
        if pic.path:
            style = (f"stroke:{_TAKEN},stroke-width:3px" if e.taken
                     else f"stroke:{_IDLE},stroke-width:1px")
        elif e.patch is not None:
            style = f"stroke:{_PATCHED},stroke-width:2px"
        elif e.kind == "retry":
            style = f"stroke:{_RETRY},stroke-width:1.5px"
        if e.patch is not None:
            style += ",stroke-dasharray:6 3"
        if style:
            styles.setdefault(style.lstrip(","), []).append(e.index)
    if pic.path:
        taken = [ids[n.id] for n in pic.nodes if n.visits]
        idle = [ids[n.id] for n in pic.nodes if not n.visits]
        lines.append(f"  classDef taken stroke:{_TAKEN},stroke-width:3px,color:#000")
        lines.append(f"  classDef idle fill:#fafafa,stroke:{_IDLE},color:#999")
        if taken:
            lines.append(f"  class {','.join(taken)} taken")
        if idle:
            lines.append(f"  class {','.join(idle)} idle")
    for style, indexes in styles.items():
        lines.append(f"  linkStyle {','.join(map(str, indexes))} {style}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where nodes go: layers top to bottom, an order within each layer."""

    layer: dict[str, int]
    order: list[list[str]]
    """Entries per layer, left to right: node ids, and the bends of edges that skip layers
    (placeholders named ``src>dst:layer``, which no node id can be)."""
    back: set[tuple[str, str]]
    """Edges (src, dst) that close a loop: drawn around the side, not down the layers."""
    bends: dict[tuple[str, str], list[str]]
    """The placeholders a forward edge that skips layers passes through, top to bottom."""


def layout(graph: Graph) -> Layout:
    """Longest-path layering from the start node over the graph without its back edges (found
    by depth-first search from the start, then from nodes it cannot reach); an edge that skips
    layers gets a placeholder in each layer it crosses, so it bends around the nodes there;
    then a few barycentre sweeps order each layer so edges cross less."""
    nodes = list(graph.nodes)
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in graph.edges:
        if e.src in succ and e.dst in succ and e.dst not in succ[e.src]:
            succ[e.src].append(e.dst)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}
    finished: list[str] = []
    for root in [graph.start, *nodes]:
        if root in state:
            continue
        # Iterative DFS: a long chain of nodes must not hit Python's recursion limit.
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            n, i = stack.pop()
            if i < len(succ[n]):
                stack.append((n, i + 1))
                m = succ[n][i]
                if state.get(m) == 1:
                    back.add((n, m))
                elif m not in state:
                    state[m] = 1
                    stack.append((m, 0))
            else:
                state[n] = 2
                finished.append(n)
    layer = dict.fromkeys(nodes, 0)
    for n in reversed(finished):  # a topological order of the forward edges
        for m in succ[n]:
            if (n, m) not in back:
                layer[m] = max(layer[m], layer[n] + 1)
    depth = max(layer.values()) + 1
    order: list[list[str]] = [[n for n in nodes if layer[n] == d] for d in range(depth)]
    down: dict[str, list[str]] = {n: [] for n in nodes}
    up: dict[str, list[str]] = {n: [] for n in nodes}
    bends: dict[tuple[str, str], list[str]] = {}
    for n in nodes:
        for m in succ[n]:
            if (n, m) in back or n == m:
                continue
            chain = [f"{n}>{m}:{d}" for d in range(layer[n] + 1, layer[m])]
            if chain:
                bends[(n, m)] = chain
            for d, b in zip(range(layer[n] + 1, layer[m]), chain, strict=True):
                order[d].append(b)
                down[b], up[b] = [], []
            for a, b in itertools.pairwise([n, *chain, m]):
                down[a].append(b)
                up[b].append(a)

    def sweep(rows: range, neighbours: dict[str, list[str]], ref: int) -> None:
        for d in rows:
            pos = {n: i for i, n in enumerate(order[d + ref])}
            keyed = []
            for i, n in enumerate(order[d]):
                near = [pos[m] for m in neighbours[n] if m in pos]
                keyed.append((sum(near) / len(near) if near else float(i), i, n))
            order[d] = [n for _, _, n in sorted(keyed)]

    for _ in range(3):
        sweep(range(1, depth), up, -1)
        sweep(range(depth - 2, -1, -1), down, 1)
    return Layout(layer=layer, order=order, back=back, bends=bends)


# ---------------------------------------------------------------------------- images

_BOX_H = 0.62
_LAYER_GAP = 1.2
_COL_GAP = 0.5
_BEND_W = 0.3
_LANE_GAP = 0.3
_FONT = 9.0
_CHAR_W = 0.083  # inches per character at _FONT points (DejaVu Sans, average)
_MARGIN = 0.35
# How far a shape reaches above and below its box (arrows end at the outline).
_OVERHANG = {"recall": 0.08, "remember": 0.08, "branch": 0.12}


def render_image(graph: Graph, out: Path, *, path: Sequence[str] | None = None) -> Path:
    """Draw the graph to ``out``, SVG or PNG by its suffix, highlighting ``path`` if given.

    Written to a temporary file beside ``out`` and renamed, so a failure never leaves half a
    picture. Raises SpecError for another suffix, a missing directory or a path that does not
    fit the graph."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise SpecError(f"cannot draw {out}: the file name must end in .svg or .png")
    if not out.parent.is_dir():
        raise SpecError(f"cannot draw {out}: directory {out.parent} does not exist")
    pic = describe(graph, path=path)
    fig = _draw(graph, pic)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "svg":
            from matplotlib import rc_context

            # Text stays text (searchable, and the node names can be read back from the file).
            with rc_context({"svg.fonttype": "none"}):
                fig.savefig(tmp, format="svg", metadata={"Date": None})
        else:
            fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, out)
    except OSError as e:
        raise SpecError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()
    return out


@dataclass(frozen=True)
class _Route:
    """One arrow's course: corner points (smoothed when drawn) and where its label sits."""

    points: list[tuple[float, float]]
    label_at: tuple[float, float]


def _routes(pic: GraphPicture, lay: Layout, pos: dict[str, tuple[float, float]],
            w: float) -> dict[int, _Route]:
    """Forward edges run down through their bends; loops and retries leave their node at
    the side, run up a lane outside every node they pass, and enter the target at its side
    (retries on the left, other loops on the side nearer to them)."""
    h = _BOX_H
    kinds = {n.id: n.kind for n in pic.nodes}
    extent: dict[int, tuple[float, float]] = {}
    for d, row in enumerate(lay.order):
        xs = [(pos[n][0] - (w if n in lay.layer else _BEND_W) / 2,
               pos[n][0] + (w if n in lay.layer else _BEND_W) / 2) for n in row]
        extent[d] = (min(a for a, _ in xs), max(b for _, b in xs))
    lanes = {-1: 0, 1: 0}
    seen: dict[tuple[str, str, str], int] = {}
    routes: dict[int, _Route] = {}
    for e in pic.edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        k = seen[(e.src, e.dst, e.kind)] = seen.get((e.src, e.dst, e.kind), -1) + 1
        if e.src == e.dst:
            lane = x1 + w / 2 + _LANE_GAP * (1 + k)
            pts = [(x1 + w / 2, y1 + h / 4), (lane, y1 + h / 4), (lane, y1 - h / 4),
                   (x1 + w / 2, y1 - h / 4)]
            routes[e.index] = _Route(pts, (lane, y1))
        elif e.kind == "retry" or (e.src, e.dst) in lay.back:
            mid = (x1 + x2) / 2
            side = (-1 if mid <= 0 else 1) if e.kind == "retry" else (1 if mid >= 0 else -1)
            rows = range(min(lay.layer[e.src], lay.layer[e.dst]),
                         max(lay.layer[e.src], lay.layer[e.dst]) + 1)
            edge_x = max(extent[d][1] for d in rows) if side > 0 \
                else min(extent[d][0] for d in rows)
            lanes[side] += 1
            lane = edge_x + side * _LANE_GAP * lanes[side]
            # Loops into the same node enter at different heights of its side.
            dy = ((lanes[side] - 1) % 3 - 1) * 0.14
            a, b = (x1 + side * w / 2, y1 + dy), (x2 + side * w / 2, y2 + dy)
            routes[e.index] = _Route([a, (lane, a[1]), (lane, b[1]), b], (lane, (y1 + y2) / 2))
        else:
            pts = [(x1, y1 - h / 2 - _OVERHANG.get(kinds[e.src], 0.0)),
                   *(pos[b] for b in lay.bends.get((e.src, e.dst), [])),
                   (x2, y2 + h / 2 + _OVERHANG.get(kinds[e.dst], 0.0))]
            if k:
                # A second edge between the same nodes bows out beside the first.
                (ax_, ay), (bx, by) = pts[0], pts[1]
                bow = 0.35 * k
                pts.insert(1, ((ax_ + bx) / 2 + bow, (ay + by) / 2))
            at = pts[1] if len(pts) > 2 else ((pts[0][0] + pts[1][0]) / 2,
                                                (pts[0][1] + pts[1][1]) / 2)
            routes[e.index] = _Route(pts, at)
    return routes


def _smooth(points: list[tuple[float, float]]) -> MplPath:
    """A path through the first and last point that rounds every corner in between."""
    from matplotlib.path import Path as MplPath

    verts, codes = [points[0]], [MplPath.MOVETO]
    for i in range(1, len(points) - 1):
        prev, cur, nxt = points[i - 1], points[i], points[i + 1]
        a = _toward(cur, prev, 0.18)
        b = _toward(cur, nxt, 0.18)
        verts += [a, cur, b]
        codes += [MplPath.LINETO, MplPath.CURVE3, MplPath.CURVE3]
    verts.append(points[-1])
    codes.append(MplPath.LINETO)
    return MplPath(verts, codes)


def _toward(p: tuple[float, float], q: tuple[float, float],
            dist: float) -> tuple[float, float]:
    """The point ``dist`` from ``p`` toward ``q`` (at most halfway)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    length = (dx * dx + dy * dy) ** 0.5 or 1.0
    f = min(dist / length, 0.5)
    return p[0] + dx * f, p[1] + dy * f


def _draw(graph: Graph, pic: GraphPicture) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    lay = layout(graph)
    nodes = {n.id: n for n in pic.nodes}
    texts = {n.id: _box_text(n) for n in pic.nodes}
    w = max(1.0, *(max(len(t[0]), len(t[1])) * _CHAR_W + 0.45 for t in texts.values()))
    pos: dict[str, tuple[float, float]] = {}
    for d, row in enumerate(lay.order):
        sizes = [w if n in nodes else _BEND_W for n in row]
        x = -(sum(sizes) + _COL_GAP * (len(row) - 1)) / 2
        for n, size in zip(row, sizes, strict=True):
            pos[n] = (x + size / 2, -d * _LAYER_GAP)
            x += size + _COL_GAP
    routes = _routes(pic, lay, pos, w)
    xs = [x for x, _ in pos.values()] + [x for r in routes.values() for x, _ in r.points]
    left, right = min(xs) - w / 2 - _MARGIN, max(xs) + w / 2 + _MARGIN
    title = _title(pic, right - left)
    top = _BOX_H / 2 + 0.3 + 0.22 * len(title)
    bottom = -(len(lay.order) - 1) * _LAYER_GAP - _BOX_H / 2 - _MARGIN
    fig = Figure(figsize=(right - left, top - bottom))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    # One data unit is one inch: font sizes and box sizes agree at any graph size.
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")
    for i, line in enumerate(title):
        ax.text((left + right) / 2, top - 0.22 - 0.22 * i, line, ha="center", va="center",
                fontsize=_FONT + (1 if i == 0 else -1),
                fontweight="bold" if i == 0 else "normal", color="#222222")
    highlight = bool(pic.path)
    for nid, node in nodes.items():
        _node(ax, node, texts[nid], *pos[nid], w, highlight=highlight)
    for e in pic.edges:
        route = routes[e.index]
        colour, lw, style = "#333333", 1.2, "solid"
        if e.kind == "retry":
            colour, style = _RETRY, "dotted"
        if e.patch is not None:
            colour, style, lw = _PATCHED, "dashed", 1.8
        if highlight:
            colour, lw = (_TAKEN, 2.2) if e.taken else (_IDLE, 1.0)
        ax.add_patch(FancyArrowPatch(path=_smooth(route.points), arrowstyle="-|>",
                                     mutation_scale=11, color=colour, linewidth=lw,
                                     linestyle=style, zorder=1))
        label = e.label + (f" (×{e.taken})" if highlight and e.taken > 1 else "")
        if label:
            ax.text(*route.label_at, label, ha="center", va="center", fontsize=_FONT - 2,
                    color=colour if colour != "#333333" else "#222222", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                          "edgecolor": "none", "alpha": 0.9})
    return fig


def _box_text(n: PictureNode) -> tuple[str, str]:
    head = n.id + (f": {n.label}" if n.label else "")
    return head, n.kind + (f": {n.detail}" if n.detail else "")


def _title(pic: GraphPicture, span: float) -> list[str]:
    lines = [f"{pic.graph}  ·  digest {pic.digest}"]
    chars = max(40, int((span + 2.0) / (_CHAR_W * 0.9)))
    if pic.description:
        lines += textwrap.wrap(pic.description, chars)
    if pic.path:
        lines += textwrap.wrap(f"path ({len(pic.path)} nodes): " + " → ".join(pic.path), chars)
    return lines


def _node(ax: Axes, n: PictureNode, text: tuple[str, str], x: float, y: float, w: float, *,
          highlight: bool) -> None:
    from matplotlib.patches import Ellipse, FancyBboxPatch, Patch, Polygon, Rectangle

    fill, stroke = _FAILED_FINISH if n.kind == "finish" and n.detail != "completed" \
        else _COLOURS[n.kind]
    lw = 2.6 if n.start else 1.3
    if highlight:
        if n.visits:
            stroke, lw = _TAKEN, 2.6
        else:
            fill, stroke, lw = "#fafafa", _IDLE, 1.0
    h, d = _BOX_H, 0.18
    left, right, top, bottom = x - w / 2, x + w / 2, y + h / 2, y - h / 2

    def add(patch: Patch, *, zorder: float = 2) -> None:
        patch.set(facecolor=fill, edgecolor=stroke, linewidth=lw, zorder=zorder)
        ax.add_patch(patch)

    if n.kind in ("model", "finish"):
        r = 0.14 if n.kind == "model" else h / 2
        add(FancyBboxPatch((left, bottom), w, h, boxstyle=f"round,pad=0,rounding_size={r}"))
    elif n.kind in ("tools", "tool", "parallel"):
        add(Rectangle((left, bottom), w, h))
        for bar in (left + 0.09, right - 0.09):
            ax.plot([bar, bar], [bottom, top], color=stroke, linewidth=lw, zorder=3)
    elif n.kind == "subagent":
        add(Rectangle((left, bottom), w, h))
        ax.add_patch(Rectangle((left + 0.06, bottom + 0.06), w - 0.12, h - 0.12,
                               fill=False, edgecolor=stroke, linewidth=lw, zorder=3))
    elif n.kind in ("recall", "remember"):
        ax.add_patch(Rectangle((left, bottom), w, h, facecolor=fill, edgecolor="none",
                               zorder=2))
        ax.plot([left, left], [bottom, top], color=stroke, linewidth=lw, zorder=3)
        ax.plot([right, right], [bottom, top], color=stroke, linewidth=lw, zorder=3)
        add(Ellipse((x, bottom), w, 0.16))
        ax.add_patch(Rectangle((left + lw / 72, bottom), w - 2 * lw / 72, 0.13,
                               facecolor=fill, edgecolor="none", zorder=2.5))
        add(Ellipse((x, top), w, 0.16), zorder=3)
    else:
        corners = {
            "guard": [(left, y), (left + d, top), (right - d, top), (right, y),
                      (right - d, bottom), (left + d, bottom)],
            "branch": [(left - 0.1, y), (x, top + 0.12), (right + 0.1, y), (x, bottom - 0.12)],
            "approval": [(left, bottom), (right, bottom), (right - d, top), (left + d, top)],
            "route": [(left, bottom), (right, bottom), (right, top), (left, top),
                      (left + d, y)],
        }
        shape = "guard" if n.kind == "evaluate" else n.kind
        add(Polygon(corners[shape], closed=True))
    colour = "#999999" if highlight and not n.visits else "#111111"
    ax.text(x, y + 0.09, text[0], ha="center", va="center", fontsize=_FONT,
            fontweight="bold", color=colour, zorder=4)
    ax.text(x, y - 0.13, text[1], ha="center", va="center", fontsize=_FONT - 1.5,
            fontstyle="italic", color="#666666" if colour == "#111111" else colour, zorder=4)
    if highlight and n.visits:
        ax.text(right, top, f"×{n.visits}", ha="center", va="center", fontsize=_FONT - 1,
                fontweight="bold", color="white", zorder=5,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": _TAKEN, "edgecolor": "none"})


__all__ = ["GraphPicture", "Layout", "PictureEdge", "PictureNode", "describe", "layout",
           "render_image", "to_mermaid"]
