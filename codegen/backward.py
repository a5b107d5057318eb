"""Reverse-mode differentiation of a fused attention graph, and its backward kernels (SPEC 3, Backward).

The backward reuses the forward schedule's classification (query-side, key-side and pair
values, contractions, post values) and walks it in reverse:

    d_out --(post values, query rows)--> d c_m            c_m = matmul(a_m, x_m): contraction m
    d a_m = d c_m @ x_m^T   (a pair tile)                  d x_m += a_m^T @ d c_m  (over queries)
    back through the pair chain (registry VJPs; softmax over keys: dz = P * (dP - delta),
      delta_i = sum_j P_ij dP_ij, P recomputed from the forward's log-sum-exp)
    d score -> query side (dS @ key rows, over keys) and key side (dS^T @ query rows, over queries)
    back through each token chain (registry VJPs) to d q, d k, d v

`delta` is a row statistic: when the softmax is normalised online (it reaches every
contraction linearly, so a_m = alpha_m P) it equals sum_m rowsum(d c_m * c_m) and needs no
pass over keys; otherwise the prepare kernel computes it in a pass of its own, one per
nesting level for a softmax of a softmax (outermost first: the inner dP comes back
through the outer softmax, which needs the outer delta).

A graph with no pass over keys (kind "global") has [d,d] states G = X^T Y instead, or is
pointwise in the token (given the column statistics of its softmaxes over tokens): the
cotangent dG = sum_i x_i^T dy_i is reduced over the query rows by one program per head
(then back through the [d,d] values), and spread back over the rows of X and Y
(dX = Y dG^T, dY = X dG) by a per-token-block kernel.

A softmax over tokens P = softmax(X) of a [d,N] value (per head-dim column c, over the
real tokens n; held as token rows) has dX = P * (dP - delta_c), delta_c = sum_n P dP, a
reduction over tokens: the global kernel, once the states' cotangents are known, makes a
second pass over the token blocks that sums P * dP into delta (P recomputed from the
forward's column statistics, dP from both its shares: d_out through the query rows, and
the states' cotangents through the state rows). The per-token kernels then add their
shares P * dP_share, and the one that owns the column's delta term adds -P * delta. Next
to a pass over keys, dP is also known only per key (or query) block, after the key loops:
the keys and queries kernels add their shares of it into a buffer of token rows (each
program on its own rows) instead of going on, the global kernel sums delta from it (and
from the states' share), and a column-rows kernel goes on from P * (dP - delta) per token
block to the inputs.

[d,d] states next to a pass over keys (kind "keys" with reductions): the key-pass kernels
run as above (the query rows read the states where they need them), then the global and
state-rows kernels add the states' share; the global kernel's pass over the query rows
reads the saved contraction values for the post values. Only the query rows after the
key loop may read a state (post values, or query values that feed them).

The backward class: a fused forward whose [d,d] states are not read inside a pass over
keys, and every op on the way with a derivative rule (the registry's `triton_vjp`, or a
structural rule here).
Other graphs keep the reference executor's backward, and `backward_schedule(...).reason`
says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx

from genomec.genome.ops import OPS, TOKENS
from genomec.ir.graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE, TOKEN_SPACE

from . import template as T
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .schedule import SCORE_OPS, Schedule, _token_closure

BACKWARD_KERNELS = ("attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_queries")
COLUMN_ROWS_KERNEL = "attention_bwd_column_rows"
GLOBAL_BACKWARD_KERNELS = ("attention_bwd_global", "attention_bwd_query_rows", "attention_bwd_state_rows")
BACKWARD_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
    "STABLE_SOFTMAX_GRAD",
)
# Pointer parameters in the order kernels take them (a kernel takes those its body reads).
POINTERS = (
    "q_ptr", "k_ptr", "v_ptr", "mask_ptr", "global_ptr", "stats_ptr", "lse_ptr", "saved_ptr", "dout_ptr", "dcontraction_ptr",
    "delta_ptr", "dcolumn_ptr", "column_delta_ptr", "dglobal_ptr", "dq_ptr", "dk_ptr", "dv_ptr",
)
FP32_BUFFERS = (
    "stats_ptr", "lse_ptr", "saved_ptr", "dcontraction_ptr", "delta_ptr", "dcolumn_ptr", "column_delta_ptr", "dglobal_ptr",
    "dq_ptr", "dk_ptr", "dv_ptr",
)


@dataclass(frozen=True)
class BackwardSchedule:
    """What the backward kernels compute; `fused` False (with a reason) outside the class."""

    fused: bool
    reason: str | None = None
    kind: str = "keys"  # "keys": loops over key/query blocks (and maybe states); "global": no key loop
    reductions: tuple[str, ...] = ()  # the [d,d] states the forward's reduction kernel wrote
    global_values: tuple[str, ...] = ()  # [d,d] values computed from them
    reduction_values: tuple[str, ...] = ()  # token values the reductions contract
    column_softmaxes: tuple[str, ...] = ()  # softmaxes over tokens: column statistics saved, one delta each
    column_values: tuple[str, ...] = ()  # "keys": the token values that compute them (recomputed per token block)
    softmaxes: tuple[str, ...] = ()  # over keys: log-sum-exp saved by the forward, one delta each
    softmax_levels: tuple[tuple[str, ...], ...] = ()  # the softmaxes by nesting depth (the forward's statistics passes)
    online: str | None = None  # the online softmax, whose delta is rowsum(dc * c)
    contractions: tuple[str, ...] = ()  # values saved by the forward, cotangents by prepare
    query_values: tuple[str, ...] = ()  # token values of the query rows (scores' left side, post operands)
    score_query_values: tuple[str, ...] = ()  # those the scores need (recomputed per query block)
    key_values: tuple[str, ...] = ()  # token values of the key rows
    pair_values: tuple[str, ...] = ()
    post_values: tuple[str, ...] = ()

    @property
    def kernels(self) -> tuple[str, ...]:
        if not self.fused:
            return ()
        global_kernel, query_rows, state_rows = GLOBAL_BACKWARD_KERNELS
        if self.kind == "keys":  # the states' and the softmaxes over tokens' shares after the key passes'
            per_head = (global_kernel,) if self.reductions or self.column_softmaxes else ()
            return BACKWARD_KERNELS + per_head + ((state_rows,) if self.reductions else ()) + ((COLUMN_ROWS_KERNEL,) if self.column_softmaxes else ())
        # without states, the query rows do everything but the column deltas' pass over tokens
        per_head = (global_kernel,) if self.reductions or self.column_softmaxes else ()
        return per_head + (query_rows,) + ((state_rows,) if self.reductions else ())


class OutsideBackwardClass(Exception):
    pass


def backward_schedule(sched: Schedule) -> BackwardSchedule:
    """Plan the backward of a fused forward schedule, or say why it is not fused."""
    try:
        return _plan(sched)
    except OutsideBackwardClass as e:
        return BackwardSchedule(fused=False, reason=str(e))


def _plan(sched: Schedule) -> BackwardSchedule:
    if not sched.fused:
        raise OutsideBackwardClass(f"the forward is not fused ({sched.reason})")
    ir, kinds = sched.ir, sched.kinds
    attention = sched.attention
    if not attention.key_passes:
        return _plan_global(sched)
    *statistics, accumulate = attention.key_passes
    if accumulate.kind == "statistics" or any(p.kind != "statistics" for p in statistics):
        raise OutsideBackwardClass(f"key passes {[p.kind for p in attention.key_passes]}: not in the fused backward")
    softmaxes = tuple(n for n in accumulate.pair_values if ir.node(n).op == "softmax")
    if statistics and {s for p in statistics for s in p.softmaxes} != set(softmaxes):
        raise OutsideBackwardClass("a softmax over keys whose statistics pass is not the forward's: not in the fused backward")
    for node_id in attention.query_values + accumulate.key_values + attention.post_values + accumulate.pair_values:
        node = ir.node(node_id)
        if node.op == INPUT_OP or node.op in SCORE_OPS and node.space == PAIR_SPACE:
            continue
        op = OPS[node.op]
        reads_state_directly = node.op == "matmul" and any(ir.node(o).space == GLOBAL_SPACE for o in node.operands)
        structural = node.op == "transpose" and node.space != PAIR_SPACE or node.op == "softmax" or reads_state_directly
        if op.triton_vjp is None and not structural:
            raise OutsideBackwardClass(f"node '{node_id}' ({node.op}): no derivative rule in the fused backward")
    score_lefts = [ir.node(p).operands[0] for p in accumulate.pair_values if ir.node(p).op in SCORE_OPS]
    score_query_values = _token_closure(ir, kinds, score_lefts)
    reductions, reduction_values = (sched.reduction.reductions, sched.reduction.reduction_values) if sched.reduction else ((), ())
    if reductions:
        # The states' cotangents are reduced over the query rows from d_out alone: a state read
        # inside the key loop would need cotangents that only the key loops know.
        in_key_loop = score_query_values + tuple(n for p in attention.key_passes for n in p.key_values)
        reads_state = _reads_state(ir)
        reading = [n for n in in_key_loop if n in reads_state]
        if reading:
            raise OutsideBackwardClass(
                f"node '{reading[0]}' reads a [d,d] state inside the pass over keys: backward not fused yet "
                "(only the query rows after the key loop may read a state)"
            )
        _check_global_rules(ir, attention.global_values + reduction_values)
    column_values = _token_closure(ir, kinds, sched.column_softmaxes)
    _check_global_rules(ir, column_values)
    return BackwardSchedule(
        fused=True,
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        column_values=column_values,
        softmaxes=softmaxes,
        softmax_levels=tuple(p.softmaxes for p in statistics),
        online=accumulate.softmaxes[0] if accumulate.kind == "online" else None,
        contractions=accumulate.contractions,
        query_values=attention.query_values,
        score_query_values=score_query_values,
        key_values=accumulate.key_values,
        pair_values=accumulate.pair_values,
        post_values=attention.post_values,
    )


def _plan_global(sched: Schedule) -> BackwardSchedule:
    """No pass over keys: [d,d] states G = X^T Y over tokens (none, for a graph that is
    pointwise in the token), read by the query rows through [N,d] @ [d,d] products, and
    softmaxes over tokens anywhere their forward allows them."""
    ir, attention, reduction = sched.ir, sched.attention, sched.reduction
    reductions, reduction_values = (reduction.reductions, reduction.reduction_values) if reduction else ((), ())
    _check_global_rules(ir, attention.query_values + attention.global_values + reduction_values + attention.post_values)
    return BackwardSchedule(
        fused=True,
        kind="global",
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        query_values=attention.query_values,
        post_values=attention.post_values,
    )


def _check_global_rules(ir: IR, nodes) -> None:
    """Token and [d,d] values: a registry derivative rule, or a structural one here
    (transpose, the matmuls with a [d,d] operand, softmax over the head dim or over tokens)."""
    for node_id in nodes:
        node = ir.node(node_id)
        if node.op in (INPUT_OP, "transpose", "matmul", "softmax") or OPS[node.op].triton_vjp is not None:
            continue
        raise OutsideBackwardClass(f"node '{node_id}' ({node.op}): no derivative rule in the fused backward")


def _reads_state(ir: IR) -> set[str]:
    """The nodes whose value depends on a [d,d] value."""
    states = [n for n, node in ir.nodes() if node.space == GLOBAL_SPACE]
    return set(states).union(*(nx.descendants(ir.graph, g) for g in states))


def _downstream_of_column_softmaxes(ir: IR, plan: BackwardSchedule) -> set[str]:
    """The column softmaxes and the token values computed from them on the same rows: the
    rows their dP comes back along (a [d,d] state in between passes it to other rows)."""
    below = set(plan.column_softmaxes)
    for node_id, node in ir.nodes():
        if node.space == TOKEN_SPACE and any(o in below for o in node.operands):
            below.add(node_id)
    return below


def format_backward(plan: BackwardSchedule) -> str:
    if not plan.fused:
        return f"backward: reference executor ({plan.reason})"
    states = [f"  states read back from the forward: {', '.join(plan.reductions)}"] if plan.reductions else []
    columns = (
        [f"  softmaxes over tokens: column statistics of {', '.join(plan.column_softmaxes)} read back, column terms delta in a pass over tokens"]
        if plan.column_softmaxes
        else []
    )
    if plan.kind == "global" and not plan.reductions and not plan.column_softmaxes:
        return "backward kernels: attention_bwd_query_rows (token blocks; the graph is pointwise in the token)"
    if plan.kind == "global":
        per_block = " and ".join(k for k in plan.kernels if k != "attention_bwd_global")
        return "\n".join([f"backward kernels: attention_bwd_global (batch x heads), {per_block} (token blocks)"] + states + columns)
    delta = "rowsum(dc * c)" if plan.online else ("a pass over key blocks" if plan.softmaxes else "-")
    if len(plan.softmax_levels) > 1:
        delta = f"a pass over key blocks per nesting level ({len(plan.softmax_levels)})"
    kernels = "attention_bwd_prepare (query blocks), attention_bwd_keys (key blocks), attention_bwd_queries (query blocks)"
    if plan.reductions or plan.column_softmaxes:
        per_block = ", ".join(plan.kernels[len(BACKWARD_KERNELS) + 1:])
        kernels += f", then attention_bwd_global (batch x heads), {per_block} (token blocks)"
    return "\n".join(
        [
            f"backward kernels: {kernels}",
            f"  saved by the forward: log-sum-exp of {', '.join(plan.softmaxes) or '-'}; contractions {', '.join(plan.contractions)}",
            f"  softmax row terms delta: {delta}",
        ]
        + states
        + columns
    )


# -- emission ----------------------------------------------------------------------------


class _RecomputeEmitter(Emitter):
    """The forward's emitter, with every softmax over keys recomputed from its saved
    log-sum-exp: P = exp(z - lse) where the pair takes part, else 0."""

    def _softmax(self, node_id: str, rows: str, x: str) -> list[str]:
        if self.ir.node(node_id).space == PAIR_SPACE:
            return [f"{var(node_id, rows)} = tl.where(keep, tl.exp({x} - {node_id}_lse[:, None]), 0.0)"]
        return super()._softmax(node_id, rows, x)


def grad(node_id: str, rows: str) -> str:
    return f"d{node_id}_{rows}"


class _Backprop:
    """Emits cotangent lines in reverse order. `grads` holds the nodes (with their rows)
    that have a cotangent variable so far."""

    def __init__(self, ir: IR, emitter: Emitter, global_cotangents: bool = False, delta_terms=frozenset()):
        self.ir = ir
        self.emitter = emitter
        # token x [d,d] products: also accumulate the [d,d] operand's cotangent over the
        # rows (`acc_d<node>`, summed over token blocks by the caller's loop)
        self.global_cotangents = global_cotangents
        # softmaxes over tokens whose -P * delta term this kernel adds (see _column_softmax)
        self.delta_terms = frozenset(delta_terms)
        self.accumulated: list[str] = []
        self.grads: set[tuple[str, str]] = set()
        self.lines: list[str] = []

    def seed(self, node_id: str, rows: str, expr: str) -> None:
        self.add(node_id, rows, expr)

    def load_output_grad(self) -> None:
        """d_out of the query rows, as the cotangent of the output node."""
        self.grads.add((self.ir.output, QUERY))
        self.lines.append(T.LOAD_OUTPUT_GRAD.format(out=self.ir.output))

    def add(self, node_id: str, rows: str, expr: str) -> None:
        name = grad(node_id, rows)
        if (node_id, rows) in self.grads:
            self.lines.append(f"{name} = {name} + {expr}")
        else:
            self.grads.add((node_id, rows))
            self.lines.append(f"{name} = {expr}")

    def has(self, node_id: str, rows: str) -> bool:
        return (node_id, rows) in self.grads

    def through(self, nodes, rows: str, stop=lambda node_id: False) -> None:
        """Back through `nodes` (given in forward order), each held for `rows`."""
        for node_id in reversed(list(nodes)):
            if not self.has(node_id, rows) or stop(node_id):
                continue
            node = self.ir.node(node_id)
            if node.op == INPUT_OP or node.op in SCORE_OPS and node.space == PAIR_SPACE:
                continue  # leaves: inputs; scores go to both sides through the kernel templates
            g = grad(node_id, rows)
            operand_rows = [self.emitter.rows_of(o, rows) for o in node.operands]
            if node.op == "softmax" and node.space == PAIR_SPACE:  # over keys
                self._key_softmax(node_id, g)
            elif node.op == "softmax" and node.shape[1] == TOKENS:  # over tokens, per head-dim column
                self.add(node.operands[0], rows, self._column_softmax(node_id, rows, g))
            elif node.op == "softmax":  # over the head dim, per row
                self.add(node.operands[0], rows, f"_softmax_over_head_dim_vjp({var(node_id, rows)}, {g}, dim_ok)")
            elif node.op == "transpose":  # token rows are held the same way round; a [d,d] value flips
                self.add(node.operands[0], rows, f"tl.trans({g})" if rows == GLOBAL else g)
            elif node.op == "matmul":
                self._matmul(node, rows, g)
            else:
                values = dict(zip("xy", (var(o, r) for o, r in zip(node.operands, operand_rows))))
                for operand, r, rule in zip(node.operands, operand_rows, OPS[node.op].triton_vjp):
                    self.add(operand, r, "(" + rule.format(out=var(node_id, rows), grad=g, **values) + ")")

    def _key_softmax(self, node_id: str, g: str) -> None:
        """dS = P * (dP - delta); with fp32 inputs, minus the row's other terms at the row's
        largest score (template.STAR_*: the plain formula cancels there)."""
        operand = self.ir.node(node_id).operands[0]
        plain = f"tl.where(keep, {var(node_id, PAIR)} * ({g} - {node_id}_delta[:, None]), 0.0)"
        if self.has(operand, PAIR):  # a second share of the operand's cotangent: the fix on its own first
            ds = f"{node_id}_dz"
            self.lines.append(f"{ds} = {plain}")
            self.lines += _static_if("STABLE_SOFTMAX_GRAD", [T.STAR_APPLY.format(g=ds, s=node_id)])
            self.add(operand, PAIR, ds)
        else:
            self.add(operand, PAIR, plain)
            self.lines += _static_if("STABLE_SOFTMAX_GRAD", [T.STAR_APPLY.format(g=grad(operand, PAIR), s=node_id)])

    def _column_softmax(self, node_id: str, rows: str, g: str) -> str:
        # P = softmax over the real tokens n of each column c: dX = P * (dP - delta_c). dP
        # arrives in shares (query rows, state rows) in different kernels; dX is linear in
        # dP, so each share gives P * dP_share and one kernel adds -P * delta on its rows.
        p = var(node_id, rows)
        if node_id not in self.delta_terms:
            return f"{p} * {g}"
        real = "query_ok" if rows == QUERY else "token_ok"
        return f"tl.where({real}[:, None], {p} * ({g} - {node_id}_delta[None, :]), 0.0)"

    def _matmul(self, node, rows: str, g: str) -> None:
        a, b = node.operands
        a_global, b_global = (self.ir.node(o).space == GLOBAL_SPACE for o in (a, b))
        masked = f"tl.where(dim_ok, {g}, 0.0)"
        if rows == GLOBAL:  # [d,d] @ [d,d]: dA = g B^T, dB = A^T g
            g_block = f"tl.where(head_block_ok, {g}, 0.0)"
            self.add(a, GLOBAL, f"_dot({g_block}, tl.trans({var(b, GLOBAL)}), DOT_DTYPE, DOT_PRECISION)")
            self.add(b, GLOBAL, f"_dot(tl.trans({var(a, GLOBAL)}), {g_block}, DOT_DTYPE, DOT_PRECISION)")
        elif b_global:  # rows [N,d] @ [d,d]: dx = g G^T, dG = x^T g
            self.add(a, rows, f"_dot({masked}, tl.trans({var(b, GLOBAL)}), DOT_DTYPE, DOT_PRECISION)")
            if self.global_cotangents:
                self._accumulate_global(b, f"_dot(tl.trans(tl.where(dim_ok, {var(a, rows)}, 0.0)), {masked}, DOT_DTYPE, DOT_PRECISION)")
        elif a_global:  # [d,d] @ [d,N], held transposed: out_i = x_i G^T, so dx = g G, dG = g^T x
            self.add(b, rows, f"_dot({masked}, {var(a, GLOBAL)}, DOT_DTYPE, DOT_PRECISION)")
            if self.global_cotangents:
                self._accumulate_global(a, f"_dot(tl.trans({masked}), tl.where(dim_ok, {var(b, rows)}, 0.0), DOT_DTYPE, DOT_PRECISION)")
        else:
            raise AssertionError(f"no backward rule for {node}")

    def _accumulate_global(self, node_id: str, expr: str) -> None:
        if node_id not in self.accumulated:
            self.accumulated.append(node_id)
        self.lines.append(f"acc_d{node_id} += {expr}")


def _indent(lines, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for text in lines for line in text.split("\n")) if lines else pad + "# (none)"


def _params(text: str) -> tuple[str, ...]:
    return tuple(p for p in POINTERS if re.search(rf"\b{p}\b", text)) + ("seq_len", "num_heads")


def forward_save_lines(plan: BackwardSchedule) -> str:
    """The forward's SAVE_FOR_BACKWARD block: log-sum-exp per softmax, contraction values."""
    lines = [T.SAVE_LSE.format(s=s, index=i, count=len(plan.softmaxes)) for i, s in enumerate(plan.softmaxes)]
    lines += [T.SAVE_CONTRACTION.format(c=c, index=i, count=len(plan.contractions)) for i, c in enumerate(plan.contractions)]
    return T.SAVE_FOR_BACKWARD.format(lines=_indent(lines, 8))


