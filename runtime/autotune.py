"""Tile sizes and warps: a small search space per (arch, dtype, head dim, length bucket),
with the winner persisted in a JSON table next to the kernel cache.

Forward and backward are tuned separately, each over its own search space
(`candidates`, `backward_candidates`: the backward's key-block and query-block kernels
have tiles of their own, `BackwardTiles`) and under its own key (the backward's ends in
"/bwd"). On a GPU
the first launch for a key times every candidate (median of a few runs: the forward
kernels, or the whole backward launch sequence on fresh gradient buffers) and stores the
fastest; later launches, in any process, read the table. The interpreter has one fixed
choice (timings there mean nothing).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from genomec.codegen.tiles import (
    INTERPRETER_BACKWARD,
    INTERPRETER_CONFIG,
    BackwardTiles,
    TileConfig,
    backward_candidates,
    backward_config,
    candidates,
    default_config,
)

__all__ = [
    "default_config",
    "backward_config",
    "INTERPRETER_BACKWARD",
    "INTERPRETER_CONFIG",
    "BackwardTiles",
    "TileConfig",
    "TuningTable",
    "backward_candidates",
    "benchmark",
    "candidates",
    "choose",
    "length_bucket",
    "tuning_key",
]


def length_bucket(seq_len: int) -> int:
    """Sequence lengths share a tuned choice within a power of two (at least 64)."""
    return max(64, 1 << (max(seq_len, 1) - 1).bit_length())


def tuning_key(arch: str, dtype: str, head_dim: int, seq_len: int, backward: bool = False) -> str:
    key = f"{arch}/{dtype}/d{head_dim}/n{length_bucket(seq_len)}"
    return key + "/bwd" if backward else key  # the backward's choice never overwrites the forward's


def benchmark(run: Callable[[], object]) -> float:
    """Median milliseconds of `run` on the GPU, after a warm-up (the timer of `choose`)."""
    import triton.testing

    return triton.testing.do_bench(run, warmup=5, rep=20)


class TuningTable:
    """Persisted choices: {key: {graph hash: TileConfig or BackwardTiles}}; written atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}  # missing or corrupt: tune again

    def get(self, graph_hash: str, key: str) -> TileConfig | BackwardTiles | None:
        entry = self._read().get(key, {}).get(graph_hash)
        try:
            if not entry:
                return None
            return BackwardTiles.from_json(entry) if "keys" in entry else TileConfig(**entry)
        except (TypeError, KeyError):
            return None  # written by another version: tune again

    def put(self, graph_hash: str, key: str, config: TileConfig | BackwardTiles) -> None:
        table = self._read()  # merge with what other processes wrote meanwhile
        table.setdefault(key, {})[graph_hash] = config.to_json() if isinstance(config, BackwardTiles) else asdict(config)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".autotune.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def choose(
    table: TuningTable,
    graph_hash: str,
    key: str,
    configs: tuple,
    time_config: Callable[[object], float],
):
    """The persisted choice for `key`, or time every candidate, persist and return the fastest.
    A candidate that fails to compile or launch (too much shared memory) is skipped."""
    chosen = table.get(graph_hash, key)
    if chosen is not None:
        return chosen
    timings = {}
    for config in configs:
        try:
            timings[config] = time_config(config)
        except Exception:  # out of resources for this tile size: not a candidate
            continue
    if not timings:
        raise RuntimeError(f"no tile configuration of {len(configs)} could run for {key}")
    best = min(timings, key=timings.get)
    table.put(graph_hash, key, best)
    return best
