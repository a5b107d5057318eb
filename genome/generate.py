"""Random valid attention genomes, drawn from the op registry.

`random_attention(pick)` builds a genome one op at a time, choosing every op and operand
through `pick(options) -> option`. With `random.Random().choice` it is a plain sampler
(search); with a hypothesis draw it is a shrinkable strategy (tests/strategies.py).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from .ops import INPUT_NAMES, INPUT_SHAPE, OPS, OUTPUT_SHAPE, ShapeError
from .schema import AttentionGenome, NodeSpec

T = TypeVar("T")
Pick = Callable[[Sequence[T]], T]


def random_attention(
    pick: Pick,
    max_nodes: int = 10,
    ops: Sequence[str] | None = None,
    causal: bool = False,
    form: str | None = None,
    pick_op: Pick | None = None,
) -> AttentionGenome:
    """A valid genome drawn through `pick`: either attention-shaped (token-side values, a
    pairwise score, pairwise transforms, a contraction over keys or through a [d,d] state;
    at most 11 nodes) or a free DAG of at most `max_nodes` ops from `ops` (default: the
    whole registry).

    `form` ("attention" or "dag") forces the form; by default it is drawn when `ops` is
    None and a free DAG otherwise. An attention-shaped graph with `ops` given uses only
    those (a free DAG when they cannot make one). Ops are chosen through `pick_op`
    (default `pick`), everything else through `pick`."""
    pick_op = pick_op or pick
    if form is None:
        form = pick(["attention", "dag"]) if ops is None else "dag"
    allowed = list(OPS) if ops is None else list(ops)
    if form == "attention":
        genome = _attention_shaped(pick, pick_op, causal, set(allowed))
        if genome is not None:
            return genome
    return _free_dag(pick, pick_op, max_nodes, allowed, causal)


class _Draft:
    """A genome being drawn: node specs plus the shape of every value."""

    def __init__(self):
        self.shapes = {name: INPUT_SHAPE for name in INPUT_NAMES}
        self.nodes: list[NodeSpec] = []

    def add(self, op: str, *args: str) -> str:
        node_id = f"n{len(self.nodes)}"
        self.shapes[node_id] = OPS[op].shape(*(self.shapes[a] for a in args))
        self.nodes.append(NodeSpec(node_id, op, args, f"node '{node_id}'"))
        return node_id

    def of_shape(self, shape) -> list[str]:
        return [name for name, s in self.shapes.items() if s == shape]

    def finish(self, output: str, causal: bool) -> AttentionGenome:
        used = {a for n in self.nodes for a in n.args} | {output}
        inputs = tuple(name for name in INPUT_NAMES if name in used)
        return AttentionGenome(nodes=tuple(self.nodes), output=output, inputs=inputs, causal=causal)


_UNARY = [name for name, op in OPS.items() if op.elementwise and op.arity == 1]
_BINARY = [name for name, op in OPS.items() if op.elementwise and op.arity == 2]


def _elementwise_steps(pick: Pick, pick_op: Pick, draft: _Draft, value: str, steps: int, allowed: set[str]) -> str:
    """Apply `steps` elementwise ops to `value` (binary ones take a partner of its shape)."""
    unary, binary = [op for op in _UNARY if op in allowed], [op for op in _BINARY if op in allowed]
    for _ in range(steps):
        options = unary + binary + (["softmax"] if "softmax" in allowed and draft.shapes[value][1] == "N" else [])
        if not options:
            break
        op = pick_op(options)
        if op in _BINARY:
            value = draft.add(op, value, pick(draft.of_shape(draft.shapes[value])))
        else:
            value = draft.add(op, value)
    return value


# The ops each kind of attention-shaped graph is built around.
_KINDS = {
    "dot": {"matmul", "transpose"},
    "cos": {"cos", "matmul"},
    "euc": {"euc", "matmul"},
    "state": {"transpose", "matmul"},
}


def _attention_shaped(pick: Pick, pick_op: Pick, causal: bool, allowed: set[str]) -> AttentionGenome | None:
    kinds = [kind for kind, needs in _KINDS.items() if needs <= allowed]
    if not kinds:
        return None
    draft = _Draft()
    query = _elementwise_steps(pick, pick_op, draft, pick(INPUT_NAMES), pick(range(3)), allowed)
    key = _elementwise_steps(pick, pick_op, draft, pick(INPUT_NAMES), pick(range(3)), allowed)
    kind = pick(kinds)
    if kind == "state":  # linear attention: a [d,d] state from keys and values, read by queries
        keys_t = draft.add("transpose", key)
        if "softmax" in allowed and pick([False, True]):
            keys_t = draft.add("softmax", keys_t)  # normalised over tokens
        state = draft.add("matmul", keys_t, pick(draft.of_shape(INPUT_SHAPE)))
        state = _elementwise_steps(pick, pick_op, draft, state, pick(range(2)), allowed)
        out = draft.add("matmul", query, state)
    else:
        if kind == "dot":
            score = draft.add("matmul", query, draft.add("transpose", key))
        else:
            score = draft.add(kind, query, key)
        score = _elementwise_steps(pick, pick_op, draft, score, pick(range(1, 4)), allowed)
        out = draft.add("matmul", score, pick(draft.of_shape(INPUT_SHAPE)))
    out = _elementwise_steps(pick, pick_op, draft, out, pick(range(2)), allowed)
    return draft.finish(out, causal)


def _free_dag(pick: Pick, pick_op: Pick, max_nodes: int, ops: list[str], causal: bool) -> AttentionGenome:
    """Each step draws an op, then operands whose shapes it accepts (a step with none adds
    nothing). The output is the last [N,d] node, or an input when there is none."""
    draft = _Draft()
    for _ in range(pick(range(1, max_nodes + 1))):
        op = OPS[pick_op(ops)]
        first = pick(list(draft.shapes))
        args = [first]
        if op.arity == 2:
            partners = [name for name in draft.shapes if _accepts(op, draft.shapes[first], draft.shapes[name])]
            if not partners:
                continue
            args.append(pick(partners))
        elif not _accepts(op, draft.shapes[first]):
            continue
        draft.add(op.name, *args)
    outputs = [n.id for n in draft.nodes if draft.shapes[n.id] == OUTPUT_SHAPE]
    return draft.finish(outputs[-1] if outputs else pick(list(INPUT_NAMES)), causal)


def _accepts(op, *shapes) -> bool:
    try:
        op.shape(*shapes)
        return True
    except ShapeError:
        return False
