"""Loading a compiled graph as an autograd module: `load(compiled)(q, k, v, mask)`.

A fused graph launches its generated kernels (the reduction kernel first, if any); a graph
outside the fused class runs on the reference executor, and says so (`.fused`, `.reason`).
The module (`CompiledAttention`) is an `nn.Module` around a `torch.autograd.Function`:
when the graph is in the fused backward class (`.backward_fused`), the forward saves the
log-sum-exp of each softmax over keys and the contraction values (and keeps the reduction
kernel's [d,d] states and column statistics), and the backward launches
the generated backward kernels; otherwise (`.backward_reason`) the backward recomputes the
forward with the reference executor and differentiates that. Gradients are right on
either path.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from genomec.codegen.abi import Buffer, Element, Grid, ModuleABI, Role, reduction_splits
from genomec.codegen.modules import import_module_file, use_interpreter
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


class AttentionFunction(torch.autograd.Function):
    """One attention graph as an autograd op: `apply(module, q, k, v, mask)`, where `module`
    is the graph's CompiledAttention (None for an input the graph does not read)."""

    @staticmethod
    def forward(ctx, module, q, k, v, mask):
        ctx.module = module
        ctx.mask = mask
        wants_grad = any(ctx.needs_input_grad[1:4])
        if wants_grad and module.backward_fused and module.kernels_apply(q, k, v):
            out, saved = module.launch(q, k, v, mask, save_for_backward=True)
            ctx.fused_backward = True
            ctx.saved_names = tuple(saved)
            ctx.save_for_backward(q, k, v, *saved.values())
            return out
        ctx.fused_backward = False
        ctx.save_for_backward(q, k, v)
        return module.launch(q, k, v, mask)

    @staticmethod
    @once_differentiable  # the kernels' gradients carry no graph: refuse double backward loudly
    def backward(ctx, grad_out):
        if ctx.fused_backward:
            q, k, v, *buffers = ctx.saved_tensors
            grads = ctx.module.launch_backward(q, k, v, ctx.mask, dict(zip(ctx.saved_names, buffers)), grad_out)
            return (None, *grads, None)
        saved = ctx.saved_tensors  # None for an input the graph does not read
        with torch.enable_grad():
            inputs = [None if t is None else t.detach().requires_grad_(True) for t in saved]
            out = execute(ctx.module.compiled.simplified, *inputs, mask=ctx.mask)
            given = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad(out, given, grad_out, allow_unused=True))
        return (None, *(None if t is None else next(grads) for t in inputs), None)