def generate_backward(sched: Schedule, plan: BackwardSchedule) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kernel name, source, params) of the backward kernels, in launch order."""
    kernels = {
        "attention_bwd_prepare": _prepare_kernel,
        "attention_bwd_keys": _keys_kernel,
        "attention_bwd_queries": _queries_kernel,
        "attention_bwd_global": _global_kernel,
        "attention_bwd_query_rows": _query_rows_kernel,
        "attention_bwd_state_rows": _state_rows_kernel,
        COLUMN_ROWS_KERNEL: _column_rows_kernel,
    }
    return [_named(name, kernels[name](sched, plan)) for name in plan.kernels]


def _named(name: str, body_template: str):
    params = _params(body_template)
    return name, body_template.replace("{params}", " ".join(p + "," for p in params)), params


def _emit_all(emitter: Emitter, nodes, rows: str) -> list[str]:
    return [line for n in nodes for line in emitter.emit(n, rows)]


def _statistics_loads(plan: BackwardSchedule, with_delta: bool) -> list[str]:
    count = len(plan.softmaxes)
    lines = [T.LOAD_LSE.format(s=s, index=i, count=count) for i, s in enumerate(plan.softmaxes)]
    if with_delta:
        lines += [T.LOAD_DELTA.format(s=s, **_row_stat(plan, s)) for s in plan.softmaxes]
        lines += _static_if("STABLE_SOFTMAX_GRAD", [T.STAR_LOAD.format(s=s, **_star_offsets(plan, s)) for s in plan.softmaxes])
    return lines


def _row_stat(plan: BackwardSchedule, softmax: str) -> dict:
    """Index and count of a softmax over keys in the row statistics (delta) buffer."""
    return dict(index=plan.softmaxes.index(softmax), count=len(plan.softmaxes))


def _star_offsets(plan: BackwardSchedule, softmax: str) -> dict:
    """Where j* and dS at j* of each query row go (template.STAR_*): the second and third
    regions of the delta buffer, after every (batch, head)'s deltas (grid axis 1 counts
    the (batch, head) pairs), so that delta's own offsets stay as short as they were."""
    rows = T.ROW_STAT_OFFSETS.format(**_row_stat(plan, softmax))
    region = f"tl.num_programs(1) * {len(plan.softmaxes)} * seq_len"
    return dict(jstar_offsets=f"{region} + {rows}", dstar_offsets=f"2 * {region} + {rows}")


