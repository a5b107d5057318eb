"""The IR: a networkx.DiGraph of frozen node payloads, one builder, one printer, a verifier.

Operand order lives in the payload (a DiGraph cannot say `add(x, x)`); edges are derived
from it. Every node also carries a structural digest (a Merkle hash over op, input name and
operand digests) that orders nodes deterministically and independently of their names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import networkx as nx

from genomec.genome.ops import INPUT_NAMES, INPUT_SHAPE, OPS, OUTPUT_SHAPE, TOKENS, Shape, format_shape
from genomec.genome.schema import AttentionGenome

INPUT_OP = "input"

# Index spaces (SPEC 3, Schedule): which token axes a value has.
TOKEN_SPACE = "token"  # [N,d] or [d,N]: one value per token
PAIR_SPACE = "pair"  # [N,N]: one value per (query, key) pair
GLOBAL_SPACE = "global"  # [d,d]: no token axis


def index_space(shape: Shape) -> str:
    n_token_axes = sum(axis == TOKENS for axis in shape)
    return (GLOBAL_SPACE, TOKEN_SPACE, PAIR_SPACE)[n_token_axes]


class IRError(AssertionError):
    """An IR invariant is broken: a bug in genomec, never a user error."""


@dataclass(frozen=True)
class Node:
    op: str  # an OPS name, or "input"
    operands: tuple[str, ...]  # node ids, in order
    shape: Shape
    space: str
    input: str | None = None  # for op == "input": which of q, k, v
    digest: str = ""  # structural hash of the sub-graph this node computes

    def __str__(self) -> str:
        if self.op == INPUT_OP:
            return f"input {self.input}"
        return f"{self.op}({', '.join(format_id(o) for o in self.operands)})"


def _digest(op: str, input_name: str | None, operand_digests) -> str:
    text = f"{op}:{input_name or ''}(" + ",".join(operand_digests) + ")"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class IR:
    """An attention graph. `graph` holds the nodes (attribute "node": Node); `output` is the
    id of the result. Treat an IR as immutable: passes build new ones."""

    def __init__(self, graph: nx.DiGraph, output: str, causal: bool = False, declared_inputs=(), name=None):
        self.graph = graph
        self.output = output
        self.causal = causal
        self.declared_inputs = tuple(declared_inputs)
        self.name = name
        self._order: list[str] | None = None

    def node(self, node_id: str) -> Node:
        return self.graph.nodes[node_id]["node"]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.graph

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def order(self) -> list[str]:
        """Deterministic topological order, ties broken by structural digest (so it does not
        depend on node names or insertion order)."""
        if self._order is None:
            self._order = list(nx.lexicographical_topological_sort(self.graph, key=lambda n: self.node(n).digest))
        return self._order

    def nodes(self):
        """(id, Node) pairs in deterministic topological order."""
        return [(n, self.node(n)) for n in self.order()]

    def consumers(self, node_id: str) -> list[str]:
        return sorted(self.graph.successors(node_id), key=lambda n: self.node(n).digest)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The inputs the graph actually reads, in q, k, v order."""
        return tuple(name for name in INPUT_NAMES if name in self.graph)

    @property
    def ops(self) -> list[str]:
        return [node.op for _, node in self.nodes() if node.op != INPUT_OP]


class IRBuilder:
    """Builds an IR node by node, inferring shapes from the op registry.

    With `share=True` (the default) adding a node identical to an existing one returns the
    existing id: common-subexpression elimination by construction. Sharing builders also
    put the operands of commutative ops in structural order, so add(x, y) and add(y, x)
    are one node."""

    def __init__(self, share: bool = True):
        self.share = share
        self.graph = nx.DiGraph()
        self._by_digest: dict[str, str] = {}
        self._count = 0

    def node(self, node_id: str) -> Node:
        return self.graph.nodes[node_id]["node"]

    def _fresh_id(self) -> str:
        while True:
            node_id = f"t{self._count}"
            self._count += 1
            if node_id not in self.graph:
                return node_id

    def input(self, name: str) -> str:
        if name not in INPUT_NAMES:
            raise IRError(f"unknown input {name!r}")
        if name not in self.graph:
            node = Node(INPUT_OP, (), INPUT_SHAPE, index_space(INPUT_SHAPE), input=name, digest=_digest(INPUT_OP, name, ()))
            self.graph.add_node(name, node=node)
            self._by_digest[node.digest] = name
        return name

    def add(self, op: str, operands, node_id: str | None = None) -> str:
        operands = tuple(operands)
        for operand in operands:
            if operand not in self.graph:
                raise IRError(f"operand {operand!r} of {op} is not in the graph")
        if self.share and OPS[op].commutative:
            operands = tuple(sorted(operands, key=lambda o: self.node(o).digest))
        digest = _digest(op, None, (self.node(o).digest for o in operands))
        if self.share and digest in self._by_digest:
            return self._by_digest[digest]
        shape = OPS[op].shape(*(self.node(o).shape for o in operands))
        node_id = node_id or self._fresh_id()
        if node_id in self.graph:
            raise IRError(f"duplicate node id {node_id!r}")
        self.graph.add_node(node_id, node=Node(op, operands, shape, index_space(shape), digest=digest))
        for operand in set(operands):
            self.graph.add_edge(operand, node_id)
        self._by_digest.setdefault(digest, node_id)
        return node_id

    def finish(self, output: str, causal: bool = False, declared_inputs=(), name=None) -> IR:
        return IR(self.graph, output, causal=causal, declared_inputs=declared_inputs, name=name)


