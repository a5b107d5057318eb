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

from genomec.genome.ops import OPS, OpKind
from genomec.ir.analysis import is_score, reads_state
from genomec.ir.graph import IR, PAIR_SPACE, TOKEN_SPACE

from . import backward_template as B
from . import forward_template as F
from . import template as T
from .autodiff import Backprop, accumulator, grad
from .backward_plan import BackwardKind, BackwardSchedule
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .schedule import KernelRole, Schedule, token_closure

BACKWARD_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
    "STABLE_SOFTMAX_GRAD",
)
indent, static_if = T.indent, T.static_if


class _RecomputeEmitter(Emitter):
    """The forward's emitter, with every softmax over keys recomputed from its saved
    log-sum-exp: P = exp(z - lse) where the pair takes part, else 0."""

    def _softmax(self, node_id: str, rows: str, x: str) -> list[str]:
        if self.ir.node(node_id).space == PAIR_SPACE:
            return [f"{var(node_id, rows)} = tl.where(keep, tl.exp({x} - {node_id}_lse[:, None]), 0.0)"]
        return super()._softmax(node_id, rows, x)


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
    return [(name, *kernels[name](sched, plan)) for name in plan.kernels]


def _kernel(name: KernelRole, emitter: Emitter, program: T.Program, body: str) -> tuple[str, tuple[str, ...]]:
    """(source, params) of a backward kernel whose body `emitter` helped build: its pointer
    parameters are the buffers the body's pieces name."""
    params = emitter.params()
    return T.kernel(name, params, BACKWARD_CONSTEXPRS, program, body), params




def _emit_all(emitter: Emitter, nodes, rows: str) -> list[str]:
    return [line for n in nodes for line in emitter.emit(n, rows)]


def _statistics_loads(emitter: Emitter, plan: BackwardSchedule, with_delta: bool) -> list[str]:
    lines = [emitter.access(B.LOAD_LSE, s=s, at=_row_stat_at(plan, s)) for s in plan.softmaxes]
    if with_delta:
        lines += [emitter.access(B.LOAD_DELTA, s=s, at=_row_stat_at(plan, s)) for s in plan.softmaxes]
        lines += static_if("STABLE_SOFTMAX_GRAD", [emitter.access(B.STAR_LOAD, s=s, **_star_at(plan, s)) for s in plan.softmaxes])
    return lines


def _row_stat_at(plan: BackwardSchedule, softmax: str) -> str:
    """Offsets of the program's query rows of a softmax over keys in the lse and delta buffers."""
    return T.row_stats_at(plan.softmaxes.index(softmax), len(plan.softmaxes))


def _star_at(plan: BackwardSchedule, softmax: str) -> dict:
    """Where j* and dS at j* of each query row go (backward_template.STAR_*): the second and
    third regions of the delta buffer, after every (batch, head)'s deltas (grid axis 1 counts
    the (batch, head) pairs), so that delta's own offsets stay as short as they were."""
    count = len(plan.softmaxes)
    region = "tl.num_programs(1) * seq_len" if count == 1 else f"tl.num_programs(1) * {count} * seq_len"
    return dict(stars=f"{region} + {_row_stat_at(plan, softmax)}", region=region)


def _contraction_at(plan: BackwardSchedule, c: str) -> str:
    return T.token_rows_at(plan.contractions.index(c), len(plan.contractions))


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


