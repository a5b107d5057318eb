"""The runtime: the on-disk kernel cache, autotuning, and loading a compiled graph as an
autograd module (`load(compiled)(q, k, v, mask)`, fused forward and backward kernels). The
multi-head attention layer around a graph is the model's (`genomec.models.GenomeAttention`)."""

from .cache import KernelCache, default_root
from .launch import AttentionFunction, CompiledAttention, load

__all__ = ["AttentionFunction", "CompiledAttention", "KernelCache", "default_root", "load"]
