"""Tile configurations of the generated kernels: the autotuning search space and the
default (which ahead-of-time compilation also uses)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def __str__(self) -> str:
        return f"BLOCK_M={self.block_m} BLOCK_N={self.block_n} warps={self.num_warps} stages={self.num_stages}"


# tl.dot input precision per input dtype: fp32 products via three tf32 passes (plain tf32
# would cost three decimal digits, "ieee" spills on tensor-core GPUs); for fp16/bf16
# operands the flag has no effect.
DOT_PRECISION = {"fp32": "tf32x3", "fp16": "tf32", "bf16": "tf32"}


def head_dim_pad(head_dim: int) -> int:
    """Tile width over the head dim: a power of two, at least 16 (the smallest tl.dot)."""
    return max(16, 1 << (head_dim - 1).bit_length())


# Defaults measured with `genomec compile --arch sm_90` over the zoo: zero spills for
# fp16/bf16 at head dims up to 128 (8 warps keep the register tiles per thread small).
# They also serve ahead-of-time compilation and the first guess before tuning.
SMALL_HEAD_CONFIG = TileConfig(64, 64, 8, 2)  # head dim <= 64
LARGE_HEAD_CONFIG = TileConfig(64, 32, 8, 2)  # head dim 65..128 (and fp32, which has no fast tensor-core path)
HUGE_HEAD_CONFIG = TileConfig(32, 32, 8, 1)  # head dim > 128
INTERPRETER_CONFIG = TileConfig(32, 32, 1, 1)  # CPU interpreter: tile sizes only change the step count

SEARCH_SPACE = (
    TileConfig(64, 64, 8, 2),
    TileConfig(64, 64, 4, 3),
    TileConfig(128, 64, 8, 2),
    TileConfig(64, 32, 8, 2),
    TileConfig(64, 32, 4, 3),
    TileConfig(128, 32, 8, 3),
)


def default_config(dtype: str, head_dim: int) -> TileConfig:
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return HUGE_HEAD_CONFIG
    if pad > 64 or dtype == "fp32":
        return LARGE_HEAD_CONFIG
    return SMALL_HEAD_CONFIG


# The backward kernels hold more tiles at once (recomputed pair values and their cotangents,
# the key-side accumulators), so they get tiles of their own, chosen with
# `genomec compile --arch sm_90` over the zoo (plain and causal) for zero spills at fp16/bf16.
SMALL_HEAD_BACKWARD_CONFIG = TileConfig(64, 16, 8, 1)  # head dim <= 64
LARGE_HEAD_BACKWARD_CONFIG = TileConfig(16, 16, 8, 1)  # head dim 65..128
FP32_BACKWARD_CONFIG = TileConfig(16, 32, 8, 1)  # fp32 (three tf32 passes per dot), head dim <= 64
NARROW_BACKWARD_CONFIG = TileConfig(16, 16, 8, 1)  # everything wider


def backward_config(dtype: str, head_dim: int) -> TileConfig:
    """The tiles of the backward kernels (also the first guess on a GPU)."""
    pad = head_dim_pad(head_dim)
    if pad > 128 or (pad > 64 and dtype == "fp32"):
        return NARROW_BACKWARD_CONFIG
    if dtype == "fp32":
        return FP32_BACKWARD_CONFIG
    return LARGE_HEAD_BACKWARD_CONFIG if pad > 64 else SMALL_HEAD_BACKWARD_CONFIG


def candidates(head_dim: int) -> tuple[TileConfig, ...]:
    """The search space for a head dim: large tiles only while they fit in registers."""
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return (HUGE_HEAD_CONFIG, TileConfig(64, 32, 8, 1))
    return tuple(c for c in SEARCH_SPACE if pad <= 64 or c.block_m * c.block_n <= 64 * 32)
