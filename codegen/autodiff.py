"""Reverse-mode differentiation on the IR, emitted as straight-line Triton (SPEC 3, Backward).

`Backprop` walks a kernel's values in reverse order and emits one cotangent line per
operand share, named after the node and the rows held of it (emit.py's notation):

    dt3_i    cotangent of t3 on the query rows        acc_dt3   accumulated over a loop

Which rule a node takes depends on its op's kind (`Op.kind`) and on where it lives (a softmax
over keys is not a softmax over the head dim): `derivative_case` names the case, DERIVATIVE_RULES
holds one rule per case, the way ir/passes.py keeps the forward's rewrite rules. The
elementwise ops take the registry's `triton_vjp` spellings; scores are leaves here (the
kernel templates send their cotangent tile to both sides); a case missing from the table is
outside the fused backward (backward_plan asks `has_derivative_rule` before any kernel is built).

A `Backprop` keeps what it emits in two lists: `lines`, the cotangents computed where they
are emitted, and `updates`, the `acc_d<g> += ...` accumulations of [d,d] cotangents that
the caller's loop over token blocks sums (a kernel template puts them in its update section).
"""

from __future__ import annotations

from typing import Callable

from genomec.genome.ops import OPS, TOKENS, OpKind
from genomec.ir.analysis import is_score
from genomec.ir.graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE

from . import backward_template as B
from .template import indent, static_if
from .emit import GLOBAL, QUERY, Emitter, var


def grad(node_id: str, rows: str) -> str:
    return f"d{node_id}_{rows}"


def accumulator(node_id: str) -> str:
    """The cotangent of `node_id` summed over the blocks of a loop."""
    return f"acc_d{node_id}"


# -- the engine ---------------------------------------------------------------------------


class Backprop:
    """Emits cotangent lines in reverse order. `grads` holds the nodes (with their rows)
    that have a cotangent variable so far."""

    def __init__(self, ir: IR, emitter: Emitter, global_cotangents: bool = False, delta_terms=frozenset()):
        self.ir = ir
        self.emitter = emitter
        # token x [d,d] products: also accumulate the [d,d] operand's cotangent over the
        # rows (`acc_d<node>`, summed over token blocks by the caller's loop)
        self.global_cotangents = global_cotangents
        # softmaxes over tokens whose -P * delta term this kernel adds (see _softmax_over_tokens)
        self.delta_terms = frozenset(delta_terms)
        self.accumulated: list[str] = []  # the [d,d] values with an accumulator, in order
        self.grads: set[tuple[str, str]] = set()
        self.lines: list[str] = []  # cotangent lines
        self.updates: list[str] = []  # accumulator updates, `acc_d<g> += ...`

    def seed(self, node_id: str, rows: str, expr: str) -> None:
        self.add(node_id, rows, expr)

    def load_output_grad(self) -> None:
        """d_out of the query rows, as the cotangent of the output node."""
        self.grads.add((self.ir.output, QUERY))
        self.lines.append(self.emitter.access(B.LOAD_OUTPUT_GRAD, out=self.ir.output))

    def add(self, node_id: str, rows: str, expr: str) -> None:
        name = grad(node_id, rows)
        if (node_id, rows) in self.grads:
            self.lines.append(f"{name} = {name} + {expr}")
        else:
            self.grads.add((node_id, rows))
            self.lines.append(f"{name} = {expr}")

    def accumulate(self, node_id: str, expr: str) -> None:
        if node_id not in self.accumulated:
            self.accumulated.append(node_id)
        self.updates.append(f"{accumulator(node_id)} += {expr}")

    def has(self, node_id: str, rows: str) -> bool:
        return (node_id, rows) in self.grads

    def through(self, nodes, rows: str, stop=lambda node_id: False) -> None:
        """Back through `nodes` (given in forward order), each held for `rows`."""
        for node_id in reversed(list(nodes)):
            if not self.has(node_id, rows) or stop(node_id):
                continue
            node = self.ir.node(node_id)
            case = derivative_case(self.ir, node_id, rows)
            if case not in DERIVATIVE_RULES:
                raise AssertionError(f"no backward rule for {node} ({' '.join(case)})")
            DERIVATIVE_RULES[case](self, node_id, node, rows, grad(node_id, rows))


