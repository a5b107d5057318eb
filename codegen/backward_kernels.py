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

from dataclasses import dataclass

from genomec.genome.ops import OPS, OpKind
from genomec.ir.analysis import is_score, reads_state
from genomec.ir.graph import IR, PAIR_SPACE, TOKEN_SPACE

from . import backward_template as B
from . import forward_template as F
from . import template as T
from .autodiff import Backprop, accumulator, grad
from .backward_plan import BackwardKind, BackwardSchedule
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .template import Mask
from .schedule import KernelRole, Schedule, key_values_computed, token_closure

BACKWARD_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
    "STABLE_SOFTMAX_GRAD",
)
indent, static_if = T.indent, T.static_if


def generate_backward(sched: Schedule, plan: BackwardSchedule) -> list[tuple[KernelRole, str, tuple[str, ...]]]:
    """(kernel name, source, params) of the backward kernels, in launch order."""
    kernels = {
        KernelRole.BWD_PREPARE: _prepare_kernel,
        KernelRole.BWD_KEYS: _keys_kernel,
        KernelRole.BWD_KEY_ROWS: _key_rows_kernel,
        KernelRole.BWD_QUERIES: _queries_kernel,
        KernelRole.BWD_GLOBAL: _global_kernel,
        KernelRole.BWD_QUERY_ROWS: _query_rows_kernel,
        KernelRole.BWD_STATE_ROWS: _state_rows_kernel,
        KernelRole.BWD_COLUMN_ROWS: _column_rows_kernel,
    }
    written: set[str] = set()  # the inputs whose gradient an earlier kernel wrote (_input_grad_stores)
    return [(name, *kernels[name](sched, plan, written)) for name in plan.kernels]


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
    """Cotangent tiles of the pair values: seeded by the contractions (d a = d c @ x^T; held
    transposed, x @ d c^T), back through the pair chain to the scores."""
    backprop = Backprop(ir, emitter)
    for c in plan.contractions:
        a, x = ir.node(c).operands
        if emitter.transposed:
            seed = f"_dot({var(x, KEY)}, tl.trans({grad(c, QUERY)}), DOT_DTYPE, DOT_PRECISION)"
        else:
            seed = f"_dot({grad(c, QUERY)}, tl.trans({var(x, KEY)}), DOT_DTYPE, DOT_PRECISION)"
        backprop.seed(a, emitter.pair, emitter.kept(seed, "0.0"))
    backprop.through(plan.pair_values, emitter.pair, stop=stop)
    return backprop


@dataclass(frozen=True)
class _Share:
    """A value's cotangent from the pair tiles, summed over a kernel's loop: `acc_d<x> += dot`
    (contractions, q k^T scores); a score op's (`split`) has accumulators of its own, the
    product and a per-row sum (`acc_<s>`, `<s>_row`), and its cotangent after the loop is the
    registry's ScoreVJP.finish of them and the own rows."""

    x: str  # the token value the share belongs to
    dot: str  # added to the accumulator at every block
    score: str | None = None  # a score op's share: its node
    row: str | None = None  # ... and the per-pair term summed over the block's other side
    finish: str | None = None  # ... and its cotangent from {acc}, {row}, {x} after the loop

    def updates(self) -> list[str]:
        if self.score is None:
            return [f"{accumulator(self.x)} += {self.dot}"]
        return [f"acc_{self.score} += {self.dot}", f"{self.score}_row += tl.sum({self.row}, 1)"]


