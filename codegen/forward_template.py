"""The forward's pieces (SPEC 3, Forward): the reduction kernel's passes over tokens, the
attention kernel's passes over keys, and what the forward saves for the backward. Each is a
line (or a few) with holes; generate.py puts them in template.py's kernels and loops.

    {s}  a softmax node     {c}  a contraction     {r}  a reduction over tokens
    {x}, {y}, {p}  the operands' variables (emit.var)
"""

from . import template as T

# -- the attention kernel: one program per query block ------------------------------------

# Row statistics of a softmax over keys (running max in base 2, rescaled running sum; the
# update is the emitter's, emit.ROW_STATISTICS_UPDATE), then its log-sum-exp in log2 units,
# which normalises it in the next pass: p = exp2(c2 y - lse).
ROW_STATISTICS_INIT = '''\
{s}_max = tl.full([BLOCK_M], ROW_MAX_START, tl.float32)
{s}_sum = tl.zeros([BLOCK_M], tl.float32)'''
ROW_STATISTICS_FINISH = '{s}_lse = tl.where({s}_sum > 0, {s}_max + tl.math.log2({s}_sum), float("inf"))'

# A contraction over keys, matmul(pair, key rows), accumulated over the key blocks; online:
# rescaled to the softmax's new row max at every block, divided by its sum at the end.
ACCUMULATOR_INIT = "acc_{c} = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)"
ACCUMULATE = "acc_{c} += _dot({p}, {x}, DOT_DTYPE, DOT_PRECISION)"  # {p}: masked (emit.Emitter.kept)
ACCUMULATE_ONLINE = "acc_{c} = acc_{c} * {s}_rescale[:, None] + _dot({p}, {x}, DOT_DTYPE, DOT_PRECISION)"
ACCUMULATOR_FINISH = "{c}_i = acc_{c}"
ACCUMULATOR_FINISH_ONLINE = "{c}_i = acc_{c} / tl.where({s}_sum > 0, {s}_sum, 1.0)[:, None]"

# The output: padded query rows (the mask's) are 0.
STORE_OUTPUT = T.Access('''\
out = tl.where(query_ok[:, None], {output}, 0.0)
tl.store(out_ptr + head_offset + rows_m + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=rows_m_ok & dim_ok)''', "out_ptr")

# -- the key-rows kernel: one program per token block ---------------------------------------

# Key-side values written once as token rows (in the inputs' dtype: only products read
# them), and read back by the passes over keys ({v}: the value; {at}: its rows' offsets).
STORE_KEY_ROWS = T.Access(
    "tl.store(key_rows_ptr + {at}, {v}_j.to(key_rows_ptr.dtype.element_ty), mask=rows_n_ok & dim_ok)", "key_rows_ptr")
LOAD_KEY_ROWS = T.Access("{v}_j = tl.load(key_rows_ptr + {at}, mask={mask}, other=0.0)", "key_rows_ptr")

# -- the reduction kernel: one program per (batch, head), over all tokens -----------------

# Column statistics of a softmax over tokens of a [d,N] value (held as token rows).
COLUMN_STATISTICS_INIT = '''\
{s}_max = tl.full([HEAD_DIM_PAD], ROW_MAX_START, tl.float32)
{s}_sum = tl.zeros([HEAD_DIM_PAD], tl.float32)'''
COLUMN_STATISTICS_UPDATE = '''\
{s}_scores = tl.where(token_ok[:, None], {x}, float("-inf"))
{s}_max_new = tl.maximum({s}_max, tl.max({s}_scores, 0))
{s}_sum = {s}_sum * tl.exp({s}_max - {s}_max_new) + tl.sum(tl.exp({s}_scores - {s}_max_new[None, :]), 0)
{s}_max = {s}_max_new'''
# The stats buffer holds max then sum of each softmax: regions 2i and 2i + 1 of 2 * count.
COLUMN_STATISTICS_FINISH = T.Access('''\
{s}_sum = tl.where({s}_sum > 0, {s}_sum, 1.0)
tl.store(stats_ptr + {max_at}, {s}_max)
tl.store(stats_ptr + {sum_at}, {s}_sum)''', "stats_ptr")
COLUMN_STATISTICS_LOAD = T.Access('''\
{s}_max = tl.load(stats_ptr + {max_at})
{s}_sum = tl.load(stats_ptr + {sum_at})''', "stats_ptr")

# A reduction over tokens, [d,N] @ [N,d] -> [d,d]: x^T @ y over the token rows.
REDUCTION_INIT = "acc_{r} = tl.zeros([HEAD_DIM_PAD, HEAD_DIM_PAD], tl.float32)"
REDUCTION_UPDATE = "acc_{r} += _dot(tl.trans(tl.where(token_ok[:, None], {x}, 0.0)), {y}, DOT_DTYPE, DOT_PRECISION)"
REDUCTION_STORE = T.Access("tl.store(global_ptr + {at}, acc_{r})", "global_ptr")
# A share of the tokens' sum, added to the state (zeroed before the launch) by atomic adds:
# the states' sums come out in any order of the shares (fp32 rounding varies in the last bits)
REDUCTION_ADD = T.Access("tl.atomic_add(global_ptr + {at}, acc_{r})", "global_ptr")
GLOBAL_LOAD = T.Access("{r}_g = tl.load(global_ptr + {at})", "global_ptr")

# -- saved for the backward (SAVE_FOR_BACKWARD) -------------------------------------------

SAVE_LSE = T.Access('''\
{s}_lse = tl.where({s}_sum > 0, {s}_max + tl.math.log2({s}_sum), float("inf"))
tl.store(lse_ptr + {at}, {s}_lse, mask=offs_m < seq_len)''', "lse_ptr")
SAVE_CONTRACTION = T.Access("tl.store(saved_ptr + {at}, {c}_i, mask=rows_m_ok & dim_ok)", "saved_ptr")
