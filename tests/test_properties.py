"""Property tests over random valid genomes drawn from the registry."""

import json
import random

import torch
from hypothesis import given
from hypothesis import strategies as st

from genomec.genome import AttentionGenome, attention_to_json, parse_genome
from genomec.ir import build_ir, execute, format_ir, lower, run_passes
from strategies import attention_genomes, padding_masks


@given(genome=attention_genomes(), form=st.sampled_from(["graph", "expr"]))
def test_serialise_parse_round_trip(genome, form):
    again = parse_genome(json.loads(json.dumps(attention_to_json(genome, form))))
    assert again.causal == genome.causal
    assert format_ir(lower(again).simplified) == format_ir(lower(genome).simplified)


@given(genome=attention_genomes(), data=st.data())
def test_simplification_preserves_outputs(genome, data):
    compiled = lower(genome)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = data.draw(st.one_of(st.none(), padding_masks(2, 6)))
    before = execute(compiled.parsed, q, k, v, mask=mask)
    after = execute(compiled.simplified, q, k, v, mask=mask)
    scale = before.abs().nan_to_num(0.0, 0.0, 0.0).max().clamp_min(1.0)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * scale.item(), equal_nan=True)


@given(genome=attention_genomes())
def test_simplifying_twice_changes_nothing(genome):
    once = lower(genome).simplified
    assert format_ir(run_passes(once, check=True)) == format_ir(once)


def _renamed_and_shuffled(genome: AttentionGenome, seed: int) -> AttentionGenome:
    """The same graph with fresh node ids, nodes in another (still valid) file order, and
    the operands of commutative ops swapped."""
    from genomec.genome.ops import OPS

    rng = random.Random(seed)
    names = {n.id: f"x{rng.randrange(10**6)}_{i}" for i, n in enumerate(genome.nodes)}
    rename = lambda a: names.get(a, a)  # noqa: E731
    nodes = []
    for n in genome.nodes:
        args = [rename(a) for a in n.args]
        if OPS[n.op].commutative and rng.random() < 0.5:
            args.reverse()
        nodes.append({"id": names[n.id], "op": n.op, "args": args})
    rng.shuffle(nodes)  # the parser orders operands first, whatever the file order
    return parse_genome({"inputs": list(genome.inputs), "nodes": nodes, "output": rename(genome.output), "causal": genome.causal})


@given(genome=attention_genomes(), seed=st.integers(0, 10**6))
def test_hash_is_invariant_under_renaming_reordering_and_commuting(genome, seed):
    assert lower(_renamed_and_shuffled(genome, seed)).hash == lower(genome).hash


@given(genome=attention_genomes())
def test_every_pass_keeps_the_ir_valid(genome):
    run_passes(build_ir(genome), check=True)


def test_strategy_draws_nontrivial_graphs():
    """Guard against a strategy that only ever draws tiny graphs (tests that cannot fail)."""
    from genomec.genome.generate import random_attention

    rng = random.Random(0)
    sizes = [len(lower(random_attention(rng.choice)).simplified.ops) for _ in range(200)]
    assert sum(sizes) / len(sizes) > 3
    assert sum(s >= 6 for s in sizes) > 20
    spaces = {n.space for _ in range(50) for _, n in lower(random_attention(rng.choice)).simplified.nodes()}
    assert spaces == {"token", "pair", "global"}
