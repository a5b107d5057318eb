"""Training the genome models on the proxy tasks (SPEC 5): MLM pre-training and GLUE
fine-tuning, with progress bars, atomic checkpoints and exact resumption.

A run directory `OUT` holds, while training, `OUT/checkpoints/`: `run.json` (the run's
settings: a rerun with other settings is refused rather than mixed in), the tokenizer,
and the newest checkpoints (model, optimizer, schedule, RNG state, losses so far), each
written to a temporary file and renamed into place. Batches are pure functions of the
step (see `genomec.data.mlm`), so a run killed at any point and started again with the
same command continues from its last checkpoint exactly as if it had not stopped. When
it finishes, `OUT` holds a Hugging Face model directory (config, weights, tokenizer) and
`results.json`; the checkpoints are removed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genomec.data import (
    DEFAULT_CORPUS_NAME,
    DataError,
    MaskedBatches,
    compute_metrics,
    default_corpus,
    get_task,
    load_tokenizer,
    read_corpus,
    read_split,
    split_heldout,
    tokenize_blocks,
    train_wordpiece,
)
from genomec.fileio import current_umask, write_atomic  # noqa: F401  (re-exported: the search imports them here)
from genomec.genome import GenomeError, genome_to_json

from .configuration import GenomeBertConfig, as_model_genome
from .modeling import GenomeBertForMaskedLM, GenomeBertForSequenceClassification

CHECKPOINTS = "checkpoints"
RESULTS = "results.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# -- files ----------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text)


def checkpoint_interval(steps: int, every: int | None, at_most: int) -> int:
    """Steps between checkpoints: `every` if given, else about a tenth of the run and
    never more than `at_most`, so a killed short run still resumes from a checkpoint (30
    steps: every 3) and a long one does not spend its time saving (2,000 steps: every 50)."""
    return every if every is not None else min(at_most, max(1, steps // 10))


class Checkpoints:
    """`checkpoint-<step>.pt` files in one folder, newest `keep` kept, each written atomically."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = directory
        self.keep = keep

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob("checkpoint-*.pt"))

    def save(self, step: int, state: dict) -> None:
        path = self.directory / f"checkpoint-{step:08d}.pt"
        write_atomic(path, lambda f: torch.save(state, f))
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)

    def latest(self, log: Callable[[str], None]) -> dict | None:
        """The newest readable checkpoint; an unreadable one is reported and skipped."""
        paths = self.paths()
        for path in reversed(paths):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                log(f"checkpoint {path} is unreadable ({type(e).__name__}), trying an older one")
        if paths:
            raise DataError(f"{self.directory}: no readable checkpoint; remove the folder to start over")
        return None


def open_run(out: Path, settings: dict) -> dict | None:
    """Prepare OUT for a run with `settings`. Returns the results if that run already finished."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / RESULTS).exists():
        finished = json.loads((out / RESULTS).read_text())
        if finished.get("settings") == settings:
            return finished
        raise DataError(f"{out} already holds a trained model from other settings; choose another --out")
    run_dir = out / CHECKPOINTS
    run_dir.mkdir(exist_ok=True)
    run_file = run_dir / "run.json"
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{run_file}: corrupt; remove {run_dir} to start over") from None
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise DataError(
                f"{out} holds an unfinished run with other settings ({', '.join(changed)} differ); "
                f"rerun it with the same settings to resume, or choose another --out"
            )
    else:
        write_text_atomic(run_file, json.dumps(settings, indent=2, sort_keys=True))
    return None


def _log(message: str) -> None:
    print(f"genomec train: {message}", file=sys.stderr)


# -- random state ---------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every global random state a training run draws from: Python's, NumPy's, torch's CPU
    generator and each CUDA device's. Plain lists and tensors, so it loads with
    `torch.load(weights_only=True)`."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (CUDA states only where devices are present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.array(numpy_state["state"]["key"], dtype=np.uint64), "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the loop shared by both tasks ------------------------------------------------------------------


@dataclass
class LoopResult:
    train_losses: list[float]
    tokens: int
    seconds: float  # time spent in training steps (batch building included)
    resumed_from: int | None
    trained: frozenset[str] = frozenset()  # names of the parameters that received gradients


def make_optimizer(model, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as BERT trains: no weight decay on biases and norms (parameters of one axis)."""
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.98), eps=1e-6,
    )


