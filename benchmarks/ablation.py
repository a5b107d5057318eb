"""The paper's ablation (SPEC 7, search benchmarks): OP-NAS against regularised evolution and
random search at the same evaluation budget, over several seeds.

Runs `genomec search` (in process) for every strategy and seed on the same preset, space
and proxy, each in `OUT/<strategy>-<seed>/` (an interrupted study continues: the runs
resume). Reports each run's best-so-far fitness curve, the final best per strategy with
its mean, standard deviation and 95% t-interval over seeds, and for each pair of
strategies whether the difference of their means exceeds the seed spread (Welch's t-test).
Writes `ablation.{json,md,png}` into --results. Usage:

    python benchmarks/ablation.py [--preset tiny] [--config FILE] [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import stats

from genomec.search.config import STRATEGIES, build_config, read_config_file, to_json
from genomec.search.engine import Search
from genomec.search.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]


def best_so_far(records: list[dict]) -> list[float | None]:
    curve, best = [], None
    for record in records:
        if record["status"] == "ok" and (best is None or record["fitness"] > best):
            best = record["fitness"]
        curve.append(best)
    return curve


def summarise(values: list[float]) -> dict:
    values = np.asarray(values, float)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(values) - 1) * std / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"values": values.tolist(), "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def compare(finals: dict[str, list[float]]) -> list[dict]:
    rows = []
    for a, b in itertools.combinations(finals, 2):
        test = stats.ttest_ind(finals[a], finals[b], equal_var=False)
        difference = float(np.mean(finals[a]) - np.mean(finals[b]))
        spread = float(max(np.std(finals[a], ddof=1), np.std(finals[b], ddof=1)))
        rows.append({"a": a, "b": b, "difference": difference, "largest_seed_std": spread,
                     "exceeds_spread": abs(difference) > spread, "welch_p": float(test.pvalue)})
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Ablation: OP-NAS against regularised evolution and random search",
        "",
        f"Preset `{result['settings']['preset']}`, {result['settings']['evaluations']} evaluations per run, seeds "
        f"{result['settings']['seeds']}; fitness is the held-out masked-token accuracy of the proxy ({result['date']}).",
        "",
        "| strategy | final best, per seed | mean | std | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for strategy, row in result["final_best"].items():
        values = ", ".join(f"{v:.4f}" for v in row["values"])
        lines.append(f"| {strategy} | {values} | {row['mean']:.4f} | {row['std']:.4f} | [{row['ci95'][0]:.4f}, {row['ci95'][1]:.4f}] |")
    lines += ["", "| comparison | difference of means | largest seed std | exceeds the spread | Welch p |", "|---|---|---|---|---|"]
    for row in result["comparisons"]:
        lines.append(f"| {row['a']} - {row['b']} | {row['difference']:+.4f} | {row['largest_seed_std']:.4f} | "
                     f"{'yes' if row['exceeds_spread'] else 'no'} | {row['welch_p']:.3f} |")
    lines += ["", f"Wall time of this invocation: {result['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def plot(curves: dict[str, list[list[float | None]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for strategy, runs in curves.items():
        length = min(len(run) for run in runs)
        values = np.array([[np.nan if v is None else v for v in run[:length]] for run in runs])
        mean, low, high = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
        x = np.arange(length)
        (line,) = axes.plot(x, mean, label=f"{strategy} (mean of {len(runs)} seeds)")
        axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("evaluations")
    axes.set_ylabel("best fitness so far")
    axes.set_title("best-so-far fitness, band: min to max over seeds")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", help="a search config file (keys override the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="working folder (resumable)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cpu"))
    args = parser.parse_args()
    started = time.perf_counter()
    base = build_config(args.preset, read_config_file(args.config) if args.config else {})
    curves: dict[str, list] = {}
    finals: dict[str, list[float]] = {}
    for strategy, seed in itertools.product(args.strategies, args.seeds):
        print(f"ablation: {strategy}, seed {seed}", file=sys.stderr, flush=True)
        config = build_config(args.preset, {**to_json(base), "strategy": strategy, "seed": seed})
        out = Path(args.out) / f"{strategy}-{seed}"
        Search(config, out, progress=False, log=lambda m: None).run()
        curve = best_so_far(RunDirectory(out).read_history())
        curves.setdefault(strategy, []).append(curve)
        finals.setdefault(strategy, []).append(curve[-1])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"preset": args.preset, "config": args.config, "seeds": args.seeds, "evaluations": base.evaluations,
                     "steps": base.steps},
        "final_best": {s: summarise(v) for s, v in finals.items()},
        "comparisons": compare(finals) if len(args.seeds) > 1 else [],
        "curves": curves,
        "wall_seconds": time.perf_counter() - started,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / "ablation.md").write_text(markdown(result))
    plot(curves, results / "ablation.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
