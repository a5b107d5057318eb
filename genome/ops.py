"""The op registry: every primitive of the genome language, in one place.

Each entry holds the op's arity, shape rule, structural kind, traits, torch reference
implementation, an independent NumPy float64 oracle, and its Triton side: the spelling, the
derivative rule and the source of the helpers they call. The parser, verifier, reference
executor, rewrite rules, scheduler, emitter, autodiff, mutations, `genomec ops` and the tests
all read this table; adding an elementwise or score op touches only it.

Shapes are symbolic 2-tuples over "N" (tokens) and "d" (head dim). Tensors carry any
number of leading batch axes; the ops act on the last two.

Notation in the definitions: `d` is the head dim, whatever the operand's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import numpy as np
import torch

Shape = tuple[str, str]

TOKENS, HEAD = "N", "d"
INPUT_NAMES = ("q", "k", "v")
INPUT_SHAPE: Shape = (TOKENS, HEAD)
OUTPUT_SHAPE: Shape = (TOKENS, HEAD)

COS_EPS = 1e-6  # norms are clamped below at this
EUC_EPS = 1e-12  # squared distances are clamped below at this
SQRT_EPS, SQRT_SHIFT = 1e-6, 1e-3  # sqrt(x) := sign(x) * (sqrt(|x| + 1e-6) - 1e-3)


class ShapeError(ValueError):
    """An op was applied to operands of shapes it does not accept."""


def format_shape(shape: Shape) -> str:
    return "[" + ",".join(shape) + "]"


class TextEnum(str, Enum):
    """An enum whose members are their text: f-strings, str.format, str() and json.dumps give
    the value, as for a plain string (enum.StrEnum does the same from Python 3.11). The
    compiler's kinds and roles are these, so what they write (generated source, cache
    entries, manifests, `genomec show`) is the text it always was."""

    __str__ = str.__str__
    __format__ = str.__format__


class OpKind(TextEnum):
    """How the compiler lowers an op: the scheduler, the emitter and autodiff dispatch on it.

    ELEMENTWISE    f per entry, in any index space: the registry's `triton` spelling and
                   `triton_vjp` rule, emitted as straight-line code (neg, scale, tanh, add, ...)
    SCORE          rows of x against rows of y, x:[a,b], y:[c,b] -> [a,c] (cos, euc): a pair
                   tile from query rows and key rows, spelled by the registry like an
                   elementwise op, its derivative one rule per side
    NORMALISATION  normalised over the last axis (softmax): over keys on the pair tiles (row
                   statistics max and sum, or online), over tokens of a [d,N] value (column
                   statistics), or per row over the head dim; the code generator's rules are
                   softmax's, the only op of this kind
    PRODUCT        x @ y (matmul): a score ([N,d] @ [d,N]), a contraction over keys
                   ([N,N] @ [N,d]), a reduction over tokens into a [d,d] state ([d,N] @ [N,d]) or
                   a product with a [d,d] value, by its operands' index spaces
    LAYOUT         the axes swapped, no arithmetic (transpose)
    """

    ELEMENTWISE = "elementwise"
    SCORE = "score"
    NORMALISATION = "normalisation"
    PRODUCT = "product"
    LAYOUT = "layout"


# -- shape rules ---------------------------------------------------------------------


def _same_shape(x: Shape) -> Shape:
    return x


def _transpose_shape(x: Shape) -> Shape:
    return (x[1], x[0])


def _identical_shapes(name: str):
    def rule(x: Shape, y: Shape) -> Shape:
        if x != y:
            raise ShapeError(f"{name} needs identical shapes, got {format_shape(x)} and {format_shape(y)}")
        return x

    return rule


def _matmul_shape(x: Shape, y: Shape) -> Shape:
    if x[1] != y[0]:
        raise ShapeError(f"matmul needs [a,b] @ [b,c], got {format_shape(x)} @ {format_shape(y)}")
    return (x[0], y[1])


def _rowwise_shape(name: str):
    def rule(x: Shape, y: Shape) -> Shape:
        if x[1] != y[1]:
            raise ShapeError(
                f"{name} needs rows of equal length, x:[a,b] and y:[c,b], got {format_shape(x)} and {format_shape(y)}"
            )
        return (x[0], y[0])

    return rule


# Which symbolic axis an op reduces over, given its operand shapes (None: pointwise).
def _last_axis_of_first(*shapes: Shape) -> str:
    return shapes[0][1]


# -- masked reductions -----------------------------------------------------------------
#
# `mask` (bool, True = keep) is given only when the reduced axis is the token axis. It is
# broadcastable to [..., R, N] where R is the output's row axis: row-independent for a
# padding mask, row-dependent for a causal prefix. Masked entries take no part in the
# reduction, exactly as if those tokens had been deleted.


def _softmax(x, *, head_dim, mask):
    if mask is None:
        return torch.softmax(x, dim=-1)
    x = x.masked_fill(~mask, float("-inf"))
    row_max = x.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def _column_mask(mask):
    # The contracted token axis of the right operand is kept where any output row keeps it
    # (for a causal prefix the last row keeps every real token).
    return mask.any(dim=-2, keepdim=True).transpose(-1, -2)


def _matmul(x, y, *, head_dim, mask):
    if mask is not None:
        x = x.masked_fill(~mask, 0.0)
        y = y.masked_fill(~_column_mask(mask), 0.0)
    return x @ y


def _cos(x, y, *, head_dim, mask):
    if mask is not None:
        x = x.masked_fill(~mask, 0.0)
        y = y.masked_fill(~mask, 0.0)
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
    yn = y / y.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
    return xn @ yn.transpose(-1, -2)


def _euc(x, y, *, head_dim, mask):
    if mask is not None:
        x = x.masked_fill(~mask, 0.0)
        y = y.masked_fill(~mask, 0.0)
    # Direct differences (not |x|^2 + |y|^2 - 2xy), so near-equal rows lose no precision;
    # sqrt(max(s, 1e-12)) == max(sqrt(s), 1e-6).
    shape = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = x.expand(*shape, *x.shape[-2:])
    y = y.expand(*shape, *y.shape[-2:])
    dist = torch.cdist(x.contiguous(), y.contiguous(), p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.clamp_min(math.sqrt(EUC_EPS))


def _sqrt(x, **_):
    return torch.sign(x) * (torch.sqrt(x.abs() + SQRT_EPS) - SQRT_SHIFT)


# -- NumPy float64 oracles (independent of the torch code above) --------------------------


def _np_softmax(x, head_dim):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_cos(x, y, head_dim):
    out = np.einsum("...ab,...cb->...ac", x, y)
    nx = np.maximum(np.sqrt((x * x).sum(-1)), COS_EPS)[..., :, None]
    ny = np.maximum(np.sqrt((y * y).sum(-1)), COS_EPS)[..., None, :]
    return out / (nx * ny)


def _np_euc(x, y, head_dim):
    diff = x[..., :, None, :] - y[..., None, :, :]
    return np.sqrt(np.maximum((diff * diff).sum(-1), EUC_EPS))


# -- Triton helpers -----------------------------------------------------------------------
#
# The jitted functions that the ops' Triton code calls (their spellings and derivative rules
# below, and the emitter's softmax over the head dim), as source text: every generated module
# offers them after the template's own helpers and constants (codegen/template.py: _dot,
# NORM_EPS, ...) and keeps those its kernels call.

_APPROX = '''\
@triton.jit
def _exp2_approx(x):
    # 2^x by the hardware (MUFU.EX2: ex2.approx.ftz.f32, within 2 ulp; results below 2^-126 are
    # 0); Triton's interpreter runs no PTX and takes the exact one
    if COMPILED:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return tl.math.exp2(x)


@triton.jit
def _log2_approx(x):
    # log2 by the hardware (MUFU.LG2: lg2.approx.ftz.f32, within 2^-22 of log2 on [1, 2]; Triton's
    # own log2 is a software polynomial); the interpreter takes the exact one
    if COMPILED:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return tl.math.log2(x)
'''

_SIGMOID = '''\
@triton.jit
def _sigmoid(x):
    # 1 / (1 + exp(-x)) with the hardware's ex2 and a fast quotient (two ulp; tl.sigmoid's is the
    # IEEE division)
    return tl.math.fdiv(1.0, 1.0 + _exp2_approx(-x * LOG2E))
'''

_LOG1P = '''\
@triton.jit
def _log1p(x):
    # log(1 + x) without losing x when it is tiny: log(u) * x / (u - 1) with u = 1 + x
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * x / (u - 1.0))
'''

_SOFTPLUS_OF_MINUS_ABS = '''\
@triton.jit
def _softplus_of_minus_abs(x, DOT_DTYPE: tl.constexpr):
    # log(1 + exp(-|x|)), in (0, log 2]. With half-precision inputs, one ex2 and one lg2 of the
    # hardware (within 3e-7, far below the inputs' own rounding); with fp32 inputs, Triton's
    # exact exp and log and the tiny-x correction, for every digit where exp(-|x|) is tiny
    if DOT_DTYPE == tl.float32:
        return _log1p(tl.exp(-tl.abs(x)))
    return LN2 * _log2_approx(1.0 + _exp2_approx(-tl.abs(x) * LOG2E))
'''

_TANH = '''\
@triton.jit
def _tanh(x):
    # sign(x) (1 - e) / (1 + e) with e = exp(-2|x|), about 1.5 ulp (2 sigmoid(2x) - 1 is twice
    # that where tanh saturates); near 0 it loses x's digits (1 - e cancels), and there the
    # odd Taylor series to x^9 is exact to fp32 (for |x| < 1/4 the next term is below 1e-9 of x)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    e = tl.exp(-2.0 * tl.abs(x))
    return tl.where(tl.abs(x) < 0.25, series, tl.where(x < 0, -1.0, 1.0) * ((1.0 - e) / (1.0 + e)))
'''

_SOFTMAX_OVER_HEAD_DIM = '''\
@triton.jit
def _softmax_over_head_dim(x, dim_ok):
    x = tl.where(dim_ok, x, float("-inf"))
    e = tl.exp(x - tl.max(x, 1)[:, None])
    return e / tl.sum(e, 1)[:, None]
'''

_UNIT_ROWS = '''\
@triton.jit
def _unit_rows(x, dim_ok):
    # each row over its norm, max(|x|, 1e-6) (the head-dim padding zeroed)
    x = tl.where(dim_ok, x.to(tl.float32), 0.0)
    return x * (1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), NORM_EPS))[:, None]
'''

_COSINE_SCORES = '''\
@triton.jit
def _cosine_scores(x_i, y_j, dim_ok, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # <x_i, y_j> / (max(|x_i|, 1e-6) * max(|y_j|, 1e-6)): the rows normalised before the
    # product, so a score costs the product alone (a loop over key blocks normalises the
    # query rows once)
    return _dot(_unit_rows(x_i, dim_ok), tl.trans(_unit_rows(y_j, dim_ok)), DOT_DTYPE, DOT_PRECISION)
'''

_EUCLIDEAN_SCORES = '''\
@triton.jit
def _euclidean_scores(x_i, y_j, dim_ok, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # sqrt(max(|x_i|^2 + |y_j|^2 - 2 <x_i, y_j>, 1e-12))
    x_i = tl.where(dim_ok, x_i, 0.0)
    y_j = tl.where(dim_ok, y_j, 0.0)
    x_sq = tl.sum(x_i * x_i, 1)
    y_sq = tl.sum(y_j * y_j, 1)
    squared = x_sq[:, None] + y_sq[None, :] - 2.0 * _dot(x_i, tl.trans(y_j), DOT_DTYPE, DOT_PRECISION)
    if DOT_DTYPE == tl.float32:
        # Below the rounding error of the three terms the difference is noise, and its square
        # root is large: rows that coincide (different nodes of equal value, like abs(k) and
        # max(neg(k), k)) must give the clamp, as the definition's direct differences do.
        # (Half-precision dots round far more; there the plain formula stays.)
        squared = tl.where(squared > DISTANCE_NOISE * (x_sq[:, None] + y_sq[None, :]), squared, 0.0)
    return tl.sqrt(tl.maximum(squared, SQUARED_DISTANCE_EPS))
'''

_SOFTMAX_OVER_HEAD_DIM_VJP = '''\
@triton.jit
def _softmax_over_head_dim_vjp(y, dy, dim_ok):
    # y = softmax(x) per row: dx = y * (dy - sum(y * dy))
    dy = tl.where(dim_ok, dy, 0.0)
    return y * (dy - tl.sum(y * dy, 1)[:, None])
'''

_COSINE_SCORES_VJP = '''\
@triton.jit
def _cosine_scores_vjp(x, acc, row, dim_ok):
    # s_ij = <x_i, y_j> / (n_i m_j), n = max(|x|, 1e-6): with acc = sum_j ds_ij y_j / m_j and
    # row = sum_j ds_ij s_ij, dx_i = (acc - x_i / n_i row [|x_i| > 1e-6]) / n_i
    x = tl.where(dim_ok, x.to(tl.float32), 0.0)
    length = tl.sqrt(tl.sum(x * x, 1))
    norm = tl.maximum(length, NORM_EPS)
    radial = tl.where(length > NORM_EPS, row / norm, 0.0)
    return (acc - x * radial[:, None]) / norm[:, None]
'''

_EUCLIDEAN_WEIGHTS = '''\
@triton.jit
def _euclidean_weights(scores, dscores):
    # s_ij = |x_i - y_j| where unclamped: ds/dx_i = (x_i - y_j) / s_ij; w = ds / s (the clamp at
    # 1e-6 has no gradient), so that dx_i = x_i sum_j w_ij - sum_j w_ij y_j
    return tl.where(scores > NORM_EPS, tl.math.fdiv(dscores, scores), 0.0)
'''


@dataclass(frozen=True)
class ScoreVJP:
    """The derivative of a score op s = op(x, y) on the side whose rows are the pair tile's rows
    (x; y is the other side): over the other side's blocks, acc += tile @ other and row +=
    rowsum(row term); after them, dx = finish. (A kernel holding its tiles transposed, key x
    query, has the key side there.) Format strings in fp32 over {s} (the score tile), {ds}
    (its cotangent, 0 where a pair takes no part), {y} (the other side's rows), and in
    `finish` {x} (the own rows), {acc}, {row}: the own rows are read after the loop only,
    which keeps a [rows, d] fp32 tile out of its registers."""

    tile: str
    other: str
    row: str
    finish: str

    def __iter__(self):
        return iter((self.tile, self.other, self.row, self.finish))


# -- the registry -------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    definition: str  # the exact semantics, as `genomec ops` prints them
    shape_rule: Callable[..., Shape]
    reference: Callable[..., torch.Tensor]  # torch: (*xs, head_dim, mask) -> tensor
    oracle: Callable[..., np.ndarray]  # NumPy float64: (*xs, head_dim) -> array
    kind: OpKind  # how the compiler lowers it
    commutative: bool = False
    linear: bool = False  # linear in each operand (sign and scale move through it)
    odd: bool = False  # unary with f(-x) == -f(x)
    # f(0) == 0 (of every operand): zero head-dim padding stays zero through it, so the
    # emitter need not mask the padding before a reduction over the head dim
    zero_preserving: bool = False
    # A unary op that multiplies by a constant: (its Triton spelling, its sign). The code
    # generator folds such ops between scores and a softmax over keys into the softmax's one
    # exp2 constant (codegen/emit.py).
    scalar_factor: tuple[str, int] | None = None
    # A score op with op(y, x) == op(x, y)^T: a kernel that holds its pair tiles transposed
    # (key x query, the backward's key-block kernel) swaps the operands.
    swap_transposes: bool = False
    reduced_axis: Callable[..., str | None] = field(default=lambda *shapes: None)
    # Operands whose rows are the output's rows (out[i] needs row i of these and all of the
    # others). None: every operand (the elementwise case).
    rows_from: tuple[int, ...] | None = None
    # The reference accepts a token mask that differs per output row (a causal prefix).
    row_mask_ok: bool = False
    paper_group: bool = False  # in the first op group of AutoBERT-Zero
    mutation_weight: float = 1.0
    # Triton spelling, a format string in fp32 that the code generator emits as one
    # straight-line assignment: of an elementwise op over its operand variables ({0}, {1});
    # of a score op over the query rows {0} and the key rows {1}, giving the pair tile.
    # None: an op the code generator lowers by its kind (softmax, matmul, transpose).
    triton: str | None = None
    # Derivative rule: the Triton spelling of each operand's vector-Jacobian product, format
    # strings over {x}, {y} (the operands), {out} (the op's value) and {grad} (the cotangent
    # of the output), in fp32. Elementwise: the backward code generator emits them as
    # straight-line `dt3 = ...` lines. Score: a ScoreVJP, the share of the side whose rows are
    # the pair tile's rows, summed over the other side's blocks (the op is symmetric,
    # `swap_transposes`: one rule serves both sides).
    # None for the ops lowered by kind, whose backward the code generator writes out (softmax
    # over keys: P * (dP - rowsum(P * dP)); q k^T scores and contractions: matmuls of the
    # cotangent tile with the other side's rows).
    triton_vjp: tuple[str, ...] | ScoreVJP | None = None
    # Source of the jitted helpers that the op's Triton code calls (its spelling, or the
    # emitter's rule for its kind), and those its derivative calls: a generated module
    # defines each one that it calls, once.
    triton_helpers: tuple[str, ...] = ()
    triton_vjp_helpers: tuple[str, ...] = ()

    @property
    def elementwise(self) -> bool:
        return self.kind is OpKind.ELEMENTWISE

    def shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != self.arity:
            raise ShapeError(f"{self.name} takes {self.arity} operand(s), got {len(shapes)}")
        return self.shape_rule(*shapes)

    def keeps_rows(self, position: int) -> bool:
        """True when out[i] depends on operand `position` only through its row i."""
        return position in self.rows_from if self.rows_from is not None else True

    def reduces_tokens(self, *shapes: Shape) -> bool:
        """True when this op reduces over the token axis (masks and causality apply)."""
        return self.reduced_axis(*shapes) == TOKENS


def _unary(name, definition, torch_fn, np_fn, **traits) -> Op:
    return Op(
        name=name,
        arity=1,
        definition=definition,
        shape_rule=_same_shape,
        reference=lambda x, *, head_dim, mask: torch_fn(x),
        oracle=lambda x, head_dim: np_fn(x),
        kind=OpKind.ELEMENTWISE,
        **traits,
    )


def _binary(name, definition, torch_fn, np_fn, **traits) -> Op:
    return Op(
        name=name,
        arity=2,
        definition=definition,
        shape_rule=_identical_shapes(name),
        reference=lambda x, y, *, head_dim, mask: torch_fn(x, y),
        oracle=lambda x, y, head_dim: np_fn(x, y),
        kind=OpKind.ELEMENTWISE,
        **traits,
    )


_OPS = [
    _unary("neg", "-x", torch.neg, np.negative, triton="-{0}", triton_vjp=("-{grad}",), linear=True, odd=True, zero_preserving=True,
           scalar_factor=("-1.0", -1), paper_group=True),
    Op(
        name="transpose",
        arity=1,
        definition="x^T",
        shape_rule=_transpose_shape,
        reference=lambda x, *, head_dim, mask: x.transpose(-1, -2),
        oracle=lambda x, head_dim: np.swapaxes(x, -1, -2),
        kind=OpKind.LAYOUT,
        rows_from=(),
        linear=True,
        zero_preserving=True,
        paper_group=True,
    ),
    Op(
        name="scale",
        arity=1,
        definition="x * d**-0.5 (d: the head dim, whatever the shape of x)",
        shape_rule=_same_shape,
        reference=lambda x, *, head_dim, mask: x * head_dim**-0.5,
        oracle=lambda x, head_dim: x * head_dim**-0.5,
        triton="{0} * HEAD_SCALE",  # HEAD_SCALE: the kernel's constexpr d**-0.5
        triton_vjp=("{grad} * HEAD_SCALE",),
        scalar_factor=("HEAD_SCALE", 1),
        kind=OpKind.ELEMENTWISE,
        linear=True,
        odd=True,
        zero_preserving=True,
        paper_group=True,
    ),
    Op(
        name="softmax",
        arity=1,
        definition="softmax over the last axis (numerically stable)",
        shape_rule=_same_shape,
        reference=_softmax,
        oracle=_np_softmax,
        kind=OpKind.NORMALISATION,
        reduced_axis=_last_axis_of_first,
        row_mask_ok=True,
        paper_group=True,
        triton_helpers=(_SOFTMAX_OVER_HEAD_DIM,),  # the rule over the head dim
        triton_vjp_helpers=(_SOFTMAX_OVER_HEAD_DIM_VJP,),
    ),
    _unary(
        "logsigmoid",
        "log(sigmoid(x)) = -softplus(-x)",
        torch.nn.functional.logsigmoid,
        lambda x: -np.logaddexp(0.0, -x),
        triton="tl.minimum({0}, 0.0) - _softplus_of_minus_abs({0}, DOT_DTYPE)",  # -softplus(-x), stable
        triton_vjp=("{grad} * tl.sigmoid(-{x})",),  # d/dx log(sigmoid(x)) = 1 - sigmoid(x)
        triton_helpers=(_APPROX, _LOG1P, _SOFTPLUS_OF_MINUS_ABS),
        paper_group=True,
    ),
    _unary("softsign", "x / (1 + abs(x))", lambda x: x / (1 + x.abs()), lambda x: x / (1 + np.abs(x)), odd=True, zero_preserving=True,
           paper_group=True, triton="{0} / (1.0 + tl.abs({0}))", triton_vjp=("{grad} / ((1.0 + tl.abs({x})) * (1.0 + tl.abs({x})))",)),
    Op(
        name="sqrt",
        arity=1,
        definition="sign(x) * (sqrt(abs(x) + 1e-6) - 1e-3)  (odd, defined everywhere, finite gradient)",
        shape_rule=_same_shape,
        reference=lambda x, *, head_dim, mask: _sqrt(x),
        oracle=lambda x, head_dim: np.sign(x) * (np.sqrt(np.abs(x) + SQRT_EPS) - SQRT_SHIFT),
        triton="tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0)) * (tl.sqrt(tl.abs({0}) + 1e-6) - 1e-3)",
        # d/dx = 1 / (2 sqrt(|x| + 1e-6)) for x != 0; 0 at x == 0 (sign(0) = 0, as torch has it)
        triton_vjp=("tl.where({x} != 0, {grad} * 0.5 / tl.sqrt(tl.abs({x}) + 1e-6), 0.0)",),
        kind=OpKind.ELEMENTWISE,
        odd=True,
        zero_preserving=True,
        paper_group=True,
    ),
    _unary("sigmoid", "1 / (1 + exp(-x))", torch.sigmoid, lambda x: 0.5 * (1 + np.tanh(0.5 * x)), triton="_sigmoid({0})",
           triton_helpers=(_APPROX, _SIGMOID),
           # sigmoid(x) sigmoid(-x), not out * (1 - out): no cancellation where sigmoid(x) ~ 1
           triton_vjp=("{grad} * tl.sigmoid({x}) * tl.sigmoid(-{x})",)),
    _unary("tanh", "tanh(x)", torch.tanh, np.tanh, odd=True, zero_preserving=True, triton="_tanh({0})",  # exact near 0 too
           triton_helpers=(_TANH,),
           # 1 - tanh(x)^2 = 4 sigmoid(2x) sigmoid(-2x), without the cancellation where |tanh(x)| ~ 1
           triton_vjp=("{grad} * 4.0 * tl.sigmoid(2.0 * {x}) * tl.sigmoid(-2.0 * {x})",)),
    _unary("relu", "max(x, 0)", torch.relu, lambda x: np.maximum(x, 0.0), zero_preserving=True, triton="tl.maximum({0}, 0.0)",
           triton_vjp=("tl.where({x} > 0, {grad}, 0.0)",)),
    _unary("abs", "abs(x)", torch.abs, np.abs, zero_preserving=True, triton="tl.abs({0})",
           triton_vjp=("tl.where({x} > 0, {grad}, tl.where({x} < 0, -{grad}, 0.0))",)),
    _binary("add", "x + y (same shape)", torch.add, np.add, commutative=True, linear=True, zero_preserving=True, paper_group=True,
            triton="{0} + {1}", triton_vjp=("{grad}", "{grad}")),
    _binary("sub", "x - y (same shape)", torch.sub, np.subtract, linear=True, zero_preserving=True, triton="{0} - {1}",
            triton_vjp=("{grad}", "-{grad}")),
    _binary("mul", "x * y elementwise (same shape)", torch.mul, np.multiply, commutative=True, zero_preserving=True, triton="{0} * {1}",
            triton_vjp=("{grad} * {y}", "{grad} * {x}")),
    _binary("max", "elementwise maximum (same shape)", torch.maximum, np.maximum, commutative=True, zero_preserving=True,
            triton="tl.maximum({0}, {1})",
            # ties split the cotangent evenly, as torch.maximum does
            triton_vjp=("tl.where({x} > {y}, {grad}, tl.where({x} == {y}, 0.5 * {grad}, 0.0))",
                        "tl.where({y} > {x}, {grad}, tl.where({x} == {y}, 0.5 * {grad}, 0.0))")),
    Op(
        name="matmul",
        arity=2,
        definition="x @ y, [a,b] @ [b,c] -> [a,c]",
        shape_rule=_matmul_shape,
        reference=_matmul,
        oracle=lambda x, y, head_dim: x @ y,
        kind=OpKind.PRODUCT,
        linear=True,
        reduced_axis=_last_axis_of_first,
        rows_from=(0,),
        row_mask_ok=True,
        paper_group=True,
    ),
    Op(
        name="cos",
        arity=2,
        definition="pairwise cosine of rows: x:[a,b], y:[c,b] -> [a,c], "
        "out[i,j] = <x_i,y_j> / (max(|x_i|,1e-6) * max(|y_j|,1e-6))",
        shape_rule=_rowwise_shape("cos"),
        reference=_cos,
        oracle=_np_cos,
        kind=OpKind.SCORE,
        reduced_axis=_last_axis_of_first,
        rows_from=(0,),
        paper_group=True,
        swap_transposes=True,
        triton="_cosine_scores({0}, {1}, dim_ok, DOT_DTYPE, DOT_PRECISION)",
        # dx = (sum_j ds y_j / m_j - x / n sum_j ds s) / n: the other side's unit rows, then the norm
        triton_vjp=ScoreVJP(tile="{ds}", other="_unit_rows({y}, dim_ok)", row="{ds} * {s}",
                            finish="_cosine_scores_vjp({x}, {acc}, {row}, dim_ok)"),
        triton_helpers=(_UNIT_ROWS, _COSINE_SCORES),
        triton_vjp_helpers=(_UNIT_ROWS, _COSINE_SCORES_VJP),
    ),
    Op(
        name="euc",
        arity=2,
        definition="pairwise Euclidean distance of rows: x:[a,b], y:[c,b] -> [a,c], "
        "out[i,j] = sqrt(max(sum_b (x_ib - y_jb)^2, 1e-12))",
        shape_rule=_rowwise_shape("euc"),
        reference=_euc,
        oracle=_np_euc,
        kind=OpKind.SCORE,
        reduced_axis=_last_axis_of_first,
        rows_from=(0,),
        paper_group=True,
        swap_transposes=True,
        # (the emitter clamps the diagonal of euc(x, x) to NORM_EPS; rows of different nodes
        # that coincide fall below the helper's DISTANCE_NOISE)
        triton="_euclidean_scores({0}, {1}, dim_ok, DOT_DTYPE, DOT_PRECISION)",
        # dx = x sum_j w - sum_j w y_j, w = ds / s
        triton_vjp=ScoreVJP(tile="-_euclidean_weights({s}, {ds})", other="{y}", row="_euclidean_weights({s}, {ds})",
                            finish="tl.where(dim_ok, {x}, 0.0) * {row}[:, None] + {acc}"),
        triton_helpers=(_EUCLIDEAN_SCORES,),
        triton_vjp_helpers=(_EUCLIDEAN_WEIGHTS,),
    ),
]

OPS: dict[str, Op] = {op.name: op for op in _OPS}


def get_op(name: str) -> Op:
    return OPS[name]
