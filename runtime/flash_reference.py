"""A FlashAttention-2 reference: standard attention softmax(q k^T / sqrt(d)) v as the
published algorithm computes it (Dao, "FlashAttention-2", 2023), written here in Triton.
It is the baseline the static kernel benchmark reads our kernels against (compiled in the
same run, with our tiles and with its own), and a baseline for GPU timings.

Inputs are contiguous [B, H, N, d] (fp32, fp16 or bf16), d a power of two from 16 on; no
mask, not causal. Scores are computed in the input dtype on tensor cores with fp32
accumulation.

Forward, one program per (query block, batch x head): the query block stays in registers
while the program walks over the key blocks with an online softmax: a running row max `m`
and row sum `l`, the accumulator rescaled by exp(m_old - m_new) when the max grows. The
scale is folded into base 2: with c = log2(e) / sqrt(d), exp(s / sqrt(d) - m) is
exp2(c s - m') for m' = m log2(e), one multiply-add and one `ex2` per score. It stores
the output and, for the backward, the log-sum-exp of each row in the same base-2 units
(`lse2 = m' + log2 l`, so p = exp2(c s - lse2)).

Backward, FA2's algorithm in three kernels (the split is the one our generated backward
has, so that the two compare kernel by kernel):
1. preprocess, per query block: delta = rowsum(dO * O) (= rowsum(P * dP));
2. dK and dV, one program per key block, walking over the query blocks. It works with the
   transposed scores S^T = K Q^T, so that every product takes its operands as they are
   loaded: P^T = exp2(c S^T - lse2), dV += P^T dO, dP^T = V dO^T,
   dS^T = P^T * (dP^T - delta), dK += dS^T Q; at the end dK *= 1 / sqrt(d);
3. dQ, one program per query block, walking over the key blocks: P and dS as above (not
   transposed), dQ += dS K; at the end dQ *= 1 / sqrt(d).
(FA2's CUDA kernel adds dQ with atomics inside the dK/dV pass; separate dQ programs need
no atomics and recompute P once more, as the programs of Triton's tutorial do.)

When the sequence length is a multiple of both tiles (`EVEN_N`), the loads and the score
tile go unmasked, as in FA2's "even" kernels; otherwise rows and keys past the end are
masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from genomec.codegen.tiles import DOT_PRECISION, TileConfig

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)

# -- kernels ------------------------------------------------------------------------------


@triton.jit
def _load_rows(ptr, rows, seq_len, EVEN_N: tl.constexpr):
    # A [rows, HEAD_DIM] block; rows past the end read as 0 unless none can be.
    if EVEN_N:
        return tl.load(ptr)
    return tl.load(ptr, mask=rows[:, None] < seq_len, other=0.0)


@triton.jit
def flash_forward(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, seq_len,
    SM_SCALE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # -- program: one query block of one (batch, head) --
    block_m = tl.program_id(0)
    head_offset = tl.program_id(1).to(tl.int64) * seq_len * HEAD_DIM
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(q_ptr + head_offset + rows[:, None] * HEAD_DIM + offs_d[None, :], rows, seq_len, EVEN_N)
    qk_scale = SM_SCALE * LOG2E  # log2(e) / sqrt(d): scores in base-2 units

    # -- online softmax over the key blocks --
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)  # m', base 2
    row_sum = tl.zeros([BLOCK_M], tl.float32)  # l
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, seq_len, BLOCK_N):
        keys = key_start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr + head_offset + keys[:, None] * HEAD_DIM + offs_d[None, :], keys, seq_len, EVEN_N)
        v = _load_rows(v_ptr + head_offset + keys[:, None] * HEAD_DIM + offs_d[None, :], keys, seq_len, EVEN_N)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if not EVEN_N:
            scores = tl.where(keys[None, :] < seq_len, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1) * qk_scale)
        p = tl.math.exp2(scores * qk_scale - new_max[:, None])
        rescale = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    # -- store: the output, and lse2 for the backward --
    out = acc / row_sum[:, None]
    out_ptrs = out_ptr + head_offset + rows[:, None] * HEAD_DIM + offs_d[None, :]
    lse_ptrs = lse_ptr + tl.program_id(1) * seq_len + rows
    if EVEN_N:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty))
        tl.store(lse_ptrs, row_max + tl.math.log2(row_sum))
    else:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < seq_len)
        tl.store(lse_ptrs, row_max + tl.math.log2(row_sum), mask=rows < seq_len)


@triton.jit
def flash_backward_preprocess(
    out_ptr, dout_ptr, delta_ptr, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, EVEN_N: tl.constexpr,
):
    # -- program: delta = rowsum(dO * O) for one query block of one (batch, head) --
    head_offset = tl.program_id(1).to(tl.int64) * seq_len * HEAD_DIM
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = head_offset + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    out = _load_rows(out_ptr + offs, rows, seq_len, EVEN_N).to(tl.float32)
    dout = _load_rows(dout_ptr + offs, rows, seq_len, EVEN_N).to(tl.float32)
    tl.store(delta_ptr + tl.program_id(1) * seq_len + rows, tl.sum(out * dout, 1), mask=rows < seq_len)


@triton.jit
def flash_backward_keys(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, seq_len,
    SM_SCALE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # -- program: dK and dV of one key block of one (batch, head), over the query blocks --
    head = tl.program_id(1)
    head_offset = head.to(tl.int64) * seq_len * HEAD_DIM
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_offs = head_offset + keys[:, None] * HEAD_DIM + offs_d[None, :]
    k = _load_rows(k_ptr + key_offs, keys, seq_len, EVEN_N)
    v = _load_rows(v_ptr + key_offs, keys, seq_len, EVEN_N)
    qk_scale = SM_SCALE * LOG2E
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for query_start in range(0, seq_len, BLOCK_M):
        rows = query_start + tl.arange(0, BLOCK_M)
        row_offs = head_offset + rows[:, None] * HEAD_DIM + offs_d[None, :]
        q = _load_rows(q_ptr + row_offs, rows, seq_len, EVEN_N)
        dout = _load_rows(dout_ptr + row_offs, rows, seq_len, EVEN_N)
        if EVEN_N:
            lse = tl.load(lse_ptr + head * seq_len + rows)
            delta = tl.load(delta_ptr + head * seq_len + rows)
        else:  # rows past the end: lse2 = inf gives p = 0
            lse = tl.load(lse_ptr + head * seq_len + rows, mask=rows < seq_len, other=float("inf"))
            delta = tl.load(delta_ptr + head * seq_len + rows, mask=rows < seq_len, other=0.0)
        # -- transposed pair tiles: keys x queries --
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        p_t = tl.math.exp2(scores_t * qk_scale - lse[None, :])
        dv += tl.dot(p_t.to(dout.dtype), dout, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(dout), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    dk *= SM_SCALE
    if EVEN_N:
        tl.store(dk_ptr + key_offs, dk.to(dk_ptr.dtype.element_ty))
        tl.store(dv_ptr + key_offs, dv.to(dv_ptr.dtype.element_ty))
    else:
        tl.store(dk_ptr + key_offs, dk.to(dk_ptr.dtype.element_ty), mask=keys[:, None] < seq_len)
        tl.store(dv_ptr + key_offs, dv.to(dv_ptr.dtype.element_ty), mask=keys[:, None] < seq_len)


@triton.jit
def flash_backward_queries(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr, seq_len,
    SM_SCALE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # -- program: dQ of one query block of one (batch, head), over the key blocks --
    head = tl.program_id(1)
    head_offset = head.to(tl.int64) * seq_len * HEAD_DIM
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_offs = head_offset + rows[:, None] * HEAD_DIM + offs_d[None, :]
    q = _load_rows(q_ptr + row_offs, rows, seq_len, EVEN_N)
    dout = _load_rows(dout_ptr + row_offs, rows, seq_len, EVEN_N)
    if EVEN_N:
        lse = tl.load(lse_ptr + head * seq_len + rows)
        delta = tl.load(delta_ptr + head * seq_len + rows)
    else:
        lse = tl.load(lse_ptr + head * seq_len + rows, mask=rows < seq_len, other=float("inf"))
        delta = tl.load(delta_ptr + head * seq_len + rows, mask=rows < seq_len, other=0.0)
    qk_scale = SM_SCALE * LOG2E
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for key_start in range(0, seq_len, BLOCK_N):
        keys = key_start + tl.arange(0, BLOCK_N)
        key_offs = head_offset + keys[:, None] * HEAD_DIM + offs_d[None, :]
        k = _load_rows(k_ptr + key_offs, keys, seq_len, EVEN_N)
        v = _load_rows(v_ptr + key_offs, keys, seq_len, EVEN_N)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
        if not EVEN_N:  # keys past the end read as 0, which is not a score of 0 weight
            p = tl.where(keys[None, :] < seq_len, p, 0.0)
        dp = tl.dot(dout, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq *= SM_SCALE
    if EVEN_N:
        tl.store(dq_ptr + row_offs, dq.to(dq_ptr.dtype.element_ty))
    else:
        tl.store(dq_ptr + row_offs, dq.to(dq_ptr.dtype.element_ty), mask=rows[:, None] < seq_len)


# -- tiles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashTiles:
    """Tiles of the reference's kernels: the forward's, the dK/dV kernel's (BLOCK_N keys per
    program, BLOCK_M queries per step) and the dQ kernel's (BLOCK_M queries per program,
    BLOCK_N keys per step); the preprocess takes the dQ kernel's BLOCK_M and warps."""

    forward: TileConfig
    keys: TileConfig
    queries: TileConfig