def _static_if(flag: str, lines: list[str]) -> list[str]:
    """Lines that run only when the constexpr `flag` is set (compiled away otherwise)."""
    return [f"if {flag}:", _indent(lines, 4)] if lines else []


def _pair_backprop(ir: IR, emitter: Emitter, plan: BackwardSchedule, stop=lambda n: False) -> _Backprop:
    """Cotangent tiles of the pair values: seeded by the contractions (d a = d c @ x^T),
    back through the pair chain to the scores."""
    backprop = _Backprop(ir, emitter)
    for c in plan.contractions:
        a, x = ir.node(c).operands
        backprop.seed(a, PAIR, f"tl.where(keep, _dot({grad(c, QUERY)}, tl.trans({var(x, KEY)}), DOT_DTYPE, DOT_PRECISION), 0.0)")
    backprop.through(plan.pair_values, PAIR, stop=stop)
    return backprop


def _score_grads(ir: IR, emitter: Emitter, plan: BackwardSchedule, backprop: _Backprop, left: bool) -> list[tuple[str, str]]:
    """(token value, cotangent expression) per score side reached: the query side (left)
    accumulates over keys, the key side over queries."""
    result = []
    for s in plan.pair_values:
        node = ir.node(s)
        if node.op not in SCORE_OPS or not backprop.has(s, PAIR):
            continue
        x, y = node.operands
        ds = f"tl.where(keep, {grad(s, PAIR)}, 0.0)"
        if node.op == "matmul":
            expr = (
                f"_dot({ds}, {var(y, KEY)}, DOT_DTYPE, DOT_PRECISION)"
                if left
                else f"_dot(tl.trans({ds}), {emitter.head_masked(x, QUERY)}, DOT_DTYPE, DOT_PRECISION)"
            )
        else:
            helper = "_cosine_scores_vjp" if node.op == "cos" else "_euclidean_scores_vjp"
            expr = f"{helper}({var(x, QUERY)}, {var(y, KEY)}, {var(s, PAIR)}, {ds}, dim_ok, {left}, DOT_DTYPE, DOT_PRECISION)"
        result.append((x if left else y, expr))
    return result


