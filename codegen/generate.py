"""The code generator: schedule + templates + emitter -> one Triton module per graph.

The generated source does not depend on dtype, head dim or tile sizes: those are the
kernels' compile-time constants (HEAD_DIM, BLOCK_M, DOT_DTYPE, ...), chosen at launch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from genomec.genome import ops as registry
from genomec.genome.ops import OPS, OpKind
from genomec.ir import Compiled, analysis, format_ir

from . import template as T
from .abi import SCALARS, Buffer, Element, Extent, Grid, KernelInterface, ModuleABI, Role
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .backward import (
    BACKWARD_CONSTEXPRS, BackwardKind, BackwardSchedule, backward_schedule, format_backward, forward_save_lines, generate_backward,
)
from .schedule import AttentionKernel, KernelRole, KeyPass, PassKind, ReductionKernel, Schedule, format_schedule, schedule

GENERATOR_VERSION = "genomec-codegen/1"
# Backward kernels with one program per query (or token) block; attention_bwd_keys has one
# per key block, attention_bwd_global one per (batch, head).
PER_BLOCK_BACKWARD_KERNELS = (
    KernelRole.BWD_PREPARE, KernelRole.BWD_QUERIES, KernelRole.BWD_QUERY_ROWS, KernelRole.BWD_STATE_ROWS, KernelRole.BWD_COLUMN_ROWS,
)


def generator_fingerprint() -> str:
    """The version plus a digest of everything the generated source is made from (this
    package's code, the op registry with its kinds, spellings and helpers, and the IR
    analyses the scheduler reads): the kernel cache keys on it, so an edited template,
    spelling or helper never serves stale kernels."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        digest = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")) + [Path(registry.__file__), Path(analysis.__file__)]:
            digest.update(path.read_bytes())  # the registry's file holds every spelling and helper
        _FINGERPRINT = f"{GENERATOR_VERSION}+{digest.hexdigest()[:12]}"
    return _FINGERPRINT


def helper_sources(backward: bool = False) -> str:
    """The registry's Triton helpers (`Op.triton_helpers`, or `Op.triton_vjp_helpers`), each
    once, grouped by op kind in OpKind's order and in registry order within a kind (the
    order generated modules have always had); keep_what_is_called drops the uncalled ones."""
    ops = sorted(OPS.values(), key=lambda op: list(OpKind).index(op.kind))
    sources = dict.fromkeys(source for op in ops for source in (op.triton_vjp_helpers if backward else op.triton_helpers))
    return "".join("\n\n" + source for source in sources)


_FINGERPRINT: str | None = None


class NotFusable(ValueError):
    """Asked for kernels of a graph outside the fused class."""


@dataclass(frozen=True)
class GeneratedModule:
    hash: str
    schedule: Schedule
    source: str
    abi: ModuleABI  # its kernels and buffers: what launching and compiling it need
    backward: BackwardSchedule | None = None

    @property
    def kernels(self) -> tuple[KernelInterface, ...]:
        return self.abi.kernels

    @property
    def forward_kernels(self) -> tuple[KernelInterface, ...]:
        return self.abi.forward_kernels

    @property
    def backward_kernels(self) -> tuple[KernelInterface, ...]:
        return self.abi.backward_kernels


REDUCTION_CONSTEXPRS = ("HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_N", "HAS_MASK", "DOT_DTYPE", "DOT_PRECISION")
ATTENTION_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
)


def _indent(lines, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for text in lines for line in text.split("\n"))


def _comment(text: str) -> str:
    return "\n".join("#   " + line for line in text.split("\n"))


def _inputs_read(values) -> list[str]:
    """The inputs among `values`, in q, k, v order (each becomes a pointer parameter)."""
    return [n for n in ("q", "k", "v") if n in values]