def _score_grads(ir: IR, emitter: Emitter, plan: BackwardSchedule, backprop: Backprop, left: bool) -> list[_Share]:
    """The shares of the score sides reached: the query side (left) accumulates over keys, the
    key side over queries. A kernel holding its tiles transposed (key x query) has the key side
    as its tile's rows; a score op's rule (ScoreVJP) is for the side whose rows the tile's are."""
    pair = emitter.pair
    result = []
    for s in plan.pair_values:
        node = ir.node(s)
        if not is_score(ir, s) or not backprop.has(s, pair):
            continue
        x, y = node.operands
        ds = emitter.kept(grad(s, pair), "0.0")
        op = OPS[node.op]
        if op.kind is OpKind.PRODUCT:  # s = x y^T
            if left:
                result.append(_Share(x, f"_dot({ds}, {var(y, KEY)}, DOT_DTYPE, DOT_PRECISION)"))
            elif emitter.transposed:  # ds^T held as it is
                result.append(_Share(y, f"_dot({ds}, {emitter.head_masked(x, QUERY)}, DOT_DTYPE, DOT_PRECISION)"))
            else:
                result.append(_Share(y, f"_dot(tl.trans({ds}), {emitter.head_masked(x, QUERY)}, DOT_DTYPE, DOT_PRECISION)"))
            continue
        assert left != emitter.transposed, "a score op's rule is for the side whose rows the pair tile's are"
        rule = op.triton_vjp
        own, other = (y, var(x, QUERY)) if emitter.transposed else (x, var(y, KEY))
        holes = dict(s=var(s, pair), ds=ds, y=other)
        result.append(_Share(own, f"_dot({rule.tile.format(**holes)}, {rule.other.format(**holes)}, DOT_DTYPE, DOT_PRECISION)",
                             score=s, row=rule.row.format(**holes), finish=rule.finish))
    return result


def _share_accumulators(shares: list[_Share], block: str) -> tuple[list[str], list[str]]:
    """(the values with a plain accumulator, its init lines with the score ops' own)."""
    plain = list(dict.fromkeys(sh.x for sh in shares if sh.score is None))
    init = [B.GRAD_ACCUMULATOR_INIT.format(x=x, block=block) for x in plain]
    for sh in shares:
        if sh.score is not None:
            init += [f"acc_{sh.score} = tl.zeros([{block}, HEAD_DIM_PAD], tl.float32)", f"{sh.score}_row = tl.zeros([{block}], tl.float32)"]
    return plain, init


def _seed_shares(backprop: Backprop, shares: list[_Share], rows: str) -> None:
    """After the loop: each value's cotangent from its accumulators."""
    for x in dict.fromkeys(sh.x for sh in shares if sh.score is None):
        backprop.seed(x, rows, accumulator(x))
    for sh in shares:
        if sh.score is not None:
            backprop.seed(sh.x, rows, sh.finish.format(x=var(sh.x, rows), acc=f"acc_{sh.score}", row=f"{sh.score}_row"))


def _prepare_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
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
        body += _softmax_passes(sched, emitter, plan)
    body.insert(0, T.section("query-side values, saved statistics and cotangents", query_values))
    return _kernel(KernelRole.BWD_PREPARE, emitter, T.Program.QUERY_BLOCK, "".join(body))


def _softmax_passes(sched: Schedule, emitter: Emitter, plan: BackwardSchedule) -> list[str]:
    """Prepare's passes over key blocks, one per nesting level of the softmaxes over keys:
    delta = sum_j P_ij dP_ij (unless the online softmax has it already) and, with fp32
    inputs, the row's dominant key j* and dS there (backward_template.STAR_*).

    A softmax of a softmax: dP of the inner one comes back through the outer one, which
    needs the outer delta (and dS at j*), so the passes go from the outermost level
    (nearest the contractions) in, each back through the levels already done."""
    ir = sched.ir
    init = _statistics_loads(emitter, plan, False)
    levels = plan.softmax_levels or (plan.softmaxes,)  # an online softmax has no statistics pass
    passes = []
    for depth in reversed(range(len(levels))):
        level = levels[depth]
        below = _downstream_of(ir, level, plan.pair_values)
        sums = [s for s in level if s != plan.online]  # delta still to be summed here
        # a pass that only finds j* (the online softmax's delta is known) runs for fp32 only
        stable = (lambda lines: static_if("STABLE_SOFTMAX_GRAD", lines)) if sums else (lambda lines: lines)

        def sections(mask: Mask, level=level, below=below, sums=sums, stable=stable) -> list:
            with emitter.blocks(mask, KEY):
                key_values = _loop_key_values(emitter, sched)
                pair_values = _emit_all(emitter, plan.pair_values, PAIR)
                pair = _pair_backprop(ir, emitter, plan, stop=lambda n: n not in below or n in level)
                reached = [s for s in level if pair.has(s, PAIR)]  # the others' dP is 0
                stars = [B.STAR_UPDATE.format(s=s, z=_base2_scores(emitter, s), p=var(s, PAIR)) for s in reached]
                update_title = "accumulate delta, and the terms beside the largest score" if sums else "the terms beside the largest score"
                return [
                    ("key-side values", key_values),
                    ("pair values (recomputed)", pair_values),
                    ("cotangents of the pair values", pair.lines),
                    (update_title, [B.DELTA_UPDATE.format(s=s, p=var(s, PAIR)) for s in sums if s in reached] + stable(stars)),
                ]

        finish = [emitter.access(B.STORE_DELTA, s=s, at=_row_stat_at(plan, s)) for s in sums]
        finish += stable([emitter.access(B.STAR_FINISH, s=s, **_star_at(plan, s)) for s in level])
        title = "pass over key blocks: softmax row terms delta = sum_j P dP, and dS at the largest score"
        if not sums:
            title = "pass over key blocks: dS at each row's largest score"
        if len(levels) > 1:
            title += f" (nesting level {depth + 1}: {', '.join(level)})"
        loop = T.BACKWARD_KEY_LOOP.render_split(
            title,
            init=init + [B.DELTA_INIT.format(s=s) for s in sums] + stable([B.STAR_INIT.format(s=s) for s in level]),
            sections=sections,
            finish=finish,
        )
        passes.append(loop if sums else "\n    if STABLE_SOFTMAX_GRAD:\n" + indent([loop.lstrip("\n")], 4))
        init = []
    return passes


