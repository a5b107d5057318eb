"""The backward's plan (SPEC 3, Backward): which kernels a fused forward's backward runs, over
which of the forward schedule's values, or why it keeps the reference executor's backward.

The backward class: a fused forward whose [d,d] states are not read inside a pass over
keys, and every op on the way with a derivative rule in autodiff.DERIVATIVE_RULES (the
registry's `triton_vjp`, or a rule for the op's kind and where it lives).
Other graphs keep the reference executor's backward, and `backward_schedule(...).reason`
says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from genomec.genome.ops import TextEnum
from genomec.ir.analysis import is_score, reads_state
from genomec.ir.graph import INPUT_OP, IR

from .autodiff import has_derivative_rule
from .schedule import KernelRole, PassKind, Schedule, softmaxes_over_keys, token_closure

BACKWARD_KERNELS = (KernelRole.BWD_PREPARE, KernelRole.BWD_KEYS, KernelRole.BWD_QUERIES)
COLUMN_ROWS_KERNEL = KernelRole.BWD_COLUMN_ROWS
GLOBAL_BACKWARD_KERNELS = (KernelRole.BWD_GLOBAL, KernelRole.BWD_QUERY_ROWS, KernelRole.BWD_STATE_ROWS)


class BackwardKind(TextEnum):
    """The two shapes of a fused backward."""

    KEYS = "keys"  # loops over key and query blocks (and maybe [d,d] states and softmaxes over tokens after them)
    GLOBAL = "global"  # no pass over keys: [d,d] states, or pointwise in the token


@dataclass(frozen=True)
class BackwardSchedule:
    """What the backward kernels compute; `fused` False (with a reason) outside the class."""

    fused: bool
    reason: str | None = None
    kind: BackwardKind = BackwardKind.KEYS
    reductions: tuple[str, ...] = ()  # the [d,d] states the forward's reduction kernel wrote
    global_values: tuple[str, ...] = ()  # [d,d] values computed from them
    reduction_values: tuple[str, ...] = ()  # token values the reductions contract
    column_softmaxes: tuple[str, ...] = ()  # softmaxes over tokens: column statistics saved, one delta each
    column_values: tuple[str, ...] = ()  # KEYS: the token values that compute them (recomputed per token block)
    softmaxes: tuple[str, ...] = ()  # over keys: log-sum-exp saved by the forward, one delta each
    softmax_levels: tuple[tuple[str, ...], ...] = ()  # the softmaxes by nesting depth (the forward's statistics passes)
    online: str | None = None  # the online softmax, whose delta is rowsum(dc * c)
    contractions: tuple[str, ...] = ()  # values saved by the forward, cotangents by prepare
    query_values: tuple[str, ...] = ()  # token values of the query rows (scores' left side, post operands)
    score_query_values: tuple[str, ...] = ()  # those the scores need (recomputed per query block)
    key_values: tuple[str, ...] = ()  # token values of the key rows
    pair_values: tuple[str, ...] = ()
    post_values: tuple[str, ...] = ()

    # The key side computes values from the inputs (more than transposes): the key-block
    # kernel then leaves the cotangents of what its loop reads as keys, and a kernel per token
    # block goes on back through those values (attention_bwd_key_rows), so that the key-block
    # kernel holds none of them.
    key_chains: bool = False

    @property
    def kernels(self) -> tuple[KernelRole, ...]:
        if not self.fused:
            return ()
        global_kernel, query_rows, state_rows = GLOBAL_BACKWARD_KERNELS
        if self.kind == BackwardKind.KEYS:  # the states' and the softmaxes over tokens' shares after the key passes'
            prepare, keys, queries = BACKWARD_KERNELS
            key_passes = (prepare, keys) + ((KernelRole.BWD_KEY_ROWS,) if self.key_chains else ()) + (queries,)
            per_head = (global_kernel,) if self.reductions or self.column_softmaxes else ()
            return key_passes + per_head + ((state_rows,) if self.reductions else ()) + ((COLUMN_ROWS_KERNEL,) if self.column_softmaxes else ())
        # without states, the query rows do everything but the column deltas' pass over tokens
        per_head = (global_kernel,) if self.reductions or self.column_softmaxes else ()
        return per_head + (query_rows,) + ((state_rows,) if self.reductions else ())


class OutsideBackwardClass(Exception):
    pass


def backward_schedule(sched: Schedule) -> BackwardSchedule:
    """Plan the backward of a fused forward schedule, or say why it is not fused."""
    try:
        return _plan(sched)
    except OutsideBackwardClass as e:
        return BackwardSchedule(fused=False, reason=str(e))


def _plan(sched: Schedule) -> BackwardSchedule:
    if not sched.fused:
        raise OutsideBackwardClass(f"the forward is not fused ({sched.reason})")
    ir, kinds = sched.ir, sched.kinds
    attention = sched.attention
    if not attention.key_passes:
        return _plan_global(sched)
    *statistics, accumulate = attention.key_passes
    if accumulate.kind == PassKind.STATISTICS or any(p.kind != PassKind.STATISTICS for p in statistics):
        raise OutsideBackwardClass(f"key passes {[p.kind.value for p in attention.key_passes]}: not in the fused backward")
    over_keys = softmaxes_over_keys(ir, kinds)
    softmaxes = tuple(n for n in accumulate.pair_values if n in over_keys)
    if statistics and {s for p in statistics for s in p.softmaxes} != set(softmaxes):
        raise OutsideBackwardClass("a softmax over keys whose statistics pass is not the forward's: not in the fused backward")
    _check_rules(ir, attention.query_values + accumulate.key_values + attention.post_values + accumulate.pair_values)
    score_lefts = [ir.node(p).operands[0] for p in accumulate.pair_values if is_score(ir, p)]
    score_query_values = token_closure(ir, kinds, score_lefts)
    reductions, reduction_values = (sched.reduction.reductions, sched.reduction.reduction_values) if sched.reduction else ((), ())
    if reductions:
        # The states' cotangents are reduced over the query rows from d_out alone: a state read
        # inside the key loop would need cotangents that only the key loops know.
        in_key_loop = score_query_values + tuple(n for p in attention.key_passes for n in p.key_values)
        reading_state = reads_state(ir)
        reading = [n for n in in_key_loop if n in reading_state]
        if reading:
            raise OutsideBackwardClass(
                f"node '{reading[0]}' reads a [d,d] state inside the pass over keys: backward not fused yet "
                "(only the query rows after the key loop may read a state)"
            )
        _check_rules(ir, attention.global_values + reduction_values)
    column_values = token_closure(ir, kinds, sched.column_softmaxes)
    _check_rules(ir, column_values)
    return BackwardSchedule(
        fused=True,
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        column_values=column_values,
        softmaxes=softmaxes,
        softmax_levels=tuple(p.softmaxes for p in statistics),
        online=accumulate.softmaxes[0] if accumulate.kind == PassKind.ONLINE else None,
        contractions=accumulate.contractions,
        query_values=attention.query_values,
        score_query_values=score_query_values,
        key_values=accumulate.key_values,
        key_chains=any(ir.node(n).op not in (INPUT_OP, "transpose") for n in accumulate.key_values),
        pair_values=accumulate.pair_values,
        post_values=attention.post_values,
    )


def _plan_global(sched: Schedule) -> BackwardSchedule:
    """No pass over keys: [d,d] states G = X^T Y over tokens (none, for a graph that is
    pointwise in the token), read by the query rows through [N,d] @ [d,d] products, and
    softmaxes over tokens anywhere their forward allows them."""
    ir, attention, reduction = sched.ir, sched.attention, sched.reduction
    reductions, reduction_values = (reduction.reductions, reduction.reduction_values) if reduction else ((), ())
    _check_rules(ir, attention.query_values + attention.global_values + reduction_values + attention.post_values)
    return BackwardSchedule(
        fused=True,
        kind=BackwardKind.GLOBAL,
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        query_values=attention.query_values,
        post_values=attention.post_values,
    )


def _check_rules(ir: IR, nodes) -> None:
    """Raise unless every node has a derivative rule (autodiff.DERIVATIVE_RULES): the
    registry's for elementwise ops, softmax's over keys, over tokens or over the head dim,
    transpose's, matmul's with a [d,d] operand, scores' (sent to both sides by the kernels)."""
    for node_id in nodes:
        if not has_derivative_rule(ir, node_id):
            raise OutsideBackwardClass(f"node '{node_id}' ({ir.node(node_id).op}): no derivative rule in the fused backward")


