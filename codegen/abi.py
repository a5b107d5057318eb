"""The kernel ABI of a generated module: everything a launcher needs, and nothing else.

The code generator builds it beside the source (`generate.py`); the kernel cache stores it
in the entry (`entry.json`); the runtime allocates buffers and picks grids from it
(`runtime/launch.py`), and ahead-of-time compilation types the kernel parameters from it
(`aot.py`). Every pointer parameter of every kernel is a `Buffer` here, so a new buffer is
declared once, where the code generator decides it exists.

Sizes are per (batch, head), in tokens N, the head dim d and its padded tile width D
(`tiles.head_dim_pad`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from genomec.genome.ops import TextEnum

from .tiles import head_dim_pad

SCALARS = ("seq_len", "num_heads")  # the int parameters every kernel ends with


class Grid(TextEnum):
    """The programs of one launch."""

    HEADS = "heads"  # (B*H,): one program per (batch, head)
    QUERY_BLOCKS = "query blocks"  # (cdiv(N, BLOCK_M), B*H)
    KEY_BLOCKS = "key blocks"  # (cdiv(N, BLOCK_N), B*H)
    TOKEN_BLOCKS = "token blocks"  # (cdiv(N, BLOCK_M), B*H): per-token work, no pair tile
    TOKEN_SPLITS = "token splits"  # (reduction_splits(B*H, N), B*H): a share of a head's tokens each


# A reduction over all tokens of a head ([d,d] states) is split over programs, each summing a
# share of the tokens into the state with atomic adds: enough programs to fill the GPU
# (SPLIT_PROGRAMS in all), none with fewer than SPLIT_TOKENS tokens.
SPLIT_PROGRAMS = 512
SPLIT_TOKENS = 256


def reduction_splits(batch_heads: int, seq_len: int) -> int:
    """How many programs share one (batch, head)'s tokens in a split reduction (Grid.TOKEN_SPLITS);
    each takes the next multiple of BLOCK_N of cdiv(N, splits) tokens (template.Program.TOKEN_SPLIT)."""
    return max(1, min(-(-seq_len // SPLIT_TOKENS), -(-SPLIT_PROGRAMS // batch_heads)))


class Element(TextEnum):
    INPUT = "input"  # the dtype of q, k, v
    FP32 = "fp32"


class Role(TextEnum):
    """Who provides a buffer and how long it lives."""

    GIVEN = "given"  # by the caller: q, k, v, the mask, the output's cotangent
    OUTPUT = "output"  # the forward's result
    STATE = "state"  # written by the reduction kernel, read by the attention kernel and the backward
    SAVED = "saved"  # written by the forward for the backward (SAVE_FOR_BACKWARD), else never read
    SCRATCH = "scratch"  # the backward's own, between its kernels
    GRADIENT = "gradient"  # dq, dk, dv: written by the backward kernels (in fp32 where two share one)


class Extent(TextEnum):
    """What one count of a buffer holds per (batch, head)."""

    TOKENS = "N"  # a value per token (a log-sum-exp, a row term)
    TOKEN_ROWS = "N*d"  # a row of d per token (an input, a contraction value)
    HEAD_DIM = "D"  # a value per head-dim column (column statistics)
    STATE = "D*D"  # a [d,d] state


@dataclass(frozen=True)
class Buffer:
    name: str  # the kernels' parameter
    element: Element
    role: Role
    extent: Extent | None = Extent.TOKEN_ROWS  # None: a given buffer of the caller's shape (the mask's key bias, [B, N])
    count: int = 1  # how many extents per (batch, head): one per softmax, contraction, ...
    zeroed: bool = False  # allocated as zeros (the kernels accumulate into it)

    def numel(self, batch_heads: int, seq_len: int, head_dim: int) -> int:
        """Elements to allocate (at least one: a kernel's pointer must point somewhere)."""
        if self.extent is None:
            raise ValueError(f"{self.name} is the caller's: it has no size of its own")
        pad = head_dim_pad(head_dim)
        per_count = {
            Extent.TOKENS: seq_len,
            Extent.TOKEN_ROWS: seq_len * head_dim,
            Extent.HEAD_DIM: pad,
            Extent.STATE: pad * pad,
        }[self.extent]
        return max(1, batch_heads * self.count * per_count)

    def triton_type(self, dtype: str) -> str:
        """The pointer type in a Triton signature, for inputs of `dtype` ('fp16', ...)."""
        return "*" + {Element.INPUT: dtype, Element.FP32: "fp32"}[self.element]


@dataclass(frozen=True)
class KernelInterface:
    """How to launch one generated kernel: its runtime parameters in order (pointers, then
    SCALARS), its constants, its grid."""

    name: str
    params: tuple[str, ...]
    constexprs: tuple[str, ...]
    grid: Grid
    backward: bool = False  # launched by the autograd backward

    @classmethod
    def from_json(cls, record: dict) -> KernelInterface:
        return cls(record["name"], tuple(record["params"]), tuple(record["constexprs"]), Grid(record["grid"]), bool(record["backward"]))


@dataclass(frozen=True)
class ModuleABI:
    kernels: tuple[KernelInterface, ...]  # forward kernels, then backward kernels, each in launch order
    buffers: tuple[Buffer, ...]  # every pointer any kernel takes
    causal: bool
    backward_reason: str | None  # why there are no backward kernels (None: there are)

    @property
    def forward_kernels(self) -> tuple[KernelInterface, ...]:
        return tuple(k for k in self.kernels if not k.backward)

    @property
    def backward_kernels(self) -> tuple[KernelInterface, ...]:
        return tuple(k for k in self.kernels if k.backward)

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def with_role(self, *roles: Role) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.role in roles)

    def signature(self, kernel: KernelInterface, dtype: str) -> dict[str, str]:
        """A kernel's Triton signature for inputs of `dtype`: pointer types, i32 scalars,
        constexprs."""
        types = {p: "i32" if p in SCALARS else self.buffer(p).triton_type(dtype) for p in kernel.params}
        return types | {c: "constexpr" for c in kernel.constexprs}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> ModuleABI:
        buffers = tuple(
            Buffer(b["name"], Element(b["element"]), Role(b["role"]), b["extent"] and Extent(b["extent"]), int(b["count"]), bool(b["zeroed"]))
            for b in record["buffers"]
        )
        kernels = tuple(KernelInterface.from_json(k) for k in record["kernels"])
        return cls(kernels, buffers, bool(record["causal"]), record["backward_reason"])
