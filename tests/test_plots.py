"""PNG plots of a run: real PNGs, not blank, empty and all-failed runs, written atomically."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from genomec.search.plots import plot_fitness, plot_op_priorities

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STATUSES = ["ok", "duplicate", "rejected", "failed"]


def history(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for index in range(count):
        status = rng.choices(STATUSES, weights=[70, 10, 15, 5])[0]
        fitness = rng.random() * 0.1 + index / (10 * count) if status in ("ok", "duplicate") else None
        records.append({"index": index, "status": status, "fitness": fitness, "strategy": "op"})
    return records


def op_series(count: int) -> dict[str, list[tuple[int, float]]]:
    """UCB-like curves; an op is infinite until first chosen (op j at evaluation 5 j)."""
    ops = ["add", "cos", "euc", "matmul", "max", "neg", "scale", "softmax", "sqrt", "transpose", "softsign", "logsigmoid"]
    return {
        op: [(i, math.inf if i < 5 * j else 0.5 + 0.01 * j + 1 / math.sqrt(i + 1)) for i in range(count)]
        for j, op in enumerate(ops)
    }


def assert_png_drawn(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.var(pixels[..., :3]) > 1e-3  # not a blank image
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_fitness_plot(tmp_path):
    path = tmp_path / "fitness.png"
    plot_fitness(history(500), path)
    assert_png_drawn(path)


def test_fitness_plot_overwrites_an_old_one(tmp_path):
    path = tmp_path / "fitness.png"
    plot_fitness(history(5), path)
    first = path.read_bytes()
    plot_fitness(history(50), path)
    assert path.read_bytes() != first
    assert_png_drawn(path)


@pytest.mark.parametrize(
    "records",
    [
        [],
        [{"index": i, "status": s, "fitness": None, "strategy": "random"} for i, s in enumerate(["failed", "rejected", "failed"])],
        [{"index": 0, "status": "ok", "fitness": float("nan"), "strategy": "op"}],
    ],
    ids=["empty", "all-failed", "nan-fitness"],
)
def test_fitness_plot_without_a_fitness(records, tmp_path):
    path = tmp_path / "fitness.png"
    plot_fitness(records, path)
    assert_png_drawn(path)


def test_op_priority_plot(tmp_path):
    path = tmp_path / "op_priorities.png"
    plot_op_priorities(op_series(500), path)
    assert_png_drawn(path)


@pytest.mark.parametrize("series", [{}, {"add": [], "neg": [(0, math.inf), (1, math.inf)]}], ids=["no-ops", "never-chosen"])
def test_op_priority_plot_without_statistics(series, tmp_path):
    path = tmp_path / "op_priorities.png"
    plot_op_priorities(series, path, title="no priorities")
    assert_png_drawn(path)


def test_a_failed_write_keeps_the_old_plot(tmp_path, monkeypatch):
    path = tmp_path / "fitness.png"
    plot_fitness(history(5), path)
    before = path.read_bytes()

    def write_half_then_fail(self, file, **kwargs):
        file.write(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        plot_fitness(history(50), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fitness.png"]
