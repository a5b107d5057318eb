"""IR, builder, printer, verifier, and the passes: input and expected IR side by side."""

from collections import Counter

import networkx as nx
import pytest

from genomec.genome import parse_genome
from genomec.ir import IRBuilder, IRError, PassReport, build_ir, canonicalize, cse, format_ir, lower, verify
from genomec.ir.graph import Node
from genomec.ir.rewrite import RewriteLoop, rewrite, rule


def simplified(expr: str):
    return lower(parse_genome({"expr": expr})).simplified


def as_written(expr: str):
    """The expected IR, canonicalised but not simplified."""
    return canonicalize(cse(build_ir(parse_genome({"expr": expr}))))


# (input, expected) in the genome's own syntax. Each pair exercises one or more rules.
REWRITES = [
    ("neg(neg(q))", "q"),
    ("transpose(transpose(q))", "q"),
    ("matmul(softmax(matmul(q, neg(transpose(k)))), v)", "matmul(softmax(neg(matmul(q, transpose(k)))), v)"),
    ("matmul(softmax(matmul(neg(q), transpose(neg(k)))), v)", "matmul(softmax(matmul(q, transpose(k))), v)"),
    ("tanh(neg(q))", "neg(tanh(q))"),
    ("softsign(neg(sqrt(neg(q))))", "softsign(sqrt(q))"),
    ("abs(neg(q))", "abs(q)"),
    ("add(q, neg(k))", "sub(q, k)"),
    ("add(neg(k), q)", "sub(q, k)"),
    ("sub(q, neg(k))", "add(q, k)"),
    ("sub(neg(q), k)", "neg(add(q, k))"),
    ("neg(sub(q, k))", "sub(k, q)"),
    ("mul(q, neg(k))", "neg(mul(q, k))"),
    ("matmul(softmax(cos(neg(q), k)), v)", "matmul(softmax(neg(cos(q, k))), v)"),
    ("matmul(softmax(euc(neg(q), neg(k))), v)", "matmul(softmax(euc(q, k)), v)"),
    ("matmul(softmax(matmul(scale(q), transpose(k))), v)", "matmul(softmax(scale(matmul(q, transpose(k)))), v)"),
    ("matmul(softmax(matmul(q, scale(transpose(k)))), v)", "matmul(softmax(scale(matmul(q, transpose(k)))), v)"),
    ("scale(neg(q))", "neg(scale(q))"),
    ("add(scale(q), scale(k))", "scale(add(q, k))"),
    ("mul(q, scale(k))", "scale(mul(q, k))"),
    ("max(q, q)", "q"),
    ("abs(abs(relu(relu(q))))", "relu(q)"),
    ("relu(abs(q))", "abs(q)"),
    # softmax(x + c) == softmax(x) when c is constant along the last axis (x - x == 0 here)
    ("matmul(softmax(add(matmul(q, transpose(k)), sub(matmul(q, transpose(k)), matmul(q, transpose(k))))), v)",
     "matmul(softmax(matmul(q, transpose(k))), v)"),
    ("matmul(softmax(sub(matmul(q, transpose(k)), matmul(v, softmax(sub(transpose(q), transpose(q)))))), v)",
     "matmul(softmax(matmul(q, transpose(k))), v)"),
    # (A B) c -> A (B c) for [N,N] maps A, B: the product of two maps is never formed
    ("matmul(matmul(softmax(matmul(q, transpose(k))), softmax(matmul(k, transpose(q)))), v)",
     "matmul(softmax(matmul(q, transpose(k))), matmul(softmax(matmul(k, transpose(q))), v))"),
    # CSE and canonical operand order of commutative ops
    ("add(add(q, k), add(k, q))", "add(add(q, k), add(q, k))"),
    ("max(mul(k, q), mul(q, k))", "mul(q, k)"),
]


@pytest.mark.parametrize("before,expected", REWRITES, ids=[b for b, _ in REWRITES])
def test_rewrites(before, expected):
    assert format_ir(simplified(before)) == format_ir(as_written(expected))


# Rules that must not fire: these are already in normal form.
NORMAL_FORMS = [
    "sigmoid(neg(q))",  # sigmoid is not odd
    "logsigmoid(neg(q))",
    "relu(neg(q))",
    "matmul(softmax(add(matmul(q, transpose(k)), matmul(k, transpose(q)))), v)",  # the added term varies along rows
    "matmul(softmax(add(matmul(q, transpose(k)), cos(q, q))), v)",
    "softmax(neg(q))",  # softmax is not odd
    "sub(q, q)",  # zero, but there is no zero op to write it with
    "matmul(softmax(scale(cos(q, k))), v)",  # cos is not scale-free at the 1e-6 clamp
    "matmul(softmax(euc(neg(q), k)), v)",  # one sign does not cancel
    "matmul(softmax(matmul(softmax(matmul(q, transpose(k))), softmax(matmul(k, transpose(q))))), v)",  # the product is needed whole
    "matmul(q, matmul(transpose(k), v))",  # ([N,d] [d,N]) [N,d] order is the genome's choice
]


@pytest.mark.parametrize("expr", NORMAL_FORMS)
def test_rules_that_must_not_fire(expr):
    report = PassReport()
    lower(parse_genome({"expr": expr}), report)
    assert report.rule_hits == Counter()


def test_simplifying_twice_changes_nothing():
    once = simplified("matmul(softmax(scale(matmul(neg(q), transpose(neg(scale(k)))))), add(v, neg(q)))")
    assert format_ir(lower_ir(once)) == format_ir(once)


