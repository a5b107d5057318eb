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

from . import backward_template as B
from . import forward_template as F
from . import template as T
from .abi import SCALARS, Buffer, Element, Extent, Grid, KernelInterface, ModuleABI, Role
from .emit import GLOBAL, KEY, PAIR, QUERY, Emitter, var
from .template import Mask
from .backward import (
    BACKWARD_CONSTEXPRS, BackwardKind, BackwardSchedule, backward_schedule, format_backward, generate_backward, key_side_cotangents,
)
from .schedule import (
    AttentionKernel, KernelRole, KeyPass, KeyRowsKernel, PassKind, ReductionKernel, Schedule, format_schedule, key_values_computed, schedule,
)

GENERATOR_VERSION = "genomec-codegen/2"
# Backward kernels with one program per query block, and per token block (no pair tile);
# attention_bwd_keys has one per key block, attention_bwd_global one per (batch, head).
BACKWARD_GRIDS = {
    KernelRole.BWD_PREPARE: Grid.QUERY_BLOCKS, KernelRole.BWD_KEYS: Grid.KEY_BLOCKS, KernelRole.BWD_QUERIES: Grid.QUERY_BLOCKS,
    KernelRole.BWD_GLOBAL: Grid.HEADS, KernelRole.BWD_KEY_ROWS: Grid.TOKEN_BLOCKS, KernelRole.BWD_QUERY_ROWS: Grid.TOKEN_BLOCKS,
    KernelRole.BWD_STATE_ROWS: Grid.TOKEN_BLOCKS, KernelRole.BWD_COLUMN_ROWS: Grid.TOKEN_BLOCKS,
}


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
    """The registry's Triton helpers (`Op.triton_helpers`, and with `backward` the
    `Op.triton_vjp_helpers` too), each once, grouped by op kind in OpKind's order and in
    registry order within a kind (the order generated modules have always had);
    keep_what_is_called drops the uncalled ones."""
    ops = sorted(OPS.values(), key=lambda op: list(OpKind).index(op.kind))
    sources = dict.fromkeys(source for op in ops for source in op.triton_helpers)
    if backward:
        sources.update(dict.fromkeys(source for op in ops for source in op.triton_vjp_helpers))
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
KEY_ROWS_CONSTEXPRS = ("HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "HAS_MASK", "DOT_DTYPE", "DOT_PRECISION")
ATTENTION_CONSTEXPRS = (
    "HEAD_DIM", "HEAD_DIM_PAD", "HEAD_SCALE", "BLOCK_M", "BLOCK_N", "HAS_MASK", "IS_CAUSAL", "DOT_DTYPE", "DOT_PRECISION",
)


def _comment(text: str) -> str:
    return "\n".join("#   " + line for line in text.split("\n"))


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
    source += helper_sources(backward=plan.fused)
    kernels = []
    if sched.reduction is not None:
        text, interface = _reduction_kernel(sched, sched.reduction)
        source += text
        kernels.append(interface)
    if sched.key_rows is not None:
        text, interface = _key_rows_kernel(sched, sched.key_rows)
        source += text
        kernels.append(interface)
    text, interface = _attention_kernel(sched, sched.attention, plan)
    source += text
    kernels.append(interface)
    if plan.fused:
        for name, text, params in generate_backward(sched, plan):
            source += text
            kernels.append(KernelInterface(name, params, BACKWARD_CONSTEXPRS, BACKWARD_GRIDS[name], backward=True))
    params = {p for k in kernels for p in k.params}
    writers = {p: sum(p in k.params for k in kernels) for p in params}
    abi = ModuleABI(tuple(kernels), _buffers(params, writers, sched, plan), compiled.simplified.causal, None if plan.fused else plan.reason)
    return GeneratedModule(compiled.hash, sched, keep_what_is_called(source), abi, plan)


def _buffers(params: set[str], writers: dict[str, int], sched: Schedule, plan: BackwardSchedule) -> tuple[Buffer, ...]:
    """The buffers behind the kernels' pointer parameters, sized from the schedule and the
    backward plan (template.py's offsets index them the same way). An input's gradient is in
    the inputs' dtype when one kernel writes it, else in fp32 (backward_template.STORE_OWN_ROWS)."""
    fp32, given = Element.FP32, Role.GIVEN
    softmaxes, contractions = (len(plan.softmaxes), len(plan.contractions)) if plan.fused else (0, 0)
    column_softmaxes = len(plan.column_softmaxes) if plan.fused else 0
    # next to a pass over keys, the key-side kernels leave each column softmax's dP shares here
    column_shares = column_softmaxes if plan.fused and plan.kind == BackwardKind.KEYS else 0
    declared = (
        *(Buffer(f"{n}_ptr", Element.INPUT, given) for n in ("q", "k", "v")),
        Buffer("mask_ptr", fp32, given, extent=None),  # [B, N] key bias (0 real, -inf padding), or one element without a mask
        Buffer("out_ptr", Element.INPUT, Role.OUTPUT),
        # zeroed: a reduction split over programs adds its shares into it
        Buffer("global_ptr", fp32, Role.STATE, Extent.STATE, len(sched.reductions), zeroed=bool(sched.reduction and not sched.reduction.column_softmaxes)),
        Buffer("stats_ptr", fp32, Role.STATE, Extent.HEAD_DIM, 2 * len(sched.column_softmaxes)),  # max and sum
        Buffer("key_rows_ptr", Element.INPUT, Role.STATE, Extent.TOKEN_ROWS, len(sched.key_rows.rows) if sched.key_rows else 0),
        Buffer("lse_ptr", fp32, Role.SAVED, Extent.TOKENS, softmaxes),
        Buffer("saved_ptr", fp32, Role.SAVED, Extent.TOKEN_ROWS, contractions),
        Buffer("dout_ptr", Element.INPUT, given),
        Buffer("dcontraction_ptr", Element.INPUT, Role.SCRATCH, Extent.TOKEN_ROWS, contractions),
        Buffer("delta_ptr", fp32, Role.SCRATCH, Extent.TOKENS, B.ROW_STAT_ROWS * softmaxes),
        Buffer("dkey_rows_ptr", fp32, Role.SCRATCH, Extent.TOKEN_ROWS, len(key_side_cotangents(sched, plan)) if plan.fused and plan.key_chains else 0),
        Buffer("dcolumn_ptr", fp32, Role.SCRATCH, Extent.TOKEN_ROWS, column_shares, zeroed=True),
        Buffer("column_delta_ptr", fp32, Role.SCRATCH, Extent.HEAD_DIM, column_softmaxes),
        Buffer("dglobal_ptr", fp32, Role.SCRATCH, Extent.STATE, len(sched.reductions)),
        *(Buffer(f"d{n}_ptr", Element.INPUT if writers.get(f"d{n}_ptr") == 1 else fp32, Role.GRADIENT) for n in ("q", "k", "v")),
    )
    missing = params - {b.name for b in declared} - set(SCALARS)
    assert not missing, f"kernel parameters without a buffer: {sorted(missing)}"
    return tuple(b for b in declared if b.name in params)


# A top-level definition of the module: a jitted function, or a module constant.
_DEFINITION = re.compile(r"^(?:@triton\.jit\ndef (?P<function>\w+)\(|(?P<constant>[A-Z_][A-Z0-9_]*) = tl\.constexpr\()", re.M)


_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")


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
        for name in (helpers - used) & set(_IDENTIFIER.findall(source, body, end)):
            used.add(name)
            todo.append(name)
    for start, _, end in sorted((spans[name] for name in helpers - used), reverse=True):
        source = source[:start] + source[end:]
    return re.sub(r"\n+(?=@triton\.jit\n)", "\n\n\n", source)  # two blank lines before each


def _column_statistics_at(sched: Schedule, s: str) -> dict:
    """Where a softmax over tokens keeps its column max and sum in the stats buffer."""
    return T.column_statistics_at(sched.column_softmaxes.index(s), len(sched.column_softmaxes))


def _state_at(sched: Schedule, r: str) -> str:
    return T.state_at(sched.reductions.index(r), len(sched.reductions))


def _reduction_kernel(sched: Schedule, kernel: ReductionKernel):
    ir = sched.ir
    emitter = Emitter(ir, sched.kinds)
    passes = []
    if kernel.column_softmaxes:
        passes.append(
            T.TOKEN_LOOP.render(
                "pass 1: column statistics of the softmaxes over tokens",
                init=[F.COLUMN_STATISTICS_INIT.format(s=s) for s in kernel.column_softmaxes],
                sections=[
                    ("token values", [line for n in kernel.statistics_values for line in emitter.emit(n, KEY)]),
                    ("update column max and sum",
                     [F.COLUMN_STATISTICS_UPDATE.format(s=s, x=var(ir.node(s).operands[0], KEY)) for s in kernel.column_softmaxes]),
                ],
                finish=[emitter.access(F.COLUMN_STATISTICS_FINISH, s=s, **_column_statistics_at(sched, s)) for s in kernel.column_softmaxes],
            )
        )
    # Without column statistics (which need every token before the reductions), the tokens
    # are shared out over programs (abi.Grid.TOKEN_SPLITS), each adding its sum to the states.
    split = not kernel.column_softmaxes
    if kernel.reductions:
        passes.append(
            (T.SHARE_LOOP if split else T.TOKEN_LOOP).render(
                f"pass {len(passes) + 1}: reduce over " + ("this share of the tokens" if split else "tokens"),
                init=[F.REDUCTION_INIT.format(r=r) for r in kernel.reductions],
                sections=[
                    ("token values", [line for n in kernel.reduction_values for line in emitter.emit(n, KEY)]),
                    ("accumulate x^T @ y", [
                        F.REDUCTION_UPDATE.format(r=r, x=var(ir.node(r).operands[0], KEY), y=var(ir.node(r).operands[1], KEY))
                        for r in kernel.reductions
                    ]),
                ],
                finish=[emitter.access(F.REDUCTION_ADD if split else F.REDUCTION_STORE, r=r, at=_state_at(sched, r)) for r in kernel.reductions],
            )
        )
    params = emitter.params()
    text = T.kernel(kernel.name, params, REDUCTION_CONSTEXPRS, T.Program.TOKEN_SPLIT if split else T.Program.HEAD, "".join(passes))
    return text, KernelInterface(kernel.name, params, REDUCTION_CONSTEXPRS, Grid.TOKEN_SPLITS if split else Grid.HEADS)


def _key_rows_kernel(sched: Schedule, kernel: KeyRowsKernel):
    """Per token block: the key-side values the passes over keys read, written once."""
    emitter = Emitter(sched.ir, sched.kinds)
    count = len(kernel.rows)
    body = T.section("key-side values", [line for n in kernel.values for line in emitter.emit(n, KEY)])
    body += T.section("written as key rows", [
        emitter.access(F.STORE_KEY_ROWS, v=r, at=T.token_rows_at(i, count, "rows_n")) for i, r in enumerate(kernel.rows)
    ])
    params = emitter.params()
    text = T.kernel(kernel.name, params, KEY_ROWS_CONSTEXPRS, T.Program.TOKEN_BLOCK, body)
    return text, KernelInterface(kernel.name, params, KEY_ROWS_CONSTEXPRS, Grid.TOKEN_BLOCKS)


def _attention_kernel(sched: Schedule, kernel: AttentionKernel, plan: BackwardSchedule):
    ir = sched.ir
    online = next((p.softmaxes[0] for p in kernel.key_passes if p.kind == PassKind.ONLINE), None)
    emitter = Emitter(ir, sched.kinds, online_softmax=online)

    global_lines = [emitter.access(F.GLOBAL_LOAD, r=r, at=_state_at(sched, r)) for r in kernel.globals_loaded]
    used_values = set(kernel.query_values).union(*(p.key_values for p in kernel.key_passes))
    global_lines += [
        emitter.access(F.COLUMN_STATISTICS_LOAD, s=s, **_column_statistics_at(sched, s))
        for s in sched.column_softmaxes
        if s in used_values
    ]
    global_lines += [line for n in kernel.global_values for line in emitter.emit(n, GLOBAL)]

    saves = plan.fused and plan.kind == BackwardKind.KEYS  # ([d,d] states are in the reduction kernel's buffer already)
    constexprs = ATTENTION_CONSTEXPRS + (("SAVE_FOR_BACKWARD",) if saves else ())
    body = T.section("global values", global_lines)
    body += T.section("query-side values", [line for n in kernel.query_values for line in emitter.emit(n, QUERY)])
    body += "".join(_key_pass(sched, emitter, index + 1, p) for index, p in enumerate(kernel.key_passes))
    if saves:
        body += T.section("save for the backward: log-sum-exp of each softmax over keys, contraction values", _save_lines(emitter, plan))
    body += T.section("post values", [line for n in kernel.post_values for line in emitter.emit(n, QUERY)])
    body += T.section("store: padded query rows are 0", [emitter.access(F.STORE_OUTPUT, output=var(ir.output, QUERY))])
    params = emitter.params()
    text = T.kernel(kernel.name, params, constexprs, T.Program.QUERY_BLOCK, body)
    return text, KernelInterface(kernel.name, params, constexprs, Grid.QUERY_BLOCKS)


def _save_lines(emitter: Emitter, plan: BackwardSchedule) -> list[str]:
    """The forward's SAVE_FOR_BACKWARD lines: log-sum-exp per softmax, contraction values."""
    softmaxes, contractions = len(plan.softmaxes), len(plan.contractions)
    lines = [emitter.access(F.SAVE_LSE, s=s, at=T.row_stats_at(i, softmaxes)) for i, s in enumerate(plan.softmaxes)]
    lines += [emitter.access(F.SAVE_CONTRACTION, c=c, at=T.token_rows_at(i, contractions)) for i, c in enumerate(plan.contractions)]
    return T.static_if("SAVE_FOR_BACKWARD", lines)


def _key_pass(sched: Schedule, emitter: Emitter, index: int, p: KeyPass) -> str:
    """One pass over the key blocks: its whole blocks, then the ones a mask cuts."""
    ir = sched.ir
    key_values = key_values_computed(sched, p)  # (or read, from the key-rows kernel)
    online = p.kind == PassKind.ONLINE
    s = p.softmaxes[0] if online else None
    operands = [ir.node(c).operands for c in p.contractions]

    def sections(mask: Mask) -> list:
        with emitter.blocks(mask, KEY), emitter.reading_key_rows(sched.key_rows):
            parts = [
                ("key-side values", [line for n in key_values for line in emitter.emit(n, KEY)]),
                ("pair values", [line for n in p.pair_values for line in emitter.emit(n, PAIR)]),
            ]
            if p.kind == PassKind.STATISTICS:
                parts.append(("update row max and sum", [line for s in p.softmaxes for line in emitter.row_statistics_update(s)]))
            elif online:  # the weights are 0 where the softmax's scores were masked
                parts.append(("accumulate pair @ key rows (rescaled to the new row max)",
                              [F.ACCUMULATE_ONLINE.format(c=c, s=s, p=var(a, PAIR), x=var(b, KEY)) for c, (a, b) in zip(p.contractions, operands)]))
            else:
                parts.append(("accumulate pair @ key rows",
                              [F.ACCUMULATE.format(c=c, p=emitter.kept(var(a, PAIR), "0.0"), x=var(b, KEY)) for c, (a, b) in zip(p.contractions, operands)]))
            return parts

    if p.kind == PassKind.STATISTICS:
        return T.KEY_LOOP.render_split(
            f"pass {index}: row statistics of {', '.join(p.softmaxes)}",
            init=[F.ROW_STATISTICS_INIT.format(s=s) for s in p.softmaxes],
            sections=sections,
            finish=[F.ROW_STATISTICS_FINISH.format(s=s) for s in p.softmaxes],
        )
    init = [F.ROW_STATISTICS_INIT.format(s=s)] if online else []
    init += [F.ACCUMULATOR_INIT.format(c=c) for c in p.contractions]
    finish = F.ACCUMULATOR_FINISH_ONLINE if online else F.ACCUMULATOR_FINISH
    return T.KEY_LOOP.render_split(
        f"pass {index}: " + (f"online softmax {s}, " if online else "") + f"contractions {', '.join(p.contractions)} over keys",
        init=init,
        sections=sections,
        finish=[finish.format(c=c, s=s) for c in p.contractions],
    )
