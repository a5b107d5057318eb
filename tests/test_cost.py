"""The cost of a candidate (SPEC 5, Cost): parameter counts against the real model, and the
attention cost model against hand computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import GENOMES
from genomec.genome import load_genome, parse_attention, parse_genome
from genomec.ir import lower
from genomec.models import GenomeBertConfig, GenomeBertForMaskedLM
from genomec.search import cost
from genomec.search.cost import attention_cost, count_parameters, measure_attention_ms, model_cost

SMALL = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 48}
STANDARD = "matmul(softmax(scale(matmul(q,transpose(k)))),v)"
MAP_PRODUCT = "matmul(softmax(matmul(softmax(scale(matmul(q,transpose(k)))),softmax(scale(matmul(k,transpose(q)))))),v)"  # a fallback


def small_model_genome(layers: list[dict]):
    return parse_genome({"config": SMALL, "layers": layers})


def graph(expr: str, **fields):
    return lower(parse_attention({"expr": expr, **fields}))


# -- parameters -----------------------------------------------------------------------------------


def paper_model_small():
    paper = load_genome(GENOMES / "autobert-zero.json")
    return dataclasses.replace(paper, config={**paper.config, **SMALL})


@pytest.mark.parametrize(
    "make_genome",
    [
        paper_model_small,
        # v is declared but unused: no v projection
        lambda: small_model_genome([{"type": "attention", "graph": {"inputs": ["q", "k", "v"], "expr": "matmul(softmax(scale(matmul(q,transpose(k)))),q)"}}]),
        lambda: small_model_genome([{"type": "conv", "kernel_size": 3}, {"type": "conv", "kernel_size": 17}]),
        lambda: small_model_genome([{"type": "attention", "graph": {"expr": STANDARD}}, {"type": "conv", "kernel_size": 5}]),
    ],
    ids=["paper-model", "graph-without-v", "conv-only", "attention-and-conv"],
)
def test_parameter_count_matches_the_model(make_genome):
    genome = make_genome()
    vocab_size, max_positions = 97, 40
    model = GenomeBertForMaskedLM(GenomeBertConfig(genome=genome, vocab_size=vocab_size, max_position_embeddings=max_positions))
    assert count_parameters(genome, vocab_size, max_positions) == sum(p.numel() for p in model.parameters())


def test_dropping_v_saves_one_projection():
    hidden = SMALL["hidden_size"]
    with_v = small_model_genome([{"type": "attention", "graph": {"expr": STANDARD}}])
    without_v = small_model_genome([{"type": "attention", "graph": {"expr": "matmul(softmax(scale(matmul(q,transpose(k)))),k)"}}])
    assert count_parameters(with_v, 10, 8) - count_parameters(without_v, 10, 8) == hidden * hidden + hidden


# -- attention cost against hand computation -----------------------------------------------------

N, D = 128, 32
TOKEN_ARRAY_BYTES = 2 * N * D  # bf16


def test_standard_attention():
    c = attention_cost(graph(STANDARD), N, D)
    # two matmuls (2 N^2 d each), scale (1 per score) and softmax (5 per score)
    assert c["flops"] == 2 * (2 * N * N * D) + N * N + 5 * N * N
    # q, k, v read once (one online pass), the output written once
    assert c["bytes"] == 4 * TOKEN_ARRAY_BYTES
    assert c["passes"] == 1 and c["fused"] is True


def test_statistics_pass_recomputes_the_scores():
    c = attention_cost(lower(load_genome(GENOMES / "sqrt-after-softmax.json")), N, D)
    statistics_pass = 2 * N * N * D + N * N  # scores, scale
    accumulate_pass = 2 * N * N * D + N * N + 5 * N * N + N * N + 2 * N * N * D  # scores, scale, softmax, sqrt, @ v
    assert c["flops"] == statistics_pass + accumulate_pass
    # q once; k in both passes, v in the second; the output
    assert c["bytes"] == (1 + 2 + 1 + 1) * TOKEN_ARRAY_BYTES
    assert c["passes"] == 2 and c["fused"] is True


def test_fallback_materialises_every_pair_value():
    compiled = lower(load_genome(GENOMES / "map-product-attention.json"))
    c = attention_cost(compiled, N, D)
    scores, maps_product = 3 * 2 * N * N * D, 2 * N * N * N  # q k^T, k q^T, (...) @ v; the [N,N] @ [N,N]
    elementwise = 2 * N * N + 3 * 5 * N * N  # two scales, three softmaxes
    assert c["flops"] == scores + maps_product + elementwise
    pair_values = 8  # two scores, two scales, two softmaxes, the product, its softmax
    assert c["bytes"] == 4 * TOKEN_ARRAY_BYTES + pair_values * 2 * (2 * N * N)  # each written and read
    assert c["passes"] == 0 and c["fused"] is False


def test_two_stages_each_read_and_write_their_arrays():
    c = attention_cost(lower(load_genome(GENOMES / "two-hop-attention.json")), N, D)
    one_attention = 2 * (2 * N * N * D) + 6 * N * N
    assert c["flops"] == 2 * one_attention
    assert c["bytes"] == 2 * 4 * TOKEN_ARRAY_BYTES  # stage 1 writes B v, stage 2 reads it as its v
    assert c["passes"] == 2 and c["fused"] is True


def test_reduction_kernel_of_linear_attention():
    c = attention_cost(lower(load_genome(GENOMES / "linear-attention.json")), N, D)
    # sigmoid(k), sigmoid(q), scale: N d each; the [d,d] state and q @ state: 2 N d^2 each
    assert c["flops"] == 3 * N * D + 2 * (2 * N * D * D)
    # k, v read by the reduction pass, q by the attention kernel, the output; the state written and read
    assert c["bytes"] == 4 * TOKEN_ARRAY_BYTES + 2 * (2 * D * D)
    assert c["passes"] == 1 and c["fused"] is True


def test_cosine_scores_count_their_norms():
    c = attention_cost(graph("matmul(softmax(cos(q,k)),v)"), N, D)
    cosine = 2 * N * N * D + 2 * (N + N) * D + 2 * N * N
    assert c["flops"] == cosine + 5 * N * N + 2 * N * N * D


def test_model_cost_sums_the_attention_layers():
    genome = parse_genome({
        "config": SMALL,
        "layers": [
            {"type": "attention", "graph": {"expr": STANDARD}},
            {"type": "conv", "kernel_size": 3},
            {"type": "attention", "graph": {"expr": MAP_PRODUCT}},
        ],
    })
    batch, heads, head_dim = 3, 2, 16
    got = model_cost(genome, batch, N, heads, head_dim, vocab_size=50, max_positions=N)
    layers = [attention_cost(lower(g), N, head_dim) for g in genome.attention_graphs()]
    assert got == {
        "params": count_parameters(genome, 50, N),
        "attention_flops": batch * heads * sum(c["flops"] for c in layers),
        "attention_bytes": batch * heads * sum(c["bytes"] for c in layers),
        "fused_layers": 1,
        "attention_layers": 2,
    }


# -- measured time -------------------------------------------------------------------------------


def test_measure_returns_none_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert measure_attention_ms(graph(STANDARD), 1, 2, 64, 16) is None


@pytest.mark.gpu
@pytest.mark.parametrize("expr", [STANDARD, MAP_PRODUCT], ids=["fused", "fallback"])
def test_measure_fused_forward_backward(expr, tmp_path):
    from genomec.runtime import KernelCache

    compiled = graph(expr)
    ms = measure_attention_ms(compiled, 2, 4, 256, 64, cache=KernelCache(tmp_path))
    assert isinstance(ms, float) and ms > 0
    assert (compiled.hash, 2, 4, 256, 64, str(torch.bfloat16)) in cost._MEASURED_MS
    assert measure_attention_ms(compiled, 2, 4, 256, 64) == ms  # memoised
