"""The emitter: one straight-line Triton assignment per IR node.

Elementwise and score ops come from the registry's Triton spellings (`Op.triton`); the other
kinds of op (`Op.kind`: normalisation, product, layout) have one rule each below. A value is
named after its node and the rows a kernel holds of it:

    t3_i   query rows     [BLOCK_M, HEAD_DIM_PAD]
    t3_j   key rows       [BLOCK_N, HEAD_DIM_PAD]   (a [d,N] value is held transposed)
    t3_ij  pair tile      [BLOCK_M, BLOCK_N]
    t3_g   global value   [HEAD_DIM_PAD, HEAD_DIM_PAD]

Head-dim columns past HEAD_DIM may hold garbage (sigmoid(0) is not 0); every reduction over
the head dim masks its operand first unless the value is known to be zero there.
"""

from __future__ import annotations

from genomec.genome.ops import OPS, TOKENS, OpKind
from genomec.ir.analysis import is_score
from genomec.ir.graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE

from .abi import SCALARS
from .template import POINTERS, Access

QUERY, KEY, PAIR, GLOBAL = "i", "j", "ij", "g"


def var(node_id: str, rows: str) -> str:
    return f"{node_id}_{rows}"


class Emitter:
    """Emits the assignment of a node for a given row set. `kinds` comes from the schedule;
    `online_softmax` is the softmax normalised online in the accumulation pass, if any."""

    def __init__(self, ir: IR, kinds: dict[str, str], online_softmax: str | None = None):
        self.ir = ir
        self.kinds = kinds
        self.online_softmax = online_softmax
        self._zero_padded: dict[str, bool] = {}
        self.pointers: set[str] = {"mask_ptr"}  # the buffers of the kernel's text (every prologue reads the mask)

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
            return PAIR
        return rows

    # -- one node ----------------------------------------------------------------------

    def emit(self, node_id: str, rows: str) -> list[str]:
        """Lines computing `node_id` for `rows` (QUERY, KEY, PAIR or GLOBAL)."""
        node = self.ir.node(node_id)
        target = var(node_id, rows)
        if node.op == INPUT_OP:
            held = "rows_m" if rows == QUERY else "rows_n"  # template.py's row offsets
            self.pointers.add(f"{node.input}_ptr")
            return [f"{target} = tl.load({node.input}_ptr + head_offset + {held} + offs_d[None, :], mask={held}_ok & dim_ok, other=0.0).to(tl.float32)"]
        op = OPS[node.op]
        args = [var(o, self.rows_of(o, rows)) for o in node.operands]
        if is_score(self.ir, node_id):  # query x key
            args = [var(node.operands[0], QUERY), var(node.operands[1], KEY)]
        shapes = [self.ir.node(o).shape for o in node.operands]
        if op.triton is not None:  # elementwise, or a score op over the query and key rows
            lines = [f"{target} = {op.triton.format(*args)}"]
            if node.op == "euc" and node.operands[0] == node.operands[1]:
                # euc(x, x): the diagonal is exactly the clamp, which |x|^2 + |x|^2 - 2<x,x> misses
                lines.append(f"{target} = tl.where(offs_m[:, None] == offs_n[None, :], NORM_EPS, {target})")
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

    def _softmax(self, node_id: str, rows: str, x: str) -> list[str]:
        node = self.ir.node(node_id)
        target = var(node_id, rows)
        if node.space == PAIR_SPACE:  # over keys: normalised by this pass's row statistics
            if node_id == self.online_softmax:
                return [
                    f"{node_id}_max_new = tl.maximum({node_id}_max, tl.max(tl.where(keep, {x}, float('-inf')), 1))",
                    f"{node_id}_rescale = tl.exp({node_id}_max - {node_id}_max_new)",
                    f"{target} = tl.where(keep, tl.exp({x} - {node_id}_max_new[:, None]), 0.0)",
                    f"{node_id}_sum = {node_id}_sum * {node_id}_rescale + tl.sum({target}, 1)",
                    f"{node_id}_max = {node_id}_max_new",
                ]
            return [f"{target} = tl.where(keep, tl.exp({x} - {node_id}_max[:, None]) * {node_id}_inv_sum[:, None], 0.0)"]
        if node.shape[1] == TOKENS:  # [d,N] over tokens: column statistics from reduce_tokens
            return [f"{target} = tl.exp({x} - {node_id}_max[None, :]) / {node_id}_sum[None, :]"]
        return [f"{target} = _softmax_over_head_dim({x}, dim_ok)"]  # over the head dim, per row
