"""Parsed, validated genomes: plain frozen records, independent of the IR.

An `AttentionGenome` is one attention graph (both file forms parse to it); a
`ModelGenome` is a whole hybrid backbone whose attention layers hold attention genomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


MAX_SHOWN_PROBLEMS = 10  # printed problems of one genome; the rest are counted


class GenomeError(ValueError):
    """A genome is invalid. `problems` holds one self-contained line per problem (all of
    them); `lines()` prints the first MAX_SHOWN_PROBLEMS and counts the rest, so a file
    with a thousand copies of one mistake does not print a thousand lines."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: " if self.source else ""
        shown = [prefix + p for p in self.problems[:MAX_SHOWN_PROBLEMS]]
        hidden = len(self.problems) - len(shown)
        if hidden:
            shown.append(f"{prefix}... and {hidden} more problem(s)")
        return shown


@dataclass(frozen=True)
class NodeSpec:
    """One operation as written in a genome file."""

    id: str
    op: str
    args: tuple[str, ...]
    where: str  # how error messages name it: "node 's'" or "expr column 12 'matmul(...)'"


@dataclass(frozen=True)
class AttentionGenome:
    nodes: tuple[NodeSpec, ...]  # in a valid topological order
    output: str
    inputs: tuple[str, ...]  # the projected inputs (declared, or the ones referenced)
    causal: bool = False
    name: str | None = None
    notes: str | None = None

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


# BERT-like defaults; every key of a model genome's "config" must be one of these.
DEFAULT_CONFIG: dict[str, int | float] = {
    "hidden_size": 768,
    "num_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "max_kernel_size": 65,
}

# Upper bounds of a model genome's sizes (and of the same sizes given on the command line):
# far above any model this project trains, low enough that a typo (2^40) is refused
# instead of asking for terabytes. Lower bounds: every size is at least 1.
CONFIG_LIMITS: dict[str, int] = {
    "hidden_size": 16384,
    "num_heads": 256,
    "intermediate_size": 65536,
    "vocab_size": 1_048_576,
    "max_position_embeddings": 131072,
    "type_vocab_size": 1024,
    "max_kernel_size": 1023,
}
MAX_LAYERS = 256

CONV_VARIANTS = ("light",)


@dataclass(frozen=True)
class ConvLayer:
    kernel_size: int
    variant: str = "light"
    type: str = field(default="conv", init=False)


@dataclass(frozen=True)
class AttentionLayer:
    graph: AttentionGenome
    type: str = field(default="attention", init=False)


Layer = Union[ConvLayer, AttentionLayer]


@dataclass(frozen=True)
class ModelGenome:
    layers: tuple[Layer, ...]
    config: dict  # DEFAULT_CONFIG overridden by the file's "config"
    name: str | None = None
    notes: str | None = None

    def attention_graphs(self) -> list[AttentionGenome]:
        return [layer.graph for layer in self.layers if isinstance(layer, AttentionLayer)]


Genome = Union[AttentionGenome, ModelGenome]


def attention_graphs(genome: Genome) -> list[AttentionGenome]:
    """The attention graphs of a genome: itself, or a model's attention layers in order."""
    if isinstance(genome, AttentionGenome):
        return [genome]
    return genome.attention_graphs()