def _prepare_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    count = len(plan.contractions)
    lines = [T.LOAD_CONTRACTION.format(c=c, index=i, count=count) for i, c in enumerate(plan.contractions)]
    lines += _emit_all(emitter, plan.post_values, QUERY)
    lines.append("# -- cotangents of the contractions: back through the post values from d_out --")
    backprop = _Backprop(ir, emitter)
    backprop.load_output_grad()
    backprop.through(plan.post_values, QUERY)
    lines += backprop.lines
    for i, c in enumerate(plan.contractions):
        if not backprop.has(c, QUERY):
            lines.append(f"{grad(c, QUERY)} = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)")
        elif plan.reductions:  # back through dy @ G^T: the padded rows of a [d,d] value leave garbage past HEAD_DIM
            lines.append(f"{grad(c, QUERY)} = tl.where(dim_ok, {grad(c, QUERY)}, 0.0)")
        lines.append(T.STORE_CONTRACTION_GRAD.format(c=c, index=i, count=count))
    query_values = _global_value_lines(emitter, sched, plan) + _column_loads(sched, _columns_in(plan, plan.query_values, plan.key_values))
    query_values += _emit_all(emitter, plan.query_values, QUERY)
    body = [_indent(lines, 4)]

    if plan.online:  # delta = sum_m rowsum(dc_m * c_m): the contractions are linear in P
        s = plan.online
        terms = " + ".join(f"tl.sum(tl.where(dim_ok, {grad(c, QUERY)} * {var(c, QUERY)}, 0.0), 1)" for c in plan.contractions)
        body.append(_indent(["# -- softmax row term: delta = sum_j P dP = rowsum(dc * c) --", f"{s}_delta = {terms}",
                             T.STORE_DELTA.format(s=s, **_row_stat(plan, s))], 4))
    if plan.softmaxes:
        body += _softmax_passes(ir, emitter, plan)
    return T.BACKWARD_QUERY_PROGRAM.format(name="attention_bwd_prepare", params="{params}",
                                           query_values=_indent(query_values, 4), body="\n".join(body))


