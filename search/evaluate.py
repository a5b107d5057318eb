"""Evaluating one candidate (SPEC 5): inherit from the super-net, train, score, write back.

The proxy task supplies the data and the score. `MLMProxy`: masked language modelling on
the built-in corpus or a given one, fitness = held-out masked-token accuracy (the held-out
loss is recorded too). `GlueProxy`: a GLUE task from a local directory, fitness = the
task's main metric on its dev set after fine-tuning. Both reuse the data pipeline and
the training loop of `genomec train`. A run keeps its tokenizer and token blocks in
`RUN/data/`, so a resumed run reads exactly the data it started with.

Training batches are numbered across the run: with weight sharing, candidate after
candidate continues through the corpus (the super-net sees new data); without it, every
candidate trains from scratch on the same first `steps` batches (a like-for-like
comparison).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genomec.data import (
    MaskedBatches,
    default_corpus,
    get_task,
    load_tokenizer,
    read_corpus,
    read_split,
    split_heldout,
    tokenize_blocks,
    train_wordpiece,
)
from genomec.genome import ModelGenome
from genomec.models import GenomeBertConfig, GenomeBertForMaskedLM, GenomeBertForSequenceClassification
from genomec.models.modeling import GenomeAttention
from genomec.models.training import (
    GlueBatches,
    TrainingDiverged,
    evaluate_glue,
    evaluate_mlm,
    make_optimizer,
    train_loop,
    write_atomic,
)

from .config import SearchConfig
from .supernet import OptimizerMoments, SuperNet, inherit, shared_slices, weight_contributions

EVAL_MASK_SEED = 12345  # the held-out blocks are masked once, with this seed


# -- proxy tasks -----------------------------------------------------------------------------


def _tokenizer_cache(digest: str, vocab_size: int) -> Path:
    """Where a tokenizer trained on one corpus is kept for later runs on this machine.
    WordPiece training breaks frequency ties differently from process to process, so two
    runs with the same seed share one tokenizer rather than training two."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "genomec" / "tokenizers" / f"{digest}-{vocab_size}"