def build_ir(genome: AttentionGenome, share: bool = False) -> IR:
    """The IR of a parsed genome, node for node (ids kept). With share=True identical
    nodes are merged as they are built."""
    builder = IRBuilder(share=share)
    ids: dict[str, str] = {}
    for name in INPUT_NAMES:
        if name in genome.inputs or any(name in n.args for n in genome.nodes) or genome.output == name:
            ids[name] = builder.input(name)
    for n in genome.nodes:
        ids[n.id] = builder.add(n.op, (ids[a] for a in n.args), node_id=None if share else n.id)
    return builder.finish(ids[genome.output], genome.causal, genome.inputs, genome.name)


def rebuild(ir: IR, rename=None) -> IR:
    """A copy of `ir` holding only what the output needs, built with sharing (so CSE).
    `rename(old_id, node) -> new_id` may choose the ids."""
    builder = IRBuilder(share=True)
    new: dict[str, str] = {}
    live = nx.ancestors(ir.graph, ir.output) | {ir.output}
    for node_id, node in ir.nodes():
        if node_id not in live:
            continue
        if node.op == INPUT_OP:
            new[node_id] = builder.input(node.input)
        else:
            wanted = rename(node_id, node) if rename else None
            new[node_id] = builder.add(node.op, (new[o] for o in node.operands), node_id=wanted)
    return builder.finish(new[ir.output], ir.causal, ir.declared_inputs, ir.name)


# -- printing --------------------------------------------------------------------------

# Ids printed as they are: word characters, dots, dashes and primes. Anything else (spaces,
# commas, brackets, quotes, backslashes, line breaks, ...) could break the one-line-per-node
# layout or make `op(a, b)` ambiguous, so such an id is printed as a JSON string literal.
_PLAIN_ID = re.compile(r"[\w.'-]+")


def format_id(node_id: str) -> str:
    """A node id as the printers show it: bare when plain, else a JSON string literal with
    every quote, backslash and non-printable character escaped (so always one line, and
    `json.loads` gives the id back)."""
    if _PLAIN_ID.fullmatch(node_id) and node_id.isprintable():
        return node_id
    body = "".join(c if c.isprintable() and c not in '"\\' else json.dumps(c)[1:-1] for c in node_id)
    return f'"{body}"'


def format_ir(ir: IR) -> str:
    """The canonical text form: one line per node in deterministic order."""
    header = f"graph({', '.join(ir.inputs)})" + (" causal" if ir.causal else "")
    lines = [header]
    width = max((len(f"{format_id(i)} = {n}") for i, n in ir.nodes() if n.op != INPUT_OP), default=0)
    for node_id, node in ir.nodes():
        if node.op == INPUT_OP:
            continue
        lhs = f"{format_id(node_id)} = {node}"
        lines.append(f"  {lhs:<{width}}  : {format_shape(node.shape)} {node.space}")
    lines.append(f"  return {format_id(ir.output)}")
    return "\n".join(lines)


# -- verification ----------------------------------------------------------------------


def verify(ir: IR) -> IR:
    """Check the IR's invariants; raise IRError naming the first broken one."""
    g = ir.graph
    if not nx.is_directed_acyclic_graph(g):
        raise IRError("the graph has a cycle")
    if ir.output not in g:
        raise IRError(f"output {ir.output!r} is not a node")
    for node_id in g.nodes:
        node = g.nodes[node_id].get("node")
        if not isinstance(node, Node):
            raise IRError(f"node {node_id!r} has no payload")
        if node.op == INPUT_OP:
            if node.input != node_id or node.shape != INPUT_SHAPE or node.operands:
                raise IRError(f"input node {node_id!r} is malformed")
            expected_digest = _digest(INPUT_OP, node.input, ())
        else:
            if node.op not in OPS:
                raise IRError(f"node {node_id!r}: unknown op {node.op!r}")
            shape = OPS[node.op].shape(*(ir.node(o).shape for o in node.operands))
            if shape != node.shape:
                raise IRError(f"node {node_id!r}: shape {node.shape} but operands give {shape}")
            expected_digest = _digest(node.op, None, (ir.node(o).digest for o in node.operands))
        if node.space != index_space(node.shape):
            raise IRError(f"node {node_id!r}: index space {node.space} does not match shape {node.shape}")
        if node.digest != expected_digest:
            raise IRError(f"node {node_id!r}: stale structural digest")
        if set(g.predecessors(node_id)) != set(node.operands):
            raise IRError(f"node {node_id!r}: edges {sorted(g.predecessors(node_id))} != operands {node.operands}")
    if ir.node(ir.output).shape != OUTPUT_SHAPE:
        raise IRError(f"output shape {ir.node(ir.output).shape} is not [N,d]")
    return ir