def generate(compiled: Compiled, sched: Schedule | None = None) -> GeneratedModule:
    """The Triton module of a lowered graph, from its schedule when it is at hand (a stage's,
    `stages.Stage.schedule`). Raises NotFusable outside the fused class."""
    sched = sched or schedule(compiled.simplified)
    if not sched.fused:
        raise NotFusable(sched.reason)
    plan = backward_schedule(sched)
    source = T.HEADER.format(
        generator_version=GENERATOR_VERSION,
        hash=compiled.hash,
        ir=_comment(format_ir(compiled.simplified)),
        schedule=_comment(format_schedule(sched) + "\n" + format_backward(plan)),
    )
    source += helper_sources()
    if plan.fused:
        source += helper_sources(backward=True)
    kernels = []
    if sched.reduction is not None:
        text, interface = _reduction_kernel(sched, sched.reduction)
        source += text
        kernels.append(interface)
    text, interface = _attention_kernel(sched, sched.attention, plan)
    source += text
    kernels.append(interface)
    if plan.fused:
        for name, text, params in generate_backward(sched, plan):
            source += text
            grid = Grid.KEY_BLOCKS if name == KernelRole.BWD_KEYS else Grid.QUERY_BLOCKS if name in PER_BLOCK_BACKWARD_KERNELS else Grid.HEADS
            kernels.append(KernelInterface(name, params, BACKWARD_CONSTEXPRS, grid, backward=True))
    params = {p for k in kernels for p in k.params}
    abi = ModuleABI(tuple(kernels), _buffers(params, sched, plan), compiled.simplified.causal, None if plan.fused else plan.reason)
    return GeneratedModule(compiled.hash, sched, keep_what_is_called(source), abi, plan)


def _buffers(params: set[str], sched: Schedule, plan: BackwardSchedule) -> tuple[Buffer, ...]:
    """The buffers behind the kernels' pointer parameters, sized from the schedule and the
    backward plan (template.py's offsets index them the same way)."""
    fp32, given = Element.FP32, Role.GIVEN
    softmaxes, contractions = (len(plan.softmaxes), len(plan.contractions)) if plan.fused else (0, 0)
    column_softmaxes = len(plan.column_softmaxes) if plan.fused else 0
    # next to a pass over keys, the key-side kernels leave each column softmax's dP shares here
    column_shares = column_softmaxes if plan.fused and plan.kind == BackwardKind.KEYS else 0
    declared = (
        *(Buffer(f"{n}_ptr", Element.INPUT, given) for n in ("q", "k", "v")),
        Buffer("mask_ptr", Element.INT8, given, extent=None),  # [B, N], or one element without a mask
        Buffer("out_ptr", Element.INPUT, Role.OUTPUT),
        Buffer("global_ptr", fp32, Role.STATE, Extent.STATE, len(sched.reductions)),
        Buffer("stats_ptr", fp32, Role.STATE, Extent.HEAD_DIM, 2 * len(sched.column_softmaxes)),  # max and sum
        Buffer("lse_ptr", fp32, Role.SAVED, Extent.TOKENS, softmaxes),
        Buffer("saved_ptr", fp32, Role.SAVED, Extent.TOKEN_ROWS, contractions),
        Buffer("dout_ptr", Element.INPUT, given),
        Buffer("dcontraction_ptr", fp32, Role.SCRATCH, Extent.TOKEN_ROWS, contractions),
        Buffer("delta_ptr", fp32, Role.SCRATCH, Extent.TOKENS, T.ROW_STAT_ROWS * softmaxes),
        Buffer("dcolumn_ptr", fp32, Role.SCRATCH, Extent.TOKEN_ROWS, column_shares, zeroed=True),
        Buffer("column_delta_ptr", fp32, Role.SCRATCH, Extent.HEAD_DIM, column_softmaxes),
        Buffer("dglobal_ptr", fp32, Role.SCRATCH, Extent.STATE, len(sched.reductions)),
        *(Buffer(f"d{n}_ptr", fp32, Role.GRADIENT, zeroed=True) for n in ("q", "k", "v")),
    )
    missing = params - {b.name for b in declared} - set(SCALARS)
    assert not missing, f"kernel parameters without a buffer: {sorted(missing)}"
    return tuple(b for b in declared if b.name in params)


# A top-level definition of the module: a jitted function, or a module constant.
_DEFINITION = re.compile(r"^(?:@triton\.jit\ndef (?P<function>\w+)\(|(?P<constant>[A-Z_]+) = tl\.constexpr\()", re.M)


