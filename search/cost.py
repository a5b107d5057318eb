"""The cost of a candidate (SPEC 5, Cost): parameters, attention FLOPs and memory traffic
from the kernel schedule, and on a GPU the measured attention time.

Parameters are counted analytically for `GenomeBertForMaskedLM` (tests compare with the
real model). Attention cost is a simple model of the forward pass of one (sequence, head),
with N tokens and head dim d:

    FLOPs, per op, by its shape (x: [a,b], y: [c,b] or [b,c]):
        matmul             2abc                     a multiply and an add per term
        cos                2abc + 2(a+c)b + 2ac     dot products, squared row norms, / both norms
        euc                2abc + 2(a+c)b + 3ac     |x|^2 + |y|^2 - 2<x,y>, clamp, sqrt
        softmax            5 per element            max, subtract, exp, sum, divide
        transpose, input   0                        layout only
        other elementwise  1 per element

    Fused graphs (every stage of `plan_stages` one kernel plan): each value counts once for
    every time the schedule computes it: query-side, post and global values once, key-side
    values written by the key-rows kernel once (and read back as arrays), other key-side
    and pair values once per pass over the key blocks that lists them (a softmax whose row
    statistics need a pass of their own recomputes its scores), contractions once; the
    reduction kernel's token values once per pass over the tokens. A softmax counts once,
    where its value is computed (its statistics pass is the recomputed scores). Graphs outside
    the fused class (reference path): every value once.

    Bytes, 2 per element (bf16). Fused: each stage reads its query-side input arrays once
    and its key-side input arrays once per key pass (the reduction kernel: its inputs once
    per pass over the tokens, and it writes [d,d] states and column statistics that the
    attention kernel reads), and writes its output once. Reference path: the inputs are read
    and the output written once, and every [N,N] value is written and read once (per-token
    intermediates are left out: O(N d) next to O(N^2)).

Left out, to keep the model simple: the backward pass (SPEC 7 counts it as 2.5x the
forward), the recomputation of key-side values by every query block (O(N d) per block),
causal masking (the full square is counted), and the reference executor's per-prefix
evaluation of causal graphs that are not row-local.
"""

from __future__ import annotations

from collections import Counter

import torch

from genomec.codegen.schedule import key_values_computed, schedule
from genomec.codegen.stages import plan_stages
from genomec.genome import AttentionLayer, ConvLayer, ModelGenome
from genomec.genome.ops import TOKENS
from genomec.ir import IR, Compiled, lower
from genomec.ir.graph import INPUT_OP, PAIR_SPACE
from genomec.runtime import KernelCache, load
from genomec.runtime.bench import time_cuda

BYTES_PER_ELEMENT = 2  # bf16
SOFTMAX_FLOPS = 5  # per element: max, subtract, exp, sum, divide
SCORE_FINISH_FLOPS = {"cos": 2, "euc": 3}  # per score, after the dot product


# -- parameters -----------------------------------------------------------------------------


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs  # weight and bias


def count_parameters(genome: ModelGenome, vocab_size: int, max_positions: int) -> int:
    """Parameters of `GenomeBertForMaskedLM` for the genome, without building it: embeddings
    and their LayerNorm; per layer the token mixer (a projection per input the simplified
    graph reads plus the output projection, or the light conv), the FFN and two LayerNorms;
    the MLM head, whose decoder weight is the word embeddings (tied) but has its own bias."""
    hidden, ffn = genome.config["hidden_size"], genome.config["intermediate_size"]
    layer_norm = 2 * hidden
    embeddings = (vocab_size + max_positions + genome.config["type_vocab_size"]) * hidden + layer_norm
    mlm_head = _linear(hidden, hidden) + layer_norm + vocab_size
    total = embeddings + mlm_head
    for layer in genome.layers:
        if isinstance(layer, AttentionLayer):
            mixer = (len(lower(layer.graph).simplified.inputs) + 1) * _linear(hidden, hidden)
        elif isinstance(layer, ConvLayer) and layer.variant == "light":
            # Linear(H -> 2H) + GLU, depthwise Conv1d (H kernels of k taps, bias), Linear(H -> H)
            mixer = _linear(hidden, 2 * hidden) + hidden * layer.kernel_size + hidden + _linear(hidden, hidden)
        else:
            raise ValueError(f"no parameter count for layer {layer!r}")
        total += mixer + _linear(hidden, ffn) + _linear(ffn, hidden) + 2 * layer_norm
    return total


# -- attention FLOPs and bytes ------------------------------------------------------------------


def node_flops(ir: IR, node_id: str, seq_len: int, head_dim: int) -> int:
    """The work of computing one node once, by its shape (table in the module docstring)."""
    node = ir.node(node_id)
    if node.op in (INPUT_OP, "transpose"):
        return 0
    sizes = lambda shape: tuple(seq_len if axis == TOKENS else head_dim for axis in shape)  # noqa: E731
    (a, c), operand_dims = sizes(node.shape), [sizes(ir.node(o).shape) for o in node.operands]
    if node.op == "matmul":
        return 2 * a * operand_dims[0][1] * c
    if node.op in SCORE_FINISH_FLOPS:
        b = operand_dims[0][1]
        return 2 * a * b * c + 2 * (a + c) * b + SCORE_FINISH_FLOPS[node.op] * a * c
    if node.op == "softmax":
        return SOFTMAX_FLOPS * a * c
    return a * c  # elementwise


