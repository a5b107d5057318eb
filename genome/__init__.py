"""The genome language: the op registry, genome records, and the file parser."""

from .ops import INPUT_NAMES, OPS, Op, ShapeError, get_op
from .parse import (
    MAX_NODES,
    attention_to_json,
    genome_to_json,
    load_genome,
    loads_genome,
    parse_attention,
    parse_genome,
    to_expr,
)
from .schema import (
    AttentionGenome,
    AttentionLayer,
    ConvLayer,
    Genome,
    GenomeError,
    ModelGenome,
    NodeSpec,
    attention_graphs,
)

__all__ = [
    "INPUT_NAMES", "OPS", "Op", "ShapeError", "get_op", "MAX_NODES", "attention_to_json", "genome_to_json",
    "load_genome", "loads_genome", "parse_attention", "parse_genome", "to_expr", "AttentionGenome",
    "AttentionLayer", "ConvLayer", "Genome", "GenomeError", "ModelGenome", "NodeSpec", "attention_graphs",
]
