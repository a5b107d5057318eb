"""`GenomeBertConfig`: a Hugging Face config that carries a model genome (SPEC 6.3).

The genome (its layers and attention graphs) is stored as genome JSON under the key
`genome`; the sizes live beside it as ordinary config attributes. Explicit arguments
override the genome's own `config`, so one genome can be built at several sizes:

    GenomeBertConfig(genome="genomes/autobert-zero.json", vocab_size=8000, hidden_size=128)

A bare attention graph is accepted too: it becomes `num_hidden_layers` attention layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PretrainedConfig

from genomec.genome import AttentionGenome, AttentionLayer, GenomeError, ModelGenome, genome_to_json, load_genome, parse_genome
from genomec.genome.schema import DEFAULT_CONFIG

# The genome used when none is given (HF builds configs without arguments): BERT's shape.
STANDARD_ATTENTION = {"expr": "matmul(softmax(scale(matmul(q,transpose(k)))),v)"}
DEFAULT_NUM_LAYERS = 12

ATTENTION_BACKENDS = ("auto", "reference", "triton")


def as_model_genome(genome, num_hidden_layers: int | None = None) -> ModelGenome:
    """A genome in any accepted form -> a ModelGenome.

    Accepted: None (BERT shape), a ModelGenome or AttentionGenome, a decoded JSON dict,
    JSON text, or a path to a genome file. A bare attention graph is repeated
    `num_hidden_layers` times (default 12)."""
    if genome is None:
        genome = STANDARD_ATTENTION
    if isinstance(genome, Path) or (isinstance(genome, str) and not genome.lstrip().startswith("{")):
        genome = load_genome(genome)
    elif isinstance(genome, str):
        try:
            genome = json.loads(genome)
        except json.JSONDecodeError as e:
            raise GenomeError(f"malformed genome JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(genome, dict):
        genome = parse_genome(genome)
    if isinstance(genome, AttentionGenome):
        count = DEFAULT_NUM_LAYERS if num_hidden_layers is None else num_hidden_layers
        return ModelGenome(layers=tuple(AttentionLayer(genome) for _ in range(count)), config=dict(DEFAULT_CONFIG), name=genome.name)
    if not isinstance(genome, ModelGenome):
        raise GenomeError(f"a genome is a file path, JSON text, a dict or a parsed genome, got {type(genome).__name__}")
    if num_hidden_layers is not None and num_hidden_layers != len(genome.layers):
        raise GenomeError(f"num_hidden_layers={num_hidden_layers}, but the model genome has {len(genome.layers)} layers")
    return genome


class GenomeBertConfig(PretrainedConfig):
    """Config of the hybrid attention/convolution backbone described by a model genome.

    Sizes default to the genome's `config` (itself BERT-base defaults where unset);
    `attention_backend` is "auto" (compiled Triton kernels on CUDA when available, the
    reference executor elsewhere), "reference" or "triton". `attention_probs_dropout_prob`
    is kept for compatibility: a genome's graph has no probability matrix to drop out.
    `num_attention_heads` is transformers' name for `num_heads` (argument and attribute).
    Sizes are checked here except that hidden_size splits into num_heads heads, which a
    model checks when it is built (as transformers' models do).
    """

    model_type = "genome-bert"
    attribute_map = {"num_attention_heads": "num_heads"}

    def __init__(
        self,
        genome=None,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int | None = None,
        type_vocab_size: int | None = None,
        hidden_dropout_prob: float | None = None,
        attention_probs_dropout_prob: float | None = None,
        layer_norm_eps: float | None = None,
        max_kernel_size: int | None = None,
        num_hidden_layers: int | None = None,
        attention_backend: str = "auto",
        initializer_range: float = 0.02,
        classifier_dropout: float | None = None,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        num_heads = _resolve_alias(num_heads, kwargs.pop("num_attention_heads", None))
        model_genome = as_model_genome(genome, num_hidden_layers)
        explicit = {
            "vocab_size": vocab_size, "hidden_size": hidden_size, "num_heads": num_heads,
            "intermediate_size": intermediate_size, "max_position_embeddings": max_position_embeddings,
            "type_vocab_size": type_vocab_size, "hidden_dropout_prob": hidden_dropout_prob,
            "attention_probs_dropout_prob": attention_probs_dropout_prob, "layer_norm_eps": layer_norm_eps,
            "max_kernel_size": max_kernel_size,
        }
        sizes = {key: model_genome.config[key] if value is None else value for key, value in explicit.items()}
        _check_sizes(sizes, model_genome)
        if attention_backend not in ATTENTION_BACKENDS:
            raise GenomeError(f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {attention_backend!r}")

        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.genome = genome_to_json(model_genome)
        for key, value in sizes.items():
            setattr(self, key, value)
        self.num_hidden_layers = len(model_genome.layers)
        self.attention_backend = attention_backend
        self.initializer_range = initializer_range
        self.classifier_dropout = classifier_dropout
        self.pad_token_id = pad_token_id
        self.tie_word_embeddings = tie_word_embeddings

    @property
    def model_genome(self) -> ModelGenome:
        """The parsed genome (parsed on each access: configs must stay plain data)."""
        return parse_genome(self.genome)


def _resolve_alias(num_heads, num_attention_heads):
    """`num_attention_heads` is transformers' name for `num_heads` (attribute_map): either
    may be given, both only if they agree."""
    if num_attention_heads is None:
        return num_heads
    if num_heads is not None and num_heads != num_attention_heads:
        raise GenomeError(f"config: num_heads {num_heads} and its alias num_attention_heads {num_attention_heads} disagree")
    return num_attention_heads


def _check_sizes(sizes: dict, genome: ModelGenome) -> None:
    """What a config can check alone. That hidden_size splits into num_heads heads is
    checked when a model is built (`check_heads`), as transformers' own models do."""
    problems = []
    for key in ("vocab_size", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        value = sizes[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"config: '{key}' must be a positive integer, got {value!r}")
    for index, layer in enumerate(genome.layers):
        size = getattr(layer, "kernel_size", None)
        if size is not None and size > sizes["max_kernel_size"]:
            problems.append(f"layers[{index}]: kernel_size {size} exceeds max_kernel_size {sizes['max_kernel_size']}")
    if problems:
        raise GenomeError(problems)
