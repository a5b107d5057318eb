"""Genome files: both forms, model genomes, and a failing example for every rule."""

import json

import pytest

from conftest import SHARED_GENOMES, zoo_files
from genomec.genome import (
    MAX_FILE_BYTES,
    AttentionGenome,
    AttentionLayer,
    ConvLayer,
    GenomeError,
    ModelGenome,
    genome_to_json,
    load_genome,
    loads_genome,
    parse_genome,
    to_expr,
    validate_model,
)
from genomec.genome.parse import MAX_EXPR_CHARS
from genomec.ir import lower

STANDARD_EXPR = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"
STANDARD_NODES = {
    "inputs": ["q", "k", "v"],
    "nodes": [
        {"id": "kt", "op": "transpose", "args": ["k"]},
        {"id": "s", "op": "matmul", "args": ["q", "kt"]},
        {"id": "z", "op": "scale", "args": ["s"]},
        {"id": "p", "op": "softmax", "args": ["z"]},
        {"id": "o", "op": "matmul", "args": ["p", "v"]},
    ],
    "output": "o",
}


def test_both_forms_parse_to_the_same_graph():
    from_expr = parse_genome({"expr": STANDARD_EXPR})
    from_nodes = parse_genome(STANDARD_NODES)
    assert from_expr.inputs == from_nodes.inputs == ("q", "k", "v")
    assert lower(from_expr).hash == lower(from_nodes).hash


def test_node_order_in_the_file_does_not_matter():
    shuffled = dict(STANDARD_NODES, nodes=STANDARD_NODES["nodes"][::-1])
    genome = parse_genome(shuffled)
    assert [n.id for n in genome.nodes] == ["kt", "s", "z", "p", "o"]  # operands first
    assert lower(genome).hash == lower(parse_genome(STANDARD_NODES)).hash


def test_expression_form_allows_whitespace_and_shares_nothing_until_cse():
    genome = parse_genome({"expr": " add( neg(q) ,neg( q ) ) "})
    assert [n.op for n in genome.nodes] == ["neg", "neg", "add"]
    assert len(lower(genome).simplified) == 3  # q, neg(q), add: the two negs merged


def test_inputs_default_to_the_referenced_ones_and_unused_listed_inputs_are_dead():
    assert parse_genome({"expr": "matmul(softmax(matmul(q, transpose(k))), q)"}).inputs == ("q", "k")
    listed = parse_genome({"inputs": ["q", "k", "v"], "expr": "matmul(softmax(matmul(q, transpose(k))), q)"})
    assert listed.inputs == ("q", "k", "v")
    assert lower(listed).simplified.inputs == ("q", "k")


def test_optional_fields():
    genome = parse_genome({"expr": STANDARD_EXPR, "causal": True, "name": "c", "notes": "free text"})
    assert genome.causal and genome.name == "c" and genome.notes == "free text"


def test_model_genome_with_defaults_and_overrides():
    model = parse_genome(
        {
            "config": {"hidden_size": 64, "num_heads": 2, "vocab_size": 100},
            "layers": [{"type": "conv", "kernel_size": 3}, {"type": "attention", "graph": {"expr": STANDARD_EXPR}}],
        }
    )
    assert isinstance(model, ModelGenome)
    assert model.config["hidden_size"] == 64 and model.config["intermediate_size"] == 3072
    assert model.layers[0] == ConvLayer(3, "light")
    assert isinstance(model.attention_graphs()[0], AttentionGenome)


@pytest.mark.parametrize("path", sorted(SHARED_GENOMES.glob("*.json")) + zoo_files(), ids=lambda p: p.name)
def test_reference_and_zoo_genomes_are_valid(path):
    load_genome(path)


# -- one failing example per rule (SPEC 2.4), with the words the message must contain ------

G = lambda **kw: json.dumps({"inputs": ["q", "k", "v"], **kw})  # noqa: E731
N = lambda i, op, *args: {"id": i, "op": op, "args": list(args)}  # noqa: E731