def _save_dir_atomic(save, target: Path) -> None:
    """`save(folder)` into a temporary folder beside `target`, renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        save(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # another process may have won the race: then use theirs
            raise


def _run_tokenizer(texts: list[str], config: SearchConfig, data_dir: Path, log):
    """The run's tokenizer: saved in the run, else given by `tokenizer`, else trained
    on `texts` (or reused from the machine's tokenizer cache)."""
    saved = data_dir / "tokenizer"
    if saved.is_dir():
        return load_tokenizer(saved)
    digest = hashlib.sha256("\n\n".join(texts).encode()).hexdigest()[:16]
    cached = _tokenizer_cache(digest, config.vocab_size)
    if cached.is_dir():
        tokenizer = load_tokenizer(cached)
    else:
        log(f"training a WordPiece tokenizer ({config.vocab_size} tokens)")
        tokenizer = train_wordpiece(texts, vocab_size=config.vocab_size)
        try:
            _save_dir_atomic(tokenizer.save_pretrained, cached)
        except OSError as e:
            log(f"could not keep the tokenizer in {cached.parent} ({e.strerror or e}); this run keeps its own copy")
    _save_dir_atomic(tokenizer.save_pretrained, saved)
    return tokenizer


class MLMProxy:
    """Masked language modelling; fitness = held-out masked-token accuracy."""

    head = "mlm"
    model_class = GenomeBertForMaskedLM

    def __init__(self, config: SearchConfig, data_dir: Path, log=print):
        blocks_file = data_dir / "blocks.pt"
        if blocks_file.is_file() and (data_dir / "tokenizer").is_dir():
            self.tokenizer = load_tokenizer(data_dir / "tokenizer")
            blocks = torch.load(blocks_file, weights_only=True)
        else:
            documents = read_corpus(config.corpus) if config.corpus else default_corpus()
            data_dir.mkdir(parents=True, exist_ok=True)
            self.tokenizer = _run_tokenizer(documents, config, data_dir, log)
            blocks = tokenize_blocks(documents, self.tokenizer, config.seq_len)
            write_atomic(blocks_file, lambda f: torch.save(blocks, f))
        train, heldout = split_heldout(blocks, at_least=min(8, config.eval_blocks), at_most=config.eval_blocks)
        self.train_batches = MaskedBatches(train, self.tokenizer, config.batch_size, seed=config.seed)
        self.eval_batches = MaskedBatches(heldout, self.tokenizer, config.batch_size, seed=config.seed).fixed_batches(EVAL_MASK_SEED)
        self.config_overrides = candidate_overrides(config, self.tokenizer)

    def batch(self, step: int) -> dict:
        return self.train_batches(step)

    def score(self, model) -> tuple[float, float]:
        """(fitness, loss): held-out masked-token accuracy and loss."""
        loss, accuracy = evaluate_mlm(model, self.eval_batches)
        return accuracy, loss


class GlueProxy:
    """Fine-tuning on a GLUE task from a local directory; fitness = the task's main metric
    on the (first) dev set. Its tokenizer is trained on the task's training texts."""

    head = "classification"
    model_class = GenomeBertForSequenceClassification

    def __init__(self, config: SearchConfig, data_dir: Path, log=print):
        self.task = get_task(config.glue_task)
        train = read_split(config.glue_data, self.task, "train")
        dev = read_split(config.glue_data, self.task, self.task.dev_files[0][0])
        texts = [e.text_a for e in train] + [e.text_b for e in train if e.text_b is not None]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = _run_tokenizer(texts, config, data_dir, log)
        regression = self.task.is_regression
        self.train_batches = GlueBatches(train, self.tokenizer, config.seq_len, config.batch_size, config.seed, regression)
        self.dev_batches = GlueBatches(dev, self.tokenizer, config.seq_len, 64, 0, regression)
        self.config_overrides = candidate_overrides(config, self.tokenizer)

    def batch(self, step: int) -> dict:
        return self.train_batches(step)

    def score(self, model) -> tuple[float, float]:
        """(fitness, loss): the dev set's main metric; the loss is the last training
        batches' (GLUE dev sets are scored by their metric)."""
        metrics = evaluate_glue(model, self.task, self.dev_batches)
        return metrics[self.task.main_metric], math.nan


def candidate_overrides(config: SearchConfig, tokenizer) -> dict:
    """What a candidate's Hugging Face config takes from the proxy task: the tokenizer's
    vocabulary and pad id, and for GLUE the task's labels."""
    overrides = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if config.proxy == "glue":
        task = get_task(config.glue_task)
        overrides |= {"num_labels": task.num_labels,
                      "problem_type": "regression" if task.is_regression else "single_label_classification"}
    return overrides


def make_proxy(config: SearchConfig, data_dir: Path, log=print):
    """The proxy task of `config`; bad data raises DataError before anything is trained."""
    return (GlueProxy if config.proxy == "glue" else MLMProxy)(config, data_dir, log)


# -- one candidate ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """The outcome of training and scoring one candidate (on one rank)."""

    status: str  # "ok" or "failed"
    reason: str | None = None
    fitness: float | None = None
    loss: float | None = None
    backend: str | None = None  # "triton" (every attention layer fused), "reference", "mixed", "none"
    backend_notes: list[str] = field(default_factory=list)  # per attention layer not fused: why
    seconds: dict[str, float] = field(default_factory=dict)  # inherit, train, score
    model: torch.nn.Module | None = None  # the trained candidate (ok only)
    weights: list = field(default_factory=list)  # its write-back contributions (supernet.weight_contributions)
    moments: dict | None = None  # and its optimizer moments' (inherit policy)

    def summary(self) -> dict:
        """What a rank sends to rank 0 (no tensors)."""
        return {"status": self.status, "reason": self.reason, "fitness": self.fitness, "loss": self.loss,
                "backend": self.backend, "backend_notes": self.backend_notes, "seconds": self.seconds}


def model_config(genome: ModelGenome, config: SearchConfig, proxy, backend: str = "auto") -> GenomeBertConfig:
    """The Hugging Face config of a candidate (or, for any genome of the space, the super-net)."""
    return GenomeBertConfig(
        genome=genome, max_position_embeddings=config.seq_len, hidden_dropout_prob=config.dropout,
        attention_backend=backend, **proxy.config_overrides,
    )


def _backend_summary(model) -> tuple[str, list[str]]:
    used, notes = set(), []
    for index, layer in enumerate(model.genome_bert.layers):
        if isinstance(layer.mixer, GenomeAttention):
            for backend, reason in layer.mixer.runs_on():
                used.add(backend)
                if backend != "triton":
                    notes.append(f"layers[{index}]: {reason}")
    backend = used.pop() if len(used) == 1 else ("mixed" if used else "none")
    return backend, notes


class Evaluator:
    """Trains and scores candidates against one super-net (None: from scratch)."""

    def __init__(self, config: SearchConfig, proxy, supernet: SuperNet | None, moments: OptimizerMoments | None,
                 device: torch.device):
        self.config = config
        self.proxy = proxy
        self.supernet = supernet
        self.moments = moments
        self.device = device

    def build(self, genome: ModelGenome):
        """A fresh candidate model of `genome` (BERT-initialised) on the device."""
        return self.proxy.model_class(model_config(genome, self.config, self.proxy)).to(self.device)

    def evaluate(self, genome: ModelGenome, first_batch: int) -> Evaluation:
        """Inherit, train `steps` steps on batches from `first_batch` on, and score. The
        result carries what the candidate would write back; the super-net is not touched
        here (the engine merges a generation's write-backs, or none for a failure)."""
        c = self.config
        seconds = {}
        began = time.perf_counter()
        model = self.build(genome)
        slices = None
        optimizer = make_optimizer(model, c.learning_rate, c.weight_decay)
        if self.supernet is not None:
            slices = shared_slices(self.supernet, model, genome)
            inherit(self.supernet, model, slices)
            if self.moments is not None:
                self.moments.inherit(optimizer, model, slices)
        seconds["inherit"] = time.perf_counter() - began

        began = time.perf_counter()
        loop = train_loop(
            model, lambda step: _to(self.proxy.batch(first_batch + step), self.device), c.steps, c.learning_rate,
            round(c.warmup_fraction * c.steps), c.weight_decay, None, 0, "candidate", progress=False, optimizer=optimizer,
        )
        seconds["train"] = time.perf_counter() - began

        began = time.perf_counter()
        fitness, loss = self.proxy.score(model)
        seconds["score"] = time.perf_counter() - began
        backend, notes = _backend_summary(model)
        if not math.isfinite(fitness) or (not math.isnan(loss) and not math.isfinite(loss)):
            raise TrainingDiverged(f"the held-out score is not finite (fitness {fitness}, loss {loss})")
        result = Evaluation("ok", None, fitness, None if math.isnan(loss) else loss, backend, notes, seconds, model)
        if self.supernet is not None:
            result.weights = weight_contributions(model, slices, loop.trained)
            if self.moments is not None:
                result.moments = self.moments.contributions(optimizer, model, slices, loop.trained)
        return result


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def failure_reason(error: BaseException) -> str:
    """One line saying why a candidate failed."""
    if isinstance(error, TrainingDiverged):
        return str(error)
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