def _loop_key_values(emitter: Emitter, sched: Schedule) -> list[str]:
    """The lines of the key-side values a loop over key blocks computes for each block, those
    of the forward's key-rows kernel read from its buffer (the key-block kernel computes its
    own keys once, before its loop)."""
    with emitter.reading_key_rows(sched.key_rows):
        return _emit_all(emitter, key_values_computed(sched, sched.attention.key_passes[-1]), KEY)


def _base2_scores(emitter: Emitter, softmax: str) -> str:
    """A softmax's scores in its base-2 units, c2 y (emit.Emitter.softmax_input), whose row
    max is the row's largest score."""
    _, holes = emitter.softmax_input(softmax)
    y = var(emitter.scaled(emitter.ir.node(softmax).operands[0])[0], emitter.pair)
    return f"({y} * {holes['c2']})"


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
    return [emitter.access(B.LOAD_CONTRACTION_GRAD, c=c, at=_contraction_at(plan, c), mask=emitter.row_mask(QUERY)) for c in plan.contractions]


def _input_grad_stores(emitter: Emitter, backprop: Backprop, rows: str, held: str, written: set[str]) -> list[str]:
    """Each input's gradient on the rows `held` (rows_m or rows_n): stored by the first kernel
    that writes it, added by a later one (`written`: the inputs earlier kernels wrote)."""
    lines = []
    for n in ("q", "k", "v"):
        if backprop.has(n, rows):
            piece = B.ADD_TO_OWN_ROWS if n in written else B.STORE_OWN_ROWS
            at = f"head_offset + {held} + offs_d[None, :]"
            lines.append(emitter.access(piece, pointer=f"d{n}_ptr", var=f"d{n}", at=at, rows=held, grad=grad(n, rows)))
            written.add(n)
    return lines


