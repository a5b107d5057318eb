"""The emitter: one straight-line Triton assignment per IR node.

Elementwise and score ops come from the registry's Triton spellings (`Op.triton`); the other
kinds of op (`Op.kind`: normalisation, product, layout) have one rule each below. A value is
named after its node and the rows a kernel holds of it:

    t3_i   query rows     [BLOCK_M, HEAD_DIM_PAD]
    t3_j   key rows       [BLOCK_N, HEAD_DIM_PAD]   (a [d,N] value is held transposed)
    t3_ij  pair tile      [BLOCK_M, BLOCK_N]
    t3_ji  pair tile held transposed, key x query [BLOCK_N, BLOCK_M] (the backward's key-block
           kernel: its key block is the M side of every product, as in FlashAttention-2)
    t3_g   global value   [HEAD_DIM_PAD, HEAD_DIM_PAD]

Head-dim columns past HEAD_DIM may hold garbage (sigmoid(0) is not 0); every reduction over
the head dim masks its operand first unless the value is known to be zero there.

Inputs stay in their own dtype (fp16, bf16) where only products read them, so a tensor-core
product takes them as they were loaded; an input that elementwise math reads is converted to
fp32 as it is loaded.

Softmax over keys works in base 2: exp(c y - m) = exp2(c log2(e) y - m') with the row max m'
in base-2 units, and a chain of `scale` and `neg` between the scores y and the softmax is
folded into that one constant (c log2(e)), so a score costs one multiply-add and one `ex2`.
Its log-sum-exp (kept for the backward and for a softmax normalised after its statistics
pass) is in the same units: p = exp2(c log2(e) y - lse').

Masks (which pairs take part) are applied where a block needs them (`Mask`): a loop over key
(or query) blocks runs first over the blocks that are whole, unmasked, then over the blocks
at the end of the sequence or on the causal diagonal with the whole `keep` tile. A key
padding mask (HAS_MASK) reaches the whole blocks as a per-key bias, 0 for a real key and
-inf for a padded one, added to a softmax's scores and compared with 0 elsewhere.
"""

from __future__ import annotations

import contextlib

from genomec.genome.ops import OPS, TOKENS, OpKind
from genomec.ir.analysis import is_score
from genomec.ir.graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE

from .abi import SCALARS
from .forward_template import LOAD_KEY_ROWS
from .template import POINTERS, Access, Mask, token_rows_at

QUERY, KEY, PAIR, PAIR_T, GLOBAL = "i", "j", "ij", "ji", "g"


def var(node_id: str, rows: str) -> str:
    return f"{node_id}_{rows}"


# Online softmax, row statistics and recomputed probabilities in base 2 ({s}: the softmax,
# {y}: its masked scores, {c2}: the folded constant c log2(e), {reduce}: tl.max, or tl.min
# when c < 0, {q}: the row statistics' broadcast over the pair tile).
ONLINE_SOFTMAX = '''\
{s}_max_new = tl.maximum({s}_max, {reduce}({y}, {axis}) * {c2})
{s}_rescale = tl.math.exp2({s}_max - {s}_max_new)
{p} = tl.math.exp2({y} * {c2} - {s}_max_new{q})
{s}_sum = {s}_sum * {s}_rescale + tl.sum({p}, {axis})
{s}_max = {s}_max_new'''
ROW_STATISTICS_UPDATE = '''\
{s}_max_new = tl.maximum({s}_max, {reduce}({y}, {axis}) * {c2})
{s}_sum = {s}_sum * tl.math.exp2({s}_max - {s}_max_new) + tl.sum(tl.math.exp2({y} * {c2} - {s}_max_new{q}), {axis})
{s}_max = {s}_max_new'''
NORMALISED_SOFTMAX = "{p} = tl.math.exp2({y} * {c2} - {s}_lse{q})"


