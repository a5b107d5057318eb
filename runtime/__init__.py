"""The runtime: the on-disk kernel cache, autotuning, loading a compiled graph as an
autograd module (`load(compiled)(q, k, v, mask)`, fused forward and backward kernels), and
a multi-head attention layer around a genome."""

from .cache import KernelCache, default_root
from .attention import MultiHeadGenomeAttention
from .launch import AttentionFunction, CompiledAttention, FusedAttention, load

__all__ = ["AttentionFunction", "CompiledAttention", "FusedAttention", "KernelCache", "MultiHeadGenomeAttention", "default_root", "load"]