def _softmax_passes(ir: IR, emitter: Emitter, plan: BackwardSchedule) -> list[str]:
    """Prepare's passes over key blocks, one per nesting level of the softmaxes over keys:
    delta = sum_j P_ij dP_ij (unless the online softmax has it already) and, with fp32
    inputs, the row's dominant key j* and dS there (template.STAR_*).

    A softmax of a softmax: dP of the inner one comes back through the outer one, which
    needs the outer delta (and dS at j*), so the passes go from the outermost level
    (nearest the contractions) in, each back through the levels already done."""
    key_values = _emit_all(emitter, plan.key_values, KEY)
    pair_values = _emit_all(emitter, plan.pair_values, PAIR)
    init = _statistics_loads(plan, False)
    levels = plan.softmax_levels or (plan.softmaxes,)  # an online softmax has no statistics pass
    passes = []
    for depth in reversed(range(len(levels))):
        level = levels[depth]
        below = _downstream_of(ir, level, plan.pair_values)
        pair = _pair_backprop(ir, emitter, plan, stop=lambda n: n not in below or n in level)
        reached = [s for s in level if pair.has(s, PAIR)]  # the others' dP is 0
        sums = [s for s in level if s != plan.online]  # delta still to be summed here
        # a pass that only finds j* (the online softmax's delta is known) runs for fp32 only
        stable = (lambda lines: _static_if("STABLE_SOFTMAX_GRAD", lines)) if sums else (lambda lines: lines)
        stars = [T.STAR_UPDATE.format(s=s, z=var(ir.node(s).operands[0], PAIR), p=var(s, PAIR)) for s in reached]
        finish = [T.STORE_DELTA.format(s=s, **_row_stat(plan, s)) for s in sums]
        finish += stable([T.STAR_FINISH.format(s=s, **_star_offsets(plan, s)) for s in level])
        title = "pass over key blocks: softmax row terms delta = sum_j P dP, and dS at the largest score"
        if not sums:
            title = "pass over key blocks: dS at each row's largest score"
        if len(levels) > 1:
            title += f" (nesting level {depth + 1}: {', '.join(level)})"
        loop = T.BACKWARD_KEY_LOOP.format(
            title=title,
            init=_indent(init + [T.DELTA_INIT.format(s=s) for s in sums] + stable([T.STAR_INIT.format(s=s) for s in level]), 4),
            key_values=_indent(key_values, 8),
            pair_values=_indent(pair_values, 8),
            pair_grads=_indent(pair.lines, 8),
            update_title="accumulate delta, and the terms beside the largest score" if sums else "the terms beside the largest score",
            update=_indent([T.DELTA_UPDATE.format(s=s, p=var(s, PAIR)) for s in sums if s in reached] + stable(stars), 8),
            finish=_indent(finish, 4),
        )
        passes.append(loop if sums else "\n    if STABLE_SOFTMAX_GRAD:\n" + _indent([loop.lstrip("\n")], 4))
        init = []
    return passes


