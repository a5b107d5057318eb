"""The FlashAttention-2 reference (runtime/flash_reference.py) under Triton's interpreter
against float64 attention: output, log-sum-exp and gradients, at lengths that are and are
not a multiple of the tiles."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import relative_error
from genomec.runtime.flash_reference import flash_attention, flash_forward_pass, natural_lse


def attention64(q, k, v):
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


@pytest.mark.parametrize("dtype,shape,tolerance", [
    (torch.float32, (2, 2, 37, 16), 1e-5),  # 37: the last blocks run past the end (masked)
    (torch.float32, (1, 2, 64, 32), 1e-5),  # a multiple of the tiles: unmasked
    (torch.float16, (1, 2, 40, 16), 3e-3),
])
def test_matches_float64_attention(dtype, shape, tolerance):
    g = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(shape, generator=g).to(dtype) for _ in range(4))
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = flash_attention(*inputs)
    out.backward(grad_out)
    exact = [t.double().requires_grad_(True) for t in (q, k, v)]
    expected, lse = attention64(*exact)
    expected.backward(grad_out.double())
    assert out.dtype == dtype and relative_error(out, expected) < tolerance
    assert relative_error(natural_lse(flash_forward_pass(q, k, v)[1]), lse.detach()) < tolerance
    for ours, reference in zip(inputs, exact):
        assert relative_error(ours.grad, reference.grad) < tolerance


def test_refuses_head_dims_it_does_not_take():
    q = torch.zeros(1, 1, 8, 24)
    with pytest.raises(ValueError, match="head dim 24"):
        flash_forward_pass(q, q, q)
