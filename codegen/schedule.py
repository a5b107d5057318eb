"""The scheduler: which kernels, passes and loops compute an attention graph (SPEC 3, Schedule).

Every node is classified by index space and by what it needs, into a NodeKind (below): token
values computed for whichever rows a kernel holds, pair tiles in registers, contractions over
the keys, values after them, and the reduction kernel's values over all tokens, which runs
first. The op's kind in the registry (`Op.kind`) says which rules apply.

Passes over the key blocks: a softmax whose result reaches the contractions only through
linear ops gets online (rescaled) normalisation in the one accumulation pass; otherwise
every softmax gets its row statistics in a pass of its own level first (a softmax of a
softmax needs two). A token value after a contraction (or built from a global value)
that other tokens read (as keys, in a score, or in a reduction over tokens) cannot be held
by one kernel: the schedule says which (`needs_stage`), and stages.py gives it a stage of
its own. Anything else (a contraction of two pair values, a transposed pair, causal over a
graph that is not row-local) is outside the fused class: the graph runs on the reference
executor and the schedule says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from genomec.genome.ops import HEAD, OPS, TOKENS, OpKind, TextEnum
from genomec.ir.analysis import is_score, row_local
from genomec.ir.graph import INPUT_OP, IR, PAIR_SPACE, TOKEN_SPACE


class NodeKind(TextEnum):
    """What the scheduler makes of a node (`Schedule.kinds`).

    PRE             token value ([N,d], [d,N]) pointwise in the token: computed from the inputs
                    (and global values) for whichever rows a kernel holds, query or key rows
    PAIR            [N,N] value, only in registers, one (query block, key block) tile at a time:
                    scores (cos, euc, a product of a query-side and a key-side value),
                    elementwise ops, and softmax over keys, which needs row statistics (max, sum)
    CONTRACTION     matmul(pair, pre): accumulated over key blocks into [BLOCK_M, d]
    POST            token value that depends on a contraction: query rows, after the key loop
    COLUMN_SOFTMAX  softmax over tokens of a [d,N] value: its column statistics (max, sum) come
                    from the reduction kernel; otherwise used like a pre value
    REDUCTION       [d,N] @ [N,d] -> [d,d], accumulated over all tokens by the reduction kernel
    GLOBAL          [d,d] value computed from the reductions
    """

    PRE = "pre"
    PAIR = "pair"
    CONTRACTION = "contraction"
    POST = "post"
    COLUMN_SOFTMAX = "colsoftmax"
    REDUCTION = "reduction"
    GLOBAL = "global"


# The values a kernel computes for the rows it holds (query rows, key rows or token rows).
TOKEN_KINDS = (NodeKind.PRE, NodeKind.COLUMN_SOFTMAX)


class PassKind(TextEnum):
    """What one loop over the tokens does (`genomec compile` lists them per kernel)."""

    STATISTICS = "statistics"  # over key blocks: row max and sum of softmaxes over keys
    ONLINE = "online"  # over key blocks: the contractions, one softmax normalised online
    ACCUMULATE = "accumulate"  # over key blocks: the contractions
    COLUMN_STATISTICS = "column statistics"  # reduction kernel: column max and sum of softmaxes over tokens
    REDUCE = "reduce"  # reduction kernel: the [d,d] reductions


class KernelRole(TextEnum):
    """The kernels of a generated module; the value is the kernel's name (in the source, the
    cache entry and the manifest)."""

    REDUCE_TOKENS = "reduce_tokens"  # forward, per (batch, head): the reductions over all tokens
    KEY_ROWS = "key_rows"  # forward, per token block: the key-side values the passes over keys read
    ATTENTION = "attention_fwd"  # forward, per query block
    # the backward (backward_plan.py, backward_kernels.py)
    BWD_PREPARE = "attention_bwd_prepare"  # per query block: contractions' cotangents, softmax row terms
    BWD_KEYS = "attention_bwd_keys"  # per key block: the key side
    BWD_KEY_ROWS = "attention_bwd_key_rows"  # per token block: back through the key-side values, after BWD_KEYS
    BWD_QUERIES = "attention_bwd_queries"  # per query block: the query side
    BWD_GLOBAL = "attention_bwd_global"  # per (batch, head): cotangents of the [d,d] states, column terms
    BWD_QUERY_ROWS = "attention_bwd_query_rows"  # per token block: the query rows' share (no key loop)
    BWD_STATE_ROWS = "attention_bwd_state_rows"  # per token block: the reductions' operands' share
    BWD_COLUMN_ROWS = "attention_bwd_column_rows"  # per token block: the softmaxes over tokens, next to a key loop


class OutsideFusedClass(Exception):
    """The graph cannot be fused; the message says which node and why."""


class NeedsStage(OutsideFusedClass):
    """A per-token value that depends on a reduction over tokens is read where one kernel
    cannot hold it for every token (as keys, by a score or inside another reduction over
    tokens): a stage of its own must write it out first (stages.py)."""

    def __init__(self, node_id: str, message: str):
        super().__init__(message)
        self.node_id = node_id


@dataclass(frozen=True)
class KeyPass:
    """One loop over the key blocks of a query block."""

    kind: PassKind  # STATISTICS, ONLINE or ACCUMULATE
    softmaxes: tuple[str, ...] = ()  # whose statistics this pass computes
    key_values: tuple[str, ...] = ()  # pre token values computed for the key rows
    pair_values: tuple[str, ...] = ()  # pair values computed per tile, in order
    contractions: tuple[str, ...] = ()  # accumulated in this pass


@dataclass(frozen=True)
class ReductionKernel:
    """One program per (batch, head): loops over all tokens for the global values."""

    name: KernelRole
    column_softmaxes: tuple[str, ...]  # softmax over tokens of [d,N] values: column max/sum
    statistics_values: tuple[str, ...]  # token values the statistics pass computes
    reductions: tuple[str, ...]  # [d,N] @ [N,d] -> [d,d], accumulated over tokens
    reduction_values: tuple[str, ...]  # token values the accumulation pass computes

    @property
    def passes(self) -> list[PassKind]:
        return ([PassKind.COLUMN_STATISTICS] if self.column_softmaxes else []) + ([PassKind.REDUCE] if self.reductions else [])


@dataclass(frozen=True)
class KeyRowsKernel:
    """One program per token block, before the attention kernel: the key-side values that
    the passes over keys would otherwise compute again for every query block (per-token
    transforms of k and v that only products read), written once as token rows."""

    name: KernelRole
    rows: tuple[str, ...]  # the values written (a buffer of token rows each), read as key rows
    values: tuple[str, ...]  # the token values that compute them, in order

    @property
    def passes(self) -> list[PassKind]:
        return []  # no pass over tokens: each program computes its own rows


@dataclass(frozen=True)
class AttentionKernel:
    """One program per (batch, head, query block)."""

    name: KernelRole
    globals_loaded: tuple[str, ...]  # reductions written by the reduction kernel
    global_values: tuple[str, ...]  # values computed from them ([d,d] ops)
    query_values: tuple[str, ...]  # pre token values computed for the query rows
    key_passes: tuple[KeyPass, ...]
    post_values: tuple[str, ...]  # token values after the contractions, query rows

    @property
    def passes(self) -> list[PassKind]:
        return [p.kind for p in self.key_passes]


@dataclass(frozen=True)
class Schedule:
    ir: IR
    fused: bool
    reason: str | None = None  # why not fused
    needs_stage: str | None = None  # not fused because this value needs a stage of its own
    reduction: ReductionKernel | None = None
    key_rows: KeyRowsKernel | None = None
    attention: AttentionKernel | None = None
    column_softmaxes: tuple[str, ...] = ()  # indices into the statistics buffer
    reductions: tuple[str, ...] = ()  # indices into the global buffer
    kinds: dict[str, NodeKind] = field(default_factory=dict)

    @property
    def kernels(self) -> list:
        return [k for k in (self.reduction, self.key_rows, self.attention) if k is not None]

    def stages(self) -> list[dict]:
        """What `genomec compile` reports: one stage per kernel, in launch order."""
        return [{"kernel": k.name, "grid": _grid_text(k), "passes": k.passes} for k in self.kernels]


def _grid_text(kernel) -> str:
    if isinstance(kernel, ReductionKernel):
        return "batch x heads"
    return "batch x heads x token blocks" if isinstance(kernel, KeyRowsKernel) else "batch x heads x query blocks"


def schedule(ir: IR) -> Schedule:
    """Plan the kernels of a simplified IR, or say why it falls back."""
    try:
        return _plan(ir)
    except NeedsStage as e:
        return Schedule(ir, fused=False, reason=str(e), needs_stage=e.node_id)
    except OutsideFusedClass as e:
        return Schedule(ir, fused=False, reason=str(e))


# -- classification ----------------------------------------------------------------------


def _classify(ir: IR) -> dict[str, NodeKind]:
    """node -> its NodeKind, or raise."""
    kinds: dict[str, NodeKind] = {}
    for node_id, node in ir.nodes():
        if node.op == INPUT_OP:
            kinds[node_id] = NodeKind.PRE
            continue
        operand_kinds = [kinds[o] for o in node.operands]
        shapes = [ir.node(o).shape for o in node.operands]
        op = OPS[node.op]
        where = f"node '{node_id}' ({node})"
        left_space = ir.node(node.operands[0]).space

        if node.space == PAIR_SPACE:
            if is_score(ir, node_id):  # cos, euc, [N,d] @ [d,N]
                _raise_for_stage(ir, kinds, node.operands, where, "the score operand")
                if any(k not in TOKEN_KINDS for k in operand_kinds):
                    raise OutsideFusedClass(f"{where}: scores need per-token operands (a value after a contraction would need a second stage)")
                if op.kind is OpKind.PRODUCT and not (shapes[0] == (TOKENS, HEAD) and shapes[1] == (HEAD, TOKENS)):
                    raise OutsideFusedClass(f"{where}: unsupported score shapes")
                kinds[node_id] = NodeKind.PAIR
            elif op.kind in (OpKind.NORMALISATION, OpKind.ELEMENTWISE):
                if any(k != NodeKind.PAIR for k in operand_kinds):
                    raise OutsideFusedClass(f"{where}: mixes pair and non-pair values")
                kinds[node_id] = NodeKind.PAIR
            else:  # transpose, or matmul of two pair values
                raise OutsideFusedClass(f"{where}: {node.op} of pair values ([N,N] x [N,N] or transposed) is not fusable")
        elif node.space == TOKEN_SPACE:
            if op.kind is OpKind.PRODUCT and left_space == PAIR_SPACE:
                _raise_for_stage(ir, kinds, node.operands[1:], where, "the contracted value")
                if operand_kinds[1] not in TOKEN_KINDS or shapes[1] != (TOKENS, HEAD):
                    raise OutsideFusedClass(f"{where}: a contraction over keys of a value that is not per-token pointwise")
                kinds[node_id] = NodeKind.CONTRACTION
            elif op.kind is OpKind.PRODUCT and left_space == TOKEN_SPACE and shapes[0][1] == TOKENS:
                raise OutsideFusedClass(f"{where}: contraction over queries (a [d,N] @ [N,N] product) is not fusable")
            elif op.kind is OpKind.NORMALISATION and op.reduces_tokens(*shapes):
                # softmax over tokens of a [d,N] value: column statistics from the reduction kernel
                _raise_for_stage(ir, kinds, node.operands, where, "the value", globals_ok=False, with_statistics=True)
                if operand_kinds[0] != NodeKind.PRE or _needs_global(ir, kinds, node.operands[0], with_statistics=True):
                    raise OutsideFusedClass(f"{where}: softmax over tokens of a value that needs another reduction")
                kinds[node_id] = NodeKind.COLUMN_SOFTMAX
            elif op.kind is OpKind.SCORE:
                raise OutsideFusedClass(f"{where}: {node.op} with a [N,N] operand is not fusable")
            elif any(k in (NodeKind.POST, NodeKind.CONTRACTION) for k in operand_kinds):
                kinds[node_id] = NodeKind.POST
            else:
                kinds[node_id] = NodeKind.PRE
        else:  # GLOBAL_SPACE
            if op.kind is OpKind.PRODUCT and left_space == TOKEN_SPACE:
                _raise_for_stage(ir, kinds, node.operands, where, "the reduced value", globals_ok=False)
                if any(k not in TOKEN_KINDS for k in operand_kinds) or any(
                    _needs_global(ir, kinds, o, with_statistics=False) for o in node.operands
                ):
                    raise OutsideFusedClass(f"{where}: a reduction over tokens of a value that needs a contraction or another reduction")
                kinds[node_id] = NodeKind.REDUCTION
            elif op.kind is OpKind.SCORE:
                raise OutsideFusedClass(f"{where}: {node.op} over tokens into [d,d] is not fusable")
            else:
                kinds[node_id] = NodeKind.GLOBAL
    return kinds


def _raise_for_stage(ir: IR, kinds: dict, operands, where: str, role: str, globals_ok: bool = True, with_statistics: bool = False) -> None:
    """Raise NeedsStage for the first token operand this kernel cannot hold for every token:
    a value after a contraction, or (unless `globals_ok`) one built from a global value (or,
    `with_statistics`, from column statistics) that the reduction kernel is still computing."""
    for operand in operands:
        if ir.node(operand).space != TOKEN_SPACE:
            continue
        if kinds[operand] in (NodeKind.POST, NodeKind.CONTRACTION) or not globals_ok and _needs_global(ir, kinds, operand, with_statistics):
            raise NeedsStage(operand, f"{where}: {role} '{operand}' depends on a reduction over tokens (it needs a stage of its own)")


def _needs_global(ir: IR, kinds: dict, node_id: str, with_statistics: bool) -> bool:
    """True when the value reads a global value (or, with_statistics, column statistics)."""
    wanted = (NodeKind.REDUCTION, NodeKind.GLOBAL) + ((NodeKind.COLUMN_SOFTMAX,) if with_statistics else ())
    return any(kinds.get(a) in wanted for a in nx.ancestors(ir.graph, node_id) | {node_id})


def token_closure(ir: IR, kinds: dict[str, NodeKind], roots, loaded=frozenset()) -> tuple[str, ...]:
    """The pre token values (and column softmaxes) needed to compute `roots`, in order;
    stops at global values, which are loaded, and at `loaded` values (read from a buffer,
    not computed from their operands). (A kernel's values for the rows it holds: the
    backward recomputes them the same way, so it is public; it reads the scheduler's kinds,
    so it lives here rather than in ir.analysis.)"""
    needed: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in needed or kinds[n] not in TOKEN_KINDS:
            continue
        needed.add(n)
        if n not in loaded:
            stack.extend(ir.node(n).operands)
    return tuple(n for n in ir.order() if n in needed)


def key_values_computed(sched: Schedule, key_pass: KeyPass) -> tuple[str, ...]:
    """The key-side values a pass over key blocks computes (or, the key-rows kernel's,
    reads) for each key block: what its scores and contractions read as keys."""
    loaded = sched.key_rows.rows if sched.key_rows else ()
    return token_closure(sched.ir, sched.kinds, _key_operands(sched.ir, key_pass.pair_values, key_pass.contractions), loaded)


def _key_rows(ir: IR, kinds: dict, key_passes) -> KeyRowsKernel | None:
    """The key-side values worth computing once per token (`KeyRowsKernel`): the key side
    of the passes' scores and contractions that is computed (more than an input, transposed
    or not), read by products only (a matmul takes them in the inputs' dtype, as it would
    round them itself), and needs no global value."""
    def computed(n: str) -> bool:
        return any(ir.node(a).op not in (INPUT_OP, "transpose") for a in token_closure(ir, kinds, [n]))

    def read_by_products(n: str) -> bool:
        consumers = [c for c, node in ir.nodes() if n in node.operands]
        return all(ir.node(c).op == "matmul" for c in consumers)

    roots = dict.fromkeys(r for p in key_passes for r in _key_operands(ir, p.pair_values, p.contractions))
    rows = tuple(r for r in roots if computed(r) and read_by_products(r) and not _needs_global(ir, kinds, r, with_statistics=True))
    if not rows:
        return None
    return KeyRowsKernel(KernelRole.KEY_ROWS, rows, token_closure(ir, kinds, rows))


def _pair_closure(ir: IR, kinds: dict, roots) -> tuple[str, ...]:
    needed: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in needed or kinds[n] != NodeKind.PAIR:
            continue
        needed.add(n)
        stack.extend(ir.node(n).operands)
    return tuple(n for n in ir.order() if n in needed)


def _key_operands(ir: IR, pair_values, contractions) -> list[str]:
    """Token values a key block needs: the key side of scores and contractions."""
    roots = [ir.node(p).operands[1] for p in pair_values if is_score(ir, p)]
    return roots + [ir.node(c).operands[1] for c in contractions]


def softmaxes_over_keys(ir: IR, kinds: dict[str, NodeKind]) -> list[str]:
    """The pair values that normalise over the keys (softmax on the pair tiles), in order."""
    return [n for n, node in ir.nodes() if kinds.get(n) == NodeKind.PAIR and OPS[node.op].kind is OpKind.NORMALISATION]


def _softmax_levels(ir: IR, kinds: dict) -> list[list[str]]:
    """Softmaxes over keys grouped by nesting depth (a softmax of a softmax is level 2)."""
    softmaxes = softmaxes_over_keys(ir, kinds)
    level: dict[str, int] = {}
    for node_id, node in ir.nodes():
        if kinds.get(node_id) != NodeKind.PAIR:
            continue
        below = max((level[o] for o in node.operands if o in level), default=0)
        level[node_id] = below + (1 if node_id in softmaxes else 0)
    depth = max((level[s] for s in softmaxes), default=0)
    return [[s for s in softmaxes if level[s] == d] for d in range(1, depth + 1)]


def _online_softmax(ir: IR, kinds: dict, contractions) -> str | None:
    """The softmax to normalise online, if there is exactly one and everything between it
    and the contractions is linear and homogeneous (neg, scale, add, sub), and every
    contraction reads it: then dividing the accumulators by the row sum at the end is exact."""
    softmaxes = softmaxes_over_keys(ir, kinds)
    if len(softmaxes) != 1:
        return None
    (s,) = softmaxes
    downstream = {s}
    for node_id, node in ir.nodes():
        if node_id == s or kinds.get(node_id) != NodeKind.PAIR or not any(o in downstream for o in node.operands):
            continue
        op = OPS[node.op]
        if not (op.elementwise and op.linear and all(o in downstream for o in node.operands)):
            return None
        downstream.add(node_id)
    if all(ir.node(c).operands[0] in downstream for c in contractions):
        return s
    return None


# -- planning ------------------------------------------------------------------------


def _plan(ir: IR) -> Schedule:
    if ir.causal and not row_local(ir):
        raise OutsideFusedClass("causal, and a value that depends on a prefix reaches other rows (not row-local)")
    kinds = _classify(ir)
    order = [n for n, _ in ir.nodes()]
    of_kind = lambda *ks: tuple(n for n in order if kinds[n] in ks)  # noqa: E731

    column_softmaxes = of_kind(NodeKind.COLUMN_SOFTMAX)
    reductions = of_kind(NodeKind.REDUCTION)
    contractions = of_kind(NodeKind.CONTRACTION)
    post_values = of_kind(NodeKind.POST)

    reduction = None
    if column_softmaxes or reductions:
        reduction = ReductionKernel(
            name=KernelRole.REDUCE_TOKENS,
            column_softmaxes=column_softmaxes,
            statistics_values=token_closure(ir, kinds, [ir.node(s).operands[0] for s in column_softmaxes]),
            reductions=reductions,
            reduction_values=token_closure(ir, kinds, [o for r in reductions for o in ir.node(r).operands]),
        )

    # Query rows: the query side of scores, pre operands of post values, a pre output.
    pair_values_all = of_kind(NodeKind.PAIR)
    query_roots = [ir.node(p).operands[0] for p in pair_values_all if is_score(ir, p)]
    query_roots += [o for p in post_values for o in ir.node(p).operands if kinds[o] in TOKEN_KINDS]
    if kinds[ir.output] in TOKEN_KINDS:
        query_roots.append(ir.output)
    query_values = token_closure(ir, kinds, query_roots)

    key_passes = []
    online = _online_softmax(ir, kinds, contractions)
    levels = [] if online else _softmax_levels(ir, kinds)
    for level in levels:
        pairs = _pair_closure(ir, kinds, [ir.node(s).operands[0] for s in level])
        key_values = token_closure(ir, kinds, _key_operands(ir, pairs, ()))
        key_passes.append(KeyPass(PassKind.STATISTICS, softmaxes=tuple(level), key_values=key_values, pair_values=pairs))
    if contractions:
        pairs = _pair_closure(ir, kinds, [ir.node(c).operands[0] for c in contractions])
        key_values = token_closure(ir, kinds, _key_operands(ir, pairs, contractions))
        key_passes.append(
            KeyPass(
                PassKind.ONLINE if online else PassKind.ACCUMULATE,
                softmaxes=(online,) if online else (),
                key_values=key_values,
                pair_values=pairs,
                contractions=contractions,
            )
        )

    # Global values used by the attention kernel: loaded reductions and what is built on them.
    global_values = of_kind(NodeKind.GLOBAL)
    attention = AttentionKernel(
        name=KernelRole.ATTENTION,
        globals_loaded=reductions,
        global_values=global_values,
        query_values=query_values,
        key_passes=tuple(key_passes),
        post_values=post_values,
    )
    return Schedule(
        ir,
        fused=True,
        reduction=reduction,
        key_rows=_key_rows(ir, kinds, key_passes),
        attention=attention,
        column_softmaxes=column_softmaxes,
        reductions=reductions,
        kinds=kinds,
    )


def format_schedule(sched: Schedule) -> str:
    """`genomec show --stage schedule`: the kernels, their passes and what each computes."""
    if not sched.fused:
        return f"fallback (reference executor): {sched.reason}"
    lines = []
    if sched.reduction:
        r = sched.reduction
        lines.append(f"kernel {r.name}  grid: batch x heads")
        if r.column_softmaxes:
            lines.append(f"  pass column statistics over tokens: {', '.join(r.column_softmaxes)}")
            lines.append(f"    token values: {', '.join(r.statistics_values)}")
        if r.reductions:
            lines.append(f"  pass reduce over tokens: {', '.join(r.reductions)}")
            lines.append(f"    token values: {', '.join(r.reduction_values)}")
    if sched.key_rows:
        k = sched.key_rows
        lines.append(f"kernel {k.name}  grid: batch x heads x token blocks")
        lines.append(f"  key rows written: {', '.join(k.rows)}")
        lines.append(f"    token values: {', '.join(k.values)}")
    a = sched.attention
    lines.append(f"kernel {a.name}  grid: batch x heads x query blocks")
    if a.globals_loaded or a.global_values:
        lines.append(f"  global values: {', '.join(a.globals_loaded + a.global_values)}")
    lines.append(f"  query-side values: {', '.join(a.query_values) or '-'}")
    for p in a.key_passes:
        if p.kind == PassKind.STATISTICS:
            what = f"row statistics of {', '.join(p.softmaxes)}"
        elif p.kind == PassKind.ONLINE:  # the softmax first: the contractions are normalised by its row sums
            what = f"online softmax {p.softmaxes[0]}, contractions {', '.join(p.contractions)}"
        else:
            what = f"accumulate {', '.join(p.contractions)}"
        lines.append(f"  pass over key blocks ({what})")
        loaded = sched.key_rows.rows if sched.key_rows else ()
        key_values = [f"{v} (read)" if v in loaded else v for v in key_values_computed(sched, p)]
        lines.append(f"    key-side values: {', '.join(key_values) or '-'}")
        lines.append(f"    pair values: {', '.join(p.pair_values) or '-'}")
    lines.append(f"  post values: {', '.join(a.post_values) or '-'}")
    lines.append(f"  output: {sched.ir.output}")
    return "\n".join(lines)