def _inputs_among(ir: IR, values) -> int:
    """How many input arrays a list of values holds."""
    return sum(ir.node(v).op == INPUT_OP for v in values)


def _fused_stage_cost(ir: IR, seq_len: int, head_dim: int) -> tuple[int, int, int]:
    """(flops, elements moved, passes) of one stage's kernel plan."""
    sched = schedule(ir)
    times: Counter = Counter()  # node -> how many times the schedule computes it
    token_array, moved, passes = seq_len * head_dim, 0, 0
    if sched.reduction is not None:
        r = sched.reduction
        for values in ([r.statistics_values] if r.column_softmaxes else []) + ([r.reduction_values] if r.reductions else []):
            times.update(values)
            moved += _inputs_among(ir, values) * token_array
            passes += 1
        times.update(r.reductions)
        # [d,d] states and two statistics (max, sum) per column: written here, read by the attention kernel
        moved += 2 * (len(r.reductions) * head_dim * head_dim + len(r.column_softmaxes) * 2 * head_dim)
    loaded = set(sched.key_rows.rows) if sched.key_rows is not None else set()
    if sched.key_rows is not None:  # key-side values computed once per token, written as arrays
        times.update(sched.key_rows.values)
        moved += (_inputs_among(ir, sched.key_rows.values) + len(loaded)) * token_array
    a = sched.attention
    times.update(a.query_values + a.global_values + a.post_values)
    moved += _inputs_among(ir, a.query_values) * token_array + token_array  # query rows in, output out
    for key_pass in a.key_passes:
        key_values = key_values_computed(sched, key_pass)  # (those of the key-rows kernel read back)
        times.update([v for v in key_values if v not in loaded] + list(key_pass.pair_values + key_pass.contractions))
        moved += (_inputs_among(ir, key_values) + len(loaded & set(key_values))) * token_array
        passes += 1
    # every value is computed at least once
    flops = sum(max(times[n], 1) * node_flops(ir, n, seq_len, head_dim) for n in ir.order())
    return flops, moved, passes


def attention_cost(compiled: Compiled, seq_len: int, head_dim: int) -> dict:
    """Forward FLOPs and bytes of one lowered attention graph per (sequence, head), the
    number of passes over the key blocks (and over the tokens, in reduction kernels) of its
    fused kernels (0 on the reference path), and whether it is fused."""
    plan = plan_stages(compiled)
    if plan.fused:
        flops = moved = passes = 0
        for stage in plan.stages:
            stage_flops, stage_moved, stage_passes = _fused_stage_cost(stage.compiled.simplified, seq_len, head_dim)
            flops, moved, passes = flops + stage_flops, moved + stage_moved, passes + stage_passes
        return {"flops": flops, "bytes": BYTES_PER_ELEMENT * moved, "passes": passes, "fused": True}
    ir = compiled.simplified
    flops = sum(node_flops(ir, n, seq_len, head_dim) for n in ir.order())
    pair_values = sum(ir.node(n).space == PAIR_SPACE for n in ir.order())
    moved = (len(ir.inputs) + 1) * seq_len * head_dim + 2 * pair_values * seq_len * seq_len
    return {"flops": flops, "bytes": BYTES_PER_ELEMENT * moved, "passes": 0, "fused": False}


def model_cost(genome: ModelGenome, batch: int, seq_len: int, heads: int, head_dim: int, vocab_size: int, max_positions: int) -> dict:
    """The cost a history record carries: parameters, and attention FLOPs and bytes summed
    over the attention layers for `batch` sequences of `heads` heads."""
    layers = [attention_cost(lower(graph), seq_len, head_dim) for graph in genome.attention_graphs()]
    copies = batch * heads
    return {
        "params": count_parameters(genome, vocab_size, max_positions),
        "attention_flops": copies * sum(c["flops"] for c in layers),
        "attention_bytes": copies * sum(c["bytes"] for c in layers),
        "fused_layers": sum(c["fused"] for c in layers),
        "attention_layers": len(layers),
    }


# -- measured time (GPU) -------------------------------------------------------------------------

_MEASURED_MS: dict[tuple, float] = {}  # (graph hash, batch, heads, seq_len, head_dim, dtype) -> ms


def measure_attention_ms(
    compiled: Compiled,
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    warmup: int = 3,
    repeats: int = 10,
    cache: KernelCache | None = None,
) -> float | None:
    """Median milliseconds of one forward + backward of `runtime.load(compiled)` on random
    inputs `[batch, heads, seq_len, head_dim]`, timed with CUDA events after `warmup` runs;
    None without CUDA. Memoised by graph hash and shape. `cache`: the KernelCache to load
    from (default: the user's). Build or launch errors propagate to the caller."""
    if not torch.cuda.is_available():
        return None
    key = (compiled.hash, batch, heads, seq_len, head_dim, str(dtype))
    if key in _MEASURED_MS:
        return _MEASURED_MS[key]
    module = load(compiled, cache)
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, heads, seq_len, head_dim)
    random = lambda: torch.randn(shape, generator=generator, device="cuda", dtype=dtype)  # noqa: E731
    read = compiled.simplified.inputs
    inputs = {name: random().requires_grad_(True) for name in read}
    grad_out = random()

    def forward_backward():
        out = module(inputs.get("q"), inputs.get("k"), inputs.get("v"))
        torch.autograd.grad(out, list(inputs.values()), grad_out, allow_unused=True)

    _MEASURED_MS[key] = time_cuda(forward_backward, warmup, repeats)[0]
    return _MEASURED_MS[key]