def _downstream_of(ir: IR, roots, nodes) -> set[str]:
    downstream = set(roots)
    for n in nodes:
        if any(o in downstream for o in ir.node(n).operands):
            downstream.add(n)
    return downstream


def _contraction_grad_loads(plan: BackwardSchedule) -> list[str]:
    count = len(plan.contractions)
    return [T.LOAD_CONTRACTION_GRAD.format(c=c, index=i, count=count) for i, c in enumerate(plan.contractions)]


def _input_grad_stores(backprop: _Backprop, rows: str, offs: str) -> list[str]:
    return [T.ADD_INPUT_GRAD.format(name=n, offs=offs, grad=grad(n, rows)) for n in ("q", "k", "v") if backprop.has(n, rows)]


def _keys_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    pair = _pair_backprop(ir, emitter, plan)
    # key-side cotangents: the values of the contractions, the key side of the scores
    updates: list[tuple[str, str]] = []
    for c in plan.contractions:
        a, x = ir.node(c).operands
        updates.append((x, f"_dot(tl.trans(tl.where(keep, {var(a, PAIR)}, 0.0)), {grad(c, QUERY)}, DOT_DTYPE, DOT_PRECISION)"))
    updates += _score_grads(ir, emitter, plan, pair, left=False)
    accumulated = list(dict.fromkeys(x for x, _ in updates))
    key_backprop = _Backprop(ir, emitter)
    for x in accumulated:
        key_backprop.seed(x, KEY, f"acc_d{x}")
    key_backprop.through(plan.key_values, KEY, stop=lambda n: n in plan.column_softmaxes)
    query_values = _emit_all(emitter, plan.score_query_values, QUERY) + _statistics_loads(plan, True) + _contraction_grad_loads(plan)
    key_values = _column_loads(sched, _columns_in(plan, plan.key_values, plan.score_query_values)) + _emit_all(emitter, plan.key_values, KEY)
    text = T.BACKWARD_KEY_PROGRAM.format(
        name="attention_bwd_keys",
        params="{params}",
        key_values=_indent(key_values, 4),
        init=_indent([T.GRAD_ACCUMULATOR_INIT.format(x=x, rows="BLOCK_N") for x in accumulated], 4),
        query_values=_indent(query_values, 8),
        pair_values=_indent(_emit_all(emitter, plan.pair_values, PAIR), 8),
        pair_grads=_indent(pair.lines, 8),
        update=_indent([f"acc_d{x} += {expr}" for x, expr in updates], 8),
        key_grads=_indent(key_backprop.lines + _column_grad_adds(sched, key_backprop, KEY, "offs_n")
                          + _input_grad_stores(key_backprop, KEY, "offs_n"), 4),
    )
    return text


def _queries_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    pair = _pair_backprop(ir, emitter, plan)
    updates = _score_grads(ir, emitter, plan, pair, left=True)
    accumulated = list(dict.fromkeys(x for x, _ in updates))
    loop = T.BACKWARD_KEY_LOOP.format(
        title="pass over key blocks: query-side cotangents of the scores",
        init=_indent([T.GRAD_ACCUMULATOR_INIT.format(x=x, rows="BLOCK_M") for x in accumulated], 4),
        key_values=_indent(_emit_all(emitter, plan.key_values, KEY), 8),
        pair_values=_indent(_emit_all(emitter, plan.pair_values, PAIR), 8),
        pair_grads=_indent(pair.lines, 8),
        update_title="accumulate the query-side cotangents over keys",
        update=_indent([f"acc_d{x} += {expr}" for x, expr in updates], 8),
        finish="",
    )
    # after the loop: the post values' share, then back through the query-side chains
    count = len(plan.contractions)
    query_backprop = _Backprop(ir, emitter)
    for x in accumulated:
        query_backprop.seed(x, QUERY, f"acc_d{x}")
    post = [T.LOAD_CONTRACTION.format(c=c, index=i, count=count) for i, c in enumerate(plan.contractions)]
    post += _emit_all(emitter, plan.post_values, QUERY)
    if ir.output not in plan.contractions:
        query_backprop.load_output_grad()
        nodes = [n for n in ir.order() if n in set(plan.query_values) | set(plan.post_values)]
        query_backprop.through(nodes, QUERY, stop=lambda n: n in plan.column_softmaxes)
    else:
        query_backprop.through(plan.query_values, QUERY, stop=lambda n: n in plan.column_softmaxes)
    tail = ["# -- the post values' share, and back through the query-side values to the inputs' query rows --"]
    tail += (post if ir.output not in plan.contractions else []) + query_backprop.lines
    tail += _column_grad_adds(sched, query_backprop, QUERY, "offs_m") + _input_grad_stores(query_backprop, QUERY, "offs_m")
    query_values = _global_value_lines(emitter, sched, plan) + _column_loads(sched, _columns_in(plan, plan.query_values, plan.key_values))
    query_values += _emit_all(emitter, plan.query_values, QUERY)
    query_values += _statistics_loads(plan, True) + _contraction_grad_loads(plan)
    return T.BACKWARD_QUERY_PROGRAM.format(
        name="attention_bwd_queries",
        params="{params}",
        query_values=_indent(query_values, 4),
        body=loop + "\n" + _indent(tail, 4),
    )