# Hopper tiles of the published kernels, the candidates of the "best" tiles the static
# benchmark picks from (its rule: fewest main-loop instructions per score element, zero
# spills): FA2's forward (128 x 128 at d <= 64, 128 x 64 at d = 128; 4 or 8 warps) and
# backward (128 x 128 at d <= 64, 64 x 128 at d = 128; 8 warps), and the autotuning space
# of Triton's fused-attention tutorial on Hopper (forward 64/128 x 32/64/128, 4 or 8
# warps, 2 to 4 stages; backward 32 x 128 for dK/dV and 128 x 32 for dQ, 4 warps, 5 stages).
FORWARD_CANDIDATES = (
    TileConfig(128, 128, 8, 2),
    TileConfig(128, 128, 4, 2),
    TileConfig(128, 64, 4, 3),
    TileConfig(128, 64, 8, 3),
    TileConfig(64, 64, 4, 3),
    TileConfig(128, 32, 4, 3),
)
KEYS_CANDIDATES = (  # (BLOCK_M queries per step, BLOCK_N keys per program)
    TileConfig(128, 128, 8, 2),
    TileConfig(64, 128, 8, 2),
    TileConfig(32, 128, 4, 5),
    TileConfig(64, 64, 4, 3),
)
QUERIES_CANDIDATES = (  # (BLOCK_M queries per program, BLOCK_N keys per step)
    TileConfig(128, 128, 8, 2),
    TileConfig(128, 64, 8, 2),
    TileConfig(128, 32, 4, 5),
    TileConfig(64, 64, 4, 3),
)
INTERPRETER_TILES = FlashTiles(TileConfig(16, 16, 1, 1), TileConfig(16, 16, 1, 1), TileConfig(16, 16, 1, 1))
# The tiles of a launch on a GPU without tiles given: the tutorial's at head dim <= 64; at
# 128, where its forward and dK/dV tiles spill (sm_90, Triton 3.9: 40 and 2192 bytes),
# FA2's 8-warp ones.
SMALL_HEAD_TILES = FlashTiles(TileConfig(128, 64, 4, 3), TileConfig(32, 128, 4, 5), TileConfig(128, 32, 4, 5))
LARGE_HEAD_TILES = FlashTiles(TileConfig(128, 64, 8, 3), TileConfig(64, 128, 8, 2), TileConfig(128, 64, 8, 2))