def _prepare_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    lines = [emitter.access(B.LOAD_CONTRACTION, c=c, at=_contraction_at(plan, c)) for c in plan.contractions]
    lines += _emit_all(emitter, plan.post_values, QUERY)
    lines.append("# -- cotangents of the contractions: back through the post values from d_out --")
    backprop = Backprop(ir, emitter)
    backprop.load_output_grad()
    backprop.through(plan.post_values, QUERY)
    lines += backprop.lines
    for c in plan.contractions:
        if not backprop.has(c, QUERY):
            lines.append(f"{grad(c, QUERY)} = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)")
        elif plan.reductions:  # back through dy @ G^T: the padded rows of a [d,d] value leave garbage past HEAD_DIM
            lines.append(f"{grad(c, QUERY)} = tl.where(dim_ok, {grad(c, QUERY)}, 0.0)")
        lines.append(emitter.access(B.STORE_CONTRACTION_GRAD, c=c, at=_contraction_at(plan, c)))
    query_values = _global_value_lines(emitter, sched, plan)
    query_values += _column_loads(emitter, sched, _columns_in(plan, plan.query_values, plan.key_values))
    query_values += _emit_all(emitter, plan.query_values, QUERY)
    body = [indent(lines, 4) + "\n"]

    if plan.online:  # delta = sum_m rowsum(dc_m * c_m): the contractions are linear in P
        s = plan.online
        terms = " + ".join(f"tl.sum(tl.where(dim_ok, {grad(c, QUERY)} * {var(c, QUERY)}, 0.0), 1)" for c in plan.contractions)
        body.append(T.section("softmax row term: delta = sum_j P dP = rowsum(dc * c)",
                             [f"{s}_delta = {terms}", emitter.access(B.STORE_DELTA, s=s, at=_row_stat_at(plan, s))]))
    if plan.softmaxes:
        body += _softmax_passes(ir, emitter, plan)
    body.insert(0, T.section("query-side values, saved statistics and cotangents", query_values))
    return _kernel(KernelRole.BWD_PREPARE, emitter, T.Program.QUERY_BLOCK, "".join(body))