# -- [d,d] states and softmaxes over tokens ------------------------------------------------


def _global_value_lines(emitter: Emitter, sched: Schedule, plan: BackwardSchedule) -> list[str]:
    count = len(sched.reductions)
    lines = [T.GLOBAL_LOAD.format(r=r, index=sched.reductions.index(r), count=count) for r in plan.reductions]
    return lines + _emit_all(emitter, plan.global_values, GLOBAL)


def _column_loads(sched: Schedule, softmaxes, with_delta=()) -> list[str]:
    """Column statistics of softmaxes over tokens (kept from the forward), and column terms
    delta (from the global kernel's pass over tokens)."""
    count = len(sched.column_softmaxes)
    lines = [T.COLUMN_STATISTICS_LOAD.format(s=s, index=sched.column_softmaxes.index(s), count=count) for s in softmaxes]
    return lines + [T.LOAD_COLUMN_DELTA.format(s=s, index=sched.column_softmaxes.index(s), count=count) for s in with_delta]


def _columns_in(plan: BackwardSchedule, *values) -> list[str]:
    """The softmaxes over tokens among some kernel's values (whose statistics it loads)."""
    return [s for s in plan.column_softmaxes if any(s in v for v in values)]


def _column_grad_adds(sched: Schedule, backprop: _Backprop, rows: str, offs: str) -> list[str]:
    """Next to a pass over keys: this kernel's share of dP of each softmax over tokens, added
    into the buffer on the rows it owns (the column-rows kernel goes on from there)."""
    count = len(sched.column_softmaxes)
    return [
        T.ADD_COLUMN_GRAD.format(s=s, index=sched.column_softmaxes.index(s), count=count, offs=offs, grad=grad(s, rows))
        for s in sched.column_softmaxes
        if backprop.has(s, rows)
    ]


def _query_backprop(ir: IR, emitter: Emitter, plan: BackwardSchedule, global_cotangents: bool, stop=lambda n: False,
                    delta_terms=frozenset()) -> _Backprop:
    """From d_out back through the query rows' token values (and post values)."""
    backprop = _Backprop(ir, emitter, global_cotangents=global_cotangents, delta_terms=delta_terms)
    backprop.load_output_grad()
    nodes = [n for n in ir.order() if n in set(plan.query_values) | set(plan.post_values)]
    backprop.through(nodes, QUERY, stop=stop)
    return backprop


def _seed_state_rows(ir: IR, emitter: Emitter, reductions, backprop: _Backprop, wanted=None) -> None:
    """G = X^T Y over the real tokens, X held as token rows: dX = Y dG^T, dY = X dG on the
    rows held (KEY rows), from the states' cotangents d<r>_g; only the `wanted` operands."""
    for r in reductions:
        x, y = ir.node(r).operands
        if wanted is None or x in wanted:
            backprop.seed(x, KEY, f"tl.where(token_ok[:, None], _dot({emitter.head_masked(y, KEY)}, tl.trans(d{r}_g), DOT_DTYPE, DOT_PRECISION), 0.0)")
        if wanted is None or y in wanted:
            backprop.seed(y, KEY, f"_dot(tl.where(token_ok[:, None] & dim_ok, {var(x, KEY)}, 0.0), d{r}_g, DOT_DTYPE, DOT_PRECISION)")


def _global_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    values = _global_value_lines(emitter, sched, plan) + _column_loads(sched, plan.column_softmaxes)
    passes = []
    if plan.reductions:
        passes.append(_state_grads_pass(sched, plan, emitter))
    if plan.column_softmaxes:
        passes.append(_column_delta_pass(sched, plan, emitter))
    return T.BACKWARD_GLOBAL_PROGRAM.format(
        name="attention_bwd_global", params="{params}", global_values=_indent(values, 4), passes="".join(passes),
    )


def _state_grads_pass(sched: Schedule, plan: BackwardSchedule, emitter: Emitter) -> str:
    """Over the query rows: the [d,d] cotangents x^T dy of the token x [d,d] products, from
    d_out (and the saved contraction values, for post values), then back to the states."""
    ir = sched.ir
    reads_state = _reads_state(ir)
    # a value that reads no state sends no cotangent to one: the backprop stops there
    query = _query_backprop(ir, emitter, plan, global_cotangents=True, stop=lambda n: n not in reads_state)
    states = _Backprop(ir, emitter)
    for g in query.accumulated:
        states.seed(g, GLOBAL, f"acc_d{g}")
    states.through(plan.global_values, GLOBAL)
    count = len(sched.reductions)
    finish = []
    for r in plan.reductions:
        if not states.has(r, GLOBAL):
            finish.append(f"{grad(r, GLOBAL)} = tl.zeros([HEAD_DIM_PAD, HEAD_DIM_PAD], tl.float32)")
        finish += [T.GLOBAL_GRAD_FINISH.format(r=r), T.GLOBAL_GRAD_STORE.format(r=r, index=sched.reductions.index(r), count=count)]
    contraction_count = len(plan.contractions)
    row_values = [T.LOAD_CONTRACTION.format(c=c, index=i, count=contraction_count) for i, c in enumerate(plan.contractions)]
    row_values += _emit_all(emitter, plan.query_values, QUERY) + _emit_all(emitter, plan.post_values, QUERY)
    return T.STATE_GRADS_PASS.format(
        init=_indent([T.GLOBAL_GRAD_INIT.format(g=g) for g in query.accumulated], 4),
        query_values=_indent(row_values + [line for line in query.lines if not line.startswith("acc_d")], 8),
        update=_indent([line for line in query.lines if line.startswith("acc_d")], 8),
        global_grads=_indent(states.lines + finish, 4),
    )


