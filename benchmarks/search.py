"""Search throughput (SPEC 7, search benchmarks): `genomec search` on a preset, as a user runs it.

Runs the search command in a subprocess on a fresh run directory and watches its
`history.jsonl`, so the times include start-up (corpus, tokenizer, super-net). Prints and
writes: wall time to the first record and to the 40th (the tiny preset's target: 40
evaluations within 10 minutes on a 2-core CPU), candidates per hour, the engine's time
split (probe, inherit, train, score, write-back, checkpoint) and the share of time spent
outside training, the dedupe rate, and the counts by status. Usage:

    python benchmarks/search.py [--preset tiny] [--config FILE] [--out DIR] [--results benchmarks/results/cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_EVALUATIONS = 40


def _records(history: Path) -> int:
    return history.read_bytes().count(b"\n") if history.exists() else 0


def _machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run(preset: str, config: str | None, out: Path) -> dict:
    command = [sys.executable, "-m", "genomec", "search", *([config] if config else []), "--preset", preset,
               "--out", str(out), "--no-progress", "--json"]
    history = out / "history.jsonl"
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached: dict[int, float] = {}
    while process.poll() is None:
        count = _records(history)
        for mark in (1, TARGET_EVALUATIONS):
            if count >= mark and mark not in reached:
                reached[mark] = time.perf_counter() - started
        time.sleep(0.2)
    wall = time.perf_counter() - started
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the search failed (exit {process.returncode}):\n{stderr}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in history.read_text().splitlines()]
    for mark in (1, TARGET_EVALUATIONS):
        if len(records) >= mark:
            reached.setdefault(mark, wall)
    split = summary["time_split"]
    engine = sum(split.values())
    return {
        "preset": preset,
        "config": config,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": " ".join(["genomec", *command[3:]]).replace(str(out), "RUN"),
        "evaluations": summary["evaluations"],
        "counts": {k: summary[k] for k in ("trained", "duplicates", "rejected", "failed")},
        "dedupe_rate": summary["duplicates"] / summary["evaluations"],
        "wall_seconds": wall,
        "search_seconds": summary["wall_seconds"],  # the loop alone, after start-up
        "startup_seconds": wall - summary["wall_seconds"],
        "seconds_to_first_record": reached.get(1),
        f"seconds_to_{TARGET_EVALUATIONS}_evaluations": reached.get(TARGET_EVALUATIONS),
        "candidates_per_hour": 3600 * summary["evaluations"] / wall,
        "candidates_per_hour_after_startup": 3600 * summary["evaluations"] / summary["wall_seconds"],
        "time_split_seconds": split,
        "share_outside_training": 1 - split["train"] / engine if engine else None,
        "first_fitness": records[0]["fitness"] if records else None,  # the first seed, for scale
        "best_index": summary["best_index"],
        "best_fitness": summary["best_fitness"],
        "best_genome": records[summary["best_index"]]["genome"] if summary["best_index"] is not None else None,
    }


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(result: dict) -> str:
    split = result["time_split_seconds"]
    total = sum(split.values())
    target = result[f"seconds_to_{TARGET_EVALUATIONS}_evaluations"]
    lines = [
        f"# Search throughput: preset `{result['preset']}`",
        "",
        f"`{result['command']}` on {result['machine']['cores']} cores ({result['machine']['cpu']}), "
        f"torch {result['machine']['torch']}, {result['date']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| evaluations | {result['evaluations']} |",
        f"| wall time | {result['wall_seconds']:.1f} s (start-up {result['startup_seconds']:.1f} s) |",
        f"| time to {TARGET_EVALUATIONS} evaluations | {'%.1f s' % target if target else 'not reached'} (target 600 s) |",
        f"| candidates per hour | {result['candidates_per_hour']:.0f} ({result['candidates_per_hour_after_startup']:.0f} after start-up) |",
        f"| trained / duplicates / rejected / failed | {' / '.join(str(v) for v in result['counts'].values())} |",
        f"| dedupe rate | {result['dedupe_rate']:.1%} |",
        f"| time outside training (engine overhead) | {result['share_outside_training']:.1%} |",
        f"| best fitness (held-out masked-token accuracy) | {_number(result['best_fitness'])} (candidate {result['best_index']}; "
        f"the first seed: {_number(result['first_fitness'])}) |",
        "",
        "| stage | seconds | share |",
        "|---|---|---|",
        *(f"| {stage} | {seconds:.2f} | {seconds / total:.1%} |" for stage, seconds in split.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", help="a config file for the search (keys override the preset's)")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cpu"),
                        help="folder for search-<preset>.json and .md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "run"
        result = run(args.preset, args.config, out)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"search-{args.preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"search-{args.preset}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