def default_tiles(head_dim: int) -> FlashTiles:
    return SMALL_HEAD_TILES if head_dim <= 64 else LARGE_HEAD_TILES


def even(seq_len: int, tiles: FlashTiles) -> bool:
    """True when no block runs past the end: every kernel's loads go unmasked."""
    blocks = {t.block_m for t in (tiles.forward, tiles.keys, tiles.queries)} | {t.block_n for t in (tiles.forward, tiles.keys, tiles.queries)}
    return all(seq_len % b == 0 for b in blocks)


# -- the kernels' arguments, for a launch and for ahead-of-time compilation -------------

# each kernel and its runtime arguments (the rest are constexprs), in launch order
KERNELS = {
    "flash_forward": (flash_forward, ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "lse_ptr", "seq_len")),
    "flash_backward_preprocess": (flash_backward_preprocess, ("out_ptr", "dout_ptr", "delta_ptr", "seq_len")),
    "flash_backward_keys": (flash_backward_keys, ("q_ptr", "k_ptr", "v_ptr", "dout_ptr", "lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr", "seq_len")),
    "flash_backward_queries": (flash_backward_queries, ("q_ptr", "k_ptr", "v_ptr", "dout_ptr", "lse_ptr", "delta_ptr", "dq_ptr", "seq_len")),
}
FP32_BUFFERS = ("lse_ptr", "delta_ptr")
BACKWARD = ("flash_backward_preprocess", "flash_backward_keys", "flash_backward_queries")


