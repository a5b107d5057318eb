"""Tile configurations of the generated kernels: the autotuning search spaces and the
defaults (which ahead-of-time compilation also uses), for the forward (`candidates`,
`default_config`) and, apart, for the backward (`backward_candidates`, `backward_config`),
whose key-block kernel and query-block kernels have tiles of their own (`BackwardTiles`).

Every candidate gives each warp 16 rows or more of the score tile (BLOCK_M >= 16 x warps;
the key-block kernel's tile is BLOCK_N keys x BLOCK_M queries, so BLOCK_N there): with
fewer, warps compute the same scores twice. Hopper's warpgroup MMA (`wgmma`) needs 64 rows
per group of 4 warps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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


@dataclass(frozen=True)
class BackwardTiles:
    """The backward kernels' tiles, FlashAttention-2's split: `keys` for the key-block kernel
    (BLOCK_N keys per program, the M side of its products; BLOCK_M queries a step), `queries`
    for the query-block kernels (BLOCK_M queries per program; BLOCK_N keys a step: prepare,
    the queries kernel) and the per-head one, `rows` for the per-token ones."""

    keys: TileConfig
    queries: TileConfig
    rows: TileConfig

    def for_grid(self, grid: str) -> TileConfig:
        """The tiles of a kernel launched over `grid` (abi.Grid)."""
        return {"key blocks": self.keys, "token blocks": self.rows}.get(str(grid), self.queries)

    def to_json(self) -> dict:
        return {"keys": asdict(self.keys), "queries": asdict(self.queries), "rows": asdict(self.rows)}

    @classmethod
    def from_json(cls, record: dict) -> BackwardTiles:
        return cls(TileConfig(**record["keys"]), TileConfig(**record["queries"]), TileConfig(**record["rows"]))

    def __str__(self) -> str:
        return f"keys: {self.keys}; queries: {self.queries}; token rows: {self.rows}"


# tl.dot input precision per input dtype: fp32 products via three tf32 passes (plain tf32
# would cost three decimal digits, "ieee" spills on tensor-core GPUs); for fp16/bf16
# operands the flag has no effect.
DOT_PRECISION = {"fp32": "tf32x3", "fp16": "tf32", "bf16": "tf32"}


def head_dim_pad(head_dim: int) -> int:
    """Tile width over the head dim: a power of two, at least 16 (the smallest tl.dot)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def duplicated(config: TileConfig, key_blocks: bool = False) -> bool:
    """True when warps would compute the same scores: fewer than 16 score rows per warp (the
    score tile's rows are BLOCK_N in a key-block kernel, BLOCK_M elsewhere)."""
    rows = config.block_n if key_blocks else config.block_m
    return rows < 16 * config.num_warps


ALL_REGISTERS = 255  # the most a thread can hold: ptxas takes what the kernel needs

# Forward tiles, compiled for sm_90 (Triton 3.9) as a launch compiles them (aot.Specialisation:
# aligned pointers, N a multiple of 16) over the zoo at fp16/bf16, head dims 48, 64 and 128:
# the first of each space, the default, spills for none of it and leads the search on a GPU
# (ahead-of-time compilation checks it; a module whose kernels spill with it takes the
# first candidate that does not: aot.compile_job). The comments give registers without a
# padding mask, and main-loop instructions per score element of standard attention at bf16
# (benchmarks/results/cpu/kernel_static.md); a GPU times the candidates.
SMALL_HEAD_SPACE = (  # head dim <= 64
    TileConfig(128, 64, 4, 3),  # FlashAttention's Hopper tile: standard attention 226 registers, the suite 255
    TileConfig(128, 128, 8, 2),  # standard attention 170 registers, 7.25 instructions per score (7.94 above)
    TileConfig(128, 64, 8, 2),
    TileConfig(64, 64, 4, 3),
    TileConfig(128, 32, 4, 3),
)
LARGE_HEAD_SPACE = (  # head dim 65..128 (and fp32, which has no fast tensor-core path)
    TileConfig(128, 64, 8, 2),  # standard attention 186 registers, the suite 226
    TileConfig(128, 128, 8, 2),  # standard attention 230 registers, 8.30 instructions per score (11.12 above)
    TileConfig(64, 64, 4, 2),
    TileConfig(128, 32, 8, 2),
    TileConfig(64, 32, 4, 2),
)
HUGE_HEAD_SPACE = (TileConfig(64, 32, 4, 1), TileConfig(64, 16, 4, 1))  # head dim > 128 (not measured)
INTERPRETER_CONFIG = TileConfig(32, 32, 1, 1)  # CPU interpreter: tile sizes only change the step count


