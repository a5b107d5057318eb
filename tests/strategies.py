"""Hypothesis strategies for genomes, built on the library's own random generator."""

from hypothesis import strategies as st

from genomec.genome.generate import random_attention


@st.composite
def attention_genomes(draw, max_nodes: int = 10, ops=None, causal=None):
    """Random valid attention genomes; every choice is a shrinkable draw."""
    pick = lambda options: draw(st.sampled_from(list(options)))  # noqa: E731
    is_causal = draw(st.booleans()) if causal is None else causal
    return random_attention(pick, max_nodes=max_nodes, ops=ops, causal=is_causal)


@st.composite
def padding_masks(draw, batch: int, tokens: int):
    """[B, N] key-padding masks with at least one real token per row."""
    import torch

    rows = []
    for _ in range(batch):
        row = draw(st.lists(st.booleans(), min_size=tokens, max_size=tokens))
        row[draw(st.integers(0, tokens - 1))] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


# -- graphs of the fused class (one stage) ---------------------------------------------------

UNARY_TOKEN = ["neg", "scale", "sigmoid", "logsigmoid", "softsign", "tanh", "relu", "abs", "softmax"]
UNARY_PAIR = ["scale", "neg", "sigmoid", "softsign", "tanh", "relu", "logsigmoid", "abs"]


@st.composite
def token_values(draw, base):
    expr = base
    for op in draw(st.lists(st.sampled_from(UNARY_TOKEN), max_size=2)):
        expr = f"{op}({expr})"
    if draw(st.booleans()):
        expr = f"add({expr}, {draw(st.sampled_from(['q', 'k', 'v']))})"
    return expr


@st.composite
def attention_maps(draw):
    score = draw(st.sampled_from(["matmul", "cos", "euc"]))
    query, key = draw(token_values("q")), draw(token_values("k"))
    expr = f"matmul({query}, transpose({key}))" if score == "matmul" else f"{score}({query}, {key})"
    ops = draw(st.lists(st.sampled_from(UNARY_PAIR + ["softmax"]), min_size=1, max_size=3))
    for op in ops:
        expr = f"{op}({expr})"
    return expr


@st.composite
def fused_genomes(draw):
    """Attention-shaped genomes that one stage fuses: pointwise token values, one or two
    maps (scores, pair ops, softmaxes), a contraction with the values, a token op after."""
    attention = draw(attention_maps())
    if draw(st.booleans()):
        combine = draw(st.sampled_from(["add", "sub", "max", "mul"]))
        attention = f"{combine}({attention}, {draw(attention_maps())})"
    expr = f"matmul({attention}, {draw(token_values('v'))})"
    if draw(st.booleans()):
        expr = f"{draw(st.sampled_from(['tanh', 'scale', 'softmax']))}({expr})"
    return {"expr": expr, "causal": draw(st.booleans())}
