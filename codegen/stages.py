"""Stages (SPEC 3, Schedule): splitting a graph where one kernel cannot hold a value.

A new stage starts where a per-token value needed for other tokens depends on a reduction
over tokens: an attention output used as keys or as the values of a second attention, a
value after a `[d, d]` state that is reduced over tokens again, and so on. One program per
query block never holds such a value for the key rows it loops over, so a stage of its own
computes it for every token and writes it out as an `[N, d]` array, which later stages read
as an input.

Each stage is an ordinary attention graph over three token arrays: its input slots `q`, `k`,
`v` hold the genome inputs it reads (each in its own slot) and the values of earlier stages
(in the slots left free). So a stage is simplified, hashed, generated, cached and
differentiated like any other graph, and autograd chains the stages' backwards. A `[d, N]`
value is written as its transpose. A stage that would read more than three token arrays is
outside the fused class, and so is a graph with a part outside it in any stage.

    t5 = matmul(softmax(matmul(q, transpose(k))), v)       stage1: t5 from (q, k, v)
    out = matmul(softmax(matmul(q, transpose(t5))), v)     stage2: out from (q, k <- stage1, v)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from genomec.genome.ops import HEAD, INPUT_NAMES, INPUT_SHAPE, OPS, TOKENS, OpKind
from genomec.ir import Compiled, run_passes, structural_hash
from genomec.ir.analysis import row_local
from genomec.ir.graph import INPUT_OP, IR, IRBuilder
from genomec.ir.rewrite import rewrite, rule

from .schedule import OutsideFusedClass, Schedule, schedule


@dataclass(frozen=True)
class Stage:
    """One fused graph of a staged plan."""

    name: str  # "stage1", "stage2", ... in launch order; the last one computes the output
    computes: str  # the node of the whole graph whose value the stage writes
    compiled: Compiled  # the stage's own graph over its input slots q, k, v
    slots: tuple[tuple[str, str], ...]  # (slot, source): a genome input (q, k, v) or an earlier stage's name
    schedule: Schedule  # of compiled.simplified, fused (code generation takes it from here)

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self.slots)


@dataclass(frozen=True)
class StagePlan:
    """How a graph runs fused: one stage (the graph itself) or several; none when it is
    outside the fused class (`reason` says why)."""

    compiled: Compiled
    stages: tuple[Stage, ...] = ()
    reason: str | None = None
    note: str | None = None  # how the graph was rewritten to fuse it, if it was

    @property
    def fused(self) -> bool:
        return bool(self.stages)

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1


def plan_stages(compiled: Compiled) -> StagePlan:
    """The stages of a lowered graph: itself when one kernel plan holds it; for causal linear
    attention, the graph with its [d,d] state reassociated away; else one stage per value
    that a kernel plan asks a stage for, cut one at a time (so only values that must be
    written out are)."""
    ir = compiled.simplified
    single = schedule(ir)
    if single.fused:
        return StagePlan(compiled, (_whole(ir.output, compiled, single),))
    if ir.causal and not row_local(ir):
        causal = _causal_states_as_pairs(compiled)
        if causal is not None:
            return causal
    if single.needs_stage is None:
        return StagePlan(compiled, reason=single.reason)
    try:
        return StagePlan(compiled, _stages(compiled, _cuts(ir)))
    except OutsideFusedClass as e:
        return StagePlan(compiled, reason=str(e))


def _whole(output: str, compiled: Compiled, sched: Schedule) -> Stage:
    """A stage computing a whole graph."""
    return Stage("stage1", output, compiled, tuple((name, name) for name in compiled.simplified.inputs), sched)


def _state_from_tokens(builder: IRBuilder, bindings: dict) -> bool:
    """x [N,d] times a [d,d] state a b reduced over the tokens (a [d,N], b [N,d])."""
    shapes = [builder.node(bindings[v]).shape for v in ("x", "a", "b")]
    return shapes == [(TOKENS, HEAD), (HEAD, TOKENS), (TOKENS, HEAD)]


# x (a b) -> (x a) b: exact per prefix (SPEC 2.4), but O(N^2 d) instead of O(N d^2), so only
# for causal graphs, where the state over the whole prefix is what keeps them from fusing
CAUSAL_STATE_RULES = [rule("matmul(x, matmul(a, b)) -> matmul(matmul(x, a), b)", when=_state_from_tokens)]


def _causal_states_as_pairs(compiled: Compiled) -> StagePlan | None:
    """Causal linear attention: a token value times a [d,d] state over the tokens,
    x (a b), depends on the whole prefix (so it is not row-local); reassociated to (x a) b
    it is pair scores contracted over the keys, which the causal mask makes exact per
    prefix: out_i = sum_{j <= i} (x_i . a_j) b_j. One fused kernel instead of the
    reference executor's N prefixes."""
    hits = Counter()
    rewritten = rewrite(compiled.simplified, CAUSAL_STATE_RULES, hits)
    if not hits:
        return None
    simplified = run_passes(rewritten)
    sched = schedule(simplified)
    if not sched.fused:
        return None
    pairs = Compiled(compiled.simplified, simplified, structural_hash(simplified))
    return StagePlan(compiled, (_whole(compiled.simplified.output, pairs, sched),), note="causal: x (a b) with a [d,d] state a b reassociated to (x a) b")