def _softmax_passes(ir: IR, emitter: Emitter, plan: BackwardSchedule) -> list[str]:
    """Prepare's passes over key blocks, one per nesting level of the softmaxes over keys:
    delta = sum_j P_ij dP_ij (unless the online softmax has it already) and, with fp32
    inputs, the row's dominant key j* and dS there (backward_template.STAR_*).

    A softmax of a softmax: dP of the inner one comes back through the outer one, which
    needs the outer delta (and dS at j*), so the passes go from the outermost level
    (nearest the contractions) in, each back through the levels already done."""
    key_values = _emit_all(emitter, plan.key_values, KEY)
    pair_values = _emit_all(emitter, plan.pair_values, PAIR)
    init = _statistics_loads(emitter, plan, False)
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
        stars = [B.STAR_UPDATE.format(s=s, z=var(ir.node(s).operands[0], PAIR), p=var(s, PAIR)) for s in reached]
        finish = [emitter.access(B.STORE_DELTA, s=s, at=_row_stat_at(plan, s)) for s in sums]
        finish += stable([emitter.access(B.STAR_FINISH, s=s, **_star_at(plan, s)) for s in level])
        title = "pass over key blocks: softmax row terms delta = sum_j P dP, and dS at the largest score"
        if not sums:
            title = "pass over key blocks: dS at each row's largest score"
        if len(levels) > 1:
            title += f" (nesting level {depth + 1}: {', '.join(level)})"
        update_title = "accumulate delta, and the terms beside the largest score" if sums else "the terms beside the largest score"
        loop = T.BACKWARD_KEY_LOOP.render(
            title,
            init=init + [B.DELTA_INIT.format(s=s) for s in sums] + stable([B.STAR_INIT.format(s=s) for s in level]),
            sections=[
                ("key-side values", key_values),
                ("pair values (recomputed)", pair_values),
                ("cotangents of the pair values", pair.lines),
                (update_title, [B.DELTA_UPDATE.format(s=s, p=var(s, PAIR)) for s in sums if s in reached] + stable(stars)),
            ],
            finish=finish,
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


def _contraction_grad_loads(emitter: Emitter, plan: BackwardSchedule) -> list[str]:
    return [emitter.access(B.LOAD_CONTRACTION_GRAD, c=c, at=_contraction_at(plan, c)) for c in plan.contractions]


def _input_grad_stores(emitter: Emitter, backprop: Backprop, rows: str, held: str) -> list[str]:
    """Each input's gradient on the rows `held` (rows_m or rows_n), added to what is there."""
    return [
        emitter.access(B.ADD_TO_OWN_ROWS, pointer=f"d{n}_ptr", var=f"d{n}", at=f"head_offset + {held} + offs_d[None, :]", rows=held, grad=grad(n, rows))
        for n in ("q", "k", "v")
        if backprop.has(n, rows)
    ]


def _keys_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
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
    query_values = _emit_all(emitter, plan.score_query_values, QUERY) + _statistics_loads(emitter, plan, True)
    query_values += _contraction_grad_loads(emitter, plan)
    key_values = _column_loads(emitter, sched, _columns_in(plan, plan.key_values, plan.score_query_values))
    key_values += _emit_all(emitter, plan.key_values, KEY)
    loop = T.QUERY_LOOP.render(
        "pass over query blocks: key-side cotangents",
        init=[B.GRAD_ACCUMULATOR_INIT.format(x=x, block="BLOCK_N") for x in accumulated],
        sections=[
            ("query-side values, saved statistics and cotangents", query_values),
            ("pair values (recomputed)", _emit_all(emitter, plan.pair_values, PAIR)),
            ("cotangents of the pair values", pair.lines),
            ("accumulate the key-side cotangents over queries", [f"{accumulator(x)} += {expr}" for x, expr in updates]),
        ],
    )
    key_grads = key_backprop.lines + _column_grad_adds(emitter, sched, key_backprop, KEY, "rows_n")
    key_grads += _input_grad_stores(emitter, key_backprop, KEY, "rows_n")
    body = T.section("key-side values", key_values) + loop + T.section("back through the key-side values to the inputs' key rows", key_grads)
    return _kernel(KernelRole.BWD_KEYS, emitter, T.Program.KEY_BLOCK, body)


def _queries_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = _RecomputeEmitter(ir, sched.kinds)
    pair = _pair_backprop(ir, emitter, plan)
    updates = _score_grads(ir, emitter, plan, pair, left=True)
    accumulated = list(dict.fromkeys(x for x, _ in updates))
    loop = T.BACKWARD_KEY_LOOP.render(
        "pass over key blocks: query-side cotangents of the scores",
        init=[B.GRAD_ACCUMULATOR_INIT.format(x=x, block="BLOCK_M") for x in accumulated],
        sections=[
            ("key-side values", _emit_all(emitter, plan.key_values, KEY)),
            ("pair values (recomputed)", _emit_all(emitter, plan.pair_values, PAIR)),
            ("cotangents of the pair values", pair.lines),
            ("accumulate the query-side cotangents over keys", [f"{accumulator(x)} += {expr}" for x, expr in updates]),
        ],
    )
    # after the loop: the post values' share, then back through the query-side chains
    query_backprop = Backprop(ir, emitter)
    for x in accumulated:
        query_backprop.seed(x, QUERY, accumulator(x))
    post = []  # (emitted only when the kernel reads them: a piece joins the kernel's parameters as it is made)
    if ir.output not in plan.contractions:
        post = [emitter.access(B.LOAD_CONTRACTION, c=c, at=_contraction_at(plan, c)) for c in plan.contractions]
        post += _emit_all(emitter, plan.post_values, QUERY)
        query_backprop.load_output_grad()
        nodes = [n for n in ir.order() if n in set(plan.query_values) | set(plan.post_values)]
        query_backprop.through(nodes, QUERY, stop=lambda n: n in plan.column_softmaxes)
    else:
        query_backprop.through(plan.query_values, QUERY, stop=lambda n: n in plan.column_softmaxes)
    tail = post + query_backprop.lines
    tail += _column_grad_adds(emitter, sched, query_backprop, QUERY, "rows_m")
    tail += _input_grad_stores(emitter, query_backprop, QUERY, "rows_m")
    query_values = _global_value_lines(emitter, sched, plan)
    query_values += _column_loads(emitter, sched, _columns_in(plan, plan.query_values, plan.key_values))
    query_values += _emit_all(emitter, plan.query_values, QUERY)
    query_values += _statistics_loads(emitter, plan, True) + _contraction_grad_loads(emitter, plan)
    body = T.section("query-side values, saved statistics and cotangents", query_values) + loop
    body += T.section("the post values' share, and back through the query-side values to the inputs' query rows", tail)
    return _kernel(KernelRole.BWD_QUERIES, emitter, T.Program.QUERY_BLOCK, body)


# -- [d,d] states and softmaxes over tokens ------------------------------------------------


def _global_value_lines(emitter: Emitter, sched: Schedule, plan: BackwardSchedule) -> list[str]:
    lines = [emitter.access(F.GLOBAL_LOAD, r=r, at=_state_at(sched, r)) for r in plan.reductions]
    return lines + _emit_all(emitter, plan.global_values, GLOBAL)


def _state_at(sched: Schedule, r: str) -> str:
    return T.state_at(sched.reductions.index(r), len(sched.reductions))


def _columns_at(sched: Schedule, s: str) -> str:
    """Offsets of a softmax over tokens' column terms delta in their buffer."""
    return T.columns_at(sched.column_softmaxes.index(s), len(sched.column_softmaxes))


def _column_loads(emitter: Emitter, sched: Schedule, softmaxes, with_delta=()) -> list[str]:
    """Column statistics of softmaxes over tokens (kept from the forward), and column terms
    delta (from the global kernel's pass over tokens)."""
    count = len(sched.column_softmaxes)
    lines = [
        emitter.access(F.COLUMN_STATISTICS_LOAD, s=s, **T.column_statistics_at(sched.column_softmaxes.index(s), count))
        for s in softmaxes
    ]
    return lines + [emitter.access(B.LOAD_COLUMN_DELTA, s=s, at=_columns_at(sched, s)) for s in with_delta]


def _columns_in(plan: BackwardSchedule, *values) -> list[str]:
    """The softmaxes over tokens among some kernel's values (whose statistics it loads)."""
    return [s for s in plan.column_softmaxes if any(s in v for v in values)]


def _column_grad_adds(emitter: Emitter, sched: Schedule, backprop: Backprop, rows: str, held: str) -> list[str]:
    """Next to a pass over keys: this kernel's share of dP of each softmax over tokens, added
    into the buffer on the rows `held` that it owns (the column-rows kernel goes on from there)."""
    count = len(sched.column_softmaxes)
    return [
        emitter.access(
            B.ADD_TO_OWN_ROWS, pointer="dcolumn_ptr", var=f"d{s}", rows=held, grad=grad(s, rows),
            at=T.token_rows_at(sched.column_softmaxes.index(s), count, held),
        )
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


def _global_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    values = [B.HEAD_BLOCK_OK] + _global_value_lines(emitter, sched, plan) + _column_loads(emitter, sched, plan.column_softmaxes)
    body = T.section("global values", values)
    if plan.reductions:
        body += _state_grads_pass(sched, plan, emitter)
    if plan.column_softmaxes:
        body += _column_delta_pass(sched, plan, emitter)
    return _kernel(KernelRole.BWD_GLOBAL, emitter, T.Program.HEAD, body)


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
    finish = []
    for r in plan.reductions:
        if not states.has(r, GLOBAL):
            finish.append(f"{grad(r, GLOBAL)} = tl.zeros([HEAD_DIM_PAD, HEAD_DIM_PAD], tl.float32)")
        finish += [B.GLOBAL_GRAD_FINISH.format(r=r), emitter.access(B.GLOBAL_GRAD_STORE, r=r, at=_state_at(sched, r))]
    row_values = [emitter.access(B.LOAD_CONTRACTION, c=c, at=_contraction_at(plan, c)) for c in plan.contractions]
    row_values += _emit_all(emitter, plan.query_values, QUERY) + _emit_all(emitter, plan.post_values, QUERY)
    loop = T.TOKEN_ROWS_LOOP.render(
        "pass over the tokens as query rows: the [d,d] cotangents",
        init=[B.GLOBAL_GRAD_INIT.format(g=g) for g in query.accumulated],
        sections=[
            ("query-side values and their cotangents", row_values + query.lines),
            ("accumulate the [d,d] cotangents over the query rows", query.updates),
        ],
    )
    return loop + T.section("back through the [d,d] values to the reductions", states.lines + finish)


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
            token_rows.seed(s, KEY, emitter.access(B.LOAD_COLUMN_GRAD, at=T.token_rows_at(i, count, "rows_n")))
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
        B.COLUMN_DELTA_UPDATE.format(s=s, p=var(s, rows))
        for s in plan.column_softmaxes
        for backprop, rows in shares
        if backprop.has(s, rows)
    ]
    return T.TOKEN_ROWS_LOOP.render(
        "pass over the tokens: column terms delta_c = sum_n P[n, c] dP[n, c] of the softmaxes over tokens",
        init=[B.COLUMN_DELTA_INIT.format(s=s) for s in plan.column_softmaxes],
        sections=[
            ("token values, and dP from d_out (query rows) and from the states' cotangents (state rows)", lines),
            ("accumulate delta over the real tokens", update),
        ],
        finish=[emitter.access(B.STORE_COLUMN_DELTA, s=s, at=_columns_at(sched, s)) for s in plan.column_softmaxes],
    )


def _token_block_kernel(name: KernelRole, emitter: Emitter, title: str, values, stores) -> tuple[str, tuple[str, ...]]:
    """A kernel with one program per token block: its values, then the inputs' gradients on its rows."""
    body = T.section(title, values) + T.section("the inputs' gradients on these rows", stores)
    return _kernel(name, emitter, T.Program.TOKEN_BLOCK, body)


def _query_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    # a softmax over tokens that the query rows read: its delta term is added here
    columns = [s for s in plan.column_softmaxes if s in plan.query_values]
    query = _query_backprop(ir, emitter, plan, global_cotangents=False, delta_terms=columns)
    values = _global_value_lines(emitter, sched, plan) + _column_loads(emitter, sched, columns, with_delta=columns)
    values += _emit_all(emitter, plan.query_values, QUERY) + query.lines
    return _token_block_kernel(
        KernelRole.BWD_QUERY_ROWS, emitter, "query rows: back from d_out", values, _input_grad_stores(emitter, query, QUERY, "rows_m"),
    )


def _state_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    columns = [s for s in plan.column_softmaxes if s in plan.reduction_values]
    # a softmax over tokens that only the states read: its delta term is added here (next to a
    # pass over keys, the column-rows kernel adds them all)
    delta_terms = [] if plan.kind == BackwardKind.KEYS else [s for s in columns if s not in plan.query_values]
    keys = Backprop(ir, emitter, delta_terms=delta_terms)
    values = [emitter.access(B.GLOBAL_GRAD_LOAD, r=r, at=_state_at(sched, r)) for r in plan.reductions]
    values += _column_loads(emitter, sched, columns, with_delta=delta_terms)
    _seed_state_rows(ir, emitter, plan.reductions, keys)
    keys.through(plan.reduction_values, KEY)
    values += _emit_all(emitter, plan.reduction_values, KEY) + keys.lines
    return _token_block_kernel(
        KernelRole.BWD_STATE_ROWS, emitter, "rows of the reductions' operands: back from each state's cotangent", values,
        _input_grad_stores(emitter, keys, KEY, "rows_m"),
    )


def _column_rows_kernel(sched: Schedule, plan: BackwardSchedule) -> tuple[str, tuple[str, ...]]:
    """Next to a pass over keys: per token block, dX = P * (dP - delta) of each softmax over
    tokens (dP from the buffer the key-pass kernels filled), back to the inputs."""
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.column_softmaxes)
    rows = Backprop(ir, emitter, delta_terms=plan.column_softmaxes)
    for i, s in enumerate(plan.column_softmaxes):
        rows.seed(s, KEY, emitter.access(B.LOAD_COLUMN_GRAD, at=T.token_rows_at(i, count, "rows_n")))
    rows.through(plan.column_values, KEY)
    values = _column_loads(emitter, sched, plan.column_softmaxes, with_delta=plan.column_softmaxes)
    values += _emit_all(emitter, plan.column_values, KEY) + rows.lines
    return _token_block_kernel(
        KernelRole.BWD_COLUMN_ROWS, emitter, "rows of the softmaxes over tokens: back from dX = P * (dP - delta)", values,
        _input_grad_stores(emitter, rows, KEY, "rows_m"),
    )
