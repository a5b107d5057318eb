"""A multi-head attention layer around one attention genome (SPEC 1: Q/K/V projected per
head, the graph per head, the output projection).

Only the inputs the simplified graph reads get a projection (a graph without `v` has no V
weights). Which implementation runs the graph:

- "auto" (default): the compiled module (fused forward and, in its class, fused backward) on
  CUDA tensors; the reference executor elsewhere, so models run on any machine.
- "triton": the compiled module always (on CPU: Triton's interpreter, slow, for checks).
- "reference": the reference executor always.
"""

from __future__ import annotations

import torch
from torch import nn

from genomec.ir import Compiled, execute, lower

from .cache import KernelCache
from .launch import CompiledAttention, load

BACKENDS = ("auto", "triton", "reference")


class MultiHeadGenomeAttention(nn.Module):
    """`x: [B, N, hidden]`, `mask: [B, N]` bool (True = real token) -> `[B, N, hidden]`."""

    def __init__(self, graph, hidden_size: int, num_heads: int, bias: bool = True, backend: str = "auto",
                 cache: KernelCache | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} heads")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.compiled = graph if isinstance(graph, Compiled) else lower(graph)
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.backend = backend
        self.cache = cache
        self.projections = nn.ModuleDict(
            {name: nn.Linear(hidden_size, hidden_size, bias=bias) for name in self.compiled.simplified.inputs}
        )
        self.output = nn.Linear(hidden_size, hidden_size, bias=bias)
        self._attention: CompiledAttention | None = None  # loaded on first use

    @property
    def attention(self) -> CompiledAttention:
        if self._attention is None:
            self._attention = load(self.compiled, self.cache)
        return self._attention

    def uses_kernels(self, x: torch.Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and x.is_cuda)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, hidden = x.shape
        heads = {
            name: projection(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]
            for name, projection in self.projections.items()
        }
        q, k, v = (heads.get(name) for name in ("q", "k", "v"))
        if self.uses_kernels(x):
            q, k, v = (None if t is None else t.contiguous() for t in (q, k, v))
            out = self.attention(q, k, v, mask=mask)
        else:
            out = execute(self.compiled.simplified, q, k, v, mask=mask)
        return self.output(out.transpose(1, 2).reshape(batch, length, hidden))