def derivative_case(ir: IR, node_id: str, rows: str) -> tuple[str, str]:
    """(op, case): the key of a node's rule in DERIVATIVE_RULES, for the rows it is held for."""
    node = ir.node(node_id)
    if node.op == INPUT_OP or is_score(ir, node_id):
        return node.op, "leaf"
    kind = OPS[node.op].kind
    if kind is OpKind.NORMALISATION:
        if node.space == PAIR_SPACE:
            return node.op, "over keys"
        return node.op, "over tokens" if node.shape[1] == TOKENS else "over the head dim"
    if kind is OpKind.LAYOUT:
        return node.op, "[d,d]" if rows == GLOBAL else "token rows"
    if kind is OpKind.PRODUCT:
        a_global, b_global = (ir.node(o).space == GLOBAL_SPACE for o in node.operands)
        if rows == GLOBAL:
            return node.op, "[d,d] @ [d,d]"
        if b_global:
            return node.op, "rows @ [d,d]"
        return node.op, "[d,d] @ rows" if a_global else "rows @ rows"
    if kind is OpKind.ELEMENTWISE:
        return node.op, "elementwise"
    return node.op, "off the pair tiles"  # a score op of [N,N] or [d,N] operands: no rule


def has_derivative_rule(ir: IR, node_id: str) -> bool:
    """True when the fused backward has a rule for the node, held for the rows of its index
    space (a [d,d] value as such, a token or pair value for any rows)."""
    rows = GLOBAL if ir.node(node_id).space == GLOBAL_SPACE else QUERY
    return derivative_case(ir, node_id, rows) in DERIVATIVE_RULES


# -- derivative rules -------------------------------------------------------------------------
# A rule adds the cotangent shares of a node's operands, given the node's own cotangent g
# (held for `rows`).

Rule = Callable[[Backprop, str, object, str, str], None]


