"""The backward kernels of a fused attention graph (SPEC 3, Backward): one builder per kernel of
a BackwardSchedule (backward_plan), filling a template.py program with the recomputed forward
values (emit.py) and the cotangent lines of autodiff.Backprop.

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

A graph with no pass over keys (BackwardKind.GLOBAL) has [d,d] states G = X^T Y instead, or is
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

[d,d] states next to a pass over keys (BackwardKind.KEYS with reductions): the key-pass kernels
run as above (the query rows read the states where they need them), then the global and
state-rows kernels add the states' share; the global kernel's pass over the query rows
reads the saved contraction values for the post values. Only the query rows after the
key loop may read a state (post values, or query values that feed them).
"""

from __future__ import annotations

import re

from genomec.genome.ops import OPS, OpKind
from genomec.ir.analysis import is_score, reads_state
from genomec.ir.graph import IR, PAIR_SPACE, TOKEN_SPACE

from . import template as T
from .abi import SCALARS
from .autodiff import Backprop, accumulator, grad, indent, static_if
from .backward_plan import BackwardKind, BackwardSchedule
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .schedule import KernelRole, Schedule, token_closure

BACKWARD_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
    "STABLE_SOFTMAX_GRAD",
)
# Pointer parameters in the order kernels take them (a kernel takes those its body reads).
POINTERS = (
    "q_ptr", "k_ptr", "v_ptr", "mask_ptr", "global_ptr", "stats_ptr", "lse_ptr", "saved_ptr", "dout_ptr", "dcontraction_ptr",
    "delta_ptr", "dcolumn_ptr", "column_delta_ptr", "dglobal_ptr", "dq_ptr", "dk_ptr", "dv_ptr",
)


class _RecomputeEmitter(Emitter):
    """The forward's emitter, with every softmax over keys recomputed from its saved
    log-sum-exp: P = exp(z - lse) where the pair takes part, else 0."""

    def _softmax(self, node_id: str, rows: str, x: str) -> list[str]:
        if self.ir.node(node_id).space == PAIR_SPACE:
            return [f"{var(node_id, rows)} = tl.where(keep, tl.exp({x} - {node_id}_lse[:, None]), 0.0)"]
        return super()._softmax(node_id, rows, x)


def _params(text: str) -> tuple[str, ...]:
    """The pointers a kernel's finished source reads, in POINTERS order (read off the text: each
    buffer is spelled inside template.py's lines and emit.py's input loads)."""
    return tuple(p for p in POINTERS if re.search(rf"\b{p}\b", text)) + SCALARS


def forward_save_lines(plan: BackwardSchedule) -> str:
    """The forward's SAVE_FOR_BACKWARD block: log-sum-exp per softmax, contraction values."""
    lines = [T.SAVE_LSE.format(s=s, index=i, count=len(plan.softmaxes)) for i, s in enumerate(plan.softmaxes)]
    lines += [T.SAVE_CONTRACTION.format(c=c, index=i, count=len(plan.contractions)) for i, c in enumerate(plan.contractions)]
    return T.SAVE_FOR_BACKWARD.format(lines=indent(lines, 8))


def generate_backward(sched: Schedule, plan: BackwardSchedule) -> list[tuple[KernelRole, str, tuple[str, ...]]]:
    """(kernel name, source, params) of the backward kernels, in launch order."""
    kernels = {
        KernelRole.BWD_PREPARE: _prepare_kernel,
        KernelRole.BWD_KEYS: _keys_kernel,
        KernelRole.BWD_QUERIES: _queries_kernel,
        KernelRole.BWD_GLOBAL: _global_kernel,
        KernelRole.BWD_QUERY_ROWS: _query_rows_kernel,
        KernelRole.BWD_STATE_ROWS: _state_rows_kernel,
        KernelRole.BWD_COLUMN_ROWS: _column_rows_kernel,
    }
    return [_named(name, kernels[name](sched, plan)) for name in plan.kernels]


def _named(name: KernelRole, body_template: str):
    params = _params(body_template)
    return name, body_template.replace("{params}", " ".join(p + "," for p in params)), params


def _emit_all(emitter: Emitter, nodes, rows: str) -> list[str]:
    return [line for n in nodes for line in emitter.emit(n, rows)]


def _statistics_loads(plan: BackwardSchedule, with_delta: bool) -> list[str]:
    count = len(plan.softmaxes)
    lines = [T.LOAD_LSE.format(s=s, index=i, count=count) for i, s in enumerate(plan.softmaxes)]
    if with_delta:
        lines += [T.LOAD_DELTA.format(s=s, **_row_stat(plan, s)) for s in plan.softmaxes]
        lines += static_if("STABLE_SOFTMAX_GRAD", [T.STAR_LOAD.format(s=s, **_star_offsets(plan, s)) for s in plan.softmaxes])
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