class CompiledAttention(torch.nn.Module):
    """One attention graph over q, k, v `[B, H, N, d]` (fp32, fp16 or bf16) and an optional
    key padding mask `[B, N]` (True = real token), with its gradients."""

    def __init__(self, compiled: Compiled, entry: CacheEntry | None, cache: KernelCache, reason: str | None = None):
        super().__init__()
        self.compiled = compiled
        self.entry = entry
        self.cache = cache
        self.reason = reason  # why the forward falls back, when it does
        self.interpret = use_interpreter()
        self.abi: ModuleABI | None = entry.abi if entry is not None else None
        self.backward_fused = self.abi is not None and bool(self.abi.backward_kernels)
        if self.backward_fused:
            self.backward_reason = None
        else:
            self.backward_reason = "the forward is not fused" if self.abi is None else self.abi.backward_reason or "no backward kernels"
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

    @property
    def backward_backend(self) -> str:
        if not self.backward_fused:
            return "reference (fallback)"
        return "triton (interpreter)" if self.interpret else "triton"

    def forward(self, q, k=None, v=None, mask=None):
        return AttentionFunction.apply(self, q, k, v, mask)

    # -- launching ----------------------------------------------------------------------

    def _used(self) -> list[str]:
        return [name for name in ("q", "k", "v") if name in self.compiled.simplified.inputs]

    def kernels_apply(self, q, k=None, v=None) -> bool:
        """True when the kernels can take these inputs (else the reference executor runs,
        and names any problem precisely)."""
        given = {"q": q, "k": k, "v": v}
        used = self._used()
        ref = given[used[0]]
        return (
            self.fused
            and ref is not None
            and ref.dim() == 4
            and all(given[n] is not None and given[n].shape == ref.shape and given[n].dtype == ref.dtype for n in used)
        )

    def launch(self, q, k=None, v=None, mask=None, config: autotune.TileConfig | None = None, save_for_backward: bool = False):
        """The forward; with save_for_backward, `(out, saved)` where saved holds what the
        backward kernels read (log-sum-exp per softmax over keys, contraction values, the
        [d,d] states and column statistics of the reduction kernel)."""
        if not self.kernels_apply(q, k, v):
            return execute(self.compiled.simplified, q, k, v, mask=mask)
        given = {"q": q, "k": k, "v": v}
        used = self._used()
        ref = given[used[0]]
        if ref.dtype not in DTYPE_NAMES:
            raise TypeError(f"fused kernels take fp32, fp16 or bf16 inputs, got {ref.dtype}")
        if self.interpret and ref.dtype == torch.bfloat16:
            # Triton's interpreter runs on NumPy, which has no bfloat16: compute from the
            # fp32 values (what the kernel does after its loads anyway) and round the output
            upcast = {n: t.float() if t is not None else None for n, t in given.items()}
            result = self.launch(upcast["q"], upcast["k"], upcast["v"], mask, config, save_for_backward)
            if save_for_backward:
                return result[0].to(torch.bfloat16), result[1]
            return result.to(torch.bfloat16)
        tensors = {n: given[n].contiguous() for n in used}
        config = config or self._config(tensors, mask, ref)
        saved = self._saved_buffers(ref) if save_for_backward else None
        out = self._run(tensors, mask, ref, config, saved)
        return (out, saved) if save_for_backward else out

    def _saved_buffers(self, ref) -> dict:
        """The buffers the forward leaves for the backward, by parameter name."""
        return {b.name: _allocate(b, ref) for b in self.abi.with_role(Role.STATE, Role.SAVED)}

    def launch_backward(self, q, k, v, mask, saved: dict, grad_out, config: autotune.BackwardTiles | None = None):
        """Gradients (dq, dk, dv) of the fused backward kernels, None for an unused input."""
        given = {"q": q, "k": k, "v": v}
        used = self._used()
        ref = given[used[0]]
        dtype = ref.dtype
        if self.interpret and dtype == torch.bfloat16:  # NumPy has no bfloat16 (see launch)
            upcast = [t.float() if t is not None else None for t in (q, k, v)]
            grads = self.launch_backward(*upcast, mask, saved, grad_out.float(), config)
            return tuple(g.to(torch.bfloat16) if g is not None else None for g in grads)
        if config is None:  # tuned on a GPU, apart from the forward's choice
            config = self._backward_config(q, k, v, mask, saved, grad_out)
        args = {f"{n}_ptr": given[n].contiguous() for n in used}
        args["mask_ptr"] = _mask_buffer(mask, ref.device)
        args["dout_ptr"] = grad_out.to(dtype).contiguous()
        args |= saved
        args |= {b.name: _allocate(b, ref) for b in self.abi.with_role(Role.SCRATCH, Role.GRADIENT)}
        args["seq_len"], args["num_heads"] = ref.shape[2], ref.shape[1]
        for kernel in self.abi.backward_kernels:
            tiles = config.for_grid(kernel.grid)
            constants = dict(self._constants(ref, tiles), HAS_MASK=mask is not None)
            getattr(self.module, kernel.name)[_grid(kernel.grid, ref, tiles)](
                *(args[p] for p in kernel.params),
                **{c: constants[c] for c in kernel.constexprs},
                **tiles.launch_options(),
            )
        # an input that no backward kernel writes a gradient for has a zero one
        grads = {n: args[f"d{n}_ptr"] if f"d{n}_ptr" in args else torch.zeros(ref.shape, device=ref.device) for n in used}
        return tuple(grads[n].to(dtype) if n in used else None for n in ("q", "k", "v"))

    def _constants(self, ref, config) -> dict:
        head_dim = ref.shape[-1]
        return dict(
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad(head_dim),
            HEAD_SCALE=head_dim**-0.5,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            HAS_MASK=False,  # per call: the callers set it
            IS_CAUSAL=self.abi.causal,
            DOT_DTYPE=_triton_dtype(ref.dtype),
            DOT_PRECISION=dot_precision(ref.dtype),
            STABLE_SOFTMAX_GRAD=ref.dtype == torch.float32,
        )

    def _config(self, tensors, mask, ref) -> autotune.TileConfig:
        if self.interpret:
            return autotune.INTERPRETER_CONFIG
        head_dim = ref.shape[-1]
        arch = "sm_%d%d" % torch.cuda.get_device_capability(ref.device)
        key = autotune.tuning_key(arch, DTYPE_NAMES[ref.dtype], head_dim, ref.shape[2])

        def time_config(config):
            return autotune.benchmark(lambda: self._run(tensors, mask, ref, config))

        return autotune.choose(self.tuning, self.compiled.hash, key, autotune.candidates(head_dim, DTYPE_NAMES[ref.dtype]), time_config)

    def _backward_config(self, q, k, v, mask, saved: dict, grad_out) -> autotune.BackwardTiles:
        """The backward's tiles: tuned per (arch, dtype, head dim, length bucket) under a key of
        its own, timing the whole backward launch sequence (every launch allocates fresh
        gradient buffers, which the kernels accumulate into)."""
        if self.interpret:
            return autotune.INTERPRETER_BACKWARD
        ref = next(t for t in (q, k, v) if t is not None)
        dtype, head_dim = DTYPE_NAMES[ref.dtype], ref.shape[-1]
        arch = "sm_%d%d" % torch.cuda.get_device_capability(ref.device)
        key = autotune.tuning_key(arch, dtype, head_dim, ref.shape[2], backward=True)

        def time_config(config):
            return autotune.benchmark(lambda: self.launch_backward(q, k, v, mask, saved, grad_out, config))

        return autotune.choose(self.tuning, self.compiled.hash, key, autotune.backward_candidates(dtype, head_dim), time_config)

    def _run(self, tensors, mask, ref, config: autotune.TileConfig, saved: dict | None = None):
        out = _allocate(self.abi.buffer("out_ptr"), ref)
        args = {f"{n}_ptr": t for n, t in tensors.items()}
        args["mask_ptr"] = _mask_buffer(mask, ref.device)
        args["out_ptr"] = out
        if saved is not None:  # the [d,d] states and column statistics stay for the backward
            args |= saved
        else:
            args |= {b.name: _allocate(b, ref) for b in self.abi.with_role(Role.STATE)}
            # SAVE_FOR_BACKWARD is off: the pointers are never read
            args |= {b.name: torch.empty(1, dtype=torch.float32, device=ref.device) for b in self.abi.with_role(Role.SAVED)}
        args["seq_len"], args["num_heads"] = ref.shape[2], ref.shape[1]
        constants = dict(self._constants(ref, config), HAS_MASK=mask is not None, SAVE_FOR_BACKWARD=saved is not None)
        for kernel in self.abi.forward_kernels:
            getattr(self.module, kernel.name)[_grid(kernel.grid, ref, config)](
                *(args[p] for p in kernel.params),
                **{c: constants[c] for c in kernel.constexprs},
                **config.launch_options(),
            )
        return out




