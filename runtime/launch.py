"""Loading a compiled graph as a callable forward: `load(compiled)(q, k, v, mask)`.

A fused graph launches its generated kernels (the reduction kernel first, if any); a graph
outside the fused class runs on the reference executor, and says so (`.fused`, `.reason`).
The module is a `torch.autograd.Function` in an `nn.Module`; its backward recomputes the
forward with the reference executor and differentiates that (fused backward kernels are a
separate issue), so gradients are right on either path.
"""

from __future__ import annotations

import torch

from genomec.codegen.modules import import_module_file, use_interpreter
from genomec.codegen.schedule import schedule
from genomec.codegen.tiles import DOT_PRECISION, head_dim_pad
from genomec.ir import Compiled, execute

from . import autotune
from .cache import CacheEntry, KernelCache

_MODULES: dict[tuple, object] = {}  # (module path, interpret) -> imported module
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    return DOT_PRECISION[DTYPE_NAMES[dtype]]


class _ReferenceBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher, q, k, v, mask):
        ctx.launcher = launcher
        ctx.mask = mask
        ctx.save_for_backward(q, k, v)
        return launcher.launch(q, k, v, mask)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors  # None for an input the graph does not read
        with torch.enable_grad():
            inputs = [None if t is None else t.detach().requires_grad_(True) for t in saved]
            out = execute(ctx.launcher.compiled.simplified, *inputs, mask=ctx.mask)
            given = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad(out, given, grad_out, allow_unused=True))
        return (None, *(None if t is None else next(grads) for t in inputs), None)


