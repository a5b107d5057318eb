"""The backward's pieces (SPEC 3, Backward): loads and stores of what the forward saved and of
the cotangents between kernels, the softmax row terms, and the [d,d] states' cotangents.
backward_kernels.py puts them in template.py's kernels and loops; `{at}` holes take the
offsets of template.py's `*_at` helpers.

Kernels of a graph with a pass over keys, launched in this order, none of which writes an
[N, N] value:

    attention_bwd_prepare  per query block: cotangents of the contractions (back through the
                           post values from d_out) and, per softmax over keys, its row term
                           delta_i = sum_j P_ij dP_ij (one pass over keys per nesting level)
    attention_bwd_keys     per key block, looping over query blocks: cotangents of the
                           key-side values (contracted over queries), then back through the
                           key-side chains to the inputs' key rows
    attention_bwd_queries  per query block, looping over key blocks: cotangents of the
                           query-side values, then back to the inputs' query rows

Softmax tiles are recomputed from the forward's log-sum-exp: P = exp2(c2 y - lse) (base 2,
emit.py). The key kernel holds its pair tiles key x query (`t3_ji`), so that its key block is
the M side of every product (FlashAttention-2's backward). An input's gradient is written in
the inputs' dtype by the one kernel that computes it; where two kernels share one (a value
read as queries and as keys), the first stores its share in fp32 and the second adds its own
(the kernels run one after the other and each program owns its rows: no atomics).

A graph with [d,d] states (a reduction kernel) has, in this order:

    attention_bwd_global      per (batch, head), looping over the token blocks as query rows:
                              cotangents of the [d,d] values read by the query rows (x^T @ dy),
                              then back through the [d,d] values to each reduction's state; with
                              softmaxes over tokens, a second pass over the tokens for their
                              column terms delta_c = sum_n P dP
    attention_bwd_query_rows  per token block: the query rows' share of each input's gradient
                              (dy @ G^T ...)
    attention_bwd_state_rows  per token block: the reduction operands' share
                              (d(X^T Y) -> Y dG^T and X dG), added to it

(two kernels rather than one, so the [d,d] state and its cotangent are never live together).
With a pass over keys too, the prepare, keys and queries kernels run first, and the global
kernel's pass reads the saved contraction values where the post values need them.
"""

from . import template as T

# -- what the forward saved, and the contractions' cotangents -----------------------------

LOAD_LSE = T.Access('{s}_lse = tl.load(lse_ptr + {at}, mask=offs_m < seq_len, other=float("inf"))', "lse_ptr")
LOAD_CONTRACTION = T.Access("{c}_i = tl.load(saved_ptr + {at}, mask=rows_m_ok & dim_ok, other=0.0)", "saved_ptr")
LOAD_CONTRACTION_GRAD = T.Access("d{c}_i = tl.load(dcontraction_ptr + {at}, mask={mask}, other=0.0)", "dcontraction_ptr")
# (in the inputs' dtype: only tensor-core products read them, which round them to it anyway)
STORE_CONTRACTION_GRAD = T.Access(
    "tl.store(dcontraction_ptr + {at}, tl.where(dim_ok, d{c}_i, 0.0).to(dcontraction_ptr.dtype.element_ty), mask=rows_m_ok & dim_ok)",
    "dcontraction_ptr",
)
LOAD_OUTPUT_GRAD = T.Access('''\
d{out}_i = tl.load(dout_ptr + head_offset + rows_m + offs_d[None, :], mask=rows_m_ok & dim_ok, other=0.0).to(tl.float32)
d{out}_i = tl.where(query_ok[:, None], d{out}_i, 0.0)  # padded rows' outputs are constant 0''', "dout_ptr")