def train_loop(
    model,
    batch_for_step: Callable[[int], dict],
    steps: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    checkpoints: Checkpoints | None,
    checkpoint_every: int,
    description: str,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> LoopResult:
    """`steps` optimizer steps with linear warmup and decay, gradient clipping at 1.

    The optimizer is AdamW (`make_optimizer`) unless one is given (the search hands in
    one whose moments it inherited). With `checkpoints`, the run is checkpointed every
    `checkpoint_every` steps (model, optimizer, schedule, every RNG state) and resumes
    from the newest one; without, it runs through (a search checkpoints between candidates).
    The result names the parameters that received gradients: what the run trained."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    optimizer = optimizer if optimizer is not None else make_optimizer(model, learning_rate, weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)

    start, losses, tokens, seconds, resumed_from = 0, [], 0, 0.0, None
    state = checkpoints.latest(_log) if checkpoints is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"])
        start, losses, tokens, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
        resumed_from = start
        _log(f"resuming from the checkpoint at step {start} of {steps} (a checkpoint {_every(checkpoint_every)})")
    elif checkpoints is not None:
        _log(f"starting from scratch: {steps} steps, a checkpoint {_every(checkpoint_every)} in {checkpoints.directory}")

    parameters = dict(model.named_parameters())
    trained: set[str] = set()
    model.train()
    bar = tqdm(total=steps, initial=start, desc=description, file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for step in range(start, steps):
        began = time.perf_counter()
        batch = batch_for_step(step)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss diverged ({loss.item()}) at step {step + 1}; try a lower --lr")
        loss.backward()
        trained.update(name for name, p in parameters.items() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - began
        tokens += real_token_count(batch)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if checkpoints is not None and done % checkpoint_every == 0 and done < steps:
            checkpoints.save(done, {
                "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": rng_state(),
                "losses": losses, "tokens": tokens, "seconds": seconds,
            })
        if on_step is not None:
            on_step(done, losses[-1])
    bar.close()
    model.eval()
    return LoopResult(losses, tokens, seconds, resumed_from, frozenset(trained))


def _every(steps: int) -> str:
    return "every step" if steps == 1 else f"every {steps} steps"


def _finish(out: Path, model, tokenizer, results: dict) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_text_atomic(out / RESULTS, json.dumps(results, indent=2))
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- masked language modelling ----------------------------------------------------------------------


MLM_CHECKPOINT_EVERY, GLUE_CHECKPOINT_EVERY = 50, 200  # the most steps between default checkpoints


@dataclass
class MLMSettings:
    """Defaults sized for the 200-step check on a 2-core CPU (see the README, "Training")."""

    seq_len: int = 128
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    vocab_size: int = 8192  # of a tokenizer trained here
    seed: int = 0
    checkpoint_every: int | None = None  # None: `checkpoint_interval(steps, None, MLM_CHECKPOINT_EVERY)`
    eval_blocks: int = 64  # held-out blocks scored before and after training


@torch.no_grad()
def real_token_count(batch: dict) -> int:
    """Tokens of a batch that are not padding (a batch without attention_mask has none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def evaluate_mlm(model, batches: list[dict]) -> tuple[float, float]:
    """(mean loss, accuracy) over the predicted tokens of `batches`."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        predicted = batch["labels"] != -100
        labels = batch["labels"][predicted]
        scores = logits[predicted]
        total_loss += torch.nn.functional.cross_entropy(scores, labels, reduction="sum").item()
        correct += int((scores.argmax(-1) == labels).sum())
        count += int(predicted.sum())
    return total_loss / max(count, 1), correct / max(count, 1)


def train_mlm(
    genome,
    out: str | Path,
    steps: int,
    corpus: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    settings: MLMSettings | None = None,
    model_overrides: dict | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Pre-train a genome's model with masked language modelling; returns the results
    (held-out loss and accuracy before and after, train losses, tokens per second)."""
    settings = settings or MLMSettings()
    model_overrides = dict(model_overrides or {})
    if steps < 1:
        raise DataError(f"--steps must be at least 1, got {steps}")
    settings = replace(settings, checkpoint_every=checkpoint_interval(steps, settings.checkpoint_every, MLM_CHECKPOINT_EVERY))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory")
    model_genome = as_model_genome(genome)
    run_settings = {
        "task": "mlm",
        "genome": genome_to_json(model_genome),
        "corpus": str(Path(corpus).resolve()) if corpus else DEFAULT_CORPUS_NAME,
        "tokenizer": str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None,
        "steps": steps,
        "model_overrides": model_overrides,
        **asdict(settings),
    }
    documents = read_corpus(corpus) if corpus else default_corpus()  # validated before OUT is touched
    finished = open_run(out, run_settings)
    if finished is not None:
        _log(f"{out} already holds this finished run; reporting its results")
        return finished
    run_dir = out / CHECKPOINTS

    tokenizer = _mlm_tokenizer(documents, tokenizer_dir, run_dir, settings)
    blocks = tokenize_blocks(documents, tokenizer, settings.seq_len)
    train_blocks, heldout_blocks = split_heldout(blocks, at_least=min(8, settings.eval_blocks), at_most=settings.eval_blocks)
    train_batches = MaskedBatches(train_blocks, tokenizer, settings.batch_size, seed=settings.seed)
    eval_batches = MaskedBatches(heldout_blocks, tokenizer, settings.batch_size, seed=settings.seed).fixed_batches(seed=12345)

    torch.manual_seed(settings.seed)
    config = GenomeBertConfig(
        genome=model_genome, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **model_overrides
    )
    if settings.seq_len > config.max_position_embeddings:
        raise DataError(f"--seq-len {settings.seq_len} exceeds max_position_embeddings {config.max_position_embeddings}")
    model = build_model(lambda: GenomeBertForMaskedLM(config), config)
    initial_file = run_dir / "initial.json"  # the untrained model's held-out score, kept for a resumed run
    if initial_file.exists():
        initial_loss, initial_accuracy = json.loads(initial_file.read_text())
    else:
        initial_loss, initial_accuracy = evaluate_mlm(model, eval_batches)
        write_text_atomic(initial_file, json.dumps([initial_loss, initial_accuracy]))

    loop = train_loop(
        model, train_batches, steps, settings.learning_rate, round(settings.warmup_fraction * steps),
        settings.weight_decay, Checkpoints(run_dir), settings.checkpoint_every, "mlm", progress, on_step,
    )
    final_loss, final_accuracy = evaluate_mlm(model, eval_batches)
    window = max(1, min(20, steps // 10))
    results = {
        "task": "mlm",
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "initial_accuracy": initial_accuracy,
        "final_accuracy": final_accuracy,
        "train_loss_first": _mean(loop.train_losses[:window]),
        "train_loss_last": _mean(loop.train_losses[-window:]),
        "steps": steps,
        "tokens_per_second": loop.tokens / loop.seconds if loop.seconds else 0.0,
        "train_tokens": loop.tokens,
        "train_seconds": loop.seconds,
        "heldout_tokens": sum(real_token_count(b) for b in eval_batches),
        "parameters": sum(p.numel() for p in model.parameters()),
        "resumed_from": loop.resumed_from,
        "out": str(out),
        "settings": run_settings,
    }
    _finish(out, model, tokenizer, results)
    return results


def _mlm_tokenizer(documents, tokenizer_dir, run_dir: Path, settings: MLMSettings):
    """The given tokenizer, the one this run trained before an interruption, or a new one."""
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    saved = run_dir / "tokenizer"
    if saved.is_dir():
        return load_tokenizer(saved)
    _log(f"training a WordPiece tokenizer ({settings.vocab_size} tokens) on the corpus")
    tokenizer = train_wordpiece(documents, vocab_size=settings.vocab_size)
    staging = Path(tempfile.mkdtemp(prefix="tokenizer.", dir=run_dir))
    tokenizer.save_pretrained(staging)
    os.replace(staging, saved)  # a whole folder, renamed into place
    return tokenizer


# -- model directories ------------------------------------------------------------------------------

WEIGHTS = "model.safetensors"


def read_model_config(model_dir: Path) -> GenomeBertConfig:
    """The config of a model directory written by `train_mlm`, or DataError naming the
    directory or its config.json and what is wrong with it."""
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: no such model directory; train one with `genomec train mlm`")
    path = model_dir / "config.json"
    if not path.is_file():
        raise DataError(f"{model_dir}: not a model directory (no config.json); train one with `genomec train mlm`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: corrupt (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt (not JSON: {e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != GenomeBertConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise DataError(f"{path}: not a {GenomeBertConfig.model_type} model (model_type {found!r})")
    try:
        return GenomeBertConfig.from_pretrained(model_dir)
    except GenomeError as e:
        raise DataError(f"{path}: {e.lines()[0]}") from None
    except (TypeError, ValueError) as e:  # a value of the wrong type or range
        raise DataError(f"{path}: {type(e).__name__}: {e}") from None


def check_model_weights(model_dir: Path) -> None:
    """The weights file is there and its header is whole (a truncated copy is refused here,
    naming the file, rather than deep inside loading)."""
    from safetensors import SafetensorError, safe_open

    path = model_dir / WEIGHTS
    if not path.is_file():
        raise DataError(f"{model_dir}: no {WEIGHTS}; a model directory written by `genomec train mlm` has one")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        raise DataError(f"{path}: corrupt or truncated ({e})") from None


def build_model(make: Callable[[], torch.nn.Module], config: GenomeBertConfig) -> torch.nn.Module:
    """`make()`; running out of memory while allocating the weights is reported as bad input,
    with the sizes that asked for them."""
    try:
        return make()
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_allocation_failure(e):
            raise
        sizes = (
            f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_heads} heads, "
            f"intermediate size {config.intermediate_size}, vocabulary {config.vocab_size}, "
            f"{config.max_position_embeddings} positions"
        )
        raise DataError(f"the model does not fit in memory ({sizes}); choose smaller sizes") from None


def _is_allocation_failure(e: RuntimeError) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "not enough memory" in text or "out of memory" in text


# -- GLUE fine-tuning ------------------------------------------------------------------------------


@dataclass
class GlueSettings:
    seq_len: int = 128
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    epochs: float = 3.0
    seed: int = 0
    checkpoint_every: int | None = None  # None: `checkpoint_interval(steps, None, GLUE_CHECKPOINT_EVERY)`


class GlueBatches:
    """Tokenized examples; batch `step` is a pure function of (seed, step), padded to its longest row."""

    def __init__(self, examples, tokenizer, seq_len: int, batch_size: int, seed: int, regression: bool):
        texts_b = [e.text_b for e in examples] if examples[0].text_b is not None else None
        self.encodings = tokenizer([e.text_a for e in examples], texts_b, truncation=True, max_length=seq_len)
        self.labels = torch.tensor([e.label for e in examples], dtype=torch.float if regression else torch.long)
        self.tokenizer = tokenizer
        self.batch_size = min(batch_size, len(examples))
        self.seed = seed
        self.batches_per_epoch = max(1, len(examples) // self.batch_size)

    def rows(self, indices) -> dict:
        features = [{key: self.encodings[key][i] for key in ("input_ids", "token_type_ids", "attention_mask") if key in self.encodings} for i in indices]
        batch = dict(self.tokenizer.pad(features, return_tensors="pt"))
        batch["labels"] = self.labels[list(indices)]
        return batch

    def __call__(self, step: int) -> dict:
        epoch, position = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return self.rows(order[position * self.batch_size : (position + 1) * self.batch_size].tolist())

    def in_order(self):
        for start in range(0, len(self.labels), self.batch_size):
            yield self.rows(range(start, min(start + self.batch_size, len(self.labels))))


@torch.no_grad()
def evaluate_glue(model, task, batches: GlueBatches) -> dict[str, float]:
    model.eval()
    predictions, labels = [], []
    for batch in batches.in_order():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions.append(logits.squeeze(-1) if task.is_regression else logits.argmax(-1))
        labels.append(batch["labels"])
    return compute_metrics(task, torch.cat(predictions).numpy(), torch.cat(labels).numpy())


def train_glue(
    task_name: str,
    data_dir: str | Path,
    model_dir: str | Path,
    out: str | Path | None = None,
    steps: int | None = None,
    settings: GlueSettings | None = None,
    skip_malformed: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    backend: str | None = None,
) -> dict:
    """Fine-tune a pre-trained genome model (a directory written by `train_mlm`) on a GLUE
    task; returns the task's metrics on its dev set(s)."""
    settings = settings or GlueSettings()
    task = get_task(task_name)
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)  # the model directory is checked before the data
    check_model_weights(model_dir)
    if settings.seq_len > config.max_position_embeddings:
        raise DataError(f"--seq-len {settings.seq_len} exceeds the model's max_position_embeddings {config.max_position_embeddings}")
    tokenizer = load_tokenizer(model_dir)
    train_examples = read_split(data_dir, task, "train", skip_malformed)
    dev_examples = {name: read_split(data_dir, task, name, skip_malformed) for name, _ in task.dev_files}
    out = Path(out) if out is not None else model_dir / "glue" / task.name
    batches_per_epoch = max(1, len(train_examples) // min(settings.batch_size, len(train_examples)))
    steps = steps if steps is not None else max(1, math.ceil(settings.epochs * batches_per_epoch))
    settings = replace(settings, checkpoint_every=checkpoint_interval(steps, settings.checkpoint_every, GLUE_CHECKPOINT_EVERY))
    run_settings = {
        "task": f"glue-{task.name}", "data": str(Path(data_dir).resolve()), "model": str(model_dir.resolve()),
        "steps": steps, "skip_malformed": skip_malformed, **asdict(settings),
    }
    finished = open_run(out, run_settings)
    if finished is not None:
        _log(f"{out} already holds this finished run; reporting its results")
        return finished

    torch.manual_seed(settings.seed)
    labels = task.labels or ("score",)
    config.num_labels = task.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    if backend is not None:
        config.attention_backend = backend
    model = build_model(lambda: GenomeBertForSequenceClassification.from_pretrained(model_dir, config=config), config)

    train_batches = GlueBatches(train_examples, tokenizer, settings.seq_len, settings.batch_size, settings.seed, task.is_regression)
    loop = train_loop(
        model, train_batches, steps, settings.learning_rate, round(settings.warmup_fraction * steps),
        settings.weight_decay, Checkpoints(out / CHECKPOINTS), settings.checkpoint_every, task.name, progress, on_step,
    )
    metrics = {
        name: evaluate_glue(model, task, GlueBatches(examples, tokenizer, settings.seq_len, 64, 0, task.is_regression))
        for name, examples in dev_examples.items()
    }
    first_set = task.dev_files[0][0]
    window = max(1, min(20, steps // 10))
    results = {
        "task": task.name,
        "main_metric": task.main_metric,
        "score": metrics[first_set][task.main_metric],
        "metrics": metrics,
        "steps": steps,
        "train_examples": len(train_examples),
        "train_loss_first": _mean(loop.train_losses[:window]),
        "train_loss_last": _mean(loop.train_losses[-window:]),
        "tokens_per_second": loop.tokens / loop.seconds if loop.seconds else 0.0,
        "resumed_from": loop.resumed_from,
        "out": str(out),
        "settings": run_settings,
    }
    _finish(out, model, tokenizer, results)
    return results