def static_if(flag: str, lines: list[str]) -> list[str]:
    """Lines that run only when the constexpr `flag` is set (compiled away otherwise)."""
    return [f"if {flag}:", indent(lines, 4)] if lines else []


def _pair_backprop(ir: IR, emitter: Emitter, plan: BackwardSchedule, stop=lambda n: False) -> Backprop:
    """Cotangent tiles of the pair values: seeded by the contractions (d a = d c @ x^T),
    back through the pair chain to the scores."""
    backprop = Backprop(ir, emitter)
    for c in plan.contractions:
        a, x = ir.node(c).operands
        backprop.seed(a, PAIR, f"tl.where(keep, _dot({grad(c, QUERY)}, tl.trans({var(x, KEY)}), DOT_DTYPE, DOT_PRECISION), 0.0)")
    backprop.through(plan.pair_values, PAIR, stop=stop)
    return backprop


def _score_grads(ir: IR, emitter: Emitter, plan: BackwardSchedule, backprop: Backprop, left: bool) -> list[tuple[str, str]]:
    """(token value, cotangent expression) per score side reached: the query side (left)
    accumulates over keys, the key side over queries."""
    result = []
    for s in plan.pair_values:
        node = ir.node(s)
        if not is_score(ir, s) or not backprop.has(s, PAIR):
            continue
        x, y = node.operands
        ds = f"tl.where(keep, {grad(s, PAIR)}, 0.0)"
        op = OPS[node.op]
        if op.kind is OpKind.PRODUCT:  # s = x y^T
            expr = (
                f"_dot({ds}, {var(y, KEY)}, DOT_DTYPE, DOT_PRECISION)"
                if left
                else f"_dot(tl.trans({ds}), {emitter.head_masked(x, QUERY)}, DOT_DTYPE, DOT_PRECISION)"
            )
        else:  # a score op: the registry's spelling of each side's share
            rule = op.triton_vjp[0 if left else 1]
            expr = rule.format(x=var(x, QUERY), y=var(y, KEY), out=var(s, PAIR), grad=ds)
        result.append((x if left else y, expr))
    return result


def _prepare_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    count = len(plan.contractions)
    lines = [T.LOAD_CONTRACTION.format(c=c, index=i, count=count) for i, c in enumerate(plan.contractions)]
    lines += _emit_all(emitter, plan.post_values, QUERY)
    lines.append("# -- cotangents of the contractions: back through the post values from d_out --")
    backprop = Backprop(ir, emitter)
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
    body = [indent(lines, 4)]

    if plan.online:  # delta = sum_m rowsum(dc_m * c_m): the contractions are linear in P
        s = plan.online
        terms = " + ".join(f"tl.sum(tl.where(dim_ok, {grad(c, QUERY)} * {var(c, QUERY)}, 0.0), 1)" for c in plan.contractions)
        body.append(indent(["# -- softmax row term: delta = sum_j P dP = rowsum(dc * c) --", f"{s}_delta = {terms}",
                             T.STORE_DELTA.format(s=s, **_row_stat(plan, s))], 4))
    if plan.softmaxes:
        body += _softmax_passes(ir, emitter, plan)
    return T.BACKWARD_QUERY_PROGRAM.format(name=KernelRole.BWD_PREPARE, params="{params}",
                                           query_values=indent(query_values, 4), body="\n".join(body))


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
        stable = (lambda lines: static_if("STABLE_SOFTMAX_GRAD", lines)) if sums else (lambda lines: lines)
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
            init=indent(init + [T.DELTA_INIT.format(s=s) for s in sums] + stable([T.STAR_INIT.format(s=s) for s in level]), 4),
            key_values=indent(key_values, 8),
            pair_values=indent(pair_values, 8),
            pair_grads=indent(pair.lines, 8),
            update_title="accumulate delta, and the terms beside the largest score" if sums else "the terms beside the largest score",
            update=indent([T.DELTA_UPDATE.format(s=s, p=var(s, PAIR)) for s in sums if s in reached] + stable(stars), 8),
            finish=indent(finish, 4),
        )
        passes.append(loop if sums else "\n    if STABLE_SOFTMAX_GRAD:\n" + indent([loop.lstrip("\n")], 4))
        init = []
    return passes


def _downstream_of_column_softmaxes(ir: IR, plan: BackwardSchedule) -> set[str]:
    """The column softmaxes and the token values computed from them on the same rows: the
    rows their dP comes back along (a [d,d] state in between passes it to other rows)."""
    below = set(plan.column_softmaxes)
    for node_id, node in ir.nodes():
        if node.space == TOKEN_SPACE and any(o in below for o in node.operands):
            below.add(node_id)
    return below


