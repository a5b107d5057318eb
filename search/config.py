"""Search settings (SPEC 4 and 5): presets, config files, and their validation.

A search is fully described by one `SearchConfig`: the space, the proxy task, the
strategy and its budget. `genomec search [CONFIG] [--preset P]` starts from the preset
(`tiny` by default), overrides it with the keys of CONFIG (TOML or JSON), then with the
command-line flags. Every key is checked; a bad one raises `ConfigError` with one line
naming it (the CLI exits 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from genomec.genome import OPS

from .mutations import seed_genomes
from .space import DEFAULT_OPS, SearchSpace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

STRATEGIES = ("op", "re", "random")
DRAWS = ("greedy", "softmax")
PROXIES = ("mlm", "glue")
OPTIMIZER_STATE_POLICIES = ("fresh", "inherit")
SEED_NAMES = ("standard", "autobert-zero")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad search setting; the message names the key."""


@dataclass(frozen=True)
class SearchConfig:
    # -- the space: every candidate is a model genome of this shape --
    num_layers: int = 4
    hidden_size: int = 64
    num_heads: int = 2
    intermediate_size: int = 256
    ops: tuple[str, ...] = DEFAULT_OPS  # what a mutation may introduce
    max_nodes: int = 24  # per attention graph
    kernel_sizes: tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15)  # odd; the super-net holds the largest
    allow_drop_v: bool = True
    # -- the proxy task and each candidate's training --
    proxy: str = "mlm"  # "mlm" (fitness: held-out masked-token accuracy) or "glue" (the task's metric)
    corpus: str | None = None  # MLM corpus: a text file or folder (default: the built-in corpus)
    glue_task: str | None = None
    glue_data: str | None = None  # a local GLUE directory
    seq_len: int = 64
    batch_size: int = 16
    vocab_size: int = 2048  # of the WordPiece tokenizer the run trains
    eval_blocks: int = 64  # held-out MLM blocks scored per candidate
    steps: int = 100  # training steps per candidate
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.0  # hidden dropout of the candidates
    optimizer_state: str = "fresh"  # "fresh" AdamW per candidate, or "inherit" its moments with the weights
    sharing: bool = True  # BIWS; False trains every candidate from scratch (--no-sharing)
    # -- the evolution --
    strategy: str = "op"
    evaluations: int = 48  # the budget
    population_size: int = 8
    tournament_size: int = 3
    seeds: tuple[str, ...] = SEED_NAMES  # initial population, then random genomes until it is full
    ucb_c: float = 0.05  # exploration weight, in fitness units
    draw: str = "greedy"
    temperature: float = 0.01  # of the softmax draw, in fitness units
    seed: int = 0
    # -- cost bounds (a candidate over one is rejected before training) --
    max_params: int | None = None
    max_attention_ms: float | None = None  # measured on CUDA only
    top_k: int = 5  # candidates whose trained weights the run keeps
    device: str = "auto"

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(
            num_layers=self.num_layers, hidden_size=self.hidden_size, num_heads=self.num_heads,
            intermediate_size=self.intermediate_size, ops=self.ops, max_nodes=self.max_nodes,
            kernel_sizes=self.kernel_sizes, allow_drop_v=self.allow_drop_v,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def identity(self) -> dict:
        """The settings a resumed run must share: all but the budget (a finished run
        may be continued with a larger one)."""
        return {k: v for k, v in to_json(self).items() if k != "evaluations"}


PRESETS: dict[str, dict[str, Any]] = {
    # A 2-core CPU: at least 40 evaluations within 10 minutes (benchmarks/search.py).
    "tiny": {},
    # One GPU, the paper's small model width, six layers.
    "small": {
        "num_layers": 6, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024,
        "kernel_sizes": tuple(range(3, 32, 2)), "seq_len": 128, "batch_size": 32, "vocab_size": 8192,
        "eval_blocks": 128, "steps": 200, "evaluations": 200, "population_size": 16, "tournament_size": 4,
    },
    # Several GPUs or nodes (torchrun): the paper's base model scale.
    "base": {
        "num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072,
        "kernel_sizes": tuple(range(3, 66, 2)), "seq_len": 128, "batch_size": 64, "vocab_size": 30522,
        "eval_blocks": 256, "steps": 1000, "learning_rate": 5e-4, "evaluations": 800,
        "population_size": 32, "tournament_size": 8, "dropout": 0.1,
    },
}

FIELDS = {f.name: f for f in fields(SearchConfig)}


def to_json(config: SearchConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def read_config_file(path: str | Path) -> dict:
    """The keys of a TOML or JSON config file (by suffix; TOML otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: malformed TOML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a table of keys")
    return data


def build_config(preset: str = "tiny", overrides: dict | None = None, source: str = "config") -> SearchConfig:
    """The preset's settings overridden by `overrides`, every key and value checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
    values = {**PRESETS[preset]}
    for key, value in (overrides or {}).items():
        if key not in FIELDS:
            match = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        values[key] = _typed(key, value, source)
    config = SearchConfig(**values)
    _check(config, source)
    return config


def _typed(key: str, value, source: str):
    """`value` in the type of the field `key` (lists become tuples), or ConfigError."""
    default = FIELDS[key].default
    where = f"{source}: '{key}'"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {json.dumps(value)}")
        kind = type(default[0]) if default else str
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of {kind.__name__}s, got {json.dumps(list(value))}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {json.dumps(value)}")
        return value
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{where} must be set, got null")
    if key in ("max_params",) or isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {json.dumps(value)}")
        return value
    if key in ("max_attention_ms",) or isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {json.dumps(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {json.dumps(value)}")
    return value


def _check(c: SearchConfig, source: str) -> None:
    def bad(key: str, why: str):
        raise ConfigError(f"{source}: '{key}' {why}")

    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_nodes", "seq_len", "batch_size",
                "eval_blocks", "steps", "population_size", "tournament_size", "top_k"):
        if getattr(c, key) < 1:
            bad(key, f"must be at least 1, got {getattr(c, key)}")
    if c.evaluations < 1:
        bad("evaluations", f"(the budget) must be at least 1, got {c.evaluations}")
    if c.hidden_size % c.num_heads:
        bad("hidden_size", f"{c.hidden_size} is not a multiple of num_heads {c.num_heads}")
    if c.seq_len < 8:
        bad("seq_len", f"must be at least 8, got {c.seq_len}")
    if c.vocab_size < 64:
        bad("vocab_size", f"must be at least 64, got {c.vocab_size}")
    if not c.ops:
        bad("ops", "is empty: a mutation needs at least one op to introduce")
    unknown = [op for op in c.ops if op not in OPS]
    if unknown:
        bad("ops", f"has unknown op(s) {', '.join(unknown)} (known: {', '.join(OPS)})")
    if not c.kernel_sizes:
        bad("kernel_sizes", "is empty")
    wrong = [k for k in c.kernel_sizes if k < 1 or k % 2 == 0]
    if wrong:
        bad("kernel_sizes", f"must be odd positive integers, got {', '.join(map(str, wrong))}")
    if len(set(c.kernel_sizes)) != len(c.kernel_sizes):
        bad("kernel_sizes", "lists a size twice")
    if list(c.kernel_sizes) != sorted(c.kernel_sizes):
        bad("kernel_sizes", "must be in ascending order")
    choices = {"strategy": STRATEGIES, "draw": DRAWS, "proxy": PROXIES, "optimizer_state": OPTIMIZER_STATE_POLICIES,
               "device": DEVICES}
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            bad(key, f"must be one of {', '.join(allowed)}, got {getattr(c, key)!r}")
    unknown = [s for s in c.seeds if s not in SEED_NAMES]
    if unknown:
        bad("seeds", f"has unknown seed(s) {', '.join(unknown)} (known: {', '.join(SEED_NAMES)})")
    if c.tournament_size > c.population_size:
        bad("tournament_size", f"{c.tournament_size} exceeds population_size {c.population_size}")
    for key in ("learning_rate", "temperature"):
        if not getattr(c, key) > 0:
            bad(key, f"must be positive, got {getattr(c, key)}")
    if not c.ucb_c >= 0:
        bad("ucb_c", f"must be non-negative, got {c.ucb_c}")
    for key in ("warmup_fraction", "dropout"):
        if not 0 <= getattr(c, key) < 1:
            bad(key, f"must be in [0, 1), got {getattr(c, key)}")
    if c.weight_decay < 0:
        bad("weight_decay", f"must be non-negative, got {c.weight_decay}")
    if c.max_params is not None and c.max_params < 1:
        bad("max_params", f"must be positive, got {c.max_params}")
    if c.max_attention_ms is not None and c.max_attention_ms <= 0:
        bad("max_attention_ms", f"must be positive, got {c.max_attention_ms}")
    try:
        seed_genomes(c.seeds, c.space)
    except ValueError as e:
        bad("seeds", f"cannot seed this space: {e}")
    if c.proxy == "glue":
        if not c.glue_task or not c.glue_data:
            bad("proxy", "is glue: set 'glue_task' and 'glue_data' (a local GLUE directory)")
    elif c.glue_task or c.glue_data:
        bad("glue_task" if c.glue_task else "glue_data", "is set but 'proxy' is mlm")