# An input's gradient on the token rows this program owns. The first kernel that writes it
# stores its share ({ptr}'s dtype: the inputs' own when it is the only one, else fp32);
# a later one adds its share to what is there (the kernels run one after the other, so no
# atomics). {rows}: rows_m or rows_n.
STORE_OWN_ROWS = '''\
tl.store({ptr} + {at}, ({grad}).to({ptr}.dtype.element_ty), mask={rows}_ok & dim_ok)'''
ADD_TO_OWN_ROWS = '''\
{var}_at = {at}
tl.store({ptr} + {var}_at, tl.load({ptr} + {var}_at, mask={rows}_ok & dim_ok, other=0.0) + {grad}, mask={rows}_ok & dim_ok)'''
# With key-side chains (backward_plan.BackwardSchedule.key_chains), the key-block kernel leaves
# the cotangents of the values its loop read as keys here, and attention_bwd_key_rows goes
# on back through the chains, per token block.
STORE_KEY_GRAD = T.Access("tl.store(dkey_rows_ptr + {at}, {grad}, mask=rows_n_ok & dim_ok)", "dkey_rows_ptr")
LOAD_KEY_GRAD = T.Access("tl.load(dkey_rows_ptr + {at}, mask=rows_n_ok & dim_ok, other=0.0)", "dkey_rows_ptr")
GRAD_ACCUMULATOR_INIT = "acc_d{x} = tl.zeros([{block}, HEAD_DIM_PAD], tl.float32)"

# -- softmax row terms: delta_i = sum_j P_ij dP_ij ----------------------------------------

DELTA_INIT = "{s}_delta = tl.zeros([BLOCK_M], tl.float32)"
DELTA_UPDATE = "{s}_delta += tl.sum({p} * d{p}, 1)"
LOAD_DELTA = T.Access("{s}_delta = tl.load(delta_ptr + {at}, mask=offs_m < seq_len, other=0.0)", "delta_ptr")
STORE_DELTA = T.Access("tl.store(delta_ptr + {at}, {s}_delta, mask=offs_m < seq_len)", "delta_ptr")

# -- the softmax gradient where one key dominates (STABLE_SOFTMAX_GRAD, fp32 inputs) ----------
#
# dS = P * (dP - delta) cancels at a row's largest score when its softmax saturates
# (P_ij* near 1, delta near dP_ij*): with fp32 rounding of dP and delta (about eps |dP|)
# the result, itself about (1 - P_ij*) |dP|, loses most of its digits. Unscaled scores of a
# value with itself (x x^T, |x|^2 about d on the diagonal) saturate on every row. The rows
# of dS sum to 0 exactly, so the dominant entry is taken as minus the sum of the others,
# which are small and keep their digits: prepare finds j* (the row's first largest score)
# in a pass over keys, sums a = sum_{j != j*} P dP and b = sum_{j != j*} P, and stores
# j* and dS_ij* = -(a - delta b) beside delta; the key-pass kernels put that value in at j*.
# Half-precision inputs keep the plain formula: their own rounding is far larger.
# The row statistics buffer holds three regions: every softmax's delta, j* (as a float)
# and dS_ij* (backward_kernels._star_offsets).
ROW_STAT_ROWS = 3
STAR_INIT = """\
{s}_zmax = tl.full([BLOCK_M], float("-inf"), tl.float32)
{s}_jstar = tl.full([BLOCK_M], -1, tl.int32)
{s}_pstar = tl.zeros([BLOCK_M], tl.float32)
{s}_gstar = tl.zeros([BLOCK_M], tl.float32)
{s}_a = tl.zeros([BLOCK_M], tl.float32)
{s}_b = tl.zeros([BLOCK_M], tl.float32)"""
# This block's largest score per row (first index) is the new j* when it beats the running
# one; the one it displaces, or else the block's, joins the sums.
STAR_UPDATE = """\
{s}_zb = tl.where(keep, {z}, float("-inf"))
{s}_bmax = tl.max({s}_zb, 1)
{s}_bj = key_start + tl.argmax({s}_zb, 1).to(tl.int32)
{s}_hit = (offs_n[None, :] == {s}_bj[:, None]) & keep
{s}_bp = tl.sum(tl.where({s}_hit, {p}, 0.0), 1)
{s}_bg = tl.sum(tl.where({s}_hit, d{p}, 0.0), 1)
{s}_new = {s}_bmax > {s}_zmax
{s}_others = keep & ~{s}_hit
{s}_pg = tl.where({s}_new, {s}_pstar * {s}_gstar, {s}_bp * {s}_bg)
{s}_a += {s}_pg + tl.sum(tl.where({s}_others, {p} * d{p}, 0.0), 1)
{s}_b += tl.where({s}_new, {s}_pstar, {s}_bp) + tl.sum(tl.where({s}_others, {p}, 0.0), 1)
{s}_pstar = tl.where({s}_new, {s}_bp, {s}_pstar)
{s}_gstar = tl.where({s}_new, {s}_bg, {s}_gstar)
{s}_jstar = tl.where({s}_new, {s}_bj, {s}_jstar)
{s}_zmax = tl.maximum({s}_zmax, {s}_bmax)"""
# {stars}: where the program's rows start in the second region (j*); the third (dS) is {region} on.
STAR_FINISH = T.Access("""\
{s}_dstar = -({s}_a - {s}_delta * {s}_b)
{s}_star_at = {stars}
tl.store(delta_ptr + {s}_star_at, {s}_jstar.to(tl.float32), mask=offs_m < seq_len)
tl.store(delta_ptr + {s}_star_at + {region}, {s}_dstar, mask=offs_m < seq_len)""", "delta_ptr")
STAR_LOAD = T.Access("""\
{s}_star_at = {stars}
{s}_jstar = tl.load(delta_ptr + {s}_star_at, mask=offs_m < seq_len, other=-1.0).to(tl.int32)
{s}_dstar = tl.load(delta_ptr + {s}_star_at + {region}, mask=offs_m < seq_len, other=0.0)""", "delta_ptr")
STAR_APPLY = "{g} = tl.where({key} == {jstar}, {dstar}, {g})"  # ({key}: offs_n, {jstar}, {dstar}: broadcast over the tile)

