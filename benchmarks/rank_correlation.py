"""Ranking fidelity of BIWS (SPEC 7, search benchmarks): does weight-sharing fitness rank
candidates the way stand-alone training does?

1. Warm a super-net with a search run (the preset's, in `OUT/warm`).
2. Draw a sample of candidates across the space, stratified by layer pattern (how many
   attention layers), the attention score family (dot product, cosine, Euclidean, none)
   and parameter count (written to `OUT/sample.json`).
3. Score every candidate four ways, each from the same batches:
   - BIWS: inherit from the warmed super-net (a fresh copy for each), train `steps`, score;
   - scratch: `steps` from random initialisation;
   - stand-alone: 10 x `steps` from random initialisation, with two seeds (init and data order).
4. Kendall tau and Spearman rho against stand-alone (seed 1), with bootstrap 95%
   intervals over candidates, for BIWS, scratch and parameter count, and the noise ceiling
   (stand-alone seed 1 against seed 2); top-5 overlap with stand-alone.

Per-candidate scores are kept in `OUT/scores.json` as they come, so an interrupted study
continues where it stopped. Writes `rank_correlation.{json,md,png}` into --results. Usage:

    python benchmarks/rank_correlation.py [--preset tiny] [--config FILE] [--candidates 24] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from genomec.genome import AttentionLayer, genome_to_json, parse_genome
from genomec.search.config import build_config, read_config_file
from genomec.search.cost import count_parameters
from genomec.search.engine import Search
from genomec.search.evaluate import Evaluator, make_proxy
from genomec.search.filters import probe
from genomec.search.mutations import random_model_genome, seed_genomes
from genomec.search.priority import UniformSampler
from genomec.search.rundir import RunDirectory
from genomec.search.supernet import SuperNet

ROOT = Path(__file__).resolve().parents[1]
STANDALONE_FACTOR = 10
BOOTSTRAP = 2000
TOP = 5


# -- the sample ---------------------------------------------------------------------------------


def score_family(genome) -> str:
    ops = {node.op for graph in genome.attention_graphs() for node in graph.nodes}
    for family in ("cos", "euc", "matmul"):
        if family in ops:
            return family
    return "none"


def stratum(genome, params_bucket: int) -> tuple:
    attention = sum(isinstance(layer, AttentionLayer) for layer in genome.layers)
    return attention, score_family(genome), params_bucket


def draw_sample(config, count: int, seed: int, vocab_size: int) -> list:
    """`count` candidates of distinct function, round-robin over the strata of a pool of
    random genomes and the seeds."""
    rng = random.Random(seed)
    space = config.space
    pool, seen = [], set()
    for genome in seed_genomes(config.seeds, space) + [random_model_genome(rng, space, UniformSampler()) for _ in range(20 * count)]:
        probed = probe(genome, config.head_dim)
        if probed.rejected or probed.functional_hash in seen:
            continue
        seen.add(probed.functional_hash)
        pool.append(genome)
    params = [count_parameters(g, vocab_size, config.seq_len) for g in pool]
    edges = np.quantile(params, [1 / 3, 2 / 3])
    strata: dict[tuple, list] = {}
    for genome, p in zip(pool, params):
        strata.setdefault(stratum(genome, int(np.searchsorted(edges, p))), []).append(genome)
    keys = sorted(strata)
    rng.shuffle(keys)
    sample = []
    while len(sample) < count and any(strata.values()):
        for key in keys:
            if strata[key] and len(sample) < count:
                sample.append(strata[key].pop(0))
    return sample


# -- scoring ------------------------------------------------------------------------------------


def score(config, proxy, genome, supernet, steps: int, first_batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    evaluator = Evaluator(replace(config, steps=steps), proxy, copy.deepcopy(supernet) if supernet is not None else None, None,
                          torch.device("cpu"))
    began = time.perf_counter()
    try:
        result = evaluator.evaluate(genome, first_batch)
    except Exception as e:  # a diverged candidate keeps its place in the table, without a score
        return {"fitness": None, "reason": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - began}
    return {"fitness": result.fitness, "loss": result.loss, "seconds": time.perf_counter() - began}


# -- statistics ---------------------------------------------------------------------------------


def correlations(x, y, rng: np.random.Generator) -> dict:
    """Kendall tau and Spearman rho of x against y with bootstrap 95% intervals."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    result = {"n": len(x)}
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman_rho", stats.spearmanr)):
        value = float(fn(x, y).statistic)
        draws = []
        for _ in range(BOOTSTRAP):
            pick = rng.integers(0, len(x), len(x))
            if np.ptp(x[pick]) > 0 and np.ptp(y[pick]) > 0:
                draws.append(fn(x[pick], y[pick]).statistic)
        low, high = np.nanpercentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
        result[name] = {"value": value, "ci95": [float(low), float(high)]}
    return result


def top_overlap(x, y, k: int = TOP) -> int:
    top_x = set(np.argsort(-np.asarray(x, float))[:k])
    top_y = set(np.argsort(-np.asarray(y, float))[:k])
    return len(top_x & top_y)


