"""WordPiece tokenizers, trained locally with the `tokenizers` library or loaded from a
local directory (nothing is downloaded). BERT's recipe: lower-casing and accent stripping,
splitting on whitespace and punctuation, `[CLS] A [SEP] (B [SEP])` templates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .corpus import DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] is id 0, the models' pad id
DEFAULT_VOCAB_SIZE = 8192


def train_wordpiece(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2, model_max_length: int = 512):
    """Train a BERT-style WordPiece tokenizer on `texts`; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # sentence pairs use segment ids
    )


def load_tokenizer(directory: str | Path):
    """A tokenizer saved with `save_pretrained` (or a directory with a BERT `vocab.txt`)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such tokenizer directory")
    try:
        if (directory / "tokenizer.json").exists() or (directory / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        elif (directory / "vocab.txt").exists():
            tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
        else:
            raise DataError(f"{directory}: not a tokenizer directory (no tokenizer.json, tokenizer_config.json or vocab.txt)")
    except DataError:
        raise
    except Exception as e:  # a corrupt or foreign file
        raise DataError(f"{directory}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    missing = [name for name in ("pad_token", "mask_token", "cls_token", "sep_token") if getattr(tokenizer, name) is None]
    if missing:
        raise DataError(f"{directory}: the tokenizer lacks {', '.join(missing)}, which masked language modelling needs")
    return tokenizer
