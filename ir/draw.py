"""Pictures of an IR: Graphviz text, and a PNG.

The PNG comes from Graphviz's `dot` when it is installed, otherwise from a layered drawing
made here: `layout(ir)` is a pure function (boxes and edge polylines, in points) that the
tests check geometrically, and `draw_png` only paints it, through matplotlib's
object-oriented API (a `Figure` on its own Agg canvas), so the caller's global backend and
pyplot state are left alone.

The layered layout, in four steps (Sugiyama's scheme, kept small):
  1. layers: longest path from the inputs (inputs on top, every op below its operands);
  2. an edge spanning several layers gets a waypoint in each layer it passes;
  3. order inside each layer: barycentre sweeps down and up, keeping the order with the
     fewest crossings;
  4. x positions: each item pulled towards the mean x of its neighbours, then the closest
     placement that keeps the order and the minimum gaps (isotonic regression).
An edge is a polyline: it leaves its source at the bottom, crosses each intermediate
layer's band vertically at its waypoint (in a gap between boxes), and enters its target at
the top; its sloped parts lie in the empty gaps between layer bands, so no edge passes
through a box other than its two ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from genomec.genome.ops import INPUT_NAMES, format_shape

from .graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE, TOKEN_SPACE, format_id

SPACE_COLOURS = {TOKEN_SPACE: "#cfe2f3", PAIR_SPACE: "#f4cccc", GLOBAL_SPACE: "#d9ead3", INPUT_OP: "#fff2cc"}


def one_line(text: str) -> str:
    """Free text (a genome name) on one printable line: non-printable characters escaped."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def label_lines(ir: IR, node_id: str) -> tuple[str, str]:
    """The two lines of a node's box: `id = op` (just the id for an input) and the shape."""
    node = ir.node(node_id)
    head = format_id(node_id) if node.op == INPUT_OP else f"{format_id(node_id)} = {node.op}"
    return head, format_shape(node.shape)


# -- Graphviz text -----------------------------------------------------------------------


def dot_quote(text: str) -> str:
    """A DOT double-quoted string. The DOT scanner turns \\" into a quote and keeps a \\\\ pair
    as it is, so escaping both makes any text one well-formed token (and distinct texts
    distinct tokens)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_label(lines) -> str:
    """A DOT label showing `lines` literally: in a label, \\\\ shows a backslash and \\n breaks
    the line, so each line is escaped and the lines are joined with \\n."""
    return '"' + "\\n".join(one_line(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def to_dot(graphs: list[tuple[str, IR]]) -> str:
    """Graphviz text, one cluster per graph; operand positions label the edges of ops with
    several operands. Node names are the printed ids (quoted), prefixed per cluster."""
    lines = ["digraph genome {", "  rankdir=TB;", '  node [shape=box, style=filled, fontname="Helvetica"];']
    for index, (title, ir) in enumerate(graphs):
        prefix = f"g{index}_" if len(graphs) > 1 else ""
        indent = "    " if len(graphs) > 1 else "  "

        def name(node_id: str) -> str:
            return dot_quote(prefix + format_id(node_id))

        if len(graphs) > 1:
            lines += [f"  subgraph cluster_{index} {{", f"    label={dot_label([title])};"]
        for node_id, node in ir.nodes():
            colour = SPACE_COLOURS[INPUT_OP if node.op == INPUT_OP else node.space]
            shape = ", shape=ellipse" if node.op == INPUT_OP else ""
            peripheries = ", peripheries=2" if node_id == ir.output else ""
            label = dot_label(label_lines(ir, node_id))
            lines.append(f'{indent}{name(node_id)} [label={label}, fillcolor="{colour}"{shape}{peripheries}];')
        for node_id, node in ir.nodes():
            for position, operand in enumerate(node.operands):
                edge_label = f' [label="{position}"]' if len(node.operands) > 1 else ""
                lines.append(f"{indent}{name(operand)} -> {name(node_id)}{edge_label};")
        if len(graphs) > 1:
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- layered layout ----------------------------------------------------------------------

# Sizes in points (1/72 inch): the drawing maps one layout unit to one point.
FONT_SIZE = 7.0
CHAR_WIDTH = 0.61 * FONT_SIZE  # monospace advance (DejaVu Sans Mono: 0.602 em), with a margin
LINE_HEIGHT = 1.3 * FONT_SIZE
PAD_X, PAD_Y = 6.0, 4.0
BOX_HEIGHT = 2 * LINE_HEIGHT + 2 * PAD_Y  # every box holds two lines
MIN_BOX_WIDTH = 28.0
LAYER_GAP = 36.0  # empty band between two layers, where edges slope
BOX_GAP = 18.0  # between two boxes of a layer
WAYPOINT_CLEARANCE = 10.0  # between a waypoint's vertical run and a box
WAYPOINT_GAP = 7.0  # between two waypoints
PORT_SPACING = 14.0  # between the attachment points of the edges on one side of a box
LABEL_RISE = 10.0  # an operand label sits this far above its target box
MARGIN = 12.0
SWEEPS = 12
PLACEMENT_ROUNDS = 24


@dataclass(frozen=True)
class Box:
    """A node's box: centre (x, y), size, layer (0 = top), and its two text lines."""

    node: str
    x: float
    y: float
    width: float
    height: float
    layer: int
    lines: tuple[str, str]

    @property
    def left(self) -> float:
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        return self.x + self.width / 2

    @property
    def bottom(self) -> float:
        return self.y - self.height / 2

    @property
    def top(self) -> float:
        return self.y + self.height / 2


