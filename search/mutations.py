"""Mutations (SPEC 5): small pure functions over model genome values.

Every mutation is `(genome, rng, sampler, space) -> (child, change)`. Intra-layer ones
edit one attention graph (`replace_op`, `insert_node`, `delete_node`, `rewire`, `add_v`,
`drop_v`), inter-layer ones change the layer pattern (`flip_layer`, `kernel_size`).
`change` says what was done, as JSON: `type`, `layer`, `node`, `old_op`, `new_op`,
`ops_chosen` and a few details of the type.

Every op a mutation introduces is drawn by `sampler.draw(candidates, rng)` among the
space's ops that fit at that place (shape rules), and listed in `ops_chosen` in draw
order; the strategies differ only in the sampler. A drawn child may be thrown away and
redrawn (`mutate`), so a sampler's statistics count the `ops_chosen` of the change the
engine keeps, not its draws.

Children are validated by the parser's rules (`validate_model`) plus the space's own
(`space_problems`): every child is a model genome of the space.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import random
from pathlib import Path
from typing import Protocol

from genomec.genome import (
    INPUT_NAMES,
    OPS,
    AttentionGenome,
    AttentionLayer,
    ConvLayer,
    GenomeError,
    ModelGenome,
    ShapeError,
    loads_genome,
    parse_attention,
    validate_model,
)
from genomec.genome.edit import OUTPUT, GraphEditor
from genomec.genome.generate import random_attention
from genomec.genome.ops import INPUT_SHAPE

from .space import SearchSpace

STANDARD_ATTENTION = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"
SEEDS = ("standard", "autobert-zero")


class Sampler(Protocol):
    def draw(self, candidates: list[str], rng: random.Random) -> str:
        """One op among `candidates` (the space's ops that fit, never empty)."""


class NotApplicable(Exception):
    """The mutation has nothing to change in this genome (no conv layer to resize, ...)."""


class MutationError(ValueError):
    """No mutation type gives a valid child that differs from the parent."""


# -- helpers ---------------------------------------------------------------------------


def _record(node=None, old_op=None, new_op=None, ops_chosen=(), **detail) -> dict:
    return {"node": node, "old_op": old_op, "new_op": new_op, "ops_chosen": list(ops_chosen), **detail}


def _with_layer(genome: ModelGenome, index: int, layer, space: SearchSpace) -> ModelGenome:
    """The genome with layer `index` replaced: a new model of the space (no name)."""
    layers = list(genome.layers)
    layers[index] = layer
    return ModelGenome(layers=tuple(layers), config=space.model_config())


def _shuffled(items, rng: random.Random) -> list:
    items = list(items)
    return rng.sample(items, len(items))


def _shape_or_none(op: str, *shapes):
    try:
        return OPS[op].shape(*shapes)
    except ShapeError:
        return None


def _ops_that_fit(space, shapes, first, partners, want, exclude=None, keep=None) -> dict[str, list[str]]:
    """The space's ops that map `first` (and, for a binary op, one of `partners`) to shape
    `want`: op -> the partners that fit (empty for a unary op). A binary op keeps the
    partner `keep` where it fits."""
    fitting = {}
    for op in space.ops:
        if op == exclude:
            continue
        if OPS[op].arity == 1:
            if _shape_or_none(op, shapes[first]) == want:
                fitting[op] = []
            continue
        ok = [y for y in partners if _shape_or_none(op, shapes[first], shapes[y]) == want]
        if keep in ok:
            ok = [keep]
        if ok:
            fitting[op] = ok
    return fitting


def _operand_uses(editor: GraphEditor, and_output: bool = False) -> list[tuple[str | None, int]]:
    """Every (node, position) operand use, and with `and_output` the output's (OUTPUT, 0)."""
    uses = [(node, pos) for node in editor.nodes for pos in range(len(editor.args(node)))]
    return uses + ([(OUTPUT, 0)] if and_output else [])


def _used_value(editor: GraphEditor, node, position) -> str:
    return editor.output if node is OUTPUT else editor.args(node)[position]


def _reads_v(graph: AttentionGenome) -> bool:
    return "v" in GraphEditor.from_genome(graph).prune().referenced_inputs()


# -- intra-layer mutations: edits of one attention graph ----------------------------------
#
# Each `_edit` function changes the editor in place and returns the change record, or
# None when it has nothing to change in this graph; `_edit_graph` picks the layer.


def _edit_graph(kind, edit, genome, rng, sampler, space):
    attention = [i for i, layer in enumerate(genome.layers) if isinstance(layer, AttentionLayer)]
    for index in _shuffled(attention, rng):
        editor = GraphEditor.from_genome(genome.layers[index].graph).prune()
        editor.name = editor.notes = None  # an edited graph is a new graph
        change = edit(editor, rng, sampler, space)
        if change is not None:
            graph = editor.prune().finish(max_nodes=space.max_nodes)
            return _with_layer(genome, index, AttentionLayer(graph), space), {"type": kind, "layer": index, **change}
    raise NotApplicable(f"{kind}: no attention layer it applies to")


def _replace_op(editor, rng, sampler, space):
    shapes = editor.shapes()
    for node in _shuffled(editor.nodes, rng):
        old_op, args = editor.op(node), editor.args(node)
        blocked = {node} | editor.descendants(node)  # a second operand from these would close a cycle
        partners = [y for y in editor.values() if y not in blocked]
        keep = args[1] if len(args) == 2 else None
        fitting = _ops_that_fit(space, shapes, args[0], partners, shapes[node], exclude=old_op, keep=keep)
        if not fitting:
            continue
        new_op = sampler.draw(list(fitting), rng)
        new_args = (args[0], rng.choice(fitting[new_op])) if fitting[new_op] else (args[0],)
        editor.set_op(node, new_op, new_args)
        return _record(node, old_op, new_op, [new_op], old_args=list(args), new_args=list(new_args))
    return None


def _insert_node(editor, rng, sampler, space):
    shapes = editor.shapes()
    for node, position in _shuffled(_operand_uses(editor, and_output=True), rng):
        value = _used_value(editor, node, position)
        blocked = set() if node is OUTPUT else {node} | editor.descendants(node)
        partners = [y for y in editor.values() if y not in blocked]
        fitting = _ops_that_fit(space, shapes, value, partners, shapes[value])
        if not fitting:
            continue
        new_op = sampler.draw(list(fitting), rng)
        args = (value, rng.choice(fitting[new_op])) if fitting[new_op] else (value,)
        new_node = editor.add(new_op, *args)
        editor.set_arg(node, position, new_node)
        return _record(new_node, None, new_op, [new_op], args=list(args), use={"node": node, "position": position})
    return None


def _delete_node(editor, rng, sampler, space):
    shapes = editor.shapes()
    for node in _shuffled(editor.nodes, rng):
        same_shape = [a for a in dict.fromkeys(editor.args(node)) if shapes[a] == shapes[node]]
        if not same_shape:
            continue
        replacement = rng.choice(same_shape)
        old_op = editor.op(node)
        editor.replace_uses(node, replacement)
        editor.remove(node)
        return _record(node, old_op, None, replacement=replacement)
    return None


def _rewire(editor, rng, sampler, space):
    shapes = editor.shapes()
    for node, position in _shuffled(_operand_uses(editor), rng):
        old = editor.args(node)[position]
        blocked = {old, node} | editor.descendants(node)
        options = [y for y in editor.values() if y not in blocked and shapes[y] == shapes[old]]
        if not options:
            continue
        new = rng.choice(options)
        editor.set_arg(node, position, new)
        return _record(node, position=position, old_arg=old, new_arg=new)
    return None


def _add_v(editor, rng, sampler, space):
    if not space.allow_drop_v or "v" in editor.referenced_inputs():
        return None
    shapes = editor.shapes()
    uses = [(node, pos) for node, pos in _operand_uses(editor) if shapes[editor.args(node)[pos]] == INPUT_SHAPE]
    if not uses:
        return None
    node, position = rng.choice(uses)
    old = editor.args(node)[position]
    editor.set_arg(node, position, "v")
    return _record(node, position=position, old_arg=old, new_arg="v")


def _drop_v(editor, rng, sampler, space):
    if not space.allow_drop_v or "v" not in editor.referenced_inputs():
        return None
    shapes = editor.shapes()
    blocked = {"v"} | editor.descendants("v")
    options = [y for y in list(INPUT_NAMES) + list(editor.nodes) if y not in blocked and shapes[y] == INPUT_SHAPE]
    replacement = rng.choice(options)  # q and k are always there
    uses = len(editor.uses("v"))
    editor.replace_uses("v", replacement)
    return _record(replacement=replacement, uses=uses)


def replace_op(genome, rng, sampler, space):
    """A node's op replaced by another of the same output shape. A binary op taking a
    unary's place gets a second operand that fits (not a descendant: no cycle); a unary
    op taking a binary's keeps the first."""
    return _edit_graph("replace_op", _replace_op, genome, rng, sampler, space)


def insert_node(genome, rng, sampler, space):
    """A new node on the path from a value to one of its uses (or after the output),
    of the value's shape."""
    return _edit_graph("insert_node", _insert_node, genome, rng, sampler, space)


def delete_node(genome, rng, sampler, space):
    """A node replaced, at every use, by one of its operands of its shape."""
    return _edit_graph("delete_node", _delete_node, genome, rng, sampler, space)


def rewire(genome, rng, sampler, space):
    """One operand replaced by another value of its shape that does not depend on the
    node (no cycle)."""
    return _edit_graph("rewire", _rewire, genome, rng, sampler, space)


def add_v(genome, rng, sampler, space):
    """A graph without v reads it: one [N,d] operand use now names v."""
    return _edit_graph("add_v", _add_v, genome, rng, sampler, space)


def drop_v(genome, rng, sampler, space):
    """A graph stops reading v: every use of v now names another [N,d] value."""
    return _edit_graph("drop_v", _drop_v, genome, rng, sampler, space)


# -- inter-layer mutations ----------------------------------------------------------------


def standard_attention() -> AttentionGenome:
    return parse_attention({"expr": STANDARD_ATTENTION})


def flip_layer(genome, rng, sampler, space):
    """An attention layer becomes a conv layer (a kernel size of the space), or a conv
    layer an attention layer: a copy of another attention layer's graph, else standard
    attention."""
    index = rng.randrange(len(genome.layers))
    if isinstance(genome.layers[index], AttentionLayer):
        size = rng.choice(space.kernel_sizes)
        change = _record(old_type="attention", new_type="conv", kernel_size=size)
        return _with_layer(genome, index, ConvLayer(size), space), {"type": "flip_layer", "layer": index, **change}
    attention = [i for i, layer in enumerate(genome.layers) if isinstance(layer, AttentionLayer)]
    source = rng.choice(attention) if attention else None
    graph = genome.layers[source].graph if source is not None else standard_attention()
    change = _record(old_type="conv", new_type="attention", copied_from=source)
    return _with_layer(genome, index, AttentionLayer(graph), space), {"type": "flip_layer", "layer": index, **change}


def kernel_size(genome, rng, sampler, space):
    """A conv layer's kernel size changed to another size of the space."""
    convs = [i for i, layer in enumerate(genome.layers) if isinstance(layer, ConvLayer)]
    if not convs or len(space.kernel_sizes) < 2:
        raise NotApplicable("kernel_size: no conv layer, or one kernel size only")
    index = rng.choice(convs)
    old = genome.layers[index]
    size = rng.choice([s for s in space.kernel_sizes if s != old.kernel_size])
    change = _record(old_kernel_size=old.kernel_size, new_kernel_size=size)
    return _with_layer(genome, index, ConvLayer(size, old.variant), space), {"type": "kernel_size", "layer": index, **change}


MUTATIONS = {
    "replace_op": replace_op,
    "insert_node": insert_node,
    "delete_node": delete_node,
    "rewire": rewire,
    "add_v": add_v,
    "drop_v": drop_v,
    "flip_layer": flip_layer,
    "kernel_size": kernel_size,
}
V_MUTATIONS = ("add_v", "drop_v")  # only where the space allows dropping v


# -- the space's rules, and drawing one child ---------------------------------------------


def space_problems(genome: ModelGenome, space: SearchSpace) -> list[str]:
    """Why `genome` is not a model genome of `space` (empty: it is): the parser's rules
    with the space's node limit, then the layer count, config, kernel sizes and v."""
    try:
        validate_model(genome, max_nodes=space.max_nodes)
    except GenomeError as e:
        return e.problems
    problems = []
    if len(genome.layers) != space.num_layers:
        problems.append(f"{len(genome.layers)} layers, the space has {space.num_layers}")
    if genome.config != space.model_config():
        problems.append("config: not the space's model config")
    for index, layer in enumerate(genome.layers):
        if isinstance(layer, ConvLayer) and layer.kernel_size not in space.kernel_sizes:
            problems.append(f"layers[{index}]: kernel size {layer.kernel_size} is not one of the space's")
        if isinstance(layer, AttentionLayer) and not space.allow_drop_v and not _reads_v(layer.graph):
            problems.append(f"layers[{index}].graph: does not read v, and the space keeps v")
    return problems


def _fingerprint(genome: ModelGenome) -> tuple:
    """The genome up to node ids: two genomes with the same fingerprint compute the same."""
    layers = []
    for layer in genome.layers:
        if isinstance(layer, ConvLayer):
            layers.append(("conv", layer.kernel_size, layer.variant))
            continue
        editor = GraphEditor.from_genome(layer.graph).prune()
        digest = {name: name for name in INPUT_NAMES}
        for node in editor.order():
            text = f"{editor.op(node)}({','.join(digest[a] for a in editor.args(node))})"
            digest[node] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        layers.append(("attention", editor.causal, digest[editor.output]))
    return tuple(layers)


def mutate(
    genome: ModelGenome,
    rng: random.Random,
    sampler: Sampler,
    space: SearchSpace,
    max_tries: int = 8,
    types=None,
) -> tuple[ModelGenome, dict]:
    """One child of `genome`: a mutation type drawn by `rng` (among `types`, default all
    the space allows), redrawn up to `max_tries` times while its child is invalid in the
    space or computes what the parent does, then another type. Raises MutationError when
    no type gives a child."""
    kinds = [k for k in (types or MUTATIONS) if space.allow_drop_v or k not in V_MUTATIONS]
    parent = _fingerprint(genome)
    while kinds:
        kind = rng.choice(kinds)
        for _ in range(max_tries):
            try:
                child, change = MUTATIONS[kind](genome, rng, sampler, space)
            except NotApplicable:
                break
            except GenomeError:  # over the node limit, ...: draw again
                continue
            if not space_problems(child, space) and _fingerprint(child) != parent:
                return child, change
        kinds.remove(kind)
    raise MutationError("no mutation gives a valid child that differs from its parent")


# -- genomes to start from -----------------------------------------------------------------


def random_graph(rng: random.Random, space: SearchSpace, sampler: Sampler, max_tries: int = 100) -> AttentionGenome:
    """An attention-shaped graph over the space's ops, within its node limit (reading v
    where the space keeps v); ops are drawn by the sampler."""
    pick_op = lambda options: sampler.draw(list(options), rng)  # noqa: E731
    for _ in range(max_tries):
        graph = random_attention(rng.choice, max_nodes=space.max_nodes, ops=space.ops, form="attention", pick_op=pick_op)
        try:
            graph = GraphEditor.from_genome(graph).prune().finish(max_nodes=space.max_nodes)
        except GenomeError:
            continue
        if space.allow_drop_v or "v" in graph.inputs:
            return graph
    raise ValueError(f"no random graph of the space's ops within {space.max_nodes} nodes after {max_tries} tries")


def random_model_genome(rng: random.Random, space: SearchSpace, sampler: Sampler) -> ModelGenome:
    """A random model genome of the space: each layer attention (a random graph) or conv
    (a kernel size of the space), even odds."""
    layers = []
    for _ in range(space.num_layers):
        if rng.random() < 0.5:
            layers.append(ConvLayer(rng.choice(space.kernel_sizes)))
        else:
            layers.append(AttentionLayer(random_graph(rng, space, sampler)))
    return ModelGenome(layers=tuple(layers), config=space.model_config())


def _paper_model() -> ModelGenome:
    try:
        text = importlib.resources.files("genomec.genomes").joinpath("autobert-zero.json").read_text("utf-8")
    except ModuleNotFoundError:  # an editable install made before genomes/ became package data
        text = (Path(__file__).resolve().parents[1] / "genomes" / "autobert-zero.json").read_text("utf-8")
    return loads_genome(text, source="autobert-zero.json")


def seed_genomes(names, space: SearchSpace) -> list[ModelGenome]:
    """The named seeds as model genomes of the space: "standard" (standard attention in
    every layer) and "autobert-zero" (the paper's model, its layers cut or repeated to the
    space's count, each kernel size moved to the nearest size of the space, ties to the
    smaller). Raises ValueError for an unknown name or a seed outside the space (for
    example the paper's graphs without v where the space keeps v)."""
    seeds = []
    for name in names:
        if name == "standard":
            layers = [AttentionLayer(standard_attention())] * space.num_layers
        elif name == "autobert-zero":
            paper = _paper_model().layers
            layers = [paper[i % len(paper)] for i in range(space.num_layers)]
            nearest = lambda k: min(space.kernel_sizes, key=lambda s: (abs(s - k), s))  # noqa: E731
            layers = [ConvLayer(nearest(l.kernel_size), l.variant) if isinstance(l, ConvLayer) else l for l in layers]
        else:
            raise ValueError(f"unknown seed {name!r} (known: {', '.join(SEEDS)})")
        genome = ModelGenome(layers=tuple(layers), config=space.model_config(), name=name)
        problems = space_problems(genome, space)
        if problems:
            raise ValueError(f"seed '{name}' is not in the search space: " + "; ".join(problems))
        seeds.append(genome)
    return seeds
