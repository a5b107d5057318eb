"""The backward's plan (SPEC 3, Backward): which kernels a fused forward's backward runs, over
which of the forward schedule's values, or why it keeps the reference executor's backward.

The backward class: a fused forward whose [d,d] states are not read inside a pass over
keys, and every op on the way with a derivative rule (the registry's `triton_vjp`, or a
structural rule of autodiff.DERIVATIVE_RULES).
Other graphs keep the reference executor's backward, and `backward_schedule(...).reason`
says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from genomec.genome.ops import OPS
from genomec.ir.graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE

from .schedule import SCORE_OPS, Schedule, _token_closure

BACKWARD_KERNELS = ("attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_queries")
COLUMN_ROWS_KERNEL = "attention_bwd_column_rows"
GLOBAL_BACKWARD_KERNELS = ("attention_bwd_global", "attention_bwd_query_rows", "attention_bwd_state_rows")

@dataclass(frozen=True)
class BackwardSchedule:
    """What the backward kernels compute; `fused` False (with a reason) outside the class."""

    fused: bool
    reason: str | None = None
    kind: str = "keys"  # "keys": loops over key/query blocks (and maybe states); "global": no key loop
    reductions: tuple[str, ...] = ()  # the [d,d] states the forward's reduction kernel wrote
    global_values: tuple[str, ...] = ()  # [d,d] values computed from them
    reduction_values: tuple[str, ...] = ()  # token values the reductions contract
    column_softmaxes: tuple[str, ...] = ()  # softmaxes over tokens: column statistics saved, one delta each
    column_values: tuple[str, ...] = ()  # "keys": the token values that compute them (recomputed per token block)
    softmaxes: tuple[str, ...] = ()  # over keys: log-sum-exp saved by the forward, one delta each
    softmax_levels: tuple[tuple[str, ...], ...] = ()  # the softmaxes by nesting depth (the forward's statistics passes)
    online: str | None = None  # the online softmax, whose delta is rowsum(dc * c)
    contractions: tuple[str, ...] = ()  # values saved by the forward, cotangents by prepare
    query_values: tuple[str, ...] = ()  # token values of the query rows (scores' left side, post operands)
    score_query_values: tuple[str, ...] = ()  # those the scores need (recomputed per query block)
    key_values: tuple[str, ...] = ()  # token values of the key rows
    pair_values: tuple[str, ...] = ()
    post_values: tuple[str, ...] = ()

    @property
    def kernels(self) -> tuple[str, ...]:
        if not self.fused:
            return ()
        global_kernel, query_rows, state_rows = GLOBAL_BACKWARD_KERNELS
        if self.kind == "keys":  # the states' and the softmaxes over tokens' shares after the key passes'
            per_head = (global_kernel,) if self.reductions or self.column_softmaxes else ()
            return BACKWARD_KERNELS + per_head + ((state_rows,) if self.reductions else ()) + ((COLUMN_ROWS_KERNEL,) if self.column_softmaxes else ())
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
    if accumulate.kind == "statistics" or any(p.kind != "statistics" for p in statistics):
        raise OutsideBackwardClass(f"key passes {[p.kind for p in attention.key_passes]}: not in the fused backward")
    softmaxes = tuple(n for n in accumulate.pair_values if ir.node(n).op == "softmax")
    if statistics and {s for p in statistics for s in p.softmaxes} != set(softmaxes):
        raise OutsideBackwardClass("a softmax over keys whose statistics pass is not the forward's: not in the fused backward")
    for node_id in attention.query_values + accumulate.key_values + attention.post_values + accumulate.pair_values:
        node = ir.node(node_id)
        if node.op == INPUT_OP or node.op in SCORE_OPS and node.space == PAIR_SPACE:
            continue
        op = OPS[node.op]
        reads_state_directly = node.op == "matmul" and any(ir.node(o).space == GLOBAL_SPACE for o in node.operands)
        structural = node.op == "transpose" and node.space != PAIR_SPACE or node.op == "softmax" or reads_state_directly
        if op.triton_vjp is None and not structural:
            raise OutsideBackwardClass(f"node '{node_id}' ({node.op}): no derivative rule in the fused backward")
    score_lefts = [ir.node(p).operands[0] for p in accumulate.pair_values if ir.node(p).op in SCORE_OPS]
    score_query_values = _token_closure(ir, kinds, score_lefts)
    reductions, reduction_values = (sched.reduction.reductions, sched.reduction.reduction_values) if sched.reduction else ((), ())
    if reductions:
        # The states' cotangents are reduced over the query rows from d_out alone: a state read
        # inside the key loop would need cotangents that only the key loops know.
        in_key_loop = score_query_values + tuple(n for p in attention.key_passes for n in p.key_values)
        reads_state = _reads_state(ir)
        reading = [n for n in in_key_loop if n in reads_state]
        if reading:
            raise OutsideBackwardClass(
                f"node '{reading[0]}' reads a [d,d] state inside the pass over keys: backward not fused yet "
                "(only the query rows after the key loop may read a state)"
            )
        _check_global_rules(ir, attention.global_values + reduction_values)
    column_values = _token_closure(ir, kinds, sched.column_softmaxes)
    _check_global_rules(ir, column_values)
    return BackwardSchedule(
        fused=True,
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        column_values=column_values,
        softmaxes=softmaxes,
        softmax_levels=tuple(p.softmaxes for p in statistics),
        online=accumulate.softmaxes[0] if accumulate.kind == "online" else None,
        contractions=accumulate.contractions,
        query_values=attention.query_values,
        score_query_values=score_query_values,
        key_values=accumulate.key_values,
        pair_values=accumulate.pair_values,
        post_values=attention.post_values,
    )


def _plan_global(sched: Schedule) -> BackwardSchedule:
    """No pass over keys: [d,d] states G = X^T Y over tokens (none, for a graph that is
    pointwise in the token), read by the query rows through [N,d] @ [d,d] products, and
    softmaxes over tokens anywhere their forward allows them."""
    ir, attention, reduction = sched.ir, sched.attention, sched.reduction
    reductions, reduction_values = (reduction.reductions, reduction.reduction_values) if reduction else ((), ())
    _check_global_rules(ir, attention.query_values + attention.global_values + reduction_values + attention.post_values)
    return BackwardSchedule(
        fused=True,
        kind="global",
        reductions=reductions,
        global_values=attention.global_values,
        reduction_values=reduction_values,
        column_softmaxes=sched.column_softmaxes,
        query_values=attention.query_values,
        post_values=attention.post_values,
    )


def _check_global_rules(ir: IR, nodes) -> None:
    """Token and [d,d] values: a registry derivative rule, or a structural one here
    (transpose, the matmuls with a [d,d] operand, softmax over the head dim or over tokens)."""
    for node_id in nodes:
        node = ir.node(node_id)
        if node.op in (INPUT_OP, "transpose", "matmul", "softmax") or OPS[node.op].triton_vjp is not None:
            continue
        raise OutsideBackwardClass(f"node '{node_id}' ({node.op}): no derivative rule in the fused backward")


def _reads_state(ir: IR) -> set[str]:
    """The nodes whose value depends on a [d,d] value."""
    states = [n for n, node in ir.nodes() if node.space == GLOBAL_SPACE]
    return set(states).union(*(nx.descendants(ir.graph, g) for g in states))


def format_backward(plan: BackwardSchedule) -> str:
    if not plan.fused:
        return f"backward: reference executor ({plan.reason})"
    states = [f"  states read back from the forward: {', '.join(plan.reductions)}"] if plan.reductions else []
    columns = (
        [f"  softmaxes over tokens: column statistics of {', '.join(plan.column_softmaxes)} read back, column terms delta in a pass over tokens"]
        if plan.column_softmaxes
        else []
    )
    if plan.kind == "global" and not plan.reductions and not plan.column_softmaxes:
        return "backward kernels: attention_bwd_query_rows (token blocks; the graph is pointwise in the token)"
    if plan.kind == "global":
        per_block = " and ".join(k for k in plan.kernels if k != "attention_bwd_global")
        return "\n".join([f"backward kernels: attention_bwd_global (batch x heads), {per_block} (token blocks)"] + states + columns)
    delta = "rowsum(dc * c)" if plan.online else ("a pass over key blocks" if plan.softmaxes else "-")
    if len(plan.softmax_levels) > 1:
        delta = f"a pass over key blocks per nesting level ({len(plan.softmax_levels)})"
    kernels = "attention_bwd_prepare (query blocks), attention_bwd_keys (key blocks), attention_bwd_queries (query blocks)"
    if plan.reductions or plan.column_softmaxes:
        per_block = ", ".join(plan.kernels[len(BACKWARD_KERNELS) + 1:])
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