def kernel_tiles(name: str, tiles: FlashTiles) -> TileConfig:
    if name == "flash_forward":
        return tiles.forward
    if name == "flash_backward_keys":
        return tiles.keys
    if name == "flash_backward_queries":
        return tiles.queries
    return TileConfig(tiles.queries.block_m, tiles.queries.block_n, tiles.queries.num_warps, 1)


def constants(name: str, dtype: str, head_dim: int, tile: TileConfig, even_n: bool) -> dict:
    """The constexprs of one kernel."""
    values = dict(SM_SCALE=head_dim**-0.5, HEAD_DIM=head_dim, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                  EVEN_N=even_n, DOT_PRECISION=DOT_PRECISION[dtype])
    fn = KERNELS[name][0]
    return {c: values[c] for c in fn.arg_names if c in values}


def signature(name: str, dtype: str) -> dict[str, str]:
    """Each argument's Triton type, for ahead-of-time compilation: the tensors' pointers
    (fp32 for lse2 and delta), `seq_len` an i32, the rest constexprs."""
    fn, params = KERNELS[name]
    types = {p: "i32" if p == "seq_len" else "*fp32" if p in FP32_BUFFERS else f"*{dtype}" for p in params}
    return {**types, **{c: "constexpr" for c in fn.arg_names if c not in types}}


