"""The genome language: the op registry, genome records, the file parser and validators,
and the graph editor mutations build genomes with."""

from .edit import GraphEditor
from .ops import INPUT_NAMES, OPS, Op, ShapeError, get_op
from .parse import (
    MAX_FILE_BYTES,
    MAX_NODES,
    attention_to_json,
    genome_to_json,
    load_genome,
    loads_genome,
    parse_attention,
    parse_genome,
    to_expr,
    validate_attention,
    validate_model,
)
from .schema import (
    CONFIG_LIMITS,
    MAX_LAYERS,
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
    "INPUT_NAMES", "OPS", "Op", "ShapeError", "get_op", "MAX_FILE_BYTES", "MAX_NODES", "CONFIG_LIMITS", "MAX_LAYERS", "attention_to_json", "genome_to_json",
    "load_genome", "loads_genome", "parse_attention", "parse_genome", "to_expr", "validate_attention",
    "validate_model", "AttentionGenome", "AttentionLayer", "ConvLayer", "Genome", "GenomeError", "ModelGenome",
    "NodeSpec", "attention_graphs", "GraphEditor",
]
