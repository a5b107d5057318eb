"""The reference executor: runs any valid IR with torch ops. The semantics oracle of every
test, and the fallback backend.

Inputs are `[..., N, d]` (batched `[B, H, N, d]` when a mask is given); any float dtype,
CPU or GPU, with autograd. Half-precision inputs are computed in fp32 and the output is
cast back; float64 stays float64.

Masks (SPEC 2.4), vectorised:
- Padding: every reduction over the token axis skips padded tokens (the op references
  take a boolean mask), which is exactly running the graph on the sequence with those
  tokens deleted; padded output rows are 0.
- Causal: output row i is row i of the graph run on tokens 0..i. When every value that
  depends on a reduction over tokens reaches the output only through its own row (the
  "row-local" case: standard attention and most genomes), that is a lower-triangular mask
  on each such reduction. Otherwise (for example a `[d, d]` state, or an attention output
  used as keys) each prefix is run as its own padded sequence, batched: N times the work.
"""

from __future__ import annotations

import networkx as nx
import torch

from genomec.genome.ops import OPS

from .analysis import depends_on_token_reduction, row_local
from .graph import INPUT_OP, IR


class InputError(ValueError):
    """The arrays given to an executor do not fit the graph."""


def _prepare_inputs(ir: IR, q, k, v, mask):
    given = {"q": q, "k": k, "v": v}
    for name in ir.inputs:
        if given[name] is None:
            raise InputError(f"the graph reads input '{name}', which was not given")
    used = [given[name] for name in ir.inputs]
    ref = used[0]
    for name in ir.inputs:
        t = given[name]
        if not torch.is_floating_point(t):
            raise InputError(f"input '{name}' must be a float tensor, got {t.dtype}")
        if t.dim() < 2 or t.shape != ref.shape:
            raise InputError(f"inputs must share one shape [..., N, d]; '{name}' has {list(t.shape)}, expected {list(ref.shape)}")
    if mask is not None:
        if ref.dim() != 4:
            raise InputError(f"with a mask, inputs are [B, H, N, d]; got {list(ref.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != (ref.shape[0], ref.shape[2]):
            raise InputError(f"mask must be bool [B, N] = {[ref.shape[0], ref.shape[2]]}, got {mask.dtype} {list(mask.shape)}")
    compute_dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    values = {name: given[name].to(compute_dtype) for name in ir.inputs}
    return values, ref.dtype, ref.shape[-1]


def _evaluate(ir: IR, values: dict, head_dim: int, pad_mask=None, row_mask=None) -> torch.Tensor:
    """Run the graph. `pad_mask` [B,1,1,N] applies to every token reduction; `row_mask`
    [B,1,N,N], when given, replaces it in reductions of prefix-dependent values."""
    varies = depends_on_token_reduction(ir) if row_mask is not None else {}
    live = nx.ancestors(ir.graph, ir.output) | {ir.output}
    for node_id, node in ir.nodes():
        if node.op == INPUT_OP or node_id not in live:
            continue  # inputs are given; dead nodes are not computed
        op = OPS[node.op]
        operands = [values[o] for o in node.operands]
        mask = None
        if op.reduces_tokens(*(ir.node(o).shape for o in node.operands)):
            mask = row_mask if row_mask is not None and varies[node_id] else pad_mask
        values[node_id] = op.reference(*operands, head_dim=head_dim, mask=mask)
    return values[ir.output]


def execute(ir: IR, q=None, k=None, v=None, mask=None, causal: bool | None = None) -> torch.Tensor:
    """The graph's output `[..., N, d]` for inputs `[..., N, d]`.

    `mask` is a key-padding mask `[B, N]` (True = real token); `causal` defaults to the
    graph's own flag. Inputs the graph does not read may be None."""
    causal = ir.causal if causal is None else causal
    values, out_dtype, head_dim = _prepare_inputs(ir, q, k, v, mask)
    some_input = next(iter(values.values()))
    n_tokens = some_input.shape[-2]
    device = some_input.device

    if not causal:
        pad = None if mask is None else mask.to(device)[:, None, None, :]
        out = _evaluate(ir, values, head_dim, pad_mask=pad)
    elif row_local(ir):
        real = torch.ones(some_input.shape[0], n_tokens, dtype=torch.bool, device=device) if mask is None else mask.to(device)
        if some_input.dim() != 4:
            raise InputError(f"a causal graph takes inputs [B, H, N, d]; got {list(some_input.shape)}")
        prefix = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).tril()
        out = _evaluate(ir, values, head_dim, pad_mask=real[:, None, None, :], row_mask=real[:, None, None, :] & prefix)
    else:
        out = _execute_prefixes(ir, values, head_dim, mask)

    if mask is not None:
        out = out.masked_fill(~mask.to(device)[:, None, :, None], 0.0)
    return out.to(out_dtype)


def _execute_prefixes(ir: IR, values: dict, head_dim: int, mask) -> torch.Tensor:
    """General causal semantics: prefix p is a padded sequence of its own (tokens j <= p),
    all N prefixes batched together; row p of prefix p is output row p."""
    some_input = next(iter(values.values()))
    if some_input.dim() != 4:
        raise InputError(f"a causal graph takes inputs [B, H, N, d]; got {list(some_input.shape)}")
    batch, heads, n_tokens, _ = some_input.shape
    device = some_input.device
    real = torch.ones(batch, n_tokens, dtype=torch.bool, device=device) if mask is None else mask.to(device)
    prefix = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).tril()  # [p, j]: j <= p
    prefix_mask = (real[:, None, :] & prefix).reshape(batch * n_tokens, n_tokens)
    expanded = {
        name: t[:, None].expand(batch, n_tokens, *t.shape[1:]).reshape(batch * n_tokens, *t.shape[1:])
        for name, t in values.items()
    }
    out = _evaluate(ir, expanded, head_dim, pad_mask=prefix_mask[:, None, None, :])
    out = out.reshape(batch, n_tokens, heads, n_tokens, -1)  # [b, p, h, i, d]
    return out.diagonal(dim1=1, dim2=3).permute(0, 1, 3, 2)  # row i == p -> [b, h, i, d]