def _keys_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
    """Per key block, over the query blocks, its pair tiles held key x query (FlashAttention-2's
    dK, dV kernel: the key block is the M side of every product)."""
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds, transposed=True)

    def body(mask: Mask):
        """The loop body's sections for blocks masked by `mask`, and its shares."""
        with emitter.blocks(mask, QUERY):
            query_values = _emit_all(emitter, plan.score_query_values, QUERY) + _statistics_loads(emitter, plan, True)
            query_values += _contraction_grad_loads(emitter, plan)
            pair_values = _emit_all(emitter, plan.pair_values, emitter.pair)
            pair = _pair_backprop(ir, emitter, plan)
            shares = _key_shares(ir, emitter, plan, pair)
            sections = [
                ("query-side values, saved statistics and cotangents", query_values),
                ("pair values (recomputed), key x query", pair_values),
                ("cotangents of the pair values", pair.lines),
                ("accumulate the key-side cotangents over queries", [line for sh in shares for line in sh.updates()]),
            ]
        return sections, shares

    # Before the loop, the key-side values it reads (those of the forward's key-rows kernel read
    # from its buffer); the values needed after it (the score ops' own rows, the key-side
    # chains) are computed again there: held through the loop, each [BLOCK_N, d] value would
    # take registers the loop needs.
    key_values = _column_loads(emitter, sched, _columns_in(plan, plan.key_values, plan.score_query_values))
    key_values += _loop_key_values(emitter, sched)
    shares = body(Mask.EDGE)[1]
    plain, init = _share_accumulators(shares, "BLOCK_N")
    kept = [accumulator(x) for x in plain] + [name for sh in shares if sh.score for name in (f"acc_{sh.score}", f"{sh.score}_row")]
    loop = T.QUERY_LOOP.render_split(
        "pass over query blocks: key-side cotangents",
        init=init,
        sections=lambda mask: body(mask)[0],
        # the whole blocks did not mask padded keys: their rows reached only their own accumulators
        finish=static_if("HAS_MASK", [f"{a} = tl.where(key_ok{'[:, None]' if not a.endswith('_row') else ''}, {a}, 0.0)" for a in kept]),
    )
    body_text = T.section("key-side values", key_values) + loop
    groups = _store_groups(ir, sched.kinds, shares)
    if plan.key_chains:  # attention_bwd_key_rows goes on from here
        cotangents = key_side_cotangents(sched, plan)
        lines = []
        for group in groups:
            key_backprop = Backprop(ir, emitter)
            _seed_shares(key_backprop, group, KEY)
            lines += _emit_all(emitter, token_closure(ir, sched.kinds, [sh.x for sh in group if sh.score]), KEY) + key_backprop.lines
            lines += [emitter.access(B.STORE_KEY_GRAD, at=T.token_rows_at(cotangents.index(x), len(cotangents), "rows_n"), grad=grad(x, KEY))
                      for x in dict.fromkeys(sh.x for sh in group)]
        body_text += T.section("the cotangents of the key-side values the loop read, for attention_bwd_key_rows", lines)
    else:  # inputs, transposed or not: their cotangents are the inputs' own
        key_grads = []
        for group in groups:
            key_backprop = Backprop(ir, emitter)
            _seed_shares(key_backprop, group, KEY)
            key_backprop.through(plan.key_values, KEY, stop=lambda n: n in plan.column_softmaxes)
            key_grads += _emit_all(emitter, token_closure(ir, sched.kinds, [sh.x for sh in group if sh.score]), KEY) + key_backprop.lines
            key_grads += _column_grad_adds(emitter, sched, key_backprop, KEY, "rows_n")
            key_grads += _input_grad_stores(emitter, key_backprop, KEY, "rows_n", written)
        body_text += T.section("back to the inputs' key rows", key_grads)
    return _kernel(KernelRole.BWD_KEYS, emitter, T.Program.KEY_BLOCK, body_text)


def _store_groups(ir: IR, kinds: dict, shares: list[_Share]) -> list[list[_Share]]:
    """The shares in groups that reach no input in common (each group's cotangents are stored
    on their own), those made of accumulators alone first: their [BLOCK_N, d] accumulators
    are stored before a score op's own rows are read again after the loop for the others."""
    groups: list[tuple[set, list]] = []  # (the token values reached, the shares)
    for sh in shares:
        reached = set(token_closure(ir, kinds, [sh.x]))
        joined = [g for g in groups if g[0] & reached]
        for g in joined:
            groups.remove(g)
            reached |= g[0]
        groups.append((reached, [s for g in joined for s in g[1]] + [sh]))
    ordered = [g[1] for g in groups]
    return sorted(ordered, key=lambda group: any(sh.score for sh in group))


def _key_shares(ir: IR, emitter: Emitter, plan: BackwardSchedule, pair: Backprop) -> list[_Share]:
    """The key-block kernel's shares: the contractions' values (P^T dC), the key side of the scores."""
    shares = [
        _Share(x, f"_dot({emitter.kept(var(a, emitter.pair), '0.0')}, {grad(c, QUERY)}, DOT_DTYPE, DOT_PRECISION)")
        for c in plan.contractions
        for a, x in [ir.node(c).operands]
    ]
    return shares + _score_grads(ir, emitter, plan, pair, left=False)


