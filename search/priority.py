"""Operation priority (SPEC 5) and the op samplers that set the strategies apart.

Per op `i`: `n_i` counts how often a mutation chose it, `N = sum n_i`, and `mu_i` is the
mean fitness of the evaluated candidates (status `ok`) whose attention graphs contain it
(0 while there are none). The priority is the upper confidence bound

    UCB_i = mu_i + c * sqrt(2 * ln(N) / n_i)        (an op with n_i = 0 comes first)

`OpStats` is a pure function of the history: `OpStats.from_records(history)` equals the
statistics kept along the run, and a test checks it. A sampler draws one op among the
candidates a mutation can use at a given place: `PrioritySampler` by UCB (greedy, ties at
random, or a softmax over UCB / temperature), `UniformSampler` by the registry's
`mutation_weight` (regularised evolution).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Iterable, Sequence

from genomec.genome import OPS, ModelGenome, parse_genome


def genome_ops(genome: ModelGenome) -> set[str]:
    """The ops of a model genome's attention graphs."""
    return {node.op for graph in genome.attention_graphs() for node in graph.nodes}


class OpStats:
    def __init__(self, ops: Sequence[str], c: float):
        self.ops = tuple(ops)
        self.c = c
        self.chosen: Counter = Counter()  # n_i
        self.fitness_sum: dict[str, float] = {op: 0.0 for op in self.ops}
        self.fitness_count: Counter = Counter()

    @classmethod
    def from_records(cls, records: Iterable[dict], ops: Sequence[str], c: float) -> "OpStats":
        stats = cls(ops, c)
        for record in records:
            stats.update(record)
        return stats

    def update(self, record: dict) -> None:
        """Count one history record: the ops its mutation chose, and its fitness when it
        was trained and scored."""
        self.chosen.update(record.get("ops_chosen") or ())
        if record["status"] == "ok":
            for op in genome_ops(parse_genome(record["genome"])):
                if op in self.fitness_sum:
                    self.fitness_sum[op] += record["fitness"]
                    self.fitness_count[op] += 1

    @property
    def total(self) -> int:  # N
        return sum(self.chosen[op] for op in self.ops)

    def mean(self, op: str) -> float:  # mu_i
        count = self.fitness_count[op]
        return self.fitness_sum[op] / count if count else 0.0

    def ucb(self, op: str) -> float:
        n = self.chosen[op]
        if n == 0:
            return math.inf
        return self.mean(op) + self.c * math.sqrt(2.0 * math.log(self.total) / n)

    def to_json(self) -> dict:
        """`op_stats.json`: {"ops": {op: {"n", "mu", "ucb"}}, "N", "c"} (an unchosen op's
        UCB is written as null: infinite)."""
        ops = {}
        for op in self.ops:
            ucb = self.ucb(op)
            ops[op] = {"n": self.chosen[op], "mu": self.mean(op), "ucb": None if math.isinf(ucb) else ucb}
        return {"ops": ops, "N": self.total, "c": self.c}


class PrioritySampler:
    """OP-NAS: ops drawn by their UCB, greedily (ties at random) or by a softmax."""

    def __init__(self, stats: OpStats, draw: str = "greedy", temperature: float = 1.0):
        if draw not in ("greedy", "softmax"):
            raise ValueError(f"unknown draw {draw!r} (greedy, softmax)")
        self.stats = stats
        self.draw_kind = draw
        self.temperature = temperature

    def draw(self, candidates: Sequence[str], rng: random.Random) -> str:
        scores = [self.stats.ucb(op) for op in candidates]
        top = max(scores)
        if self.draw_kind == "greedy" or math.isinf(top):  # unseen ops first, at random among them
            return rng.choice([op for op, s in zip(candidates, scores) if s == top])
        weights = [math.exp((s - top) / self.temperature) for s in scores]
        return rng.choices(list(candidates), weights=weights)[0]


class UniformSampler:
    """Regularised evolution: ops drawn uniformly, weighted by the registry's mutation_weight."""

    def draw(self, candidates: Sequence[str], rng: random.Random) -> str:
        return rng.choices(list(candidates), weights=[OPS[op].mutation_weight for op in candidates])[0]
