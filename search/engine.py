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
from genomec.models.training import rng_state, set_rng_state, write_atomic

from .config import SearchConfig
from .cost import measure_attention_ms, model_cost
from .evaluate import Evaluation, Evaluator, failure_reason, make_proxy, model_config
from .filters import probe
from .mutations import MutationError, mutate, random_model_genome, seed_genomes
from .plots import plot_fitness, plot_op_priorities
from .priority import OpStats, PrioritySampler, UniformSampler
from .rundir import BEST, OP_STATS, POPULATION, RunDirectory, RunError
from .supernet import OptimizerMoments, SuperNet, average_into
from .distributed import World

PLOT_EVERY = 10  # evaluations between plot refreshes (and at the end)
STAGES = ("probe", "inherit", "train", "score", "write_back", "checkpoint")
# Under torchrun a rank whose child finished first waits for the others before the write-back.
WAIT = "wait"


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
        self.seeds_proposed = state.seeds_proposed  # counts the children of the generation in flight too
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
        if c.strategy != "random" and self.seeds_proposed < len(self.seeds):
            self.seeds_proposed += 1
            name = c.seeds[self.seeds_proposed - 1]
            return self.seeds[self.seeds_proposed - 1], None, {"type": "seed", "name": name, "ops_chosen": []}
        return random_model_genome(rng, self.space, self.sampler), None, {"type": "random", "ops_chosen": []}


# -- the loop ----------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"genomec search: {message}", file=sys.stderr)


