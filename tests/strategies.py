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
