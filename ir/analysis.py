"""Analyses of an IR that the reference executor and the code generator share: which values
depend on a reduction over tokens, whether causal semantics is a per-row prefix mask
(row-local), which values are pairwise scores, which depend on a [d,d] value.
"""

from __future__ import annotations

import networkx as nx

from genomec.genome.ops import HEAD, OPS, OpKind

from .graph import GLOBAL_SPACE, INPUT_OP, IR, PAIR_SPACE


def depends_on_token_reduction(ir: IR) -> dict[str, bool]:
    """Node -> whether its value depends on a reduction over tokens (so on the prefix)."""
    varies = {}
    for node_id, node in ir.nodes():
        if node.op == INPUT_OP:
            varies[node_id] = False
            continue
        shapes = [ir.node(o).shape for o in node.operands]
        varies[node_id] = OPS[node.op].reduces_tokens(*shapes) or any(varies[o] for o in node.operands)
    return varies


def row_local(ir: IR) -> bool:
    """True when causal semantics is a per-row prefix mask on each token reduction: every
    prefix-dependent value is read by the output only along its own token row."""
    varies = depends_on_token_reduction(ir)
    row_only = {ir.output: True}  # node -> "only row i of it is needed for output row i"
    for node_id, node in reversed(ir.nodes()):
        if node.op == INPUT_OP or node_id not in row_only:
            continue
        op = OPS[node.op]
        if varies[node_id]:
            if not row_only[node_id]:
                return False
            if op.reduces_tokens(*(ir.node(o).shape for o in node.operands)) and not op.row_mask_ok:
                return False
        for position, operand in enumerate(node.operands):
            keeps = row_only[node_id] and op.keeps_rows(position)
            row_only[operand] = row_only.get(operand, True) and keeps
    return True


def is_score(ir: IR, node_id: str) -> bool:
    """True for a [N,N] value whose entry (i, j) compares row i of its first operand with row
    j of its second: a score op (cos, euc), or a product over the head dim ([N,d] @ [d,N])."""
    node = ir.node(node_id)
    if node.op == INPUT_OP or node.space != PAIR_SPACE:
        return False
    kind = OPS[node.op].kind
    return kind is OpKind.SCORE or kind is OpKind.PRODUCT and ir.node(node.operands[0]).shape[1] == HEAD


def reads_state(ir: IR) -> set[str]:
    """The nodes whose value depends on a [d,d] value (one included)."""
    states = [n for n, node in ir.nodes() if node.space == GLOBAL_SPACE]
    return set(states).union(*(nx.descendants(ir.graph, g) for g in states))