class Search:
    """A search over one run directory: `Search(config, out).run()`.

    Each generation holds one child per process (one in a plain run, W under torchrun):
    rank 0 proposes and screens them (probe, cost, dedupe), every rank trains the child
    given to it, the super-net takes the average of what they trained, and rank 0 alone
    records the generation and checkpoints it."""

    def __init__(self, config: SearchConfig, out: str | Path, progress: bool = True, log=_log, world: World | None = None):
        self.config = config
        self.run_dir = RunDirectory(out)
        self.world = world or World()
        self.progress = progress and self.world.is_main
        self.log = log if self.world.is_main else (lambda message: None)
        self.totals = Counter()  # seconds per stage, this session
        self.session_evaluations = 0

    # -- setting up or resuming ----------------------------------------------------------------

    def _prepare(self):
        c, world = self.config, self.world
        self.device = world.device(c.device)
        identity = {**c.identity(), "processes": world.size}
        checkpoint, records, error = None, [], None
        if world.is_main:
            try:
                checkpoint, records = self._open(identity)
            except Exception as e:  # bad settings or data: every rank stops with it
                error = e
        failure = world.broadcast((type(error).__name__, str(error)) if error is not None else None)
        if error is not None:
            raise error
        if failure is not None:
            raise RunError(f"rank 0 stopped: {failure[0]}: {failure[1]}")
        if not world.is_main:  # the run's data is on disk now (RUN on a file system every node sees)
            self.proxy = make_proxy(c, self.run_dir.data_dir, self.log)

        self.rng = random.Random(c.seed)
        random.seed(c.seed + world.rank)
        torch.manual_seed(c.seed + 1_000_003 * world.rank)
        self.supernet = self.moments = None
        if c.sharing:
            shape = seed_genomes(("standard",), c.space)[0]
            self.supernet = SuperNet(model_config(shape, c, self.proxy), c.num_layers, self.proxy.head).to(self.device)
            if c.optimizer_state == "inherit":
                self.moments = OptimizerMoments(self.supernet)
        if world.is_main and checkpoint is not None:
            records = self._restore(checkpoint, records)
        if world.distributed:
            self._share_checkpoint(checkpoint)
        if world.is_main:
            self.state = replay(records, c)
            self.proposer = Proposer(c, self.state)
            if records:
                self.log(f"resuming {self.run_dir.path} after {len(records)} evaluations")
        self.evaluator = Evaluator(c, self.proxy, self.supernet, self.moments, self.device)

    def _open(self, identity: dict) -> tuple[dict | None, list[dict]]:
        """Rank 0: the run directory opened (or refused), the proxy's data ready, and what
        a resumed run left: (checkpoint, records)."""
        resuming = self.run_dir.open(identity, self.config.evaluations)
        try:
            self.proxy = make_proxy(self.config, self.run_dir.data_dir, self.log)
        except BaseException:
            if not resuming:  # bad data: leave no half-made run behind
                shutil.rmtree(self.run_dir.path, ignore_errors=True)
            raise
        records = self.run_dir.read_history()
        checkpoint = self.run_dir.load_checkpoint()
        if checkpoint is None and records:
            raise RunError(f"{self.run_dir.path}: the history has {len(records)} records but there is no checkpoint")
        return checkpoint, records

    def _restore(self, checkpoint: dict, records: list[dict]) -> list[dict]:
        """Rank 0: the history made whole (a committed generation appended), the super-net
        and the RNGs as the checkpoint left them."""
        done, pending = checkpoint["records_done"], checkpoint["pending"]
        if len(records) == done - len(pending) and [r["index"] for r in pending] == list(range(len(records), done)):
            for record in pending:  # killed after the commit, before (all of) the appends
                self.run_dir.append(record)
                records.append(record)
        elif len(records) != done:
            raise RunError(f"{self.run_dir.path}: the checkpoint holds {done} evaluations, the history {len(records)}")
        self._load_state(checkpoint, rank=0)
        version, internal, gauss = checkpoint["search_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        return records

    def _load_state(self, checkpoint: dict, rank: int) -> None:
        if self.supernet is not None:
            self.supernet.load_state_dict(checkpoint["supernet"])
        if self.moments is not None:
            self.moments.load_state_dict(checkpoint["moments"])
        set_rng_state(checkpoint["rng"][rank])

    def _share_checkpoint(self, checkpoint: dict | None) -> None:
        """Every rank starts from rank 0's super-net (and, resuming, its own saved RNGs)."""
        resumed = self.world.broadcast(checkpoint is not None if self.world.is_main else None)
        if resumed:
            state = self.world.broadcast(checkpoint if self.world.is_main else None)
            if not self.world.is_main:
                self._load_state(state, self.world.rank)
        elif self.supernet is not None:
            state = self.world.broadcast(self.supernet.state_dict() if self.world.is_main else None)
            self.supernet.load_state_dict(state)

    # -- screening a child: probe, cost, dedupe (rank 0) -----------------------------------------

    def _screen(self, child: ModelGenome, parent, change: dict, index: int, in_flight: dict) -> dict:
        """The record of a child before training: rejected, duplicate, or to be trained
        (status None). `in_flight`: hash -> index of the generation's children to train."""
        c, state = self.config, self.state
        began = time.perf_counter()
        probed = probe(child, c.head_dim)
        cost = model_cost(child, c.batch_size, c.seq_len, c.num_heads, c.head_dim,
                          self.proxy.config_overrides["vocab_size"], c.seq_len)
        if self.device.type == "cuda" and not probed.rejected:
            try:
                cost["attention_ms"] = self._attention_ms(child)
            except Exception as e:  # kernels that do not build or run: training falls back or fails, and says so
                cost["attention_ms"], cost["attention_ms_error"] = None, failure_reason(e)
        record = {
            "index": index, "strategy": c.strategy, "parent": parent, "mutation": change,
            "ops_chosen": change.get("ops_chosen", []), "genome": genome_to_json(child),
            "hash": probed.structural_hash, "functional_hash": probed.functional_hash,
            "status": None, "reason": None, "fitness": None, "loss": None, "params": cost["params"], "cost": cost,
            "backend": None, "backend_notes": [], "duplicate_of": None,
            "time_split": {"probe": time.perf_counter() - began},
        }
        over = self._over_bound(cost)
        known = {**in_flight, **state.trained_by_hash}
        earlier = known.get(probed.structural_hash, known.get(probed.functional_hash))
        if probed.rejected or over:
            record.update(status="rejected", reason=probed.reason or over)
        elif earlier is not None:
            record.update(status="duplicate", reason=f"computes the same function as candidate {earlier}", duplicate_of=earlier)
        else:
            in_flight[probed.structural_hash] = in_flight[probed.functional_hash] = index
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

    # -- one generation ----------------------------------------------------------------------------

    def _plan(self) -> list[dict]:
        """Rank 0: the generation's records, screened; child i is trained by rank i."""
        state = self.state
        count = min(self.world.size, self.config.evaluations - len(state.records))
        records, in_flight = [], {}
        for offset in range(count):
            child, parent, change = self.proposer.propose(state, self.rng)
            records.append(self._screen(child, parent, change, len(state.records) + offset, in_flight))
        first_batch = state.batches_used if self.config.sharing else 0
        for slot, record in enumerate(records):
            record["first_batch"] = first_batch + slot * self.config.steps if self.config.sharing else 0
        return records

    def _train(self, record: dict | None) -> Evaluation | None:
        """This rank's child, trained and scored (None: nothing to train)."""
        if record is None or record["status"] is not None:
            return None
        try:
            return self.evaluator.evaluate(parse_genome(record["genome"]), record["first_batch"])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # diverged, kernel build or launch error, out of memory, ...
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return Evaluation("failed", failure_reason(e))

    def _merge(self, result: Evaluation | None) -> float:
        """The super-net takes every element's average over the ranks whose child trained
        it (failed children contribute nothing). Returns the seconds it took."""
        began = time.perf_counter()
        ok = result is not None and result.status == "ok"
        if self.supernet is not None:
            write_back_sum = self.world.all_reduce_sum
            average_into(dict(self.supernet.named_parameters()), result.weights if ok else [], write_back_sum)
            if self.moments is not None:
                self.moments.write_back(result.moments if ok else {k: [] for k in OptimizerMoments.KINDS}, write_back_sum)
        return time.perf_counter() - began

    def _generation(self) -> list[dict]:
        world = self.world
        records = world.broadcast(self._plan() if world.is_main else None)
        mine = records[world.rank] if world.rank < len(records) else None
        result = self._train(mine)
        began = time.perf_counter()
        world.barrier()
        waited = time.perf_counter() - began
        merge_seconds = self._merge(result)
        summaries = world.gather(None if result is None else result.summary())
        kept = self._top_weights(records, summaries, result)
        rngs = world.gather(rng_state())
        if world.is_main:
            self._commit(records, summaries, {"write_back": merge_seconds, **({WAIT: waited} if world.distributed else {})}, kept, rngs)
        return records

    def _top_weights(self, records, summaries, result) -> dict:
        """Rank 0: the trained weights of the generation's children that enter the top-k."""
        if self.world.is_main:
            fitness = {r["index"]: s["fitness"] for r, s in zip(records, summaries) if s and s["status"] == "ok"}
            scored = [(-f, i) for i, f in fitness.items()] + [(-r["fitness"], r["index"]) for r in self.state.records if r["status"] == "ok"]
            top = {i for _, i in sorted(scored)[: self.config.top_k]}
            wanted = [r["index"] in top and r["index"] in fitness for r in records]
        else:
            wanted = None
        wanted = self.world.broadcast(wanted)
        mine = self.world.rank < len(wanted) and wanted[self.world.rank]
        weights = self.world.gather({k: v.cpu() for k, v in result.model.state_dict().items()} if mine else None)
        return {records[rank]["index"]: w for rank, w in enumerate(weights) if w is not None}

    # -- committing (rank 0) --------------------------------------------------------------------------

    def _commit(self, records, summaries, generation_seconds: dict, kept, rngs) -> None:
        """Fold the generation in, keep top-k weights, checkpoint (the commit point), append."""
        state = self.state
        for record, summary in zip(records, summaries):
            record.pop("first_batch")
            if summary is not None:
                split = {**record["time_split"], **summary.pop("seconds"), **generation_seconds}
                record.update(summary, time_split=split)
                if record["status"] != "ok":
                    record["backend"] = None
        for record in records:  # duplicates of a child of this same generation take its fitness now
            if record["status"] == "duplicate":
                original = next((r for r in records if r["index"] == record["duplicate_of"]), None) or state.records[record["duplicate_of"]]
                record.update(fitness=original["fitness"], loss=original["loss"])
            record["time_split"] = {k: round(v, 4) for k, v in record["time_split"].items()}
            record["seconds"] = round(sum(record["time_split"].values()), 4)
            state.add(record)
        top = state.top(self.config.top_k)
        self.run_dir.top_dir.mkdir(exist_ok=True)
        for index, weights in kept.items():
            write_atomic(self.run_dir.top_dir / f"{index}.pt", lambda f, w=weights: torch.save(w, f))
        began = time.perf_counter()
        self.run_dir.save_checkpoint({
            "records_done": len(state.records),
            "pending": records,
            "supernet": self.supernet.state_dict() if self.supernet is not None else None,
            "moments": self.moments.state_dict() if self.moments is not None else None,
            "search_rng": [self.rng.getstate()[0], list(self.rng.getstate()[1]), self.rng.getstate()[2]],
            "rng": rngs,
        })
        self.totals["checkpoint"] += time.perf_counter() - began
        for record in records:
            self.run_dir.append(record)
            for stage, seconds in record["time_split"].items():
                self.totals[stage] += seconds
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
        if final or len(state.records) % PLOT_EVERY < self.world.size:
            plot_fitness(state.records, self.run_dir.path / "fitness.png")
            plot_op_priorities(state.ucb_series, self.run_dir.path / "op_priority.png")

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> dict:
        from tqdm.auto import tqdm

        self._prepare()
        c, world = self.config, self.world
        started = time.perf_counter()
        done = world.broadcast(len(self.state.records) if world.is_main else None)
        bar = tqdm(total=c.evaluations, initial=done, desc="search", unit="eval",
                   file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        while done < c.evaluations:
            records = self._generation()
            done += len(records)
            self.session_evaluations += len(records)
            if world.is_main:
                bar.update(len(records))
                bar.set_postfix_str(self._postfix(time.perf_counter() - started))
        bar.close()
        if world.is_main:
            self._write_caches(final=True)
        world.barrier()
        return self.summary(time.perf_counter() - started) if world.is_main else {}

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
            "processes": self.world.size,
            "time_split": {stage: round(self.totals[stage], 3) for stage in STAGES + ((WAIT,) if self.world.distributed else ())},
            "out": str(self.run_dir.path),
        }
