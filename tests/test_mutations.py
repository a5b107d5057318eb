"""Mutations over genome values: every child is a valid genome of the space, its change
record says exactly what differs from the parent, and every op it introduces is drawn
through the sampler. Plus the value-level validators (the parser's rules and messages),
the graph editor, random genomes and seeds."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import zoo_files
from genomec.genome import (
    AttentionGenome,
    AttentionLayer,
    ConvLayer,
    GenomeError,
    ModelGenome,
    NodeSpec,
    attention_graphs,
    load_genome,
    parse_genome,
    validate_attention,
    validate_model,
)
from genomec.genome.edit import GraphEditor
from genomec.genome.generate import random_attention
from genomec.search.mutations import (
    MUTATIONS,
    MutationError,
    mutate,
    random_model_genome,
    seed_genomes,
    space_problems,
    standard_attention,
)
from genomec.search.space import SearchSpace

SPACES = [
    SearchSpace(num_layers=1),
    SearchSpace(num_layers=4),
    SearchSpace(num_layers=12, kernel_sizes=(3, 5, 7)),
    SearchSpace(num_layers=4, allow_drop_v=False, max_nodes=12),
    SearchSpace(num_layers=3, ops=("neg", "transpose", "softmax", "matmul", "add", "sigmoid", "mul"), max_nodes=16),
]


class Uniform:
    def draw(self, candidates, rng):
        return rng.choice(candidates)


class First:
    """Always the first candidate; remembers what it was offered."""

    def __init__(self):
        self.offered = []

    def draw(self, candidates, rng):
        self.offered.append(list(candidates))
        return candidates[0]


def _reads(graph: AttentionGenome) -> set[str]:
    return {a for n in graph.nodes for a in n.args} | {graph.output}


def _parent(rng: random.Random, space: SearchSpace) -> ModelGenome:
    """A genome of the space: a seed or a random genome, then a few mutations."""
    names = ["standard"] + (["autobert-zero"] if space.allow_drop_v else [])
    genome = rng.choice(seed_genomes(names, space) + [random_model_genome(rng, space, Uniform())])
    for _ in range(rng.randrange(4)):
        genome, _ = mutate(genome, rng, Uniform(), space)
    return genome


# -- the change record matches the difference ------------------------------------------------


def _check_change(parent: ModelGenome, child: ModelGenome, change: dict, space: SearchSpace):
    i = change["layer"]
    assert [l for j, l in enumerate(child.layers) if j != i] == [l for j, l in enumerate(parent.layers) if j != i]
    before, after = parent.layers[i], child.layers[i]
    kind = change["type"]
    assert change["ops_chosen"] == ([change["new_op"]] if kind in ("replace_op", "insert_node") else [])
    if kind == "kernel_size":
        assert before.kernel_size == change["old_kernel_size"] != change["new_kernel_size"] == after.kernel_size
        return
    if kind == "flip_layer":
        assert (before.type, after.type) == (change["old_type"], change["new_type"])
        if after.type == "conv":
            assert after.kernel_size == change["kernel_size"] in space.kernel_sizes
        elif change["copied_from"] is not None:
            assert after.graph == parent.layers[change["copied_from"]].graph
        else:
            assert after.graph == standard_attention()
        return
    old, new = GraphEditor.from_genome(before.graph), GraphEditor.from_genome(after.graph)
    node = change["node"]
    if kind == "replace_op":
        assert old.op(node) == change["old_op"] != change["new_op"] == new.op(node)
        assert new.args(node) == tuple(change["new_args"]) and change["new_args"][0] == change["old_args"][0]
        assert new.shape(node) == old.shape(node)
    elif kind == "insert_node":
        assert node not in old.nodes and new.op(node) == change["new_op"] and change["old_op"] is None
        assert new.shape(node) == old.shape(change["args"][0])
        use = change["use"]
        assert (new.output if use["node"] is None else new.args(use["node"])[use["position"]]) == node
    elif kind == "delete_node":
        assert old.op(node) == change["old_op"] and change["new_op"] is None and node not in new.nodes
        assert change["replacement"] in old.args(node)
    elif kind == "rewire":
        position = change["position"]
        assert old.args(node)[position] == change["old_arg"] != change["new_arg"] == new.args(node)[position]
        assert old.shape(change["old_arg"]) == old.shape(change["new_arg"])
    elif kind == "add_v":
        assert "v" not in _reads(before.graph) and "v" in _reads(after.graph)
        assert new.args(node)[change["position"]] == "v"
    elif kind == "drop_v":
        assert "v" in _reads(before.graph) and "v" not in _reads(after.graph)
        assert change["replacement"] in _reads(after.graph)


@settings(max_examples=300)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(list(MUTATIONS)), space=st.sampled_from(SPACES))
def test_every_mutation_gives_a_valid_child_and_says_what_it_did(seed, kind, space):
    rng = random.Random(seed)
    parent = _parent(rng, space)
    try:
        child, change = mutate(parent, rng, Uniform(), space, types=[kind])
    except MutationError:  # nothing to do (no conv layer to resize, ...); see the next test
        return
    validate_model(child, max_nodes=space.max_nodes)
    assert space_problems(child, space) == []
    assert len(child.layers) == space.num_layers and child.config == space.model_config()
    assert change["type"] == kind and json.loads(json.dumps(change)) == change
    assert set(change["ops_chosen"]) <= set(space.ops)
    _check_change(parent, child, change, space)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: f"{s.num_layers}-layers")
def test_every_mutation_type_applies_somewhere(space):
    """Guard against a property test that passes because the mutations never happen."""
    rng = random.Random(1)
    seen = set()
    for _ in range(300):
        _, change = mutate(_parent(rng, space), rng, Uniform(), space)
        seen.add(change["type"])
    expected = set(MUTATIONS) - ({"add_v", "drop_v"} if not space.allow_drop_v else set())
    assert seen == expected


def test_mutations_are_pure_functions_of_the_seed():
    space = SPACES[2]
    parent = seed_genomes(["autobert-zero"], space)[0]
    runs = [mutate(parent, random.Random(7), Uniform(), space) for _ in range(2)]
    assert runs[0] == runs[1]
    assert parent == seed_genomes(["autobert-zero"], space)[0]  # the parent is a value: unchanged


def test_ops_are_drawn_through_the_sampler_among_those_that_fit():
    space = SPACES[4]
    rng = random.Random(3)
    for kind in ("replace_op", "insert_node"):
        for _ in range(40):
            parent = _parent(rng, space)
            sampler = First()
            try:
                child, change = mutate(parent, rng, sampler, space, types=[kind])
            except MutationError:
                continue
            offered = sampler.offered[-1]  # the draw of the child that was kept
            assert change["ops_chosen"] == [offered[0]] == [change["new_op"]]
            assert offered == [op for op in space.ops if op in offered]  # the space's order
            graph = GraphEditor.from_genome(parent.layers[change["layer"]].graph)
            if kind == "insert_node":  # a new node keeps the shape of the value it follows
                shape = graph.shape(change["args"][0])
                assert ("transpose" in offered) == (shape[0] == shape[1])
                assert "neg" in offered and "sigmoid" in offered
            else:
                assert change["old_op"] not in offered


def test_a_space_that_keeps_v_only_has_children_that_read_v():
    space = SPACES[3]
    rng = random.Random(5)
    genome = seed_genomes(["standard"], space)[0]
    for _ in range(300):
        genome, change = mutate(genome, rng, Uniform(), space)
        assert change["type"] not in ("add_v", "drop_v")
        assert all("v" in _reads(g) for g in genome.attention_graphs())


def test_no_child_over_the_node_limit():
    space = SearchSpace(num_layers=1, max_nodes=5, kernel_sizes=(3,))
    genome = seed_genomes(["standard"], space)[0]  # 5 nodes: no room for another
    with pytest.raises(MutationError):
        mutate(genome, random.Random(0), Uniform(), space, types=["insert_node", "kernel_size"])
    child, change = mutate(genome, random.Random(0), Uniform(), space, types=["insert_node", "delete_node"])
    assert change["type"] == "delete_node" and len(child.layers[0].graph.nodes) == 4


# -- validators on values: the parser's rules and messages -------------------------------------


def _value(nodes, output, inputs=("q", "k", "v")) -> AttentionGenome:
    return AttentionGenome(tuple(NodeSpec(i, op, tuple(args), f"node '{i}'") for i, op, *args in nodes), output, inputs)


def _parser_problems(nodes, output, inputs=("q", "k", "v")) -> list[str]:
    graph = {"inputs": list(inputs), "nodes": [{"id": i, "op": op, "args": args} for i, op, *args in nodes], "output": output}
    with pytest.raises(GenomeError) as info:
        parse_genome(graph)
    return info.value.problems


INVALID_VALUES = {
    "cycle": ([("a", "neg", "b"), ("b", "neg", "a")], "a", "node 'a': cycle a -> b -> a"),
    "shape mismatch": ([("s", "matmul", "q", "k")], "s", "node 's': matmul needs [a,b] @ [b,c], got [N,d] @ [N,d]"),
    "unknown op": ([("a", "softmaxx", "q")], "a", "node 'a': unknown op 'softmaxx' (did you mean 'softmax'?)"),
    "arity": ([("a", "add", "q")], "a", "node 'a': add takes 2 operand(s), got 1"),
    "unknown reference": ([("a", "neg", "x")], "a", "node 'a': argument 'x' is not a node id or input"),
    "duplicate id": ([("a", "neg", "q"), ("a", "neg", "k")], "a", "node 'a': duplicate id 'a'"),
    "shadows an input": ([("k", "neg", "q")], "k", "node 'k': id 'k' shadows the input"),
    "output shape": ([("t", "transpose", "q")], "t", "node 't': the output must have shape [N,d], got [d,N]"),
    "unknown output": ([("a", "neg", "q")], "b", "'output': 'b' is not a node id or input"),
    "over the limit": ([(f"n{i}", "neg", f"n{i - 1}" if i else "q") for i in range(65)], "n64", "the graph has 65 nodes"),
}


@pytest.mark.parametrize("case", list(INVALID_VALUES))
def test_validate_attention_gives_the_parsers_messages(case):
    nodes, output, fragment = INVALID_VALUES[case]
    with pytest.raises(GenomeError) as info:
        validate_attention(_value(nodes, output))
    assert info.value.problems == _parser_problems(nodes, output)
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_validate_attention_checks_declared_inputs():
    with pytest.raises(GenomeError, match="uses input 'v', which 'inputs' does not list"):
        validate_attention(_value([("a", "add", "q", "v")], "a", inputs=("q",)))
    with pytest.raises(GenomeError, match="'inputs': unknown input 'x'"):
        validate_attention(_value([], "q", inputs=("q", "x")))


def test_validate_attention_orders_nodes_and_keeps_the_rest():
    value = _value([("o", "matmul", "p", "v"), ("p", "softmax", "s"), ("s", "matmul", "q", "kt"), ("kt", "transpose", "k")], "o")
    value = AttentionGenome(value.nodes, value.output, value.inputs, causal=True, name="n")
    checked = validate_attention(value)
    assert [n.id for n in checked.nodes] == ["kt", "s", "p", "o"]
    assert (checked.output, checked.inputs, checked.causal, checked.name) == ("o", ("q", "k", "v"), True, "n")


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: p.name)
def test_validators_accept_what_the_parser_gives(path):
    genome = load_genome(path)
    if isinstance(genome, ModelGenome):
        assert validate_model(genome) == genome
    assert all(validate_attention(g) == g for g in attention_graphs(genome))


def test_the_node_limit_counts_shared_computations_once():
    shared = "add(neg(q),neg(q))"
    for _ in range(6):
        shared = f"add({shared},{shared})"  # 2^7 neg(q) leaves, 8 distinct nodes
    genome = parse_genome({"expr": shared})
    assert len(genome.nodes) > 64 and validate_attention(genome) == genome
    with pytest.raises(GenomeError, match="the graph has 8 nodes, over the limit of 7"):
        validate_attention(genome, max_nodes=7)


def test_validate_model_gives_the_parsers_messages():
    space = SearchSpace()
    graph = {"inputs": ["q", "k", "v"], "nodes": [{"id": "s", "op": "matmul", "args": ["q", "k"]}], "output": "s"}
    text = {
        "config": {"hidden_size": 64, "num_heads": 2, "intermediate_size": 256},
        "layers": [{"type": "conv", "kernel_size": 4}, {"type": "attention", "graph": graph}, {"type": "conv", "kernel_size": 67}],
    }
    with pytest.raises(GenomeError) as parsed:
        parse_genome(text)
    value = ModelGenome((ConvLayer(4), AttentionLayer(_value([("s", "matmul", "q", "k")], "s")), ConvLayer(67)), space.model_config())
    with pytest.raises(GenomeError) as validated:
        validate_model(value)
    assert validated.value.problems == parsed.value.problems == [
        "layers[0]: bad conv kernel size 4: must be an odd integer in 1..65",
        "layers[1].graph: node 's': matmul needs [a,b] @ [b,c], got [N,d] @ [N,d]",
        "layers[2]: bad conv kernel size 67: must be an odd integer in 1..65",
    ]
    with pytest.raises(GenomeError, match="config: unknown key 'hidden'"):
        validate_model(ModelGenome((ConvLayer(3),), dict(space.model_config(), hidden=3)))
    with pytest.raises(GenomeError, match="'layers' must be a non-empty array"):
        validate_model(ModelGenome((), space.model_config()))


# -- the graph editor ---------------------------------------------------------------------------


def test_graph_editor_builds_genomes_by_value():
    editor = GraphEditor.from_genome(standard_attention())
    kt = next(i for i in editor.nodes if editor.op(i) == "transpose")
    assert editor.shape(kt) == ("d", "N") and editor.values()[:3] == ["q", "k", "v"]
    assert editor.descendants("v") == {editor.output}
    dead = editor.add("neg", "q")
    assert dead == "m1" and editor.add("neg", dead) == "m2"
    editor.replace_uses("v", "q")  # the values are now q: v is no longer read
    graph = editor.prune().finish()
    assert graph.inputs == ("q", "k") and {"m1", "m2"}.isdisjoint(n.id for n in graph.nodes)
    again = GraphEditor.from_genome(graph)
    again.nodes["m1"] = ("neg", ("q",))
    assert again.add("abs", "q") == "m2"  # fresh ids skip the ones in use
    again.set_op("m1", "neg", ["m1"])
    again.output = "m1"
    with pytest.raises(GenomeError, match="node 'm1': cycle m1 -> m1"):
        again.finish()


# -- genomes to start from ------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 4, 12])
@pytest.mark.parametrize("keep_v", [False, True])
def test_random_genomes_and_seeds_are_genomes_of_the_space(layers, keep_v):
    space = SearchSpace(num_layers=layers, kernel_sizes=(3, 5, 7), allow_drop_v=not keep_v, max_nodes=12)
    rng = random.Random(layers)
    for _ in range(10):
        genome = random_model_genome(rng, space, Uniform())
        assert space_problems(genome, space) == []
        for graph in genome.attention_graphs():
            assert {n.op for n in graph.nodes} <= set(space.ops)
    names = ["standard"] if keep_v else ["standard", "autobert-zero"]
    seeds = seed_genomes(names, space)
    assert [s.name for s in seeds] == names and all(space_problems(s, space) == [] for s in seeds)
    if not keep_v:
        paper = seeds[1]
        assert [l.type for l in paper.layers] == (["conv", "attention"] * 6)[:layers]
        assert [l.kernel_size for l in paper.layers if l.type == "conv"] == [7, 7, 3, 7, 7, 3][: (layers + 1) // 2]
    elif layers > 1:  # the paper's graphs of layers 2, 4, 6 and 8 read q and k only
        with pytest.raises(ValueError, match="does not read v"):
            seed_genomes(["autobert-zero"], space)


def test_unknown_seed():
    with pytest.raises(ValueError, match="unknown seed 'bert'"):
        seed_genomes(["bert"], SearchSpace())


def test_random_attention_can_be_held_to_the_attention_form_and_an_op_set():
    ops = ("neg", "transpose", "scale", "softmax", "matmul", "add")
    rng = random.Random(0)
    for _ in range(50):
        graph = random_attention(rng.choice, ops=ops, form="attention")
        assert {n.op for n in graph.nodes} <= set(ops) and "matmul" in {n.op for n in graph.nodes}
    chosen = []
    random_attention(rng.choice, ops=ops, form="dag", pick_op=lambda options: chosen.append(options) or options[0])
    assert chosen and all(list(options) == list(ops) for options in chosen)
