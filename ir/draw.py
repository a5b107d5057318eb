"""Pictures of an IR: Graphviz text, or a PNG drawn with matplotlib (no Graphviz needed)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from genomec.genome.ops import format_shape

from .graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE, TOKEN_SPACE

SPACE_COLOURS = {TOKEN_SPACE: "#cfe2f3", PAIR_SPACE: "#f4cccc", GLOBAL_SPACE: "#d9ead3", INPUT_OP: "#fff2cc"}


def _label(ir: IR, node_id: str) -> str:
    node = ir.node(node_id)
    head = node_id if node.op == INPUT_OP else f"{node_id} = {node.op}"
    return f"{head}\n{format_shape(node.shape)}"


def to_dot(graphs: list[tuple[str, IR]]) -> str:
    """Graphviz text, one cluster per graph; operand positions label the edges of binary
    ops."""
    lines = ["digraph genome {", "  rankdir=TB;", '  node [shape=box, style=filled, fontname="Helvetica"];']
    for index, (title, ir) in enumerate(graphs):
        prefix = f"g{index}_" if len(graphs) > 1 else ""
        indent = "    " if len(graphs) > 1 else "  "
        if len(graphs) > 1:
            lines += [f"  subgraph cluster_{index} {{", f'    label="{title}";']
        for node_id, node in ir.nodes():
            colour = SPACE_COLOURS[INPUT_OP if node.op == INPUT_OP else node.space]
            shape = ", shape=ellipse" if node.op == INPUT_OP else ""
            peripheries = ", peripheries=2" if node_id == ir.output else ""
            label = _label(ir, node_id).replace("\n", "\\n")
            lines.append(f'{indent}"{prefix}{node_id}" [label="{label}", fillcolor="{colour}"{shape}{peripheries}];')
        for node_id, node in ir.nodes():
            for position, operand in enumerate(node.operands):
                edge_label = f' [label="{position}"]' if len(node.operands) > 1 else ""
                lines.append(f'{indent}"{prefix}{operand}" -> "{prefix}{node_id}"{edge_label};')
        if len(graphs) > 1:
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(ir: IR) -> dict:
    """Positions by topological generation: inputs on top, the output at the bottom."""
    layers = {}
    for depth, generation in enumerate(nx.topological_generations(ir.graph)):
        for node_id in generation:
            layers[node_id] = depth
    graph = ir.graph.copy()
    nx.set_node_attributes(graph, layers, "layer")
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")
    return {n: (x, -y) for n, (x, y) in pos.items()}


def draw_png(graphs: list[tuple[str, IR]], path: str | Path) -> None:
    """One panel per graph, nodes coloured by index space (token, pair, global, input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = max(len(list(nx.topological_generations(ir.graph))) for _, ir in graphs)
    fig, axes = plt.subplots(1, len(graphs), figsize=(3.6 * len(graphs), max(3.0, 1.0 * depth)), squeeze=False)
    for ax, (title, ir) in zip(axes[0], graphs):
        pos = _layout(ir)
        nx.draw_networkx_edges(ir.graph, pos, ax=ax, arrows=True, arrowsize=10, node_size=1800, edge_color="#555555")
        for node_id, (x, y) in pos.items():
            node = ir.node(node_id)
            colour = SPACE_COLOURS[INPUT_OP if node.op == INPUT_OP else node.space]
            ax.text(
                x, y, _label(ir, node_id), ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.35", "facecolor": colour, "edgecolor": "black",
                      "linewidth": 2 if node_id == ir.output else 0.8},
            )
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.margins(0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