def _leaf(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    pass  # inputs: stored by the kernel; scores go to both sides through the kernel templates


def _softmax_over_keys(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    """dS = P * (dP - delta); with fp32 inputs, minus the row's other terms at the row's
    largest score (backward_template.STAR_*: the plain formula cancels there). P is 0 where
    the pair takes no part (its scores were masked), and so is dS."""
    emitter = bp.emitter
    operand = node.operands[0]
    plain = f"{var(node_id, rows)} * ({g} - {emitter.query_row(node_id + '_delta')})"
    star = dict(s=node_id, key=emitter.key_row("offs_n"), jstar=emitter.query_row(f"{node_id}_jstar"),
                dstar=emitter.query_row(f"{node_id}_dstar"))
    if bp.has(operand, rows):  # a second share of the operand's cotangent: the fix on its own first
        ds = f"{node_id}_dz"
        bp.lines.append(f"{ds} = {plain}")
        bp.lines += static_if("STABLE_SOFTMAX_GRAD", [B.STAR_APPLY.format(g=ds, **star)])
        bp.add(operand, rows, ds)
    else:
        bp.add(operand, rows, plain)
        bp.lines += static_if("STABLE_SOFTMAX_GRAD", [B.STAR_APPLY.format(g=grad(operand, rows), **star)])


def _softmax_over_tokens(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    # P = softmax over the real tokens n of each column c: dX = P * (dP - delta_c). dP
    # arrives in shares (query rows, state rows) in different kernels; dX is linear in
    # dP, so each share gives P * dP_share and one kernel adds -P * delta on its rows.
    p = var(node_id, rows)
    if node_id not in bp.delta_terms:
        bp.add(node.operands[0], rows, f"{p} * {g}")
        return
    real = "query_ok" if rows == QUERY else "token_ok"
    bp.add(node.operands[0], rows, f"tl.where({real}[:, None], {p} * ({g} - {node_id}_delta[None, :]), 0.0)")


def _softmax_over_head_dim(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    bp.add(node.operands[0], rows, f"_softmax_over_head_dim_vjp({var(node_id, rows)}, {g}, dim_ok)")


def _transpose_rows(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    bp.add(node.operands[0], rows, g)  # token rows are held the same way round


def _transpose_state(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    bp.add(node.operands[0], rows, f"tl.trans({g})")  # a [d,d] value flips


def _matmul_states(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    a, b = node.operands
    g_block = f"tl.where(head_block_ok, {g}, 0.0)"
    bp.add(a, GLOBAL, f"_dot({g_block}, tl.trans({var(b, GLOBAL)}), DOT_DTYPE, DOT_PRECISION)")
    bp.add(b, GLOBAL, f"_dot(tl.trans({var(a, GLOBAL)}), {g_block}, DOT_DTYPE, DOT_PRECISION)")


def _matmul_rows_state(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    a, b = node.operands
    masked = f"tl.where(dim_ok, {g}, 0.0)"
    bp.add(a, rows, f"_dot({masked}, tl.trans({var(b, GLOBAL)}), DOT_DTYPE, DOT_PRECISION)")
    if bp.global_cotangents:
        bp.accumulate(b, f"_dot(tl.trans(tl.where(dim_ok, {var(a, rows)}, 0.0)), {masked}, DOT_DTYPE, DOT_PRECISION)")


def _matmul_state_rows(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    a, b = node.operands
    masked = f"tl.where(dim_ok, {g}, 0.0)"
    bp.add(b, rows, f"_dot({masked}, {var(a, GLOBAL)}, DOT_DTYPE, DOT_PRECISION)")
    if bp.global_cotangents:
        bp.accumulate(a, f"_dot(tl.trans({masked}), tl.where(dim_ok, {var(b, rows)}, 0.0), DOT_DTYPE, DOT_PRECISION)")


def _registry(bp: Backprop, node_id: str, node, rows: str, g: str) -> None:
    operand_rows = [bp.emitter.rows_of(o, rows) for o in node.operands]
    values = dict(zip("xy", (var(o, r) for o, r in zip(node.operands, operand_rows))))
    for operand, r, rule in zip(node.operands, operand_rows, OPS[node.op].triton_vjp):
        bp.add(operand, r, "(" + rule.format(out=var(node_id, rows), grad=g, **values) + ")")


DERIVATIVE_RULES: dict[tuple[str, str], Rule] = {
    (INPUT_OP, "leaf"): _leaf,  # the kernel stores an input's cotangent
    ("matmul", "leaf"): _leaf,  # scores s = x y^T: the kernel templates send dS to both sides
    ("softmax", "over keys"): _softmax_over_keys,  # dS = P * (dP - delta), delta_i = sum_j P_ij dP_ij
    ("softmax", "over tokens"): _softmax_over_tokens,  # dX = P * (dP - delta_c), delta_c = sum_n P dP
    ("softmax", "over the head dim"): _softmax_over_head_dim,  # dx = y * (dy - sum(y * dy)) per row
    ("transpose", "token rows"): _transpose_rows,  # dx = g (held as rows either way round)
    ("transpose", "[d,d]"): _transpose_state,  # dX = g^T
    ("matmul", "[d,d] @ [d,d]"): _matmul_states,  # dA = g B^T, dB = A^T g
    ("matmul", "rows @ [d,d]"): _matmul_rows_state,  # [N,d] @ [d,d]: dx = g G^T, dG = x^T g
    ("matmul", "[d,d] @ rows"): _matmul_state_rows,  # [d,d] @ [d,N], held transposed: out_i = x_i G^T, so dx = g G, dG = g^T x
} | {
    # scores s = f(x, y) (cos, euc): the kernel templates send dS to both sides, through the
    # registry's spelling of each side's share
    (name, "leaf"): _leaf
    for name, op in OPS.items()
    if op.kind is OpKind.SCORE and op.triton_vjp is not None
} | {
    # f(x[, y]) elementwise: dx = the registry's spelling of f'(x) g (and dy)
    (name, "elementwise"): _registry
    for name, op in OPS.items()
    if op.kind is OpKind.ELEMENTWISE and op.triton_vjp is not None
}
