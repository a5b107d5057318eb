"""Literal (slow, loop-based) implementations of the mask semantics of SPEC 2.4, used as
independent oracles for the vectorised reference executor."""

import torch

from genomec.ir import execute


def delete_padded_tokens(ir, q, k, v, mask):
    """For each batch row: delete the padded tokens, run the graph unmasked, put the real
    rows back; padded rows are 0."""
    out = torch.zeros_like(next(t for t in (q, k, v) if t is not None))
    for b in range(mask.shape[0]):
        keep = mask[b].nonzero().squeeze(-1)
        sub = [None if t is None else t[b : b + 1, :, keep] for t in (q, k, v)]
        out[b : b + 1, :, keep] = execute(ir, *sub, causal=False)
    return out


def run_prefixes(ir, q, k, v, mask=None):
    """Causal by definition: row i is row i of the graph run on tokens 0..i (padded tokens
    deleted first)."""
    some = next(t for t in (q, k, v) if t is not None)
    batch, _, n_tokens, _ = some.shape
    mask = torch.ones(batch, n_tokens, dtype=torch.bool) if mask is None else mask
    out = torch.zeros_like(some)
    for b in range(batch):
        real = mask[b].nonzero().squeeze(-1).tolist()
        for position, i in enumerate(real):
            keep = torch.tensor(real[: position + 1])
            sub = [None if t is None else t[b : b + 1, :, keep] for t in (q, k, v)]
            out[b, :, i] = execute(ir, *sub, causal=False)[0, :, -1]
    return out
