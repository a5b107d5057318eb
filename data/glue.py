"""GLUE from a local directory in the standard TSV layout, with each task's metric (SPEC 5).

    DIR/CoLA/{train,dev}.tsv   DIR/SST-2/...   DIR/MRPC/...   DIR/STS-B/...   DIR/QQP/...
    DIR/MNLI/{train,dev_matched,dev_mismatched}.tsv   DIR/QNLI/...   DIR/RTE/...   DIR/WNLI/...

(DIR may also be one task's folder.) Files are read as raw tab-separated lines, without
quote processing, as GLUE's own scripts do: sentences contain quote characters. Columns
are found by header name; CoLA has no header and fixed columns. A row with the wrong
number of fields, an unknown label or a score that is not a number is an error naming
the file and line.

Metrics are plain numpy: accuracy, binary F1 (positive class 1), Matthews correlation,
Pearson and Spearman (average ranks for ties) correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import DataError


@dataclass(frozen=True)
class GlueTask:
    name: str  # canonical key: "cola", "sst2", ...
    folder: str  # folder in the GLUE layout
    text_columns: tuple  # header names (or, without a header, column indices): one or two texts
    label_column: str | int
    labels: tuple[str, ...] | None  # label strings in id order; None for regression
    metrics: tuple[str, ...]
    main_metric: str
    dev_files: tuple[tuple[str, str], ...] = (("dev", "dev.tsv"),)  # (evaluation set name, file)
    has_header: bool = True
    num_fields: int | None = None  # fixed row width for header-less files

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


TASKS = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", (3,), 1, ("0", "1"), ("mcc",), "mcc", has_header=False, num_fields=4),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), "accuracy"),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"), "f1"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "spearman"),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"), "f1"),
        GlueTask(
            "mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
            ("accuracy",), "accuracy", dev_files=(("matched", "dev_matched.tsv"), ("mismatched", "dev_mismatched.tsv")),
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), "accuracy"),
    )
}


def get_task(name: str) -> GlueTask:
    """A task by name, forgiving case and punctuation: "SST-2", "sst2", "STS-B", "mnli"."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    if key not in TASKS:
        raise DataError(f"unknown GLUE task '{name}' (tasks: {', '.join(TASKS)})")
    return TASKS[key]


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # label id, or the score for regression


def task_directory(data_dir: str | Path, task: GlueTask) -> Path:
    """DIR/<task folder> (any case), or DIR itself when it holds the task's train.tsv."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such GLUE directory")
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower().replace("-", "") == task.folder.lower().replace("-", ""):
            return child
    if (data_dir / "train.tsv").exists():
        return data_dir
    raise DataError(f"{data_dir}: no {task.folder}/ folder (expected the GLUE layout DIR/{task.folder}/train.tsv, ...)")


def read_split(data_dir: str | Path, task: GlueTask, split: str, skip_malformed: bool = False) -> list[Example]:
    """Examples of one split: "train", or an evaluation set name of `task.dev_files`."""
    folder = task_directory(data_dir, task)
    file_name = "train.tsv" if split == "train" else dict(task.dev_files).get(split)
    if file_name is None:
        raise DataError(f"GLUE task {task.name} has no split '{split}' (splits: train, {', '.join(n for n, _ in task.dev_files)})")
    return read_tsv(folder / file_name, task, skip_malformed)


def read_tsv(path: Path, task: GlueTask, skip_malformed: bool = False) -> list[Example]:
    if not path.is_file():
        raise DataError(f"{path}: missing GLUE file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if task.has_header:
        if not lines:
            raise DataError(f"{path}: empty file (expected a header line)")
        header = lines[0].split("\t")
        wanted = list(task.text_columns) + [task.label_column]
        absent = [name for name in wanted if name not in header]
        if absent:
            raise DataError(f"{path}: the header lacks column(s) {', '.join(repr(a) for a in absent)} (has {', '.join(header)})")
        columns = [header.index(name) for name in wanted]
        width, first_line = len(header), 2
        rows = lines[1:]
    else:
        columns, width, first_line, rows = list(task.text_columns) + [task.label_column], task.num_fields, 1, lines
    label_ids = {label: index for index, label in enumerate(task.labels or ())}
    examples = []
    for line_number, line in enumerate(rows, start=first_line):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != width:
                raise DataError(f"{path}:{line_number}: expected {width} tab-separated fields, got {len(fields)}")
            texts = [fields[c] for c in columns[:-1]]
            raw_label = fields[columns[-1]].strip()
            if task.is_regression:
                try:
                    label = float(raw_label)
                except ValueError:
                    raise DataError(f"{path}:{line_number}: score {raw_label!r} is not a number") from None
            elif raw_label in label_ids:
                label = label_ids[raw_label]
            else:
                raise DataError(f"{path}:{line_number}: unknown label {raw_label!r} (labels: {', '.join(task.labels)})")
        except DataError:
            if skip_malformed:
                continue
            raise
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


# -- metrics -------------------------------------------------------------------------------------


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels))


def _confusion(predictions, labels) -> tuple[int, int, int, int]:
    """(tp, tn, fp, fn) of a binary task, positive class 1."""
    p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
    return int(np.sum(p & y)), int(np.sum(~p & ~y)), int(np.sum(p & ~y)), int(np.sum(~p & y))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class: 2 tp / (2 tp + fp + fn); 0 when tp = 0."""
    tp, _, fp, fn = _confusion(predictions, labels)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(predictions, labels) -> float:
    """(tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)); 0 when a marginal is empty."""
    tp, tn, fp, fn = _confusion(predictions, labels)
    denominator = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)


def pearson(x, y) -> float:
    """Pearson correlation; 0 when either side is constant (no linear relation to measure)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return 0.0 if denominator == 0 else float(np.sum(dx * dy) / denominator)


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    ends = np.concatenate([starts[1:], [len(x)]])
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of ranks starts+1 .. ends
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: GlueTask, predictions, labels) -> dict[str, float]:
    """The task's metrics. `predictions` are label ids, or scores for regression."""
    return {name: METRICS[name](predictions, labels) for name in task.metrics}