def candidates(head_dim: int, dtype: str = "bf16") -> tuple[TileConfig, ...]:
    """The forward search space for a head dim (and dtype): the default first."""
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return HUGE_HEAD_SPACE
    if pad > 64 or dtype == "fp32":
        return LARGE_HEAD_SPACE
    return SMALL_HEAD_SPACE


def default_config(dtype: str, head_dim: int) -> TileConfig:
    return candidates(head_dim, dtype)[0]


# The backward, FlashAttention-2's Hopper shapes: the key-block kernel takes a tall key block
# (the M side of its products) and a few query rows a step with deep pipelining, the query-
# block kernels the forward's shape; measured like the forward's, registers capped at 255
# (left to choose, ptxas spills to reach an occupancy). The first candidate compiles without
# spills for standard attention and the paper's layers (without a padding mask; layer 3's
# query kernel and, with a mask, most key kernels take the second); the last for every zoo
# graph at head dims up to 64, and at 128 all but the two-score graphs' key (and query)
# kernels (max-of-two-maps 780 and 532 bytes, differential attention 440: three [64, 128]
# fp32 accumulators on one side, 192 of the 255 registers).
# The per-token kernels (no pair tile: back through chains of per-token values, products
# with [d,d] states) take 64 rows, the fewest a warpgroup MMA takes; at head dim 128 with
# 8 warps, which split the head dim and halve each [rows, d] tile's registers.
SMALL_HEAD_ROWS = TileConfig(64, 32, 4, 1, ALL_REGISTERS)
LARGE_HEAD_ROWS = TileConfig(64, 32, 8, 1, ALL_REGISTERS)
HALF_SMALL_HEAD_BACKWARD = (  # fp16/bf16, head dim <= 64
    BackwardTiles(TileConfig(32, 128, 4, 5, ALL_REGISTERS), TileConfig(128, 64, 4, 3, ALL_REGISTERS), SMALL_HEAD_ROWS),
    BackwardTiles(TileConfig(32, 64, 4, 3, ALL_REGISTERS), TileConfig(64, 32, 4, 3, ALL_REGISTERS), SMALL_HEAD_ROWS),
    BackwardTiles(TileConfig(16, 64, 4, 2, ALL_REGISTERS), TileConfig(64, 16, 4, 2, ALL_REGISTERS), SMALL_HEAD_ROWS),
)
HALF_LARGE_HEAD_BACKWARD = (  # fp16/bf16, head dim 65..128
    BackwardTiles(TileConfig(32, 128, 8, 2, ALL_REGISTERS), TileConfig(128, 32, 8, 2, ALL_REGISTERS), LARGE_HEAD_ROWS),
    BackwardTiles(TileConfig(32, 64, 4, 2, ALL_REGISTERS), TileConfig(64, 32, 4, 2, ALL_REGISTERS), LARGE_HEAD_ROWS),
    BackwardTiles(TileConfig(16, 64, 4, 1, ALL_REGISTERS), TileConfig(64, 16, 4, 1, ALL_REGISTERS), LARGE_HEAD_ROWS),
)
FP32_BACKWARD = (  # fp32 (three tf32 passes per dot): the narrowest tiles wgmma takes
    BackwardTiles(TileConfig(16, 64, 4, 1, ALL_REGISTERS), TileConfig(64, 16, 4, 1, ALL_REGISTERS), SMALL_HEAD_ROWS),
)
NARROW_BACKWARD = (  # head dim > 128 (not measured)
    BackwardTiles(TileConfig(16, 64, 4, 1), TileConfig(64, 16, 4, 1), TileConfig(64, 16, 8, 1)),
)
INTERPRETER_BACKWARD = BackwardTiles(TileConfig(16, 32, 1, 1), TileConfig(32, 16, 1, 1), TileConfig(16, 16, 1, 1))  # CPU interpreter


def backward_candidates(dtype: str, head_dim: int) -> tuple[BackwardTiles, ...]:
    """The backward search space for a dtype and head dim, the fixed choice first."""
    pad = head_dim_pad(head_dim)
    if pad > 128:
        return NARROW_BACKWARD
    if dtype == "fp32":
        return FP32_BACKWARD
    return HALF_LARGE_HEAD_BACKWARD if pad > 64 else HALF_SMALL_HEAD_BACKWARD


def backward_config(dtype: str, head_dim: int) -> BackwardTiles:
    """The tiles of the backward kernels without tuning: ahead-of-time compilation checks
    these, and they lead the search on a GPU."""
    return backward_candidates(dtype, head_dim)[0]