class FusedAttention(torch.nn.Module):
    """The forward of one attention graph over q, k, v `[B, H, N, d]` and an optional key
    padding mask `[B, N]` (True = real token)."""

    def __init__(self, compiled: Compiled, entry: CacheEntry | None, cache: KernelCache, reason: str | None = None):
        super().__init__()
        self.compiled = compiled
        self.entry = entry
        self.cache = cache
        self.reason = reason  # why it falls back, when it does
        self.interpret = use_interpreter()
        self.module = None
        if entry is not None:
            key = (str(entry.module_path), self.interpret)
            if key not in _MODULES:
                _MODULES[key] = import_module_file(entry.module_path, self.interpret)
            self.module = _MODULES[key]
        self.tuning = autotune.TuningTable(cache.root / "autotune.json")

    @property
    def fused(self) -> bool:
        return self.entry is not None

    @property
    def backend(self) -> str:
        if not self.fused:
            return "reference (fallback)"
        return "triton (interpreter)" if self.interpret else "triton"

    def forward(self, q, k=None, v=None, mask=None):
        return _ReferenceBackward.apply(self, q, k, v, mask)

    # -- launching ----------------------------------------------------------------------

    def launch(self, q, k=None, v=None, mask=None, config: autotune.TileConfig | None = None):
        if not self.fused:
            return execute(self.compiled.simplified, q, k, v, mask=mask)
        given = {"q": q, "k": k, "v": v}
        used = [name for name in ("q", "k", "v") if name in self.compiled.simplified.inputs]
        ref = given[used[0]]
        if ref is None or ref.dim() != 4 or any(given[n] is None or given[n].shape != ref.shape for n in used):
            # the reference executor names the problem precisely
            return execute(self.compiled.simplified, q, k, v, mask=mask)
        if ref.dtype not in DTYPE_NAMES:
            raise TypeError(f"fused kernels take fp32, fp16 or bf16 inputs, got {ref.dtype}")
        if self.interpret and ref.dtype == torch.bfloat16:
            # Triton's interpreter runs on NumPy, which has no bfloat16: compute from the
            # fp32 values (what the kernel does after its loads anyway) and round the output
            upcast = {n: t.float() if t is not None else None for n, t in given.items()}
            return self.launch(upcast["q"], upcast["k"], upcast["v"], mask, config).to(torch.bfloat16)
        tensors = {n: given[n].contiguous() for n in used}
        config = config or self._config(tensors, mask, ref)
        return self._run(tensors, mask, ref, config)

    def _config(self, tensors, mask, ref) -> autotune.TileConfig:
        if self.interpret:
            return autotune.INTERPRETER_CONFIG
        head_dim = ref.shape[-1]
        arch = "sm_%d%d" % torch.cuda.get_device_capability(ref.device)
        key = autotune.tuning_key(arch, DTYPE_NAMES[ref.dtype], head_dim, ref.shape[2])

        def time_config(config):
            import triton.testing

            return triton.testing.do_bench(lambda: self._run(tensors, mask, ref, config), warmup=5, rep=20)

        return autotune.choose(self.tuning, self.compiled.hash, key, autotune.candidates(head_dim), time_config)

    def _run(self, tensors, mask, ref, config: autotune.TileConfig):
        batch, heads, seq_len, head_dim = ref.shape
        pad = head_dim_pad(head_dim)
        device = ref.device
        out = torch.empty(ref.shape, dtype=ref.dtype, device=device)  # contiguous, as the kernel writes it
        args = {f"{n}_ptr": t for n, t in tensors.items()}
        args["mask_ptr"] = mask.to(device=device, dtype=torch.int8).contiguous() if mask is not None else torch.zeros(1, dtype=torch.int8, device=device)
        args["out_ptr"] = out
        args["global_ptr"] = torch.empty(max(1, batch * heads * self.entry.reductions * pad * pad), dtype=torch.float32, device=device)
        args["stats_ptr"] = torch.empty(max(1, batch * heads * self.entry.column_softmaxes * 2 * pad), dtype=torch.float32, device=device)
        args["seq_len"], args["num_heads"] = seq_len, heads
        constants = dict(
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=pad,
            HEAD_SCALE=head_dim**-0.5,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            HAS_MASK=mask is not None,
            IS_CAUSAL=self.entry.causal,
            DOT_DTYPE=_triton_dtype(ref.dtype),
            DOT_PRECISION=dot_precision(ref.dtype),
        )
        for kernel in self.entry.kernels:
            fn = getattr(self.module, kernel.name)
            grid = (triton_cdiv(seq_len, config.block_m), batch * heads) if kernel.per_query_block else (batch * heads,)
            fn[grid](
                *(args[p] for p in kernel.params),
                **{c: constants[c] for c in kernel.constexprs},
                num_warps=config.num_warps,
                num_stages=config.num_stages,
            )
        return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def load(compiled: Compiled, cache: KernelCache | None = None, options: dict | None = None) -> FusedAttention:
    """The forward module of a lowered graph: fused kernels from the cache (built on a miss),
    or the reference executor for a graph outside the fused class."""
    cache = cache or KernelCache()
    sched = schedule(compiled.simplified)
    if not sched.fused:
        return FusedAttention(compiled, None, cache, reason=sched.reason)
    entry = cache.get_or_build(compiled, options)
    return FusedAttention(compiled, entry, cache)


def run_arrays(compiled: Compiled, arrays: dict, grad: bool = False, cache: KernelCache | None = None) -> dict:
    """`genomec run --backend triton`: the forward (and with grad, reference-differentiated
    gradients) of npz arrays. A graph outside the fused class runs on the reference executor,
    and a line on stderr says so."""
    import sys

    module = load(compiled, cache)
    if not module.fused:
        print(f"genomec run: graph {compiled.hash} is outside the fused class ({module.reason}); "
              "ran it on the reference executor", file=sys.stderr)
    elif module.interpret:
        print("genomec run: no CUDA GPU; running the generated kernels on Triton's interpreter", file=sys.stderr)
    shape = next(arrays[n] for n in ("q", "k", "v") if n in arrays).shape
    tensors = {}
    for name in ("q", "k", "v"):
        t = torch.from_numpy(arrays[name]) if name in arrays else torch.zeros(shape)
        tensors[name] = t.clone().requires_grad_(grad)
    mask = torch.from_numpy(arrays["mask"]) if "mask" in arrays else None
    out = module(tensors["q"], tensors["k"], tensors["v"], mask=mask)
    result = {"out": out.detach().numpy()}
    if grad:
        out.backward(torch.from_numpy(arrays["grad_out"]))
        for name in ("q", "k", "v"):
            g = tensors[name].grad
            result["d" + name] = (torch.zeros(shape) if g is None else g).numpy()
    return result