@dataclass(frozen=True)
class EdgePath:
    """Operand `position` of `target` is `source`: a polyline from the bottom of the source
    box to the top of the target box; `label` (the position, for ops with several operands)
    is drawn at `label_at`."""

    source: str
    target: str
    position: int
    points: tuple[tuple[float, float], ...]
    label: str | None
    label_at: tuple[float, float] | None


@dataclass(frozen=True)
class Layout:
    boxes: dict[str, Box]
    edges: tuple[EdgePath, ...]
    width: float
    height: float


def _layers(ir: IR) -> dict[str, int]:
    """Longest-path layering: an input at 0, an op one below its deepest operand."""
    layer: dict[str, int] = {}
    for node_id, node in ir.nodes():  # topological order
        layer[node_id] = 1 + max((layer[o] for o in node.operands), default=-1)
    return layer


def _crossings(upper: list, lower: list, links: list[tuple]) -> int:
    at_u = {item: i for i, item in enumerate(upper)}
    at_l = {item: i for i, item in enumerate(lower)}
    pairs = [(at_u[u], at_l[v]) for u, v in links]
    return sum(
        1 for i, (a, b) in enumerate(pairs) for c, d in pairs[i + 1:] if (a - c) * (b - d) < 0
    )


def _order_layers(rows: list[list], up: dict, down: dict) -> list[list]:
    """Barycentre sweeps: reorder each layer by the mean position of its neighbours in the
    layer just swept, down then up, keeping the best order seen."""

    def links(rows_):
        return [[(u, v) for v in rows_[l + 1] for u in up[v]] for l in range(len(rows_) - 1)]

    def total(rows_):
        return sum(_crossings(rows_[l], rows_[l + 1], ls) for l, ls in enumerate(links(rows_)))

    def reorder(row: list, neighbours: dict, other: list) -> list:
        at = {item: i for i, item in enumerate(other)}
        def key(indexed):
            i, item = indexed
            near = [at[n] for n in neighbours[item]]
            return (sum(near) / len(near) if near else i, i)
        return [item for _, item in sorted(enumerate(row), key=key)]

    best, best_crossings = [list(r) for r in rows], total(rows)
    for _ in range(SWEEPS):
        if best_crossings == 0:
            break
        for l in range(1, len(rows)):
            rows[l] = reorder(rows[l], up, rows[l - 1])
        for l in range(len(rows) - 2, -1, -1):
            rows[l] = reorder(rows[l], down, rows[l + 1])
        crossings = total(rows)
        if crossings < best_crossings:
            best, best_crossings = [list(r) for r in rows], crossings
    return best


def _isotonic(targets: list[float], gaps: list[float]) -> list[float]:
    """The x closest (least squares) to `targets` with x[i+1] - x[i] >= gaps[i]: pool
    adjacent violators on the targets shifted by the cumulative gaps."""
    offsets = [0.0]
    for gap in gaps:
        offsets.append(offsets[-1] + gap)
    blocks: list[list[float]] = []  # [mean, count]
    for target, offset in zip(targets, offsets):
        blocks.append([target - offset, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count), blocks[-1][1] + count]
    xs = []
    for mean, count in blocks:
        xs += [mean] * int(count)
    return [x + offset for x, offset in zip(xs, offsets)]


def _spread(centre: float, width: float, count: int) -> list[float]:
    """`count` attachment points along a box side, centred, at most 70% of its width."""
    if count == 1:
        return [centre]
    span = min(0.7 * width, (count - 1) * PORT_SPACING)
    return [centre - span / 2 + i * span / (count - 1) for i in range(count)]