INVALID = [
    ("malformed JSON", '{"expr": "q",}', ["malformed JSON at line 1 column"]),
    ("not an object", "[1, 2]", ["a genome is a JSON object, got an array"]),
    ("duplicate key", '{"expr": "q", "expr": "k"}', ["duplicate key 'expr'"]),
    ("unknown op", G(nodes=[N("a", "softmaxx", "q")], output="a"), ["node 'a': unknown op 'softmaxx' (did you mean 'softmax'?)"]),
    ("unknown op in expr", '{"expr": "matmul(q, transpos(k))"}', ["expr column 11 'transpos(k)': unknown op 'transpos'"]),
    ("wrong arity", G(nodes=[N("a", "add", "q")], output="a"), ["node 'a': add takes 2 operand(s), got 1"]),
    ("unknown reference", G(nodes=[N("a", "neg", "x")], output="a"), ["node 'a': argument 'x' is not a node id or input"]),
    ("unknown name in expr", '{"expr": "neg(x)"}', ["expr column 5: unknown name 'x'"]),
    ("duplicate id", G(nodes=[N("a", "neg", "q"), N("a", "neg", "k")], output="a"), ["node 'a': duplicate id 'a'"]),
    ("id shadows an input", G(nodes=[N("k", "neg", "q")], output="k"), ["node 'k': id 'k' shadows the input"]),
    ("cycle", G(nodes=[N("a", "neg", "b"), N("b", "neg", "a")], output="a"), ["cycle a -> b -> a"]),
    ("shape mismatch", G(nodes=[N("s", "matmul", "q", "k")], output="s"), ["node 's': matmul needs [a,b] @ [b,c], got [N,d] @ [N,d]"]),
    ("elementwise mismatch", '{"expr": "add(q, transpose(k))"}', ["add needs identical shapes, got [N,d] and [d,N]"]),
    ("wrong output shape", '{"expr": "matmul(q, transpose(k))"}', ["the output must have shape [N,d], got [N,N]"]),
    ("over the node limit", '{"expr": "' + "neg(" * 65 + "q" + ")" * 65 + '"}', ["the graph has 65 nodes, over the limit of 64"]),
    ("unknown output", G(nodes=[N("a", "neg", "q")], output="b"), ["'output': 'b' is not a node id or input"]),
    ("input not listed", json.dumps({"inputs": ["q", "k"], "expr": "add(q, v)"}), ["uses input 'v', which 'inputs' does not list"]),
    ("unknown input", json.dumps({"inputs": ["q", "x"], "expr": "q"}), ["'inputs': unknown input 'x'"]),
    ("both forms", json.dumps({"expr": "q", "nodes": [], "output": "q"}), ["exactly one of 'nodes'"]),
    ("neither form", json.dumps({"name": "x"}), ["exactly one of 'nodes'"]),
    ("unknown graph key", json.dumps({"expr": "q", "casual": True}), ["unknown key 'casual' (did you mean 'causal'?)"]),
    ("unknown node key", G(nodes=[{"id": "a", "op": "neg", "args": ["q"], "arg": 1}], output="a"), ["node 'a': unknown key 'arg'"]),
    ("causal not a bool", json.dumps({"expr": "q", "causal": "yes"}), ["'causal' must be true or false"]),
    ("expr syntax", '{"expr": "matmul(q k)"}', ["expr column 10: expected ',' or ')', got 'k'"]),
    ("trailing tokens", '{"expr": "q)"}', ["expr column 2: unexpected ')'"]),
    ("unknown config key", json.dumps({"config": {"hidden": 3}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["config: unknown key 'hidden'"]),
    ("bad config value", json.dumps({"config": {"num_heads": 0}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["'num_heads' must be a positive integer"]),
    ("heads do not divide", json.dumps({"config": {"hidden_size": 10, "num_heads": 4}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["not divisible by num_heads"]),
    ("even kernel size", json.dumps({"layers": [{"type": "conv", "kernel_size": 4}]}), ["layers[0]: bad conv kernel size 4"]),
    ("kernel too large", json.dumps({"layers": [{"type": "conv", "kernel_size": 67}]}), ["layers[0]: bad conv kernel size 67: must be an odd integer in 1..65"]),
    ("unknown layer type", json.dumps({"layers": [{"type": "ffn"}]}), ["layers[0]: 'type' must be"]),
    ("bad nested graph", json.dumps({"layers": [{"type": "attention", "graph": {"expr": "softmax(q, k)"}}]}), ["layers[0].graph: expr column 1 'softmax(q, k)': softmax takes 1 operand(s), got 2"]),
    ("no layers", json.dumps({"layers": []}), ["'layers' must be a non-empty array"]),
    ("expr nested too deeply", '{"expr": "' + "neg(" * 300 + "q" + ")" * 300 + '"}', ["nested deeper than 256 levels"]),
    ("JSON nested too deeply", "[" * 5000 + "]" * 5000, ["malformed JSON: nested too deeply"]),
    # -- values no genome needs, refused before they cost time or memory --
    ("a 5,000-digit number", '{"expr": "q", "name": ' + "7" * 5000 + "}", ["the number 777777777777... has 5000 digits"]),
    ("a number out of range", '{"expr": "q", "causal": 1e999}', ["the number 1e999 is out of range"]),
    ("NaN", '{"expr": "q", "causal": NaN}', ["NaN is not a JSON number"]),
    ("expr too long", json.dumps({"expr": "q" + " " * MAX_EXPR_CHARS}), [f"'expr' is {MAX_EXPR_CHARS + 1:,} characters long, over the limit"]),
    ("too many layers", json.dumps({"layers": [{"type": "conv", "kernel_size": 3}] * 10000}), ["'layers' has 10000 layers, over the limit of 256"]),
    ("hidden size too large", json.dumps({"config": {"hidden_size": 2**40}, "layers": [{"type": "conv", "kernel_size": 3}]}),
     ["config: 'hidden_size' must be at most 16384, got 1099511627776"]),
    ("too many heads", json.dumps({"config": {"num_heads": 1024}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["'num_heads' must be at most 256"]),
    ("FFN too large", json.dumps({"config": {"intermediate_size": 2**20}, "layers": [{"type": "conv", "kernel_size": 3}]}),
     ["'intermediate_size' must be at most 65536"]),
    ("vocabulary too large", json.dumps({"config": {"vocab_size": 10**9}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["'vocab_size' must be at most 1048576"]),
    ("kernel limit too large", json.dumps({"config": {"max_kernel_size": 4097}, "layers": [{"type": "conv", "kernel_size": 3}]}),
     ["'max_kernel_size' must be at most 1023"]),
    ("zero epsilon", json.dumps({"config": {"layer_norm_eps": 0}, "layers": [{"type": "conv", "kernel_size": 3}]}), ["'layer_norm_eps' must be a positive finite number"]),
]


@pytest.mark.parametrize("text,fragments", [(t, f) for _, t, f in INVALID], ids=[name for name, _, _ in INVALID])
def test_invalid_genomes_are_rejected_with_a_clear_message(text, fragments):
    with pytest.raises(GenomeError) as info:
        loads_genome(text, source="g.json")
    lines = info.value.lines()
    assert all(line.startswith("g.json: ") for line in lines)
    for fragment in fragments:
        assert any(fragment in line for line in lines), (fragment, lines)


def test_all_problems_are_reported_at_once():
    text = G(nodes=[N("a", "nope", "q"), N("b", "neg", "zz"), N("b", "neg", "q")], output="b")
    with pytest.raises(GenomeError) as info:
        loads_genome(text)
    assert len(info.value.problems) == 3


def test_a_thousand_copies_of_one_mistake_print_ten_lines_and_a_count():
    text = G(nodes=[N(f"n{i}", "nope", "q") for i in range(1000)], output="n0")
    with pytest.raises(GenomeError) as info:
        loads_genome(text, source="g.json")
    assert len(info.value.problems) == 1000  # all of them kept (genomec check --json lists them)
    lines = info.value.lines()
    assert len(lines) == 11 and lines[0] == "g.json: node 'n0': unknown op 'nope'"
    assert lines[-1] == "g.json: ... and 990 more problem(s)"
    assert str(info.value).count("\n") == 10


def test_model_values_over_the_bounds_are_refused_too():
    layer = AttentionLayer(parse_genome({"expr": STANDARD_EXPR}))
    with pytest.raises(GenomeError, match="'layers' has 300 layers, over the limit of 256"):
        validate_model(ModelGenome(layers=(layer,) * 300, config={}))
    with pytest.raises(GenomeError, match="'hidden_size' must be at most 16384"):
        validate_model(ModelGenome(layers=(layer,), config={"hidden_size": 2**40}))


def test_a_long_expression_parses_in_linear_time():
    # 786,426 characters, 131,071 calls, 17 distinct nodes. Tokenizing used to copy the rest
    # of the text at every token (hours at this length); now it is one pass.
    import time

    expr = "neg(q)"
    for _ in range(16):
        expr = f"add({expr},{expr})"
    start = time.perf_counter()
    genome = parse_genome({"expr": f"matmul(softmax(scale(matmul({expr}, transpose(k)))), v)"})
    assert time.perf_counter() - start < 30
    assert len(lower(genome).simplified) < 30


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(GenomeError, match="no such file"):
        load_genome(tmp_path / "nope.json")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GenomeError, match="not a UTF-8 text file"):
        load_genome(binary)


def test_files_over_the_size_limit_are_refused_unread(tmp_path):
    huge = tmp_path / "huge.json"
    with huge.open("w") as f:  # a 50 MB expression
        f.write('{"expr": "' + "neg(" * 5_000_000 + "q" + ")" * 5_000_000 + '"}')
    with pytest.raises(GenomeError) as info:
        load_genome(huge)
    size = huge.stat().st_size
    assert info.value.lines() == [f"{huge}: {size:,} bytes, over the limit of 4 MiB for a genome file"]
    with pytest.raises(GenomeError) as info:  # a device without end: read no further than the limit
        load_genome("/dev/zero")
    assert info.value.lines() == ["/dev/zero: more than 4 MiB, over the limit of 4 MiB for a genome file"]
    with pytest.raises(GenomeError, match="over the limit of 4 MiB for a genome"):
        loads_genome(" " * (MAX_FILE_BYTES + 1))


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("form", ["graph", "expr"])
def test_serialise_and_parse_round_trip(path, form):
    genome = load_genome(path)
    again = parse_genome(json.loads(json.dumps(genome_to_json(genome, form))))
    graphs = [genome] if isinstance(genome, AttentionGenome) else genome.attention_graphs()
    graphs_again = [again] if isinstance(again, AttentionGenome) else again.attention_graphs()
    assert [lower(g).hash for g in graphs] == [lower(g).hash for g in graphs_again]
    assert [g.causal for g in graphs] == [g.causal for g in graphs_again]
    if isinstance(genome, ModelGenome):
        describe = lambda m: [(layer.type, getattr(layer, "kernel_size", None)) for layer in m.layers]  # noqa: E731
        assert again.config == genome.config and describe(again) == describe(genome)


def test_to_expr_refuses_an_exponential_tree():
    nodes = [{"id": "a0", "op": "neg", "args": ["q"]}]
    nodes += [{"id": f"a{i}", "op": "add", "args": [f"a{i - 1}", f"a{i - 1}"]} for i in range(1, 40)]
    genome = parse_genome({"nodes": nodes, "output": "a39"})
    with pytest.raises(GenomeError, match="use the graph form"):
        to_expr(genome)


def test_to_expr_writes_the_expression_form():
    assert to_expr(parse_genome(STANDARD_NODES)).replace(" ", "") == STANDARD_EXPR.replace(" ", "")