def _column_delta_pass(sched: Schedule, plan: BackwardSchedule, emitter: Emitter) -> str:
    """Over all tokens, after the states' cotangents: delta_c = sum_n P dP of each softmax
    over tokens, dP from all its shares (d_out through the query rows, or next to a pass
    over keys the key-pass kernels' shares from the buffer; the states' cotangents through
    the state rows), each back only as far as the softmaxes."""
    ir, kinds = sched.ir, sched.kinds
    count = len(sched.column_softmaxes)
    below = _downstream_of_column_softmaxes(ir, plan)
    stop = lambda n: n not in below or n in plan.column_softmaxes  # noqa: E731 (dP is wanted, not dX)
    lines = []
    shares: list[tuple[_Backprop, str]] = []
    token_rows = _Backprop(ir, emitter)  # the buffer's and the states' shares, on the token rows
    token_roots: list[str] = []
    if plan.kind == "keys":
        token_roots += plan.column_softmaxes
        for i, s in enumerate(plan.column_softmaxes):
            token_rows.seed(s, KEY, T.LOAD_COLUMN_GRAD.format(index=i, count=count, offs="offs_n"))
    elif any(n in below for n in plan.query_values):
        lines += _emit_all(emitter, _token_closure(ir, kinds, [n for n in plan.query_values if n in below]), QUERY)
        query = _query_backprop(ir, emitter, plan, global_cotangents=False, stop=stop)
        lines += query.lines
        shares.append((query, QUERY))
    seeded = [r for r in plan.reductions if any(o in below for o in ir.node(r).operands)]
    if seeded:
        token_roots += [o for r in seeded for o in ir.node(r).operands] + [n for n in plan.reduction_values if n in below]
        _seed_state_rows(ir, emitter, seeded, token_rows, wanted=below)
        token_rows.through(plan.reduction_values, KEY, stop=stop)
    if token_roots:
        lines += _emit_all(emitter, _token_closure(ir, kinds, token_roots), KEY) + token_rows.lines
        shares.append((token_rows, KEY))
    update = [
        T.COLUMN_DELTA_UPDATE.format(s=s, p=var(s, rows))
        for s in plan.column_softmaxes
        for backprop, rows in shares
        if backprop.has(s, rows)
    ]
    return T.COLUMN_DELTA_PASS.format(
        init=_indent([T.COLUMN_DELTA_INIT.format(s=s) for s in plan.column_softmaxes], 4),
        values=_indent(lines, 8),
        update=_indent(update, 8),
        finish=_indent([T.STORE_COLUMN_DELTA.format(s=s, index=i, count=count) for i, s in enumerate(plan.column_softmaxes)], 4),
    )


def _query_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    # a softmax over tokens that the query rows read: its delta term is added here
    columns = [s for s in plan.column_softmaxes if s in plan.query_values]
    query = _query_backprop(ir, emitter, plan, global_cotangents=False, delta_terms=columns)
    values = _global_value_lines(emitter, sched, plan) + _column_loads(sched, columns, with_delta=columns)
    values += _emit_all(emitter, plan.query_values, QUERY) + query.lines
    return T.BACKWARD_TOKEN_PROGRAM.format(
        name="attention_bwd_query_rows", params="{params}", title="query rows: back from d_out",
        values=_indent(values, 4), store=_indent(_input_grad_stores(query, QUERY, "offs_m"), 4),
    )


def _state_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.reductions)
    columns = [s for s in plan.column_softmaxes if s in plan.reduction_values]
    # a softmax over tokens that only the states read: its delta term is added here (next to a
    # pass over keys, the column-rows kernel adds them all)
    delta_terms = [] if plan.kind == "keys" else [s for s in columns if s not in plan.query_values]
    keys = _Backprop(ir, emitter, delta_terms=delta_terms)
    values = [T.GLOBAL_GRAD_LOAD.format(r=r, index=sched.reductions.index(r), count=count) for r in plan.reductions]
    values += _column_loads(sched, columns, with_delta=delta_terms)
    _seed_state_rows(ir, emitter, plan.reductions, keys)
    keys.through(plan.reduction_values, KEY)
    values += _emit_all(emitter, plan.reduction_values, KEY) + keys.lines
    return T.BACKWARD_TOKEN_PROGRAM.format(
        name="attention_bwd_state_rows", params="{params}", title="rows of the reductions' operands: back from each state's cotangent",
        values=_indent(values, 4), store=_indent(_input_grad_stores(keys, KEY, "offs_m"), 4),
    )


def _column_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    """Next to a pass over keys: per token block, dX = P * (dP - delta) of each softmax over
    tokens (dP from the buffer the key-pass kernels filled), back to the inputs."""
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.column_softmaxes)
    rows = _Backprop(ir, emitter, delta_terms=plan.column_softmaxes)
    for i, s in enumerate(plan.column_softmaxes):
        rows.seed(s, KEY, T.LOAD_COLUMN_GRAD.format(index=i, count=count, offs="offs_n"))
    rows.through(plan.column_values, KEY)
    values = _column_loads(sched, plan.column_softmaxes, with_delta=plan.column_softmaxes)
    values += _emit_all(emitter, plan.column_values, KEY) + rows.lines
    return T.BACKWARD_TOKEN_PROGRAM.format(
        name=COLUMN_ROWS_KERNEL, params="{params}", title="rows of the softmaxes over tokens: back from dX = P * (dP - delta)",
        values=_indent(values, 4), store=_indent(_input_grad_stores(rows, KEY, "offs_m"), 4),
    )