def layout(ir: IR) -> Layout:
    """Boxes and edge polylines of `ir` (points, y up, origin at the bottom left)."""
    layer = _layers(ir)
    depth = max(layer.values()) + 1
    lines = {n: label_lines(ir, n) for n in layer}
    width = {n: max(MIN_BOX_WIDTH, max(len(t) for t in lines[n]) * CHAR_WIDTH + 2 * PAD_X) for n in layer}

    # Edge instances (one per operand, so add(x, x) has two), each a chain of items: the
    # source node, a waypoint ("via", edge, layer) per layer crossed, the target node.
    edges: list[tuple[str, str, int]] = []
    chains: list[list] = []
    for node_id, node in ir.nodes():
        for position, operand in enumerate(node.operands):
            e = len(edges)
            edges.append((operand, node_id, position))
            chains.append([operand] + [("via", e, l) for l in range(layer[operand] + 1, layer[node_id])] + [node_id])
    is_real = lambda item: isinstance(item, str)  # noqa: E731
    level = lambda item: layer[item] if is_real(item) else item[2]  # noqa: E731
    item_width = lambda item: width[item] if is_real(item) else 0.0  # noqa: E731

    # Neighbour items, one entry per link (so a doubled operand counts twice).
    up: dict = {n: [] for n in layer}
    down: dict = {n: [] for n in layer}
    for chain in chains:
        for item in chain[1:-1]:
            up[item], down[item] = [], []
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)

    # Initial order: inputs q, k, v; then each layer by its operands' order, ties by the
    # deterministic node order.
    rank = {n: i for i, n in enumerate(ir.order())}
    rows: list[list] = [[] for _ in range(depth)]
    for item in up:
        rows[level(item)].append(item)
    rows[0].sort(key=lambda n: (INPUT_NAMES.index(n) if n in INPUT_NAMES else len(INPUT_NAMES), rank[n]))
    for l in range(1, depth):
        at = {item: i for i, item in enumerate(rows[l - 1])}
        rows[l].sort(key=lambda item: (sum(at[u] for u in up[item]) / max(1, len(up[item])),
                                       rank[item] if is_real(item) else rank[edges[item[1]][1]], str(item)))
    rows = _order_layers(rows, up, down)

    # x: pull towards the neighbours' mean, keeping order and gaps.
    def gap(a, b) -> float:
        if is_real(a) and is_real(b):
            clearance = BOX_GAP
        elif is_real(a) or is_real(b):
            clearance = WAYPOINT_CLEARANCE
        else:
            clearance = WAYPOINT_GAP
        return (item_width(a) + item_width(b)) / 2 + clearance

    x: dict = {}
    for row in rows:
        position = 0.0
        for i, item in enumerate(row):
            position += gap(row[i - 1], item) if i else item_width(item) / 2
            x[item] = position
        shift = -position / 2
        for item in row:
            x[item] += shift
    for round_ in range(PLACEMENT_ROUNDS):
        order = range(depth) if round_ % 2 == 0 else range(depth - 1, -1, -1)
        for l in order:
            row = rows[l]
            targets = []
            for item in row:
                near = up[item] + down[item]
                # waypoints pull harder, so long edges run straight
                weights = [1.0 if is_real(n) and is_real(item) else 2.0 for n in near]
                targets.append(sum(w * x[n] for w, n in zip(weights, near)) / sum(weights) if near else x[item])
            placed = _isotonic(targets, [gap(a, b) for a, b in zip(row, row[1:])])
            for item, value in zip(row, placed):
                x[item] = value

    # Shift so that the picture starts at (MARGIN, MARGIN); layer 0 on top.
    left = min(x[item] - item_width(item) / 2 for item in x)
    right = max(x[item] + item_width(item) / 2 for item in x)
    height = 2 * MARGIN + depth * BOX_HEIGHT + (depth - 1) * LAYER_GAP
    y_of = lambda l: height - MARGIN - BOX_HEIGHT / 2 - l * (BOX_HEIGHT + LAYER_GAP)  # noqa: E731
    for item in x:
        x[item] += MARGIN - left
    boxes = {n: Box(n, x[n], y_of(layer[n]), width[n], BOX_HEIGHT, layer[n], lines[n]) for n in layer}

    # Attachment points: outgoing edges along the bottom, incoming along the top, each side
    # sorted by the x of the item at the other end (then operand position) so that edges
    # meeting at a box do not cross there.
    out_port: dict[int, float] = {}
    in_port: dict[int, float] = {}
    for n, box in boxes.items():
        outgoing = sorted((e for e, c in enumerate(chains) if c[0] == n), key=lambda e: (x[chains[e][1]], edges[e][2], e))
        incoming = sorted((e for e, c in enumerate(chains) if c[-1] == n), key=lambda e: (x[chains[e][-2]], edges[e][2], e))
        for e, px in zip(outgoing, _spread(box.x, box.width, len(outgoing))):
            out_port[e] = px
        for e, px in zip(incoming, _spread(box.x, box.width, len(incoming))):
            in_port[e] = px

    paths = []
    for e, ((source, target, position), chain) in enumerate(zip(edges, chains)):
        points = [(out_port[e], boxes[source].bottom)]
        for via in chain[1:-1]:
            y = y_of(via[2])
            points += [(x[via], y + BOX_HEIGHT / 2), (x[via], y - BOX_HEIGHT / 2)]
        end = (in_port[e], boxes[target].top)
        points.append(end)
        label = label_at = None
        if len(ir.node(target).operands) > 1:
            (x0, y0), (x1, y1) = points[-2], end
            t = LABEL_RISE / (y0 - y1)
            label, label_at = str(position), (x1 + (x0 - x1) * t, y1 + (y0 - y1) * t)
        paths.append(EdgePath(source, target, position, tuple(points), label, label_at))
    return Layout(boxes, tuple(paths), right - left + 2 * MARGIN, height)