def format_backward(plan: BackwardSchedule) -> str:
    if not plan.fused:
        return f"backward: reference executor ({plan.reason})"
    states = [f"  states read back from the forward: {', '.join(plan.reductions)}"] if plan.reductions else []
    columns = (
        [f"  softmaxes over tokens: column statistics of {', '.join(plan.column_softmaxes)} read back, column terms delta in a pass over tokens"]
        if plan.column_softmaxes
        else []
    )
    if plan.kind == BackwardKind.GLOBAL and not plan.reductions and not plan.column_softmaxes:
        return "backward kernels: attention_bwd_query_rows (token blocks; the graph is pointwise in the token)"
    if plan.kind == BackwardKind.GLOBAL:
        per_block = " and ".join(k for k in plan.kernels if k != KernelRole.BWD_GLOBAL)
        return "\n".join([f"backward kernels: attention_bwd_global (batch x heads), {per_block} (token blocks)"] + states + columns)
    delta = "rowsum(dc * c)" if plan.online else ("a pass over key blocks" if plan.softmaxes else "-")
    if len(plan.softmax_levels) > 1:
        delta = f"a pass over key blocks per nesting level ({len(plan.softmax_levels)})"
    kernels = "attention_bwd_prepare (query blocks), attention_bwd_keys (key blocks), "
    if plan.key_chains:
        kernels += "attention_bwd_key_rows (token blocks: back through the key-side values), "
    kernels += "attention_bwd_queries (query blocks)"
    if plan.reductions or plan.column_softmaxes:
        per_block = ", ".join(plan.kernels[plan.kernels.index(KernelRole.BWD_GLOBAL) + 1:])
        kernels += f", then attention_bwd_global (batch x heads), {per_block} (token blocks)"
    return "\n".join(
        [
            f"backward kernels: {kernels}",
            f"  saved by the forward: log-sum-exp of {', '.join(plan.softmaxes) or '-'}; contractions {', '.join(plan.contractions)}",
            f"  softmax row terms delta: {delta}",
        ]
        + states
        + columns
    )
