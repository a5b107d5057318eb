"""The runtime: the on-disk kernel cache, autotuning, and loading a compiled graph as a
callable forward (`load(compiled)(q, k, v, mask)`)."""

from .cache import KernelCache, default_root
from .launch import FusedAttention, load

__all__ = ["FusedAttention", "KernelCache", "default_root", "load"]
