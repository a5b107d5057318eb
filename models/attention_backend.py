"""Which implementation runs an attention graph: the one place where that is decided.

- "reference": the IR's reference executor (torch ops, any device, autograd).
- "triton": compiled kernels from `genomec.runtime` (CUDA, or CPU under TRITON_INTERPRET=1);
  an error if the runtime cannot provide them.
- "auto": compiled kernels on CUDA when `genomec.runtime` provides them, the reference
  executor otherwise (logged once, with the reason).

The runtime contract used here: `genomec.runtime.load(compiled)` returns an nn.Module
taking `q, k, v: [B, H, N, d]` (None for an input the graph does not read) and
`mask: [B, N] bool | None`, returning `[B, H, N, d]`; a graph outside the fused class
runs on the reference executor inside it.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from genomec.ir import Compiled, execute

logger = logging.getLogger("genomec.models")

AttentionFunction = Callable[..., torch.Tensor]  # (q, k, v, mask) -> out


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here."""


def _runtime_loader():
    """(the runtime's `load(compiled)`, None), or (None, why there is none)."""
    try:
        from genomec import runtime
    except Exception as e:  # the runtime is optional: a broken import must not break models
        return None, f"genomec.runtime does not import ({type(e).__name__}: {e})"
    if not callable(getattr(runtime, "load", None)):
        return None, "genomec.runtime has no compiled-kernel loader (load)"
    return runtime.load, None


_auto_fallback_logged: set[str] = set()


def attention_function(compiled: Compiled, backend: str, device: torch.device) -> AttentionFunction:
    """The function that runs a lowered graph on tensors on `device` with `backend`."""
    if backend == "reference":
        return _reference(compiled)
    if backend == "triton":
        loader, why_not = _runtime_loader()
        if loader is None:
            raise BackendUnavailable(f"attention backend 'triton' is unavailable: {why_not}")
        return _compiled(loader(compiled))
    if backend != "auto":
        raise ValueError(f"unknown attention backend {backend!r} (auto, reference, triton)")
    if device.type != "cuda":
        why_not = f"no compiled kernels on {device.type}"
    else:
        loader, why_not = _runtime_loader()
        if loader is not None:
            try:
                return _compiled(loader(compiled))
            except Exception as e:  # a genome outside the fused class, a compile failure, ...
                why_not = f"compiling failed ({type(e).__name__}: {e})"
    if why_not not in _auto_fallback_logged:
        _auto_fallback_logged.add(why_not)
        logger.info("attention backend 'auto' uses the reference executor: %s", why_not)
    return _reference(compiled, why_not)


def _compiled(module) -> AttentionFunction:
    """Kernels index [B, H, N, d] as laid out in memory: hand them contiguous tensors (the
    model's per-head views are transposes)."""

    if getattr(module, "fused", True) is False:
        logger.info("an attention graph runs on the reference executor: %s", getattr(module, "reason", "outside the fused class"))

    def run(q, k, v, mask=None):
        q, k, v = (None if t is None else t.contiguous() for t in (q, k, v))
        return module(q, k, v, mask=mask)

    run.module = module  # the runtime's module, for inspection (fused or fallback, and why)
    run.backend = "triton" if getattr(module, "fused", True) else "reference"
    run.reason = getattr(module, "reason", None)
    return run


def _reference(compiled: Compiled, reason: str | None = "the reference backend was asked for") -> AttentionFunction:
    def run(q, k, v, mask=None):
        return execute(compiled.simplified, q, k, v, mask=mask)

    run.backend = "reference"
    run.reason = reason
    return run