def keep_what_is_called(source: str) -> str:
    """The module without the helpers (`_name` functions) and constants that none of its
    kernels reaches: the templates offer every helper, each module keeps what it uses."""
    matches = list(_DEFINITION.finditer(source))
    spans = {}  # name -> (start of its definition, start of its body, end of its text)
    for m, following in zip(matches, matches[1:] + [None]):
        spans[m.group("function") or m.group("constant")] = (m.start(), m.end(), following.start() if following else len(source))
    helpers = {name for name in spans if name.startswith("_") or name.isupper()}
    used, todo = set(), [name for name in spans if name not in helpers]  # from the kernels
    while todo:
        _, body, end = spans[todo.pop()]
        for name in helpers - used:
            if re.search(rf"\b{name}\b", source[body:end]):
                used.add(name)
                todo.append(name)
    for start, _, end in sorted((spans[name] for name in helpers - used), reverse=True):
        source = source[:start] + source[end:]
    return re.sub(r"\n{4,}", "\n\n\n", source)


def _params(inputs, *, out: bool, sched: Schedule) -> tuple[str, ...]:
    params = [f"{name}_ptr" for name in inputs] + ["mask_ptr"]
    if out:
        params.append("out_ptr")
    if sched.reductions:
        params.append("global_ptr")
    if sched.column_softmaxes:
        params.append("stats_ptr")
    return tuple(params) + SCALARS


def _reduction_kernel(sched: Schedule, kernel: ReductionKernel):
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    count = len(sched.column_softmaxes)
    passes = []
    if kernel.column_softmaxes:
        passes.append(
            T.TOKEN_LOOP.format(
                title="pass 1: column statistics of the softmaxes over tokens",
                init=_indent([T.COLUMN_STATISTICS_INIT.format(s=s) for s in kernel.column_softmaxes], 4),
                values=_indent([line for n in kernel.statistics_values for line in emitter.emit(n, KEY)], 8),
                update_title="update column max and sum",
                update=_indent(
                    [T.COLUMN_STATISTICS_UPDATE.format(s=s, x=var(ir.node(s).operands[0], KEY)) for s in kernel.column_softmaxes], 8
                ),
                finish=_indent(
                    [
                        T.COLUMN_STATISTICS_FINISH.format(s=s, index=sched.column_softmaxes.index(s), count=count)
                        for s in kernel.column_softmaxes
                    ],
                    4,
                ),
            )
        )
    if kernel.reductions:
        n_red = len(sched.reductions)
        passes.append(
            T.TOKEN_LOOP.format(
                title=f"pass {len(passes) + 1}: reduce over tokens",
                init=_indent([T.REDUCTION_INIT.format(r=r) for r in kernel.reductions], 4),
                values=_indent([line for n in kernel.reduction_values for line in emitter.emit(n, KEY)], 8),
                update_title="accumulate x^T @ y",
                update=_indent(
                    [
                        T.REDUCTION_UPDATE.format(r=r, x=var(ir.node(r).operands[0], KEY), y=var(ir.node(r).operands[1], KEY))
                        for r in kernel.reductions
                    ],
                    8,
                ),
                finish=_indent(
                    [T.REDUCTION_STORE.format(r=r, index=sched.reductions.index(r), count=n_red) for r in kernel.reductions], 4
                ),
            )
        )
    values = set(kernel.statistics_values) | set(kernel.reduction_values)
    params = _params(_inputs_read(values), out=False, sched=sched)
    text = T.REDUCTION_KERNEL.format(name=kernel.name, params=" ".join(p + "," for p in params), passes="".join(passes))
    return text, KernelInterface(kernel.name, params, REDUCTION_CONSTEXPRS, Grid.HEADS)


