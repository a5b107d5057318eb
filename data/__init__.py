"""Data for the proxy tasks (SPEC 5): corpora, tokenizers, MLM batches, GLUE and its metrics."""

from .corpus import DEFAULT_CORPUS_NAME, DataError, default_corpus, read_corpus, split_documents
from .glue import TASKS, Example, GlueTask, compute_metrics, get_task, read_split
from .mlm import MaskedBatches, split_heldout, tokenize_blocks
from .tokenizer import DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS, load_tokenizer, train_wordpiece

__all__ = [
    "DEFAULT_CORPUS_NAME", "DataError", "default_corpus", "read_corpus", "split_documents", "TASKS", "Example",
    "GlueTask", "compute_metrics", "get_task", "read_split", "MaskedBatches", "split_heldout", "tokenize_blocks",
    "DEFAULT_VOCAB_SIZE", "SPECIAL_TOKENS", "load_tokenizer", "train_wordpiece",
]