# -- launching ----------------------------------------------------------------------------

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _check(q, k, v):
    if not (q.shape == k.shape == v.shape and q.dim() == 4 and q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must be [B, H, N, d] of one shape and dtype, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    head_dim = q.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head dim {head_dim}: the reference takes powers of two from 16 on")
    if q.dtype not in _DTYPES:
        raise TypeError(f"the reference takes fp32, fp16 or bf16, got {q.dtype}")


def _interpreting() -> bool:
    from genomec.codegen.modules import triton_mode

    return triton_mode() == "interpret"


def _launch(name, grid, args: dict, dtype: str, head_dim: int, tiles: FlashTiles, even_n: bool):
    from genomec.codegen.modules import set_triton_mode

    if _interpreting():
        set_triton_mode(interpret=True)  # with what Triton 3.6's interpreter needs for `range(0, seq_len, ...)`
    fn, params = KERNELS[name]
    tile = kernel_tiles(name, tiles)
    fn[grid](*(args[p] for p in params), **constants(name, dtype, head_dim, tile, even_n), **tile.launch_options())


def flash_forward_pass(q, k, v, tiles: FlashTiles | None = None):
    """(out, lse2): the attention output [B, H, N, d] and each row's log-sum-exp of the
    base-2 scaled scores [B, H, N] (fp32), which the backward reads."""
    _check(q, k, v)
    tiles = tiles or (INTERPRETER_TILES if _interpreting() else default_tiles(q.shape[-1]))
    if _interpreting() and q.dtype == torch.bfloat16:  # the interpreter runs on NumPy, which has no bfloat16
        out, lse = flash_forward_pass(q.float(), k.float(), v.float(), tiles)
        return out.to(torch.bfloat16), lse
    batch, heads, seq_len, head_dim = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_len, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_len, tiles.forward.block_m), batch * heads)
    args = dict(q_ptr=q, k_ptr=k, v_ptr=v, out_ptr=out, lse_ptr=lse, seq_len=seq_len)
    _launch("flash_forward", grid, args, _DTYPES[q.dtype], head_dim, tiles, even(seq_len, tiles))
    return out, lse


def flash_backward_pass(q, k, v, out, lse, grad_out, tiles: FlashTiles | None = None):
    """(dq, dk, dv) of the attention output's cotangent `grad_out`."""
    _check(q, k, v)
    tiles = tiles or (INTERPRETER_TILES if _interpreting() else default_tiles(q.shape[-1]))
    if _interpreting() and q.dtype == torch.bfloat16:
        grads = flash_backward_pass(q.float(), k.float(), v.float(), out.float(), lse, grad_out.float(), tiles)
        return tuple(g.to(torch.bfloat16) for g in grads)
    batch, heads, seq_len, head_dim = q.shape
    dtype, even_n = _DTYPES[q.dtype], even(seq_len, tiles)
    args = dict(q_ptr=q.contiguous(), k_ptr=k.contiguous(), v_ptr=v.contiguous(), out_ptr=out.contiguous(),
                dout_ptr=grad_out.to(q.dtype).contiguous(), lse_ptr=lse, seq_len=seq_len)
    args["delta_ptr"] = torch.empty(batch, heads, seq_len, dtype=torch.float32, device=q.device)
    args["dq_ptr"], args["dk_ptr"], args["dv_ptr"] = (torch.empty_like(args["q_ptr"]) for _ in range(3))
    rows = triton.cdiv(seq_len, tiles.queries.block_m)
    _launch("flash_backward_preprocess", (rows, batch * heads), args, dtype, head_dim, tiles, even_n)
    _launch("flash_backward_keys", (triton.cdiv(seq_len, tiles.keys.block_n), batch * heads), args, dtype, head_dim, tiles, even_n)
    _launch("flash_backward_queries", (rows, batch * heads), args, dtype, head_dim, tiles, even_n)
    return args["dq_ptr"], args["dk_ptr"], args["dv_ptr"]


class FlashAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v with the reference's forward and backward kernels."""

    @staticmethod
    def forward(ctx, q, k, v, tiles=None):
        out, lse = flash_forward_pass(q, k, v, tiles)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.tiles = tiles
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        return (*flash_backward_pass(q, k, v, out, lse, grad_out, ctx.tiles), None)


def flash_attention(q, k, v, tiles: FlashTiles | None = None):
    return FlashAttention.apply(q, k, v, tiles)


def natural_lse(lse2):
    """The log-sum-exp of the (natural) scaled scores from the kernels' base-2 one."""
    return lse2 * math.log(2.0)