def _attention_kernel(sched: Schedule, kernel: AttentionKernel, plan: BackwardSchedule):
    ir = sched.ir
    online = next((p.softmaxes[0] for p in kernel.key_passes if p.kind == PassKind.ONLINE), None)
    emitter = Emitter(ir, sched.kinds, online_softmax=online)

    global_lines = [
        T.GLOBAL_LOAD.format(r=r, index=sched.reductions.index(r), count=len(sched.reductions)) for r in kernel.globals_loaded
    ]
    used_values = set(kernel.query_values).union(*(p.key_values for p in kernel.key_passes))
    global_lines += [
        T.COLUMN_STATISTICS_LOAD.format(s=s, index=sched.column_softmaxes.index(s), count=len(sched.column_softmaxes))
        for s in sched.column_softmaxes
        if s in used_values
    ]
    global_lines += [line for n in kernel.global_values for line in emitter.emit(n, GLOBAL)]

    key_passes = [_key_pass(ir, emitter, index + 1, p) for index, p in enumerate(kernel.key_passes)]
    output = var(ir.output, QUERY)
    inputs = _inputs_read(used_values)
    params = _params(inputs, out=True, sched=sched)
    constexprs = ATTENTION_CONSTEXPRS
    saves = plan.fused and plan.kind == BackwardKind.KEYS  # ([d,d] states are in the reduction kernel's buffer already)
    if saves:  # the forward also saves what the backward reads, when asked
        saved = ("lse_ptr",) if plan.softmaxes else ()
        params = params[:-2] + saved + ("saved_ptr",) + params[-2:]
        constexprs = constexprs + ("SAVE_FOR_BACKWARD",)
    text = T.ATTENTION_KERNEL.format(
        name=kernel.name,
        params=" ".join(p + "," for p in params),
        global_values=_indent(global_lines or ["# (none)"], 4),
        query_values=_indent([line for n in kernel.query_values for line in emitter.emit(n, QUERY)] or ["# (none)"], 4),
        key_passes="".join(key_passes),
        save_for_backward=forward_save_lines(plan) if saves else "",
        save_constexpr=" SAVE_FOR_BACKWARD: tl.constexpr," if saves else "",
        post_values=_indent([line for n in kernel.post_values for line in emitter.emit(n, QUERY)] or ["# (none)"], 4),
        output=output,
    )
    return text, KernelInterface(kernel.name, params, constexprs, Grid.QUERY_BLOCKS)


def _key_pass(ir, emitter: Emitter, index: int, p: KeyPass) -> str:
    key_values = [line for n in p.key_values for line in emitter.emit(n, KEY)]
    pair_values = [line for n in p.pair_values for line in emitter.emit(n, PAIR)]
    if p.kind == PassKind.STATISTICS:
        return T.KEY_LOOP.format(
            index=index,
            title=f"row statistics of {', '.join(p.softmaxes)}",
            init=_indent([T.ROW_STATISTICS_INIT.format(s=s) for s in p.softmaxes], 4),
            key_values=_indent(key_values or ["# (none)"], 8),
            pair_values=_indent(pair_values or ["# (none)"], 8),
            update_title="update row max and sum",
            update=_indent([T.ROW_STATISTICS_UPDATE.format(s=s, x=var(ir.node(s).operands[0], PAIR)) for s in p.softmaxes], 8),
            finish=_indent([T.ROW_STATISTICS_FINISH.format(s=s) for s in p.softmaxes], 4),
        )
    online = p.kind == PassKind.ONLINE
    s = p.softmaxes[0] if online else None
    init = [T.ROW_STATISTICS_INIT.format(s=s)] if online else []
    init += [T.ACCUMULATOR_INIT.format(c=c) for c in p.contractions]
    accumulate = T.ACCUMULATE_ONLINE if online else T.ACCUMULATE
    finish = T.ACCUMULATOR_FINISH_ONLINE if online else T.ACCUMULATOR_FINISH
    operands = [ir.node(c).operands for c in p.contractions]
    return T.KEY_LOOP.format(
        index=index,
        title=(f"online softmax {s} and " if online else "") + f"contractions {', '.join(p.contractions)} over keys",
        init=_indent(init, 4),
        key_values=_indent(key_values or ["# (none)"], 8),
        pair_values=_indent(pair_values or ["# (none)"], 8),
        update_title="accumulate pair @ key rows" + (" (rescaled to the new row max)" if online else ""),
        update=_indent([accumulate.format(c=c, s=s, p=var(a, PAIR), x=var(b, KEY)) for c, (a, b) in zip(p.contractions, operands)], 8),
        finish=_indent([finish.format(c=c, s=s) for c in p.contractions], 4),
    )
