"""Editing an attention graph as a value: mutations build genomes, not text.

    editor = GraphEditor.from_genome(genome)
    kept = editor.add("neg", "q")           # a new node; its id is fresh ("m1", "m2", ...)
    editor.replace_uses("k", kept)          # every operand use of k, and the output
    child = editor.prune().finish()         # a new AttentionGenome, checked by the parser's rules

Shapes are symbolic, as in the op registry: the inputs are [N,d].
"""

from __future__ import annotations

import itertools
from graphlib import TopologicalSorter

from .ops import INPUT_NAMES, INPUT_SHAPE, OPS, Shape
from .parse import MAX_NODES, validate_attention
from .schema import AttentionGenome, NodeSpec

OUTPUT = None  # the "node" of the output's use in `uses()`


class GraphEditor:
    """An attention graph being edited: nodes by id as (op, operands), the output, the
    inputs it may read, and the genome's causal flag, name and notes."""

    def __init__(self, nodes: dict[str, tuple[str, tuple[str, ...]]], output: str, inputs=INPUT_NAMES,
                 causal: bool = False, name: str | None = None, notes: str | None = None):
        self.nodes = dict(nodes)
        self.output = output
        self.inputs = tuple(inputs)
        self.causal, self.name, self.notes = causal, name, notes

    @classmethod
    def from_genome(cls, genome: AttentionGenome) -> GraphEditor:
        nodes = {n.id: (n.op, tuple(n.args)) for n in genome.nodes}
        return cls(nodes, genome.output, genome.inputs, genome.causal, genome.name, genome.notes)

    # -- reading --

    def op(self, node_id: str) -> str:
        return self.nodes[node_id][0]

    def args(self, node_id: str) -> tuple[str, ...]:
        return self.nodes[node_id][1]

    def values(self) -> list[str]:
        """What an operand may name: the inputs the graph may read, then the node ids."""
        return list(self.inputs) + list(self.nodes)

    def order(self) -> list[str]:
        """Node ids, operands first."""
        deps = {i: [a for a in args if a in self.nodes] for i, (_, args) in self.nodes.items()}
        return list(TopologicalSorter(deps).static_order())

    def shapes(self) -> dict[str, Shape]:
        """The shape of every input and node (raises ShapeError where an op does not fit)."""
        shapes = {name: INPUT_SHAPE for name in INPUT_NAMES}
        for node_id in self.order():
            op, args = self.nodes[node_id]
            shapes[node_id] = OPS[op].shape(*(shapes[a] for a in args))
        return shapes

    def shape(self, value: str) -> Shape:
        return self.shapes()[value]

    def uses(self, value: str) -> list[tuple[str | None, int]]:
        """Every use of `value`: (node id, operand position), and (OUTPUT, 0) for the output."""
        found = [(i, pos) for i, (_, args) in self.nodes.items() for pos, a in enumerate(args) if a == value]
        return found + ([(OUTPUT, 0)] if self.output == value else [])

    def descendants(self, value: str) -> set[str]:
        """The nodes that depend on `value` (not itself): operands that would close a cycle."""
        consumers: dict[str, list[str]] = {}
        for node_id, (_, args) in self.nodes.items():
            for a in set(args):
                consumers.setdefault(a, []).append(node_id)
        found: set[str] = set()
        stack = [value]
        while stack:
            for c in consumers.get(stack.pop(), ()):
                if c not in found:
                    found.add(c)
                    stack.append(c)
        return found

    def referenced_inputs(self) -> tuple[str, ...]:
        used = {a for _, args in self.nodes.values() for a in args} | {self.output}
        return tuple(name for name in INPUT_NAMES if name in used)

    # -- editing --

    def add(self, op: str, *args: str) -> str:
        """A new node `op(*args)`; returns its id (the first free one of m1, m2, ...)."""
        node_id = next(f"m{i}" for i in itertools.count(1) if f"m{i}" not in self.nodes)
        self.nodes[node_id] = (op, tuple(args))
        return node_id

    def set_op(self, node_id: str, op: str, args) -> None:
        self.nodes[node_id] = (op, tuple(args))

    def set_arg(self, node_id: str | None, position: int, value: str) -> None:
        """Point one use (as `uses()` names it) at `value`."""
        if node_id is OUTPUT:
            self.output = value
            return
        op, args = self.nodes[node_id]
        self.nodes[node_id] = (op, args[:position] + (value,) + args[position + 1 :])

    def replace_uses(self, old: str, new: str) -> None:
        """Every operand use of `old`, and the output if it is `old`, now read `new`."""
        for node_id, (op, args) in self.nodes.items():
            self.nodes[node_id] = (op, tuple(new if a == old else a for a in args))
        if self.output == old:
            self.output = new

    def remove(self, node_id: str) -> None:
        del self.nodes[node_id]

    def prune(self) -> GraphEditor:
        """Drop the nodes the output does not depend on."""
        live, stack = set(), [self.output]
        while stack:
            value = stack.pop()
            if value in self.nodes and value not in live:
                live.add(value)
                stack.extend(self.nodes[value][1])
        self.nodes = {i: node for i, node in self.nodes.items() if i in live}
        return self

    def finish(self, inputs=None, max_nodes: int = MAX_NODES) -> AttentionGenome:
        """The edited genome, checked by the parser's rules (`validate_attention`); its
        inputs are `inputs`, or by default the ones it references."""
        genome = AttentionGenome(
            nodes=tuple(NodeSpec(i, op, args, f"node '{i}'") for i, (op, args) in self.nodes.items()),
            output=self.output,
            inputs=self.referenced_inputs() if inputs is None else tuple(inputs),
            causal=self.causal,
            name=self.name,
            notes=self.notes,
        )
        return validate_attention(genome, max_nodes=max_nodes)