def _downstream_of(ir: IR, roots, nodes) -> set[str]:
    downstream = set(roots)
    for n in nodes:
        if any(o in downstream for o in ir.node(n).operands):
            downstream.add(n)
    return downstream


def _contraction_grad_loads(plan: BackwardSchedule) -> list[str]:
    count = len(plan.contractions)
    return [T.LOAD_CONTRACTION_GRAD.format(c=c, index=i, count=count) for i, c in enumerate(plan.contractions)]


def _input_grad_stores(backprop: Backprop, rows: str, offs: str) -> list[str]:
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
    key_backprop = Backprop(ir, emitter)
    for x in accumulated:
        key_backprop.seed(x, KEY, accumulator(x))
    key_backprop.through(plan.key_values, KEY, stop=lambda n: n in plan.column_softmaxes)
    query_values = _emit_all(emitter, plan.score_query_values, QUERY) + _statistics_loads(plan, True) + _contraction_grad_loads(plan)
    key_values = _column_loads(sched, _columns_in(plan, plan.key_values, plan.score_query_values)) + _emit_all(emitter, plan.key_values, KEY)
    text = T.BACKWARD_KEY_PROGRAM.format(
        name=KernelRole.BWD_KEYS,
        params="{params}",
        key_values=indent(key_values, 4),
        init=indent([T.GRAD_ACCUMULATOR_INIT.format(x=x, rows="BLOCK_N") for x in accumulated], 4),
        query_values=indent(query_values, 8),
        pair_values=indent(_emit_all(emitter, plan.pair_values, PAIR), 8),
        pair_grads=indent(pair.lines, 8),
        update=indent([f"{accumulator(x)} += {expr}" for x, expr in updates], 8),
        key_grads=indent(key_backprop.lines + _column_grad_adds(sched, key_backprop, KEY, "offs_n")
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
        init=indent([T.GRAD_ACCUMULATOR_INIT.format(x=x, rows="BLOCK_M") for x in accumulated], 4),
        key_values=indent(_emit_all(emitter, plan.key_values, KEY), 8),
        pair_values=indent(_emit_all(emitter, plan.pair_values, PAIR), 8),
        pair_grads=indent(pair.lines, 8),
        update_title="accumulate the query-side cotangents over keys",
        update=indent([f"{accumulator(x)} += {expr}" for x, expr in updates], 8),
        finish="",
    )
    # after the loop: the post values' share, then back through the query-side chains
    count = len(plan.contractions)
    query_backprop = Backprop(ir, emitter)
    for x in accumulated:
        query_backprop.seed(x, QUERY, accumulator(x))
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
        name=KernelRole.BWD_QUERIES,
        params="{params}",
        query_values=indent(query_values, 4),
        body=loop + "\n" + indent(tail, 4),
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


def _column_grad_adds(sched: Schedule, backprop: Backprop, rows: str, offs: str) -> list[str]:
    """Next to a pass over keys: this kernel's share of dP of each softmax over tokens, added
    into the buffer on the rows it owns (the column-rows kernel goes on from there)."""
    count = len(sched.column_softmaxes)
    return [
        T.ADD_COLUMN_GRAD.format(s=s, index=sched.column_softmaxes.index(s), count=count, offs=offs, grad=grad(s, rows))
        for s in sched.column_softmaxes
        if backprop.has(s, rows)
    ]


def _query_backprop(ir: IR, emitter: Emitter, plan: BackwardSchedule, global_cotangents: bool, stop=lambda n: False,
                    delta_terms=frozenset()) -> Backprop:
    """From d_out back through the query rows' token values (and post values)."""
    backprop = Backprop(ir, emitter, global_cotangents=global_cotangents, delta_terms=delta_terms)
    backprop.load_output_grad()
    nodes = [n for n in ir.order() if n in set(plan.query_values) | set(plan.post_values)]
    backprop.through(nodes, QUERY, stop=stop)
    return backprop


def _seed_state_rows(ir: IR, emitter: Emitter, reductions, backprop: Backprop, wanted=None) -> None:
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
        name=KernelRole.BWD_GLOBAL, params="{params}", global_values=indent(values, 4), passes="".join(passes),
    )


