"""The search loop (SPEC 5): propose a child, filter it, evaluate it, record it, update.

One loop serves the three strategies; they differ only in what they plug in:

    op      parents by tournament, ops drawn by priority (UCB), the worst replaced
    re      parents by tournament, ops drawn uniformly, the oldest replaced
    random  random valid genomes of the space (no parents), the worst replaced

Until the population is full, children are the seeds (in order), then random genomes.
Every choice draws from one seeded generator, saved with each checkpoint together with
torch's, NumPy's and Python's global generators, so a resumed run is the same run.
The population, the op statistics, the dedupe tables and the best candidate are all
functions of the history (`replay`); the checkpoint adds the super-net and the RNGs.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genomec.genome import ModelGenome, genome_to_json, parse_genome
from genomec.models.training import rng_state, set_rng_state

from .config import SearchConfig
from .cost import measure_attention_ms, model_cost
from .evaluate import Evaluation, Evaluator, failure_reason, make_proxy, model_config, save_candidate
from .filters import probe
from .mutations import MutationError, mutate, random_model_genome, seed_genomes
from .plots import plot_fitness, plot_op_priorities
from .priority import OpStats, PrioritySampler, UniformSampler
from .rundir import BEST, OP_STATS, POPULATION, RunDirectory, RunError
from .supernet import OptimizerMoments, SuperNet

PLOT_EVERY = 10  # evaluations between plot refreshes (and at the end)
STAGES = ("probe", "inherit", "train", "score", "write_back", "checkpoint")


# -- state derived from the history ----------------------------------------------------------------


@dataclass
class SearchState:
    """What the history determines: population, op statistics, dedupe tables, best."""

    config: SearchConfig
    records: list[dict] = field(default_factory=list)
    population: list[int] = field(default_factory=list)  # record indices, oldest first
    stats: OpStats | None = None
    trained_by_hash: dict[str, int] = field(default_factory=dict)  # structural or functional hash -> record
    ucb_series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    seeds_proposed: int = 0
    batches_used: int = 0  # training batches consumed by candidates so far (weight sharing)

    def __post_init__(self):
        if self.stats is None:
            self.stats = OpStats(self.config.ops, self.config.ucb_c)

    def add(self, record: dict) -> None:
        """Fold one record into the state (the engine after each evaluation, and replay)."""
        self.records.append(record)
        self.stats.update(record)
        if (record.get("mutation") or {}).get("type") == "seed":
            self.seeds_proposed += 1
        if record["status"] == "ok":
            self.batches_used += self.config.steps
            for key in (record["hash"], record["functional_hash"]):
                self.trained_by_hash.setdefault(key, record["index"])
            self.population.append(record["index"])
            if len(self.population) > self.config.population_size:
                self.population.remove(self._to_replace())
        for op in self.config.ops:
            ucb = self.stats.ucb(op)
            if not math.isinf(ucb):
                self.ucb_series.setdefault(op, []).append((record["index"], ucb))

    def _to_replace(self) -> int:
        if self.config.strategy == "re":
            return self.population[0]  # the oldest
        return min(self.population, key=lambda i: (self.records[i]["fitness"], i))  # the worst (oldest of ties)

    def fitness(self, index: int) -> float:
        return self.records[index]["fitness"]

    def best(self) -> dict | None:
        scored = [r for r in self.records if r["status"] == "ok"]
        return max(scored, key=lambda r: (r["fitness"], -r["index"])) if scored else None

    def top(self, k: int) -> list[int]:
        scored = sorted((r for r in self.records if r["status"] == "ok"), key=lambda r: (-r["fitness"], r["index"]))
        return [r["index"] for r in scored[:k]]

    def counts(self) -> Counter:
        return Counter(r["status"] for r in self.records)


def replay(records: list[dict], config: SearchConfig) -> SearchState:
    state = SearchState(config)
    for record in records:
        state.add(record)
    return state


# -- proposing children ----------------------------------------------------------------------------


class Proposer:
    """Children of the current state: seeds, random genomes, or mutations of a parent."""

    def __init__(self, config: SearchConfig, state: SearchState):
        self.config = config
        self.space = config.space
        self.seeds = seed_genomes(config.seeds, self.space)
        if config.strategy == "op":
            self.sampler = PrioritySampler(state.stats, config.draw, config.temperature)
        else:
            self.sampler = UniformSampler()

    def propose(self, state: SearchState, rng: random.Random) -> tuple[ModelGenome, int | None, dict]:
        """(child, parent index or None, what was done)."""
        c = self.config
        if c.strategy != "random" and len(state.population) >= c.population_size:
            contestants = rng.sample(state.population, c.tournament_size)
            parent = max(contestants, key=lambda i: (state.fitness(i), -i))
            try:
                child, change = mutate(parse_genome(state.records[parent]["genome"]), rng, self.sampler, self.space)
                return child, parent, change
            except MutationError:  # no valid child differs from this parent: a random genome instead
                return random_model_genome(rng, self.space, self.sampler), None, {
                    "type": "random", "ops_chosen": [], "why": f"candidate {parent} has no valid mutation"}
        if c.strategy != "random" and state.seeds_proposed < len(self.seeds):
            name = c.seeds[state.seeds_proposed]
            return self.seeds[state.seeds_proposed], None, {"type": "seed", "name": name, "ops_chosen": []}
        return random_model_genome(rng, self.space, self.sampler), None, {"type": "random", "ops_chosen": []}


# -- the loop ----------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"genomec search: {message}", file=sys.stderr)


def _device(config: SearchConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


class Search:
    """A search over one run directory: `Search(config, out).run()`."""

    def __init__(self, config: SearchConfig, out: str | Path, progress: bool = True, log=_log):
        self.config = config
        self.run_dir = RunDirectory(out)
        self.progress = progress
        self.log = log
        self.totals = Counter()  # seconds per stage, this session
        self.session_evaluations = 0
        self._candidate_model = None  # the model just trained, until its weights are kept or dropped

    # -- setting up or resuming ----------------------------------------------------------------

    def _prepare(self):
        c = self.config
        self.device = _device(c)
        resuming = self.run_dir.open(c.identity(), c.evaluations)
        try:
            self.proxy = make_proxy(c, self.run_dir.data_dir, self.log)
        except BaseException:
            if not resuming:  # bad data: leave no half-made run behind
                shutil.rmtree(self.run_dir.path, ignore_errors=True)
            raise
        self.rng = random.Random(c.seed)
        if not resuming:
            random.seed(c.seed)
            torch.manual_seed(c.seed)
        self.supernet = self.moments = None
        if c.sharing:
            shape = seed_genomes(("standard",), c.space)[0]
            self.supernet = SuperNet(model_config(shape, c, self.proxy), c.num_layers, self.proxy.head).to(self.device)
            if c.optimizer_state == "inherit":
                self.moments = OptimizerMoments(self.supernet)
        records = self.run_dir.read_history()
        checkpoint = self.run_dir.load_checkpoint()
        if checkpoint is None and records:
            raise RunError(f"{self.run_dir.path}: the history has {len(records)} records but there is no checkpoint")
        if checkpoint is not None:
            records = self._restore(checkpoint, records)
        self.state = replay(records, c)
        self.proposer = Proposer(c, self.state)
        self.evaluator = Evaluator(c, self.proxy, self.supernet, self.moments, self.device)
        if records:
            self.log(f"resuming {self.run_dir.path} after {len(records)} evaluations")

    def _restore(self, checkpoint: dict, records: list[dict]) -> list[dict]:
        done = checkpoint["records_done"]
        if len(records) == done - 1:  # killed after the commit, before the history append
            self.run_dir.append(checkpoint["pending"])
            records.append(checkpoint["pending"])
        elif len(records) != done:
            raise RunError(f"{self.run_dir.path}: the checkpoint holds {done} evaluations, the history {len(records)}")
        if self.supernet is not None:
            self.supernet.load_state_dict(checkpoint["supernet"])
        if self.moments is not None:
            self.moments.load_state_dict(checkpoint["moments"])
        version, internal, gauss = checkpoint["search_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        set_rng_state(checkpoint["rng"])
        return records

    # -- one evaluation ----------------------------------------------------------------------------

    def _evaluate(self, child: ModelGenome, parent, change: dict) -> dict:
        c, state = self.config, self.state
        seconds = {}
        began = time.perf_counter()
        probed = probe(child, c.head_dim)
        cost = model_cost(child, c.batch_size, c.seq_len, c.num_heads, c.head_dim,
                          self.proxy.config_overrides["vocab_size"], c.seq_len)
        if self.device.type == "cuda" and not probed.rejected:
            cost["attention_ms"] = self._attention_ms(child)
        seconds["probe"] = time.perf_counter() - began

        record = {
            "index": len(state.records), "strategy": c.strategy, "parent": parent, "mutation": change,
            "ops_chosen": change.get("ops_chosen", []), "genome": genome_to_json(child),
            "hash": probed.structural_hash, "functional_hash": probed.functional_hash,
            "status": None, "reason": None, "fitness": None, "loss": None, "params": cost["params"], "cost": cost,
            "backend": None, "backend_notes": [], "duplicate_of": None,
        }
        over = self._over_bound(cost)
        earlier = state.trained_by_hash.get(probed.structural_hash, state.trained_by_hash.get(probed.functional_hash))
        if probed.rejected or over:
            record.update(status="rejected", reason=probed.reason or over)
        elif earlier is not None:
            original = state.records[earlier]
            record.update(status="duplicate", reason=f"computes the same function as candidate {earlier}",
                          fitness=original["fitness"], loss=original["loss"], duplicate_of=earlier)
        else:
            first_batch = state.batches_used if c.sharing else 0
            try:
                result = self.evaluator.evaluate(child, first_batch)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # diverged, kernel build or launch error, out of memory, ...
                result = Evaluation("failed", failure_reason(e))
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            record.update(status=result.status, reason=result.reason, fitness=result.fitness, loss=result.loss,
                          backend=result.backend if result.status == "ok" else None, backend_notes=result.backend_notes)
            seconds.update(result.seconds)
            self._candidate_model = result.model
        record["time_split"] = {k: round(v, 4) for k, v in seconds.items()}
        record["seconds"] = round(sum(seconds.values()), 4)
        return record

    def _attention_ms(self, child: ModelGenome) -> float | None:
        from genomec.ir import lower

        c = self.config
        total = 0.0
        for graph in child.attention_graphs():
            ms = measure_attention_ms(lower(graph), c.batch_size, c.num_heads, c.seq_len, c.head_dim)
            if ms is None:
                return None
            total += ms
        return total

    def _over_bound(self, cost: dict) -> str | None:
        c = self.config
        if c.max_params is not None and cost["params"] > c.max_params:
            return f"{cost['params']} parameters, over max_params {c.max_params}"
        ms = cost.get("attention_ms")
        if c.max_attention_ms is not None and ms is not None and ms > c.max_attention_ms:
            return f"attention takes {ms:.3f} ms, over max_attention_ms {c.max_attention_ms}"
        return None

    # -- committing ---------------------------------------------------------------------------------

    def _commit(self, record: dict) -> None:
        """Fold the record in, keep top-k weights, checkpoint (the commit point), append."""
        state = self.state
        state.add(record)
        top = state.top(self.config.top_k)
        self.run_dir.top_dir.mkdir(exist_ok=True)
        if record["status"] == "ok" and record["index"] in top:
            save_candidate(self._candidate_model, self.run_dir.top_dir / f"{record['index']}.pt")
        self._candidate_model = None
        began = time.perf_counter()
        self.run_dir.save_checkpoint({
            "records_done": len(state.records),
            "pending": record,
            "supernet": self.supernet.state_dict() if self.supernet is not None else None,
            "moments": self.moments.state_dict() if self.moments is not None else None,
            "search_rng": [self.rng.getstate()[0], list(self.rng.getstate()[1]), self.rng.getstate()[2]],
            "rng": rng_state(),
        })
        self.totals["checkpoint"] += time.perf_counter() - began
        self.run_dir.append(record)
        for path in self.run_dir.top_dir.glob("*.pt"):
            if int(path.stem) not in top:
                path.unlink(missing_ok=True)
        self._write_caches(final=False)

    def _write_caches(self, final: bool) -> None:
        state = self.state
        self.run_dir.write_json(POPULATION, [
            {"index": i, "fitness": state.fitness(i), "hash": state.records[i]["hash"]} for i in state.population
        ])
        self.run_dir.write_json(OP_STATS, state.stats.to_json())
        best = state.best()
        if best is not None:
            self.run_dir.write_json(BEST, {"index": best["index"], "fitness": best["fitness"], "loss": best["loss"],
                                           "params": best["params"], "genome": best["genome"]})
        if final or len(state.records) % PLOT_EVERY == 0:
            plot_fitness(state.records, self.run_dir.path / "fitness.png")
            plot_op_priorities(state.ucb_series, self.run_dir.path / "op_priority.png")

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> dict:
        from tqdm.auto import tqdm

        self._prepare()
        c, state = self.config, self.state
        started = time.perf_counter()
        bar = tqdm(total=c.evaluations, initial=len(state.records), desc="search", unit="eval",
                   file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        while len(state.records) < c.evaluations:
            child, parent, change = self.proposer.propose(state, self.rng)
            record = self._evaluate(child, parent, change)
            self._commit(record)
            for stage, seconds in record["time_split"].items():
                self.totals[stage] += seconds
            self.session_evaluations += 1
            bar.update(1)
            bar.set_postfix_str(self._postfix(time.perf_counter() - started))
        bar.close()
        self._write_caches(final=True)
        return self.summary(time.perf_counter() - started)

    def _postfix(self, wall: float) -> str:
        counts = self.state.counts()
        best = self.state.best()
        rate = self.session_evaluations / wall * 3600 if wall > 0 else 0.0
        return (f"best {best['fitness']:.4f}" if best else "best -") + (
            f", dedupe {counts['duplicate'] / len(self.state.records):.0%}, {rate:.0f} cand/h"
        )

    def summary(self, wall: float) -> dict:
        counts = self.state.counts()
        best = self.state.best()
        return {
            "evaluations": len(self.state.records),
            "trained": counts["ok"],
            "duplicates": counts["duplicate"],
            "rejected": counts["rejected"],
            "failed": counts["failed"],
            "best_index": best["index"] if best else None,
            "best_fitness": best["fitness"] if best else None,
            "wall_seconds": round(wall, 3),
            "session_evaluations": self.session_evaluations,
            "time_split": {stage: round(self.totals[stage], 3) for stage in STAGES},
            "out": str(self.run_dir.path),
        }


def run_search(config: SearchConfig, out: str | Path, progress: bool = True) -> dict:
    return Search(config, out, progress).run()