class Emitter:
    """Emits the assignment of a node for a given row set. `kinds` comes from the schedule;
    `online_softmax` is the softmax normalised online in the accumulation pass, if any;
    `transposed` holds pair tiles key x query (`t3_ji`)."""

    def __init__(self, ir: IR, kinds: dict[str, str], online_softmax: str | None = None, transposed: bool = False):
        self.ir = ir
        self.kinds = kinds
        self.online_softmax = online_softmax
        self.pair = PAIR_T if transposed else PAIR  # how this kernel holds its pair tiles
        self.mask = Mask.EDGE  # the block being emitted (`blocks`)
        self.loop_rows: str | None = None  # the rows of a whole block: in range, loaded unmasked
        self.key_rows: tuple[str, ...] = ()  # key-side values read from the key-rows kernel's buffer (`reading_key_rows`)
        self._zero_padded: dict[str, bool] = {}
        self.pointers: set[str] = {"mask_ptr"}  # the buffers of the kernel's text (every prologue reads the mask)

    @property
    def transposed(self) -> bool:
        return self.pair == PAIR_T

    @contextlib.contextmanager
    def blocks(self, mask: Mask, loop_rows: str | None = None):
        """Emit for blocks masked by `mask`; a whole block's rows (`loop_rows`, QUERY or KEY)
        are all in range, so their loads take no row mask."""
        before = self.mask, self.loop_rows
        self.mask, self.loop_rows = mask, (loop_rows if mask is not Mask.EDGE else None)
        try:
            yield
        finally:
            self.mask, self.loop_rows = before

    @contextlib.contextmanager
    def reading_key_rows(self, key_rows):
        """Within the block, read the values of the key-rows kernel (a schedule.KeyRowsKernel,
        or None) from its buffer where key rows are held, instead of computing them."""
        before = self.key_rows
        self.key_rows = tuple(key_rows.rows) if key_rows is not None else ()
        try:
            yield
        finally:
            self.key_rows = before

    # -- buffers --------------------------------------------------------------------------

    def access(self, piece: Access, pointer: str | None = None, **holes) -> str:
        """A template piece that reads or writes a buffer, filled in: the buffer joins the
        kernel's pointer parameters. `pointer` names it where the piece leaves it as {ptr}."""
        pointer = pointer or piece.pointer
        self.pointers.add(pointer)
        return piece.format(ptr=pointer, **holes)

    def params(self) -> tuple[str, ...]:
        """The kernel's parameters: the buffers its text names, in POINTERS order, then the scalars."""
        unknown = self.pointers - set(POINTERS)
        assert not unknown, f"buffers missing from template.POINTERS: {sorted(unknown)}"
        return tuple(p for p in POINTERS if p in self.pointers) + SCALARS

    # -- the pair tile's layout and masks ------------------------------------------------

    def query_row(self, stat: str) -> str:
        """A per-query-row value broadcast over the pair tile."""
        return f"{stat}[None, :]" if self.transposed else f"{stat}[:, None]"

    def key_row(self, stat: str) -> str:
        """A per-key value broadcast over the pair tile."""
        return f"{stat}[:, None]" if self.transposed else f"{stat}[None, :]"

    @property
    def key_axis(self) -> int:
        """The pair tile's axis over keys (what a row statistic of a softmax reduces)."""
        return 0 if self.transposed else 1

    def kept(self, expr: str, other: str) -> str:
        """`expr` where the pair takes part, else `other`, as the block being emitted needs."""
        if self.mask is Mask.EDGE:
            return f"tl.where(keep, {expr}, {other})"
        if self.mask is Mask.PADDING:
            return f"_kept({expr}, keep, {other}, HAS_MASK)"
        return expr

    def row_mask(self, rows: str) -> str:
        """The load mask of a [rows, HEAD_DIM_PAD] tile of QUERY or KEY rows."""
        return "dim_ok" if rows == self.loop_rows else f"rows_{'m' if rows == QUERY else 'n'}_ok & dim_ok"

    # -- helpers ------------------------------------------------------------------------

    def zero_padded(self, node_id: str) -> bool:
        """True when the value is exactly 0 in the head-dim columns past HEAD_DIM."""
        if node_id not in self._zero_padded:
            node = self.ir.node(node_id)
            if node.op == INPUT_OP:
                result = True  # loaded with other=0.0
            elif OPS[node.op].kind is OpKind.NORMALISATION and node.shape[1] != TOKENS:
                result = True  # softmax over the head dim puts exp(-inf) = 0 there
            elif OPS[node.op].zero_preserving and node.space != GLOBAL_SPACE:  # f(0) == 0
                result = all(self.zero_padded(o) for o in node.operands)
            else:
                result = False
            self._zero_padded[node_id] = result
        return self._zero_padded[node_id]

    def head_masked(self, node_id: str, rows: str) -> str:
        """The value with its padded head-dim columns zeroed (for a reduction over d)."""
        name = var(node_id, rows)
        return name if self.zero_padded(node_id) else f"tl.where(dim_ok, {name}, 0.0)"

    def rows_of(self, node_id: str, rows: str) -> str:
        node = self.ir.node(node_id)
        if node.space == GLOBAL_SPACE:
            return GLOBAL
        if node.space == PAIR_SPACE:
            return self.pair
        return rows

    def keeps_input_dtype(self, node_id: str) -> bool:
        """True for an input that only products read (through transposes): it stays in its
        own dtype, as a tensor-core product takes it."""
        consumers = [n for n, node in self.ir.nodes() if node_id in node.operands]
        return all(
            self.ir.node(n).op == "matmul" or (self.ir.node(n).op == "transpose" and self.keeps_input_dtype(n))
            for n in consumers
        )

    def scaled(self, node_id: str) -> tuple[str, str, int]:
        """(y, c, sign of c) with the value of `node_id` = c * y: back through the ops that
        multiply by a constant (`Op.scalar_factor`: scale, neg) to the pair value y."""
        factors, sign = [], 1
        while True:
            node = self.ir.node(node_id)
            factor = OPS[node.op].scalar_factor if node.op != INPUT_OP else None
            if factor is None:
                return node_id, " * ".join(factors) or "1.0", sign
            factors.append(factor[0])
            sign *= factor[1]
            node_id = node.operands[0]

    def folded(self, node_id: str) -> bool:
        """True for a pair value that only softmaxes over keys read (through more such
        values) and that multiplies by a constant: it is folded into their exp2 constant,
        not computed (its cotangent rule needs no value: the registry's scale and neg)."""
        node = self.ir.node(node_id)
        if node.space != PAIR_SPACE or node.op == INPUT_OP or OPS[node.op].scalar_factor is None:
            return False
        consumers = [n for n, c in self.ir.nodes() if node_id in c.operands]
        return bool(consumers) and all(
            OPS[self.ir.node(n).op].kind is OpKind.NORMALISATION or self.folded(n) for n in consumers
        )

    # -- one node ----------------------------------------------------------------------

    def emit(self, node_id: str, rows: str) -> list[str]:
        """Lines computing `node_id` for `rows` (QUERY, KEY, the pair tile or GLOBAL)."""
        node = self.ir.node(node_id)
        if rows in (PAIR, PAIR_T):
            rows = self.pair
        target = var(node_id, rows)
        if rows == KEY and node_id in self.key_rows:  # written by the key-rows kernel
            at = token_rows_at(self.key_rows.index(node_id), len(self.key_rows), "rows_n")
            return [self.access(LOAD_KEY_ROWS, v=node_id, at=at, mask=self.row_mask(KEY))]
        if node.op == INPUT_OP:
            held = "rows_m" if rows == QUERY else "rows_n"  # template.py's row offsets
            self.pointers.add(f"{node.input}_ptr")
            convert = "" if self.keeps_input_dtype(node_id) else ".to(tl.float32)"
            return [f"{target} = tl.load({node.input}_ptr + head_offset + {held} + offs_d[None, :], mask={self.row_mask(rows)}, other=0.0){convert}"]
        if rows == self.pair and self.folded(node_id):
            return []  # folded into the softmax's exp2 constant
        op = OPS[node.op]
        args = [var(o, self.rows_of(o, rows)) for o in node.operands]
        if is_score(self.ir, node_id):  # query x key, or key x query when transposed
            args = [var(node.operands[0], QUERY), var(node.operands[1], KEY)]
            if self.transposed:  # op(y, x) == op(x, y)^T (`Op.swap_transposes`)
                assert node.op == "matmul" or op.swap_transposes, f"{node.op}: no transposed form"
                args.reverse()
        shapes = [self.ir.node(o).shape for o in node.operands]
        if op.triton is not None:  # elementwise, or a score op over the query and key rows
            lines = [f"{target} = {op.triton.format(*args)}"]
            if node.op == "euc" and node.operands[0] == node.operands[1]:
                # euc(x, x): the diagonal is exactly the clamp, which |x|^2 + |x|^2 - 2<x,x> misses
                diagonal = f"{self.query_row('offs_m')} == {self.key_row('offs_n')}"
                lines.append(f"{target} = tl.where({diagonal}, NORM_EPS, {target})")
            return lines
        if op.kind is OpKind.LAYOUT:
            # token values are held as row tiles whichever way round; a [d,d] value flips
            return [f"{target} = {'tl.trans(' + args[0] + ')' if rows == GLOBAL else args[0]}"]
        if op.kind is OpKind.NORMALISATION:
            return self._softmax(node_id, rows, args[0])
        if op.kind is OpKind.PRODUCT:
            return [f"{target} = {self._matmul(node, rows, args, shapes)}"]
        raise NotImplementedError(f"no Triton rule for op {node.op}")

    def _matmul(self, node, rows, args, shapes) -> str:
        left, right = node.operands
        lspace, rspace = (self.ir.node(o).space for o in node.operands)
        if node.space == PAIR_SPACE:  # scores: [N,d] query rows @ [d,N] key rows (held as [N,d])
            if self.transposed:  # key rows @ query rows^T
                return f"_dot({args[0]}, tl.trans({self.head_masked(left, QUERY)}), DOT_DTYPE, DOT_PRECISION)"
            return f"_dot({self.head_masked(left, QUERY)}, tl.trans({args[1]}), DOT_DTYPE, DOT_PRECISION)"
        if node.space == GLOBAL_SPACE and lspace != GLOBAL_SPACE:  # [d,N] @ [N,d]: reduction kernel
            raise AssertionError("reductions over tokens are accumulated by the reduction template")
        if node.space == GLOBAL_SPACE:  # [d,d] @ [d,d]
            return f"_dot(tl.where(dim_ok, {args[0]}, 0.0), {args[1]}, DOT_DTYPE, DOT_PRECISION)"
        if rspace == GLOBAL_SPACE:  # [N,d] @ [d,d]
            return f"_dot({self.head_masked(left, rows)}, {args[1]}, DOT_DTYPE, DOT_PRECISION)"
        if lspace == GLOBAL_SPACE:  # [d,d] @ [d,N], held transposed: x^T @ G^T
            return f"_dot({self.head_masked(right, rows)}, tl.trans({args[0]}), DOT_DTYPE, DOT_PRECISION)"
        raise AssertionError(f"contraction {node} is accumulated by the key-loop template")

    # -- softmax ---------------------------------------------------------------------------

    def softmax_input(self, softmax: str) -> tuple[list[str], dict]:
        """The masked scores a softmax over keys exponentiates, and the holes of its base-2
        templates: its input is c * y (`scaled`), exponentiated as exp2(y * c2), c2 = c log2(e),
        with masked pairs at -inf (+inf for c < 0: their c2 y is -inf either way)."""
        y, factor, sign = self.scaled(self.ir.node(softmax).operands[0])
        y_var = var(y, self.pair)
        masked_out = 'float("-inf")' if sign > 0 else 'float("inf")'
        lines = []
        if self.mask is Mask.EDGE:
            lines.append(f"{softmax}_in = tl.where(keep, {y_var}, {masked_out})")
        elif self.mask is Mask.PADDING:  # the per-key bias: -inf (+inf for c < 0) at a padded key
            bias = self.key_row("key_bias")
            lines.append(f"{softmax}_in = _biased({y_var}, {bias if sign > 0 else '-' + bias}, HAS_MASK)")
        holes = dict(
            s=softmax,
            y=f"{softmax}_in" if lines else y_var,
            c2=f"({factor} * LOG2E)",
            reduce="tl.max" if sign > 0 else "tl.min",
            axis=self.key_axis,
            q="[None, :]" if self.transposed else "[:, None]",  # a row statistic over the tile
        )
        return lines, holes

    def _softmax(self, node_id: str, rows: str, x: str) -> list[str]:
        node = self.ir.node(node_id)
        target = var(node_id, rows)
        if node.space == PAIR_SPACE:  # over keys, in base 2
            lines, holes = self.softmax_input(node_id)
            template = ONLINE_SOFTMAX if node_id == self.online_softmax else NORMALISED_SOFTMAX
            return lines + template.format(p=target, **holes).split("\n")
        if node.shape[1] == TOKENS:  # [d,N] over tokens: column statistics from reduce_tokens
            return [f"{target} = tl.exp({x} - {node_id}_max[None, :]) / {node_id}_sum[None, :]"]
        return [f"{target} = _softmax_over_head_dim({x}, dim_ok)"]  # over the head dim, per row

    def row_statistics_update(self, softmax: str) -> list[str]:
        """A statistics pass's update of a softmax's running row max and sum (base 2)."""
        lines, holes = self.softmax_input(softmax)
        return lines + ROW_STATISTICS_UPDATE.format(**holes).split("\n")