def analyse(rows: list[dict]) -> dict:
    complete = [r for r in rows if all(r[k]["fitness"] is not None for k in ("biws", "scratch", "standalone_1", "standalone_2"))]
    reference = [r["standalone_1"]["fitness"] for r in complete]
    rng = np.random.default_rng(0)
    proxies = {
        "biws": [r["biws"]["fitness"] for r in complete],
        "scratch": [r["scratch"]["fitness"] for r in complete],
        "params": [r["params"] for r in complete],
        "standalone_2 (noise ceiling)": [r["standalone_2"]["fitness"] for r in complete],
    }
    return {
        "candidates": len(rows),
        "complete": len(complete),
        "against_standalone_1": {
            name: {**correlations(values, reference, rng), f"top{TOP}_overlap": top_overlap(values, reference)}
            for name, values in proxies.items()
        },
    }


def markdown(result: dict) -> str:
    lines = [
        "# Ranking fidelity (BIWS against stand-alone training)",
        "",
        f"{result['analysis']['complete']} candidates scored ({result['settings']['preset']} preset, "
        f"{result['settings']['steps']} steps per proxy, {result['settings']['standalone_steps']} stand-alone; "
        f"{result['date']}). Correlations with stand-alone seed 1, bootstrap 95% intervals over candidates.",
        "",
        "| proxy | Kendall tau | 95% CI | Spearman rho | 95% CI | top-5 overlap |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["analysis"]["against_standalone_1"].items():
        tau, rho = row["kendall_tau"], row["spearman_rho"]
        lines.append(f"| {name} | {tau['value']:.3f} | [{tau['ci95'][0]:.3f}, {tau['ci95'][1]:.3f}] | "
                     f"{rho['value']:.3f} | [{rho['ci95'][0]:.3f}, {rho['ci95'][1]:.3f}] | {row[f'top{TOP}_overlap']}/{TOP} |")
    lines += ["", f"Wall time: {result['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    complete = [r for r in rows if all(r[k]["fitness"] is not None for k in ("biws", "scratch", "standalone_1", "standalone_2"))]
    figure = Figure(figsize=(12, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    reference = [r["standalone_1"]["fitness"] for r in complete]
    panels = (("biws", "BIWS fitness"), ("scratch", "scratch fitness"), ("params", "parameters"), ("standalone_2", "stand-alone, seed 2"))
    for i, (key, label) in enumerate(panels):
        axes = figure.add_subplot(1, 4, i + 1)
        values = [r[key] if key == "params" else r[key]["fitness"] for r in complete]
        axes.scatter(values, reference, s=14)
        axes.set_xlabel(label)
        if i == 0:
            axes.set_ylabel("stand-alone fitness, seed 1")
    figure.tight_layout()
    figure.savefig(path, format="png")


# -- the study ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", help="a search config file (keys override the preset's)")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--out", default=str(ROOT / "runs" / "rank-correlation"), help="working folder (resumable)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cpu"))
    args = parser.parse_args()
    started = time.perf_counter()
    config = build_config(args.preset, read_config_file(args.config) if args.config else {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def say(message):
        print(f"rank_correlation: {message}", file=sys.stderr, flush=True)

    say(f"warming the super-net: a {config.strategy} search of {config.evaluations} evaluations")
    warm = Search(config, out / "warm", progress=False, log=say)
    warm.run()
    supernet = warm.supernet
    warm_batches = warm.state.batches_used
    proxy = make_proxy(config, RunDirectory(out / "warm").data_dir, say)
    vocab = proxy.config_overrides["vocab_size"]

    sample_file = out / "sample.json"
    if sample_file.exists():
        sample = [parse_genome(g) for g in json.loads(sample_file.read_text())]
    else:
        sample = draw_sample(config, args.candidates, seed=config.seed + 1, vocab_size=vocab)
        sample_file.write_text(json.dumps([genome_to_json(g) for g in sample], indent=1))
    scores_file = out / "scores.json"
    rows = json.loads(scores_file.read_text()) if scores_file.exists() else []
    standalone_steps = STANDALONE_FACTOR * config.steps
    for index in range(len(rows), len(sample)):
        genome = sample[index]
        say(f"candidate {index + 1}/{len(sample)}")
        params = count_parameters(genome, vocab, config.seq_len)
        rows.append({
            "index": index,
            "params": params,
            "stratum": list(stratum(genome, -1)[:2]),
            "biws": score(config, proxy, genome, supernet, config.steps, warm_batches, seed=index),
            "scratch": score(config, proxy, genome, None, config.steps, 0, seed=index),
            "standalone_1": score(config, proxy, genome, None, standalone_steps, 0, seed=10_000 + index),
            "standalone_2": score(config, proxy, genome, None, standalone_steps, standalone_steps, seed=20_000 + index),
        })
        scores_file.write_text(json.dumps(rows, indent=1))

    from datetime import datetime, timezone

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"preset": args.preset, "config": args.config, "steps": config.steps, "standalone_steps": standalone_steps,
                     "candidates": len(sample), "warm_evaluations": config.evaluations, "bootstrap": BOOTSTRAP},
        "analysis": analyse(rows),
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "rank_correlation.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / "rank_correlation.md").write_text(markdown(result))
    plot(rows, results / "rank_correlation.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
