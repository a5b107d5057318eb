"""Tile configurations of the generated kernels: the autotuning search spaces and the
defaults (which ahead-of-time compilation also uses), for the forward (`candidates`,
`default_config`) and, apart, for the backward (`backward_candidates`, `backward_config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Registers per thread ptxas may use; None lets it choose. Left to choose, the ptxas of
    # Triton 3.9 (CUDA 13) aims at an occupancy and spills a few bytes to get there (seen
    # capping backward kernels at 80 and 128 registers); 255 lets a kernel take what it needs.
    max_registers: int | None = None

    def launch_options(self) -> dict:
        """The compile options of a launch (and of `triton.compile`)."""
        options = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.max_registers is not None:
            options["maxnreg"] = self.max_registers
        return options

    def __str__(self) -> str:
        text = f"BLOCK_M={self.block_m} BLOCK_N={self.block_n} warps={self.num_warps} stages={self.num_stages}"
        return text + (f" registers<={self.max_registers}" if self.max_registers is not None else "")


# tl.dot input precision per input dtype: fp32 products via three tf32 passes (plain tf32
# would cost three decimal digits, "ieee" spills on tensor-core GPUs); for fp16/bf16
# operands the flag has no effect.
DOT_PRECISION = {"fp32": "tf32x3", "fp16": "tf32", "bf16": "tf32"}


def head_dim_pad(head_dim: int) -> int:
    """Tile width over the head dim: a power of two, at least 16 (the smallest tl.dot)."""
    return max(16, 1 << (head_dim - 1).bit_length())


# Defaults measured with `genomec compile --arch sm_90` (Triton 3.9) over the zoo, plain and
# causal, compiled as a launch compiles them (aot.Specialisation: aligned pointers, N a
# multiple of 16): zero spills for fp16/bf16 at head dims up to 128 (8 warps keep the register
# tiles per thread small). They also serve ahead-of-time compilation and the first guess
# before tuning.
SMALL_HEAD_CONFIG = TileConfig(64, 64, 8, 2)  # head dim <= 64: at most 183 registers
LARGE_HEAD_CONFIG = TileConfig(64, 32, 8, 2)  # head dim 65..128 (and fp32, which has no fast tensor-core path): 202
HUGE_HEAD_CONFIG = TileConfig(32, 32, 8, 1)  # head dim > 128
INTERPRETER_CONFIG = TileConfig(32, 32, 1, 1)  # CPU interpreter: tile sizes only change the step count

SEARCH_SPACE = (  # the most registers a forward kernel of the zoo takes at head dim 64 / 128
    TileConfig(64, 64, 8, 2),  # 183 / 238
    TileConfig(64, 64, 4, 3),  # 238 / spills (up to 1 KB: the paper's layer 3, differential attention)
    TileConfig(128, 64, 8, 2),  # 232 / 255, and Triton 3.6 spills 24 bytes (causal Euclidean attention)
    TileConfig(64, 32, 8, 2),  # 140 / 202
    TileConfig(64, 32, 4, 3),  # 165 / 239
    TileConfig(128, 32, 8, 3),  # 172 / 232
)
MAX_PAIR_ELEMENTS_PER_THREAD = 16  # at head dims 65..128: larger pair tiles per thread spill


def default_config(dtype: str, head_dim: int) -> TileConfig:
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return HUGE_HEAD_CONFIG
    if pad > 64 or dtype == "fp32":
        return LARGE_HEAD_CONFIG
    return SMALL_HEAD_CONFIG


# The backward kernels hold more tiles at once (recomputed pair values and their cotangents,
# the key-side accumulators), so they get tiles of their own, tuned on a GPU apart from the
# forward's. Each candidate was compiled with `genomec compile --arch sm_90` (Triton 3.9) as
# a launch compiles it (aot.Specialisation: aligned pointers, N a multiple of 16) for every
# backward kernel of the zoo, plain and causal, and kept only with zero spills at its dtype
# and head dim, fp16 and bf16 alike; the comments give the most registers a kernel takes.
# The first of each space is the fixed choice (ahead-of-time compilation, first guess).
ALL_REGISTERS = 255  # the most a thread can hold: ptxas takes what the kernel needs
HALF_SMALL_HEAD_BACKWARD = (  # fp16/bf16, head dim <= 64 (64 x 16 no longer spills uncapped either: 186)
    TileConfig(64, 16, 8, 1, ALL_REGISTERS),  # 186 registers
    TileConfig(64, 16, 8, 2, ALL_REGISTERS),  # 208
    TileConfig(32, 32, 8, 1, ALL_REGISTERS),  # 244
    TileConfig(32, 16, 8, 1, ALL_REGISTERS),  # 235
)  # 64 x 32 (8 warps and 1 or 2 stages, or 4 warps), 64 x 64 and 128 x 32 spill (key kernels: max-of-two-maps, cosine)
HALF_LARGE_HEAD_BACKWARD = (  # fp16/bf16, head dim 65..128; wider tiles spill
    TileConfig(16, 16, 8, 1, ALL_REGISTERS),  # 238 registers; left to choose, ptxas spills 12-24 bytes
    TileConfig(16, 16, 8, 2, ALL_REGISTERS),  # 226
    TileConfig(16, 16, 8, 3, ALL_REGISTERS),  # 236
)
# fp32 (three tf32 passes per dot, each operand split in two) has no tiles without spills
# over the whole zoo; these spilled least when chosen (compiled without the launch's
# specialisation; not searched again since). With it, plain and causal: head dim <= 64, the
# key kernel of causal max-of-two-maps (48 bytes); head dim 128, 55 of the zoo's 108
# backward kernels (8-900 bytes; the prepare kernels of nearly every graph, up to 2 KB for
# the two-map graphs). Wider tiles, fewer warps or more stages spilled more.
FP32_SMALL_HEAD_BACKWARD = (TileConfig(16, 32, 8, 1, ALL_REGISTERS),)  # head dim <= 64
FP32_LARGE_HEAD_BACKWARD = (TileConfig(16, 16, 8, 1, ALL_REGISTERS),)  # head dim 65..128
NARROW_BACKWARD_CONFIG = TileConfig(16, 16, 8, 1)  # head dim > 128 (not measured)


def backward_candidates(dtype: str, head_dim: int) -> tuple[TileConfig, ...]:
    """The backward search space for a dtype and head dim: the tiles that compile without
    spills (for fp32, the one that spills least)."""
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return (NARROW_BACKWARD_CONFIG,)
    if dtype == "fp32":
        return FP32_LARGE_HEAD_BACKWARD if pad > 64 else FP32_SMALL_HEAD_BACKWARD
    return HALF_LARGE_HEAD_BACKWARD if pad > 64 else HALF_SMALL_HEAD_BACKWARD


def backward_config(dtype: str, head_dim: int) -> TileConfig:
    """The tiles of the backward kernels without tuning: ahead-of-time compilation checks
    these, and they lead the search on a GPU."""
    return backward_candidates(dtype, head_dim)[0]


def candidates(head_dim: int) -> tuple[TileConfig, ...]:
    """The search space for a head dim: the tiles that compile without spills there (at
    head dims 65..128, at most MAX_PAIR_ELEMENTS_PER_THREAD pair elements per thread)."""
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return (HUGE_HEAD_CONFIG, TileConfig(64, 32, 8, 1))
    return tuple(c for c in SEARCH_SPACE if pad <= 64 or c.block_m * c.block_n <= MAX_PAIR_ELEMENTS_PER_THREAD * 32 * c.num_warps)
