"""The pass pipeline: DCE, CSE, algebraic simplification, canonicalisation, and the
structural hash. Each pass is a function IR -> IR.

The simplification rules keep a genome's meaning exactly under the padding and causal
semantics of SPEC 2.4 (each is an identity per row and per prefix). Rules that only move a
sign are exact in floating point too; the rest are exact in real arithmetic.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from genomec.genome.ops import OPS
from genomec.genome.schema import AttentionGenome

from .graph import INPUT_OP, IR, PAIR_SPACE, TOKEN_SPACE, IRBuilder, build_ir, format_ir, rebuild, verify
from .rewrite import rewrite, rule

# -- analyses used by preconditions ------------------------------------------------------


def constant_along_last_axis(builder: IRBuilder, node_id: str) -> bool:
    """True when every row of the value is constant (so a softmax over the last axis is
    unchanged by adding it). Conservative: False when unsure."""
    node = builder.node(node_id)
    if node.op == "sub" and node.operands[0] == node.operands[1]:
        return True  # x - x == 0
    if node.op in ("softmax", "matmul"):
        # softmax of a row-constant value is uniform; x @ y has constant rows if y does.
        return constant_along_last_axis(builder, node.operands[-1])
    if node.op != INPUT_OP and OPS[node.op].elementwise:
        return all(constant_along_last_axis(builder, o) for o in node.operands)
    return False


def _row_constant(variable: str):
    return lambda builder, bindings: constant_along_last_axis(builder, bindings[variable])


# -- rule tables -------------------------------------------------------------------------
# Patterns over commutative ops (add, mul, max) match either operand order.

SIGN_RULES = [
    rule("neg(neg(x)) -> x"),  # --x = x
    rule("transpose(neg(x)) -> neg(transpose(x))"),  # signs move outwards through linear ops
    rule("matmul(neg(x), y) -> neg(matmul(x, y))"),
    rule("matmul(x, neg(y)) -> neg(matmul(x, y))"),
    rule("mul(neg(x), y) -> neg(mul(x, y))"),
    rule("cos(neg(x), y) -> neg(cos(x, y))"),  # norms ignore the sign
    rule("cos(x, neg(y)) -> neg(cos(x, y))"),
    rule("euc(neg(x), neg(y)) -> euc(x, y)"),  # |-x + y| = |x - y|
    rule("abs(neg(x)) -> abs(x)"),
    rule("add(x, neg(y)) -> sub(x, y)"),
    rule("sub(x, neg(y)) -> add(x, y)"),
    rule("sub(neg(x), y) -> neg(add(x, y))"),  # -x - y = -(x + y)
    rule("neg(sub(x, y)) -> sub(y, x)"),
] + [
    # f(-x) = -f(x) for every odd unary op of the registry (scale, softsign, sqrt, tanh, ...)
    rule(f"{name}(neg(x)) -> neg({name}(x))")
    for name, op in OPS.items()
    if op.odd and op.arity == 1 and name != "neg"
]

SCALE_RULES = [
    # scale(x) = x * c moves outwards through linear ops, towards the softmax that uses it
    rule("transpose(scale(x)) -> scale(transpose(x))"),
    rule("matmul(scale(x), y) -> scale(matmul(x, y))"),
    rule("matmul(x, scale(y)) -> scale(matmul(x, y))"),
    rule("mul(scale(x), y) -> scale(mul(x, y))"),
    rule("add(scale(x), scale(y)) -> scale(add(x, y))"),
    rule("sub(scale(x), scale(y)) -> scale(sub(x, y))"),
]

IDEMPOTENCE_RULES = [
    rule("transpose(transpose(x)) -> x"),
    rule("max(x, x) -> x"),
    rule("abs(abs(x)) -> abs(x)"),
    rule("relu(relu(x)) -> relu(x)"),
    rule("abs(relu(x)) -> relu(x)"),  # relu(x) >= 0
    rule("relu(abs(x)) -> abs(x)"),
]

SOFTMAX_RULES = [
    # softmax(x + c) = softmax(x) when c is constant along the softmax axis
    rule("softmax(add(x, c)) -> softmax(x)", when=_row_constant("c")),
    rule("softmax(sub(x, c)) -> softmax(x)", when=_row_constant("c")),
]

def _pair_pair_token(builder: IRBuilder, bindings: dict) -> bool:
    spaces = [builder.node(bindings[v]).space for v in ("a", "b", "c")]
    return spaces == [PAIR_SPACE, PAIR_SPACE, TOKEN_SPACE]


ASSOCIATIVITY_RULES = [
    # (A B) c = A (B c) for [N,N] maps A, B and a per-token c: the [N,N] product is never
    # formed (O(N^2 d) instead of O(N^3)), and B c is an attention output that a stage of
    # its own computes (two-hop attention). Exact per row and per prefix.
    rule("matmul(matmul(a, b), c) -> matmul(a, matmul(b, c))", when=_pair_pair_token),
]

SIMPLIFY_RULES = SIGN_RULES + SCALE_RULES + IDEMPOTENCE_RULES + SOFTMAX_RULES + ASSOCIATIVITY_RULES


# -- passes ------------------------------------------------------------------------------


def dce(ir: IR) -> IR:
    """Dead-code elimination: keep only what the output needs (unused inputs go too)."""
    live = nx.ancestors(ir.graph, ir.output) | {ir.output}
    return IR(ir.graph.subgraph(live).copy(), ir.output, ir.causal, ir.declared_inputs, ir.name)


def cse(ir: IR) -> IR:
    """Common-subexpression elimination: identical nodes (up to the operand order of
    commutative ops) become one."""
    return rebuild(ir)


def simplify(ir: IR, hits: Counter | None = None) -> IR:
    return rewrite(ir, SIMPLIFY_RULES, hits)


def canonicalize(ir: IR) -> IR:
    """Commutative operands in structural order (the sharing builder sorts them), then
    nodes renamed t0, t1, ... in the deterministic order: two graphs equal up to naming and
    operand order print the same."""
    sorted_ir = rebuild(ir)
    names = {node_id: f"t{i}" for i, node_id in enumerate(n for n, node in sorted_ir.nodes() if node.op != INPUT_OP)}
    return rebuild(sorted_ir, rename=lambda node_id, node: names[node_id])


PIPELINE = [("dce", dce), ("cse", cse), ("simplify", simplify), ("canonicalize", canonicalize)]


@dataclass
class PassReport:
    """What the pipeline did: seconds per pass, and how often each rule fired."""

    seconds: dict[str, float] = field(default_factory=dict)
    rule_hits: Counter = field(default_factory=Counter)


def run_passes(ir: IR, report: PassReport | None = None, check: bool = False) -> IR:
    """The simplification pipeline. With check=True the verifier runs after every pass."""
    report = PassReport() if report is None else report
    for name, pass_fn in PIPELINE:
        start = time.perf_counter()
        ir = pass_fn(ir, report.rule_hits) if pass_fn is simplify else pass_fn(ir)
        report.seconds[name] = report.seconds.get(name, 0.0) + time.perf_counter() - start
        if check:
            verify(ir)
    return ir


def structural_hash(ir: IR) -> str:
    """A stable 16-hex-digit hash of the canonical IR: equal for genomes that simplify to
    the same graph, whatever their node names, file order or commutative operand order."""
    canonical = canonicalize(ir)
    return hashlib.sha256(format_ir(canonical).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Compiled:
    """A genome after the front end: its parsed IR, simplified IR and structural hash."""

    parsed: IR
    simplified: IR
    hash: str


def lower(genome: AttentionGenome, report: PassReport | None = None, check: bool = False) -> Compiled:
    """Genome -> parsed IR -> passes -> simplified IR and its structural hash."""
    parsed = build_ir(genome)
    if check:
        verify(parsed)
    simplified = run_passes(parsed, report, check)
    return Compiled(parsed, simplified, structural_hash(simplified))