def key_side_cotangents(sched: Schedule, plan: BackwardSchedule) -> tuple[str, ...]:
    """The key-side values whose cotangents the key-block kernel sums over queries (the
    contractions' values, the key side of the scores), in its order."""
    emitter = Emitter(sched.ir, sched.kinds, transposed=True)
    pair = _pair_backprop(sched.ir, emitter, plan)
    return tuple(dict.fromkeys(sh.x for sh in _key_shares(sched.ir, emitter, plan, pair)))


def _key_rows_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
    """After the key-block kernel, per token block: from the cotangents it left of the values its
    loop read as keys, back through the key-side values to the inputs."""
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    accumulated = key_side_cotangents(sched, plan)
    key_backprop = Backprop(ir, emitter)
    for i, x in enumerate(accumulated):
        key_backprop.seed(x, KEY, emitter.access(B.LOAD_KEY_GRAD, at=T.token_rows_at(i, len(accumulated), "rows_n")))
    key_backprop.through(plan.key_values, KEY, stop=lambda n: n in plan.column_softmaxes)
    values = _column_loads(emitter, sched, _columns_in(plan, plan.key_values))
    values += _emit_all(emitter, plan.key_values, KEY) + key_backprop.lines
    values += _column_grad_adds(emitter, sched, key_backprop, KEY, "rows_n")
    return _token_block_kernel(
        KernelRole.BWD_KEY_ROWS, emitter, "key rows: back from the key-block kernel's cotangents", values,
        _input_grad_stores(emitter, key_backprop, KEY, "rows_m", written),
    )


def _queries_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)

    def body(mask: Mask):
        with emitter.blocks(mask, KEY):
            key_values = _loop_key_values(emitter, sched)
            pair_values = _emit_all(emitter, plan.pair_values, PAIR)
            pair = _pair_backprop(ir, emitter, plan)
            shares = _score_grads(ir, emitter, plan, pair, left=True)
            sections = [
                ("key-side values", key_values),
                ("pair values (recomputed)", pair_values),
                ("cotangents of the pair values", pair.lines),
                ("accumulate the query-side cotangents over keys", [line for sh in shares for line in sh.updates()]),
            ]
        return sections, shares

    shares = body(Mask.EDGE)[1]
    _, init = _share_accumulators(shares, "BLOCK_M")
    loop = T.BACKWARD_KEY_LOOP.render_split(
        "pass over key blocks: query-side cotangents of the scores",
        init=init,
        sections=lambda mask: body(mask)[0],
    )
    # after the loop: the post values' share, then back through the query-side chains
    query_backprop = Backprop(ir, emitter)
    _seed_shares(query_backprop, shares, QUERY)
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
    tail += _input_grad_stores(emitter, query_backprop, QUERY, "rows_m", written)
    query_values = _global_value_lines(emitter, sched, plan)
    query_values += _column_loads(emitter, sched, _columns_in(plan, plan.query_values, plan.key_values))
    query_values += _emit_all(emitter, plan.query_values, QUERY)
    query_values += _statistics_loads(emitter, plan, True) + _contraction_grad_loads(emitter, plan)
    body_text = T.section("query-side values, saved statistics and cotangents", query_values) + loop
    body_text += T.section("the post values' share, and back through the query-side values to the inputs' query rows", tail)
    return _kernel(KernelRole.BWD_QUERIES, emitter, T.Program.QUERY_BLOCK, body_text)


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


def _global_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
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


def _query_rows_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    # a softmax over tokens that the query rows read: its delta term is added here
    columns = [s for s in plan.column_softmaxes if s in plan.query_values]
    query = _query_backprop(ir, emitter, plan, global_cotangents=False, delta_terms=columns)
    values = _global_value_lines(emitter, sched, plan) + _column_loads(emitter, sched, columns, with_delta=columns)
    values += _emit_all(emitter, plan.query_values, QUERY) + query.lines
    return _token_block_kernel(
        KernelRole.BWD_QUERY_ROWS, emitter, "query rows: back from d_out", values, _input_grad_stores(emitter, query, QUERY, "rows_m", written),
    )


def _state_rows_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
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
        _input_grad_stores(emitter, keys, KEY, "rows_m", written),
    )


def _column_rows_kernel(sched: Schedule, plan: BackwardSchedule, written: set[str]) -> tuple[str, tuple[str, ...]]:
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
        _input_grad_stores(emitter, rows, KEY, "rows_m", written),
    )