# -- PNG -----------------------------------------------------------------------------------

DPI = 144
TITLE_HEIGHT = 18.0  # points above each panel


def draw_png(graphs: list[tuple[str, IR]], path: str | Path, engine: str = "auto") -> None:
    """One panel per graph, nodes coloured by index space (token, pair, global, input), the
    output's box drawn bold. `engine`: "graphviz" (the `dot` binary), "matplotlib" (the
    layered layout above), or "auto" (Graphviz when installed, else matplotlib)."""
    if engine not in ("auto", "graphviz", "matplotlib"):
        raise ValueError(f"unknown engine {engine!r} (auto, graphviz, matplotlib)")
    if engine != "matplotlib":
        dot = shutil.which("dot")
        if dot is not None:
            result = subprocess.run([dot, "-Tpng", f"-Gdpi={DPI}", "-o", str(path)], input=to_dot(graphs),
                                    text=True, capture_output=True, timeout=120)
            if result.returncode == 0:
                return
            if engine == "graphviz":
                raise RuntimeError(f"dot failed: {result.stderr.strip()}")
        elif engine == "graphviz":
            raise RuntimeError("Graphviz's dot is not on PATH")
    _draw_matplotlib(graphs, path)


def _draw_matplotlib(graphs: list[tuple[str, IR]], path: str | Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    layouts = [(one_line(title), layout(ir), ir) for title, ir in graphs]
    panel_widths = [max(lay.width, len(title) * 0.55 * 9 + 2 * MARGIN) for title, lay, _ in layouts]
    total_width = sum(panel_widths)
    total_height = max(lay.height for _, lay, _ in layouts) + TITLE_HEIGHT
    figure = Figure(figsize=(total_width / 72, total_height / 72), dpi=DPI)
    FigureCanvasAgg(figure)
    offset = 0.0
    for (title, lay, ir), panel_width in zip(layouts, panel_widths):
        # Axes sized to the layout, so one data unit is one point and the text fits its box.
        inset = (panel_width - lay.width) / 2
        ax = figure.add_axes((
            (offset + inset) / total_width, (total_height - TITLE_HEIGHT - lay.height) / total_height,
            lay.width / total_width, lay.height / total_height,
        ))
        ax.set_xlim(0, lay.width)
        ax.set_ylim(0, lay.height)
        ax.axis("off")
        figure.text((offset + panel_width / 2) / total_width, 1 - 4 / total_height, title,
                    ha="center", va="top", fontsize=9)
        for edge in lay.edges:
            xs, ys = zip(*edge.points)
            ax.plot(xs[:-1], ys[:-1], color="#555555", linewidth=0.9, zorder=1, solid_joinstyle="round")
            ax.add_patch(FancyArrowPatch(edge.points[-2], edge.points[-1], arrowstyle="-|>", mutation_scale=7,
                                         shrinkA=0, shrinkB=0, color="#555555", linewidth=0.9, zorder=1))
            if edge.label is not None:
                ax.text(*edge.label_at, edge.label, ha="center", va="center", fontsize=6, zorder=4, color="#222222",
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "#999999", "linewidth": 0.5})
        for node_id, box in lay.boxes.items():
            node = ir.node(node_id)
            colour = SPACE_COLOURS[INPUT_OP if node.op == INPUT_OP else node.space]
            style = f"round,pad=0,rounding_size={BOX_HEIGHT / 2 if node.op == INPUT_OP else 3}"
            ax.add_patch(FancyBboxPatch((box.left, box.bottom), box.width, box.height, boxstyle=style, facecolor=colour,
                                        edgecolor="black", linewidth=2.0 if node_id == ir.output else 0.8, zorder=2))
            ax.text(box.x, box.y, "\n".join(box.lines), ha="center", va="center", fontsize=FONT_SIZE,
                    family="monospace", linespacing=1.3, zorder=3)
        offset += panel_width
    figure.savefig(path, dpi=DPI)