def _state_grads_pass(sched: Schedule, plan: BackwardSchedule, emitter: Emitter) -> str:
    """Over the query rows: the [d,d] cotangents x^T dy of the token x [d,d] products, from
    d_out (and the saved contraction values, for post values), then back to the states."""
    ir = sched.ir
    reading_state = reads_state(ir)
    # a value that reads no state sends no cotangent to one: the backprop stops there
    query = _query_backprop(ir, emitter, plan, global_cotangents=True, stop=lambda n: n not in reading_state)
    states = Backprop(ir, emitter)
    for g in query.accumulated:
        states.seed(g, GLOBAL, accumulator(g))
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
        init=indent([T.GLOBAL_GRAD_INIT.format(g=g) for g in query.accumulated], 4),
        query_values=indent(row_values + query.lines, 8),
        update=indent(query.updates, 8),
        global_grads=indent(states.lines + finish, 4),
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
    shares: list[tuple[Backprop, str]] = []
    token_rows = Backprop(ir, emitter)  # the buffer's and the states' shares, on the token rows
    token_roots: list[str] = []
    if plan.kind == BackwardKind.KEYS:
        token_roots += plan.column_softmaxes
        for i, s in enumerate(plan.column_softmaxes):
            token_rows.seed(s, KEY, T.LOAD_COLUMN_GRAD.format(index=i, count=count, offs="offs_n"))
    elif any(n in below for n in plan.query_values):
        lines += _emit_all(emitter, token_closure(ir, kinds, [n for n in plan.query_values if n in below]), QUERY)
        query = _query_backprop(ir, emitter, plan, global_cotangents=False, stop=stop)
        lines += query.lines
        shares.append((query, QUERY))
    seeded = [r for r in plan.reductions if any(o in below for o in ir.node(r).operands)]
    if seeded:
        token_roots += [o for r in seeded for o in ir.node(r).operands] + [n for n in plan.reduction_values if n in below]
        _seed_state_rows(ir, emitter, seeded, token_rows, wanted=below)
        token_rows.through(plan.reduction_values, KEY, stop=stop)
    if token_roots:
        lines += _emit_all(emitter, token_closure(ir, kinds, token_roots), KEY) + token_rows.lines
        shares.append((token_rows, KEY))
    update = [
        T.COLUMN_DELTA_UPDATE.format(s=s, p=var(s, rows))
        for s in plan.column_softmaxes
        for backprop, rows in shares
        if backprop.has(s, rows)
    ]
    return T.COLUMN_DELTA_PASS.format(
        init=indent([T.COLUMN_DELTA_INIT.format(s=s) for s in plan.column_softmaxes], 4),
        values=indent(lines, 8),
        update=indent(update, 8),
        finish=indent([T.STORE_COLUMN_DELTA.format(s=s, index=i, count=count) for i, s in enumerate(plan.column_softmaxes)], 4),
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
        name=KernelRole.BWD_QUERY_ROWS, params="{params}", title="query rows: back from d_out",
        values=indent(values, 4), store=indent(_input_grad_stores(query, QUERY, "offs_m"), 4),
    )


def _state_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.reductions)
    columns = [s for s in plan.column_softmaxes if s in plan.reduction_values]
    # a softmax over tokens that only the states read: its delta term is added here (next to a
    # pass over keys, the column-rows kernel adds them all)
    delta_terms = [] if plan.kind == BackwardKind.KEYS else [s for s in columns if s not in plan.query_values]
    keys = Backprop(ir, emitter, delta_terms=delta_terms)
    values = [T.GLOBAL_GRAD_LOAD.format(r=r, index=sched.reductions.index(r), count=count) for r in plan.reductions]
    values += _column_loads(sched, columns, with_delta=delta_terms)
    _seed_state_rows(ir, emitter, plan.reductions, keys)
    keys.through(plan.reduction_values, KEY)
    values += _emit_all(emitter, plan.reduction_values, KEY) + keys.lines
    return T.BACKWARD_TOKEN_PROGRAM.format(
        name=KernelRole.BWD_STATE_ROWS, params="{params}", title="rows of the reductions' operands: back from each state's cotangent",
        values=indent(values, 4), store=indent(_input_grad_stores(keys, KEY, "offs_m"), 4),
    )


def _column_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> str:
    """Next to a pass over keys: per token block, dX = P * (dP - delta) of each softmax over
    tokens (dP from the buffer the key-pass kernels filled), back to the inputs."""
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.column_softmaxes)
    rows = Backprop(ir, emitter, delta_terms=plan.column_softmaxes)
    for i, s in enumerate(plan.column_softmaxes):
        rows.seed(s, KEY, T.LOAD_COLUMN_GRAD.format(index=i, count=count, offs="offs_n"))
    rows.through(plan.column_values, KEY)
    values = _column_loads(sched, plan.column_softmaxes, with_delta=plan.column_softmaxes)
    values += _emit_all(emitter, plan.column_values, KEY) + rows.lines
    return T.BACKWARD_TOKEN_PROGRAM.format(
        name=KernelRole.BWD_COLUMN_ROWS, params="{params}", title="rows of the softmaxes over tokens: back from dX = P * (dP - delta)",
        values=indent(values, 4), store=indent(_input_grad_stores(rows, KEY, "offs_m"), 4),
    )
