"""Filters before training (SPEC 5): the probe run and the functional-equivalence key.

Every attention graph of a child runs once on fixed probe inputs (float64, seeded, at the
search's head dim) through the reference executor, and again on a second set:

- NaN or Inf in the output, an output that does not vary at all, or one that is the same
  for both input sets (it ignores its inputs) rejects the child, naming the layer.
- The outputs on the first set, rounded to 9 significant binary-mantissa digits of
  precision (`frexp`), hash to the layer's functional key: two graphs that compute the
  same function (renamed, reordered, or algebraically equal in ways the simplifier does
  not see) get the same key, up to round-off that the rounding absorbs.

A model's structural hash joins its layers' structural hashes (or conv kernel sizes); its
functional hash joins the layers' functional keys. A child whose structural or functional
hash was already trained is a duplicate: it reuses that fitness and is not trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from genomec.genome import AttentionLayer, ModelGenome
from genomec.ir import execute, lower

PROBE_BATCH, PROBE_HEADS, PROBE_TOKENS = 1, 2, 16
PROBE_SEEDS = (20210715, 20220222)  # the two fixed input sets
MANTISSA_DECIMALS = 9


@dataclass(frozen=True)
class ProbeResult:
    structural_hash: str  # of the model genome: layers' structural hashes and kernel sizes
    functional_hash: str | None  # of the probe outputs; None when rejected
    reason: str | None = None  # why the child is rejected, or None

    @property
    def rejected(self) -> bool:
        return self.reason is not None


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _probe_inputs(seed: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    shape = (PROBE_BATCH, PROBE_HEADS, PROBE_TOKENS, head_dim)
    return tuple(torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))


def _rounded_digest(values: np.ndarray) -> str:
    mantissa, exponent = np.frexp(values)
    mantissa = np.round(mantissa, MANTISSA_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return hashlib.sha256(mantissa.tobytes() + exponent.astype(np.int64).tobytes()).hexdigest()[:16]


def probe(genome: ModelGenome, head_dim: int) -> ProbeResult:
    """Run every attention graph of `genome` on the probe inputs."""
    structural, functional = [], []
    reason = None
    inputs = [_probe_inputs(seed, head_dim) for seed in PROBE_SEEDS]
    for index, layer in enumerate(genome.layers):
        if not isinstance(layer, AttentionLayer):
            structural.append(f"conv{layer.kernel_size}{layer.variant}")
            functional.append(structural[-1])
            continue
        compiled = lower(layer.graph)
        structural.append(compiled.hash)
        if reason is not None:
            continue
        first, second = (execute(compiled.simplified, *qkv).numpy() for qkv in inputs)
        if not np.isfinite(first).all() or not np.isfinite(second).all():
            reason = f"layers[{index}]: the output has NaN or Inf on the probe inputs"
        elif np.ptp(first) <= 1e-12 * max(1.0, float(np.abs(first).max())):
            reason = f"layers[{index}]: the output is constant"
        elif np.allclose(first, second, rtol=1e-12, atol=1e-12):
            reason = f"layers[{index}]: the output ignores its inputs"
        else:
            functional.append(_rounded_digest(first))
    return ProbeResult(
        structural_hash=_digest(structural),
        functional_hash=None if reason else _digest(functional),
        reason=reason,
    )
