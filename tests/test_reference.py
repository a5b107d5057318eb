"""The reference executor: masks and causality against literal implementations, SDPA,
dtypes and autograd."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import zoo_graphs
from genomec.genome import parse_genome
from genomec.ir import InputError, execute, lower
from genomec.ir.analysis import row_local
from genomec.ir.reference import _execute_prefixes
from literal import delete_padded_tokens, run_prefixes
from strategies import attention_genomes, padding_masks

STANDARD = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"


def ir_of(expr, causal=False):
    return lower(parse_genome({"expr": expr, "causal": causal})).simplified


def inputs(shape=(2, 3, 7, 5), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


MASK = torch.tensor([[1, 1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)



ZOO = zoo_graphs()


@pytest.mark.parametrize("causal", [False, True])
def test_standard_attention_matches_sdpa_with_a_mask(causal):
    q, k, v = inputs()
    out = execute(ir_of(STANDARD), q, k, v, mask=MASK, causal=causal)
    allowed = MASK[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(7, 7, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    expected = expected.masked_fill(~MASK[:, None, :, None], 0.0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_zoo_padding_equals_deleting_the_tokens(name, genome):
    ir = lower(genome).simplified
    q, k, v = inputs(seed=1)
    out = execute(ir, q, k, v, mask=MASK, causal=False)
    torch.testing.assert_close(out, delete_padded_tokens(ir, q, k, v, MASK), rtol=1e-9, atol=1e-9)
    assert (out[0, :, ~MASK[0]] == 0).all()


@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_zoo_causal_equals_running_each_prefix(name, genome):
    ir = lower(genome).simplified
    q, k, v = inputs(shape=(2, 2, 6, 4), seed=2)
    mask = torch.tensor([[1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = execute(ir, q, k, v, mask=mask, causal=True)
    torch.testing.assert_close(out, run_prefixes(ir, q, k, v, mask), rtol=1e-9, atol=1e-9)


def test_row_local_detection():
    assert row_local(ir_of(STANDARD))
    assert row_local(ir_of("matmul(sqrt(softmax(scale(matmul(q, transpose(k))))), v)"))
    assert not row_local(ir_of("matmul(softmax(q), matmul(softmax(transpose(k)), v))"))  # a [d,d] state
    attention_as_keys = f"matmul(softmax(matmul(q, transpose({STANDARD}))), v)"
    assert not row_local(ir_of(attention_as_keys))


def test_fast_causal_path_equals_the_general_one():
    ir = ir_of("matmul(max(softmax(scale(matmul(q, transpose(k)))), softmax(cos(q, k))), add(v, q))")
    q, k, v = inputs(seed=3)
    fast = execute(ir, q, k, v, causal=True)
    general = _execute_prefixes(ir, {"q": q, "k": k, "v": v}, q.shape[-1], None)
    torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-10)


@given(genome=attention_genomes(max_nodes=8), data=st.data())
def test_random_genomes_padding_and_causal_semantics(genome, data):
    ir = lower(genome).simplified
    q, k, v = inputs(shape=(2, 1, 5, 3), seed=4)
    mask = data.draw(padding_masks(2, 5))
    out = execute(ir, q, k, v, mask=mask, causal=genome.causal)
    if genome.causal:
        expected = run_prefixes(ir, q, k, v, mask)
    else:
        expected = delete_padded_tokens(ir, q, k, v, mask)
    torch.testing.assert_close(out, expected, rtol=1e-7, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_is_computed_in_fp32(dtype):
    ir = ir_of(STANDARD)
    q, k, v = inputs(dtype=torch.float32)
    out = execute(ir, q.to(dtype), k.to(dtype), v.to(dtype), mask=MASK)
    assert out.dtype == dtype
    exact = execute(ir, q.double(), k.double(), v.double(), mask=MASK)
    tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,genome", ZOO[:6], ids=[n for n, _ in ZOO[:6]])
def test_gradcheck(name, genome):
    ir = lower(genome).simplified
    q, k, v = (t.requires_grad_() for t in inputs(shape=(1, 1, 4, 3), seed=5))
    mask = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda q, k, v: execute(ir, q, k, v, mask=mask), (q, k, v))


def test_gradients_of_padded_tokens_are_zero():
    ir = ir_of("matmul(softmax(scale(matmul(q, transpose(add(sqrt(k), v))))), v)")
    q, k, v = (t.requires_grad_() for t in inputs(seed=6))
    execute(ir, q, k, v, mask=MASK).sum().backward()
    for t in (q, k, v):
        assert (t.grad[0, :, ~MASK[0]] == 0).all()
        assert t.grad[0, :, MASK[0]].abs().sum() > 0


def test_padded_positions_may_hold_anything():
    ir = ir_of(STANDARD)
    q, k, v = inputs()
    clean = execute(ir, q, k, v, mask=MASK)
    for t in (q, k, v):
        t[0, :, 2] = float("nan")
    torch.testing.assert_close(execute(ir, q, k, v, mask=MASK), clean)


def test_inputs_the_graph_does_not_read_may_be_missing():
    ir = ir_of("matmul(softmax(matmul(q, transpose(k))), q)")
    q, k, _ = inputs()
    assert execute(ir, q, k, None).shape == q.shape
    with pytest.raises(InputError, match="reads input 'k'"):
        execute(ir, q, None, None)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mask": torch.ones(2, 6, dtype=torch.bool)}, "mask must be bool"),
        ({"mask": torch.ones(2, 7)}, "mask must be bool"),
        ({"k": torch.randn(2, 3, 6, 5, dtype=torch.float64)}, "inputs must share one shape"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, message):
    q, k, v = inputs()
    args = {"q": q, "k": k, "v": v, **kwargs}
    with pytest.raises(InputError, match=message):
        execute(ir_of(STANDARD), **args)