def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _grid(grid: Grid, ref, config: autotune.TileConfig) -> tuple[int, ...]:
    batch, heads, seq_len, _ = ref.shape
    if grid == Grid.HEADS:
        return (batch * heads,)
    if grid == Grid.TOKEN_SPLITS:
        return (reduction_splits(batch * heads, seq_len), batch * heads)
    block = config.block_n if grid == Grid.KEY_BLOCKS else config.block_m
    return (triton_cdiv(seq_len, block), batch * heads)


def _allocate(buffer: Buffer, ref) -> torch.Tensor:
    """A buffer of the ABI for inputs like `ref` ([B, H, N, d]): the inputs' shape for a
    token-rows buffer in their dtype, else flat."""
    batch, heads, seq_len, head_dim = ref.shape
    dtype = ref.dtype if buffer.element == Element.INPUT else torch.float32
    if buffer.role in (Role.OUTPUT, Role.GRADIENT):
        shape = ref.shape
    else:
        shape = (buffer.numel(batch * heads, seq_len, head_dim),)
    make = torch.zeros if buffer.zeroed else torch.empty
    return make(shape, dtype=dtype, device=ref.device)


def _mask_buffer(mask, device) -> torch.Tensor:
    """The kernels' view of a key padding mask [B, N] (True = real token): each token's key
    bias, 0 for a real token and -inf for padding (whole key blocks add it to their scores)."""
    if mask is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    real = mask.to(device=device, dtype=torch.bool)
    return torch.where(real, 0.0, float("-inf")).to(torch.float32).contiguous()




def load(compiled: Compiled, cache: KernelCache | None = None, options: dict | None = None) -> CompiledAttention:
    """The autograd module of a lowered graph: fused kernels from the cache (built on a miss),
    one module per stage for a graph that runs in stages, or the reference executor for a
    graph outside the fused class."""
    from genomec.codegen.stages import plan_stages

    from .staged import StagedAttention

    cache = cache or KernelCache()
    plan = plan_stages(compiled)
    if not plan.fused:
        return CompiledAttention(compiled, None, cache, reason=plan.reason)
    modules = [CompiledAttention(s.compiled, cache.get_or_build(s.compiled, options, s.schedule), cache) for s in plan.stages]
    # one module per stage, each from its own cache entry (a one-stage graph is its module,
    # compiled as is or as the plan rewrote it)
    return StagedAttention(plan, modules) if plan.multi_stage else modules[0]