def lower_ir(ir):
    from genomec.ir import run_passes

    return run_passes(ir, check=True)


def test_printer_golden_for_standard_attention():
    assert format_ir(simplified("matmul(softmax(scale(matmul(q, transpose(k)))), v)")) == (
        "graph(q, k, v)\n"
        "  t0 = transpose(k)   : [d,N] token\n"
        "  t1 = matmul(q, t0)  : [N,N] pair\n"
        "  t2 = scale(t1)      : [N,N] pair\n"
        "  t3 = softmax(t2)    : [N,N] pair\n"
        "  t4 = matmul(t3, v)  : [N,d] token\n"
        "  return t4"
    )


def test_index_spaces():
    ir = simplified("matmul(softmax(q), matmul(softmax(transpose(k)), v))")
    spaces = {node.op: node.space for _, node in ir.nodes()}
    assert spaces["transpose"] == "token"
    assert ir.node(ir.node(ir.output).operands[1]).space == "global"  # the [d,d] state


def test_builder_shares_identical_nodes_and_keeps_operand_order():
    b = IRBuilder()
    q, k = b.input("q"), b.input("k")
    first = b.add("sub", [q, k])
    assert b.add("sub", [q, k]) == first
    assert b.add("sub", [k, q]) != first
    doubled = b.add("add", [first, first])
    assert b.node(doubled).operands == (first, first)  # add(x, x): operand order in the payload
    assert list(b.graph.predecessors(doubled)) == [first]


def test_node_payloads_are_frozen():
    node = simplified("neg(q)").node("t0")
    with pytest.raises(Exception):
        node.op = "abs"  # type: ignore[misc]


def test_verifier_catches_broken_invariants():
    ir = simplified("matmul(softmax(scale(matmul(q, transpose(k)))), v)")
    verify(ir)
    broken = ir.graph.copy()
    broken.remove_edge("q", "t1")
    with pytest.raises(IRError, match="edges"):
        verify(type(ir)(broken, ir.output))
    wrong_shape = ir.graph.copy()
    payload = wrong_shape.nodes["t2"]["node"]
    wrong_shape.nodes["t2"]["node"] = Node(payload.op, payload.operands, ("N", "d"), "token", digest=payload.digest)
    with pytest.raises(IRError, match="shape"):
        verify(type(ir)(wrong_shape, ir.output))
    cyclic = ir.graph.copy()
    cyclic.add_edge("t4", "t0")
    with pytest.raises(IRError, match="cycle"):
        verify(type(ir)(cyclic, ir.output))


def test_order_is_deterministic_and_name_independent():
    a = parse_genome({"nodes": [{"id": "x", "op": "neg", "args": ["q"]}, {"id": "y", "op": "tanh", "args": ["k"]},
                                {"id": "o", "op": "add", "args": ["x", "y"]}], "output": "o"})
    b = parse_genome({"nodes": [{"id": "z9", "op": "tanh", "args": ["k"]}, {"id": "a1", "op": "neg", "args": ["q"]},
                                {"id": "r", "op": "add", "args": ["z9", "a1"]}], "output": "r"})
    ops_a = [n.op for _, n in build_ir(a).nodes()]
    ops_b = [n.op for _, n in build_ir(b).nodes()]
    assert ops_a == ops_b
    assert lower(a).hash == lower(b).hash


def test_dce_removes_dead_nodes_and_unused_inputs():
    genome = parse_genome({"inputs": ["q", "k", "v"], "nodes": [{"id": "dead", "op": "tanh", "args": ["v"]},
                                                              {"id": "o", "op": "neg", "args": ["q"]}], "output": "o"})
    ir = lower(genome).simplified
    assert ir.inputs == ("q",) and len(ir) == 2
    assert lower(genome).parsed.inputs == ("q", "k", "v")  # as declared


def test_distinct_graphs_have_distinct_hashes():
    exprs = ["matmul(softmax(scale(matmul(q, transpose(k)))), v)", "matmul(softmax(scale(matmul(k, transpose(q)))), v)",
             "matmul(softmax(matmul(q, transpose(k))), v)", "sub(q, k)", "sub(k, q)"]
    hashes = {lower(parse_genome({"expr": e})).hash for e in exprs}
    assert len(hashes) == len(exprs)
    causal = lower(parse_genome({"expr": exprs[0], "causal": True})).hash
    assert causal not in hashes


def test_hash_is_stable_across_processes():
    import subprocess
    import sys

    code = "from genomec.genome import parse_genome; from genomec.ir import lower; print(lower(parse_genome({'expr': 'matmul(softmax(scale(matmul(q, transpose(k)))), v)'})).hash)"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
               for seed in ("1", "2")}
    assert outputs == {simplified_hash() + "\n"}


def simplified_hash():
    return lower(parse_genome({"expr": "matmul(softmax(scale(matmul(q, transpose(k)))), v)"})).hash


def test_a_looping_rule_set_is_detected():
    ir = build_ir(parse_genome({"expr": "add(q, k)"}))
    flip = [rule("add(x, y) -> sub(x, neg(y))"), rule("sub(x, neg(y)) -> add(x, y)")]
    with pytest.raises(RewriteLoop):
        rewrite(ir, flip)


def test_every_pass_keeps_the_ir_valid():
    ir = build_ir(parse_genome({"expr": "matmul(softmax(scale(matmul(neg(q), transpose(neg(k))))), add(v, neg(q)))"}))
    lower_ir(ir)  # check=True verifies after each pass
    assert nx.is_directed_acyclic_graph(ir.graph)