def _cuts(ir: IR) -> list[str]:
    """The values to write out, in topological order: starting from none, schedule the
    graph of each stage (cut values read as placeholder inputs) and cut the value it asks
    for, until every stage is one kernel plan. Raises OutsideFusedClass otherwise."""
    cut: list[str] = []
    while True:
        for target in [n for n in ir.order() if n in cut] + [ir.output]:
            sched = schedule(stage_graph(ir, target, set(cut))[0])  # ids are the whole graph's
            if sched.needs_stage is not None and sched.needs_stage not in cut:
                cut.append(_value_to_write(ir, sched.needs_stage, cut))
                break
            if not sched.fused:
                raise OutsideFusedClass(f"stage computing '{target}': {sched.reason}")
        else:
            return [n for n in ir.order() if n in cut]


def _value_to_write(ir: IR, value: str, cut: list[str]) -> str:
    """What to write out so that `value` can be read by other tokens: the contraction it is
    a pointwise function of, when there is exactly one (then every value built from that
    attention output is computed from it again, in the next stage, at no cost), else the
    value itself."""
    reductions, stack, seen = [], [value], set()
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id in cut:
            continue
        seen.add(node_id)
        node = ir.node(node_id)
        if node.op != INPUT_OP and OPS[node.op].reduces_tokens(*(ir.node(o).shape for o in node.operands)):
            reductions.append(node_id)  # a contraction, a [d,d] state, a softmax over tokens
            continue
        stack.extend(node.operands)
    if len(reductions) == 1 and ir.node(reductions[0]).shape == INPUT_SHAPE and OPS[ir.node(reductions[0]).op].kind is OpKind.PRODUCT:
        return reductions[0]  # an attention output (a contraction over keys)
    return value


def _stages(compiled: Compiled, cut: list[str]) -> tuple[Stage, ...]:
    """One stage per cut value, then the output's, each with its input slots assigned."""
    ir = compiled.simplified
    stage_of = {node: f"stage{i + 1}" for i, node in enumerate(cut)}
    stages = []
    for index, target in enumerate(cut + [ir.output]):
        stage_ir, slots = stage_graph(ir, target, set(cut), stage_of)
        simplified = run_passes(stage_ir)
        sched = schedule(simplified)
        if not sched.fused:  # scheduled as placeholders already; checked anyway
            raise OutsideFusedClass(f"stage computing '{target}': {sched.reason}")
        stages.append(Stage(f"stage{index + 1}", target, Compiled(stage_ir, simplified, structural_hash(simplified)), slots, sched))
    return tuple(stages)


def stage_graph(ir: IR, target: str, cut: set[str], stage_of: dict[str, str] | None = None) -> tuple[IR, tuple[tuple[str, str], ...]]:
    """The graph computing `target` from the genome inputs and the cut values it reads, and
    its slots (slot, source). Node ids stay the whole graph's. Without `stage_of` (while the
    cuts are being found) every cut value is read from one placeholder input, unshared, so
    that the scheduler sees its kind; with it, each gets a slot of its own, at most three
    arrays in all."""
    needed: set[str] = set()
    stack = [target]
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        if node_id == target or node_id not in cut:
            stack.extend(ir.node(node_id).operands)
    read_inputs = [name for name in INPUT_NAMES if name in needed]
    read_values = [n for n in ir.order() if n in needed and n in cut and n != target]
    if stage_of is None:
        slot_of = {n: INPUT_NAMES[0] for n in read_values}
    else:
        free = [slot for slot in INPUT_NAMES if slot not in read_inputs]
        if len(read_values) > len(free):
            arrays = ", ".join(read_inputs + [f"the value of '{n}'" for n in read_values])
            raise OutsideFusedClass(f"the stage computing '{target}' reads {len(read_inputs) + len(read_values)} token arrays ({arrays}); a stage takes at most three")
        slot_of = dict(zip(read_values, free))

    builder = IRBuilder(share=stage_of is not None)
    new: dict[str, str] = {}
    for node_id, node in ir.nodes():
        if node_id not in needed:
            continue
        if node.op == INPUT_OP:
            new[node_id] = builder.input(node.input)
        elif node_id in slot_of:  # written by an earlier stage as [N,d]
            slot = builder.input(slot_of[node_id])
            new[node_id] = slot if node.shape == INPUT_SHAPE else builder.add("transpose", [slot], node_id=f"{node_id}_read")
        else:
            new[node_id] = builder.add(node.op, [new[o] for o in node.operands], node_id=node_id)
    output = new[target]
    if ir.node(target).shape != INPUT_SHAPE:  # a [d,N] value is written transposed
        output = builder.add("transpose", [output], node_id=f"{target}_written")
    slots = tuple((name, name) for name in read_inputs)
    if stage_of is not None:
        slots += tuple((slot_of[n], stage_of[n]) for n in read_values)
    slots = tuple(sorted(slots, key=lambda s: INPUT_NAMES.index(s[0])))
    return builder.finish(output, ir.causal, name=f"{ir.name or 'graph'}:{target}"), slots


def format_stages(plan: StagePlan) -> str:
    """The stage list `genomec show --stage schedule` prints before each stage's schedule."""
    if not plan.fused:
        return f"fallback (reference executor): {plan.reason}"
    lines = []
    for stage in plan.stages:
        inputs = ", ".join(f"{slot} <- {source}" for slot, source in stage.slots)
        lines.append(f"{stage.name}: computes {stage.computes} (graph {stage.compiled.hash}) from {inputs}")
    return "\n".join(lines)