# -- [d,d] states and softmaxes over tokens -----------------------------------------------

# A [d,d] value's cotangent; past HEAD_DIM its rows and columns are padding
HEAD_BLOCK_OK = "head_block_ok = (offs_d[:, None] < HEAD_DIM) & dim_ok"
GLOBAL_GRAD_INIT = "acc_d{g} = tl.zeros([HEAD_DIM_PAD, HEAD_DIM_PAD], tl.float32)"
GLOBAL_GRAD_FINISH = "d{r}_g = tl.where(head_block_ok, d{r}_g, 0.0)"
GLOBAL_GRAD_STORE = T.Access("tl.store(dglobal_ptr + {at}, d{r}_g)", "dglobal_ptr")
GLOBAL_GRAD_LOAD = T.Access("d{r}_g = tl.load(dglobal_ptr + {at})", "dglobal_ptr")

# Column terms of a softmax over tokens: one value per head-dim column.
COLUMN_DELTA_INIT = "{s}_delta = tl.zeros([HEAD_DIM_PAD], tl.float32)"
COLUMN_DELTA_UPDATE = "{s}_delta += tl.sum(tl.where(token_ok[:, None], {p} * d{p}, 0.0), 0)"
STORE_COLUMN_DELTA = T.Access("tl.store(column_delta_ptr + {at}, {s}_delta)", "column_delta_ptr")
LOAD_COLUMN_DELTA = T.Access("{s}_delta = tl.load(column_delta_ptr + {at})", "column_delta_ptr")

# With a pass over keys, the key-pass kernels add their shares of dP of each softmax over
# tokens into a buffer of token rows (each program on its own rows), the global kernel sums
# delta from it, and attention_bwd_column_rows goes on from dX = P * (dP - delta) per token block.
LOAD_COLUMN_GRAD = T.Access("tl.load(dcolumn_ptr + {at}, mask=rows_n_ok & dim_ok, other=0.0)", "dcolumn_ptr")
