"""Masked-language-modelling batches from a corpus.

The documents are tokenized, concatenated (each ended by [SEP]) and cut into blocks of
`seq_len` tokens framed as `[CLS] ... [SEP]`, so no batch holds padding. A small tail of
the blocks is held out for evaluation (the MLM fitness of SPEC 5).

Every batch is a pure function of (seed, step): the block order of each epoch is a
permutation seeded by (seed, epoch) and the masking (transformers'
DataCollatorForLanguageModeling: 15% of tokens, of which 80% [MASK], 10% random, 10% kept)
is seeded by (seed, step). A resumed run therefore sees exactly the batches it would have.
"""

from __future__ import annotations

import torch

from .corpus import DataError

MLM_PROBABILITY = 0.15


def tokenize_blocks(documents: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """All documents as blocks `[num_blocks, seq_len]` of token ids (the ragged end dropped)."""
    if seq_len < 8:
        raise DataError(f"sequence length {seq_len} is too short (at least 8)")
    body = seq_len - 2  # room for [CLS] and [SEP]
    stream: list[int] = []
    sep = tokenizer.sep_token_id
    for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
        if ids:
            stream.extend(ids)
            stream.append(sep)
    count = len(stream) // body
    if count == 0:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than one block of {seq_len}; give a larger corpus")
    bodies = torch.tensor(stream[: count * body], dtype=torch.long).view(count, body)
    cls = torch.full((count, 1), tokenizer.cls_token_id, dtype=torch.long)
    return torch.cat([cls, bodies, torch.full((count, 1), sep, dtype=torch.long)], dim=1)


def split_heldout(blocks: torch.Tensor, fraction: float = 0.02, at_least: int = 1, at_most: int = 256):
    """(training blocks, held-out blocks): the held-out ones are the last blocks of the corpus."""
    if len(blocks) < 2:
        raise DataError(f"the corpus gives {len(blocks)} block(s); at least 2 are needed (one held out)")
    count = min(max(at_least, int(len(blocks) * fraction)), at_most, len(blocks) - 1)
    return blocks[:-count], blocks[-count:]


class MaskedBatches:
    """Batch `step` of an MLM run over `blocks`: input_ids and labels (-100 = not predicted)."""

    def __init__(self, blocks: torch.Tensor, tokenizer, batch_size: int, seed: int = 0, mlm_probability: float = MLM_PROBABILITY):
        from transformers import DataCollatorForLanguageModeling

        self.blocks = blocks
        self.batch_size = min(batch_size, len(blocks))
        self.seed = seed
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability, return_tensors="pt")
        self.batches_per_epoch = len(blocks) // self.batch_size
        self._order_epoch, self._order = None, None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._order_epoch = torch.randperm(len(self.blocks), generator=generator), epoch
        return self._order

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return self.mask(self.blocks[self.indices(step)], mask_seed=self.seed * 1_000_003 + step)

    def mask(self, rows: torch.Tensor, mask_seed: int) -> dict[str, torch.Tensor]:
        """Mask `rows` with the collator, its randomness seeded by `mask_seed`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mask_seed)
            batch = self.collator([{"input_ids": row} for row in rows])
        # Blocks are cut from the token stream whole: no padding, so no attention_mask (a
        # mask of ones would send every step down the models' masked path for nothing).
        return {"input_ids": batch["input_ids"], "labels": batch["labels"]}

    def fixed_batches(self, seed: int) -> list[dict[str, torch.Tensor]]:
        """All blocks in order, masked once with `seed`: a fixed evaluation set."""
        return [
            self.mask(self.blocks[start : start + self.batch_size], mask_seed=seed + start)
            for start in range(0, len(self.blocks), self.batch_size)
        ]
