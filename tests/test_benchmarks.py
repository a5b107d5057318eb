"""The search benchmarks run end to end at toy size, so they cannot rot (their real runs
are long and not part of CI; their results are committed under benchmarks/results/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_search import toy_settings, write_corpus

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def toy(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config_file = tmp_path / "toy.json"
    config_file.write_text(json.dumps(toy_settings(corpus, evaluations=4)))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return config_file, env


def _run(args, env, timeout=300):
    done = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_search_benchmark(tmp_path, toy):
    config_file, env = toy
    _run([BENCHMARKS / "search.py", "--config", config_file, "--results", tmp_path / "results"], env)
    result = json.loads((tmp_path / "results" / "search-tiny.json").read_text())
    assert result["evaluations"] == 4 and result["candidates_per_hour"] > 0
    assert set(result["time_split_seconds"]) == {"probe", "inherit", "train", "score", "write_back", "checkpoint"}
    assert 0 <= result["share_outside_training"] <= 1
    assert "candidates per hour" in (tmp_path / "results" / "search-tiny.md").read_text()


def test_rank_correlation_benchmark(tmp_path, toy):
    config_file, env = toy
    args = [BENCHMARKS / "rank_correlation.py", "--config", config_file, "--candidates", 5, "--out", tmp_path / "work",
            "--results", tmp_path / "results"]
    _run(args, env)
    result = json.loads((tmp_path / "results" / "rank_correlation.json").read_text())
    rows = result["rows"]
    assert len(rows) == 5 and len(json.loads((tmp_path / "work" / "sample.json").read_text())) == 5
    for row in rows:
        assert {"biws", "scratch", "standalone_1", "standalone_2"} <= set(row) and row["params"] > 0
    assert set(result["analysis"]["against_standalone_1"]) == {"biws", "scratch", "params", "standalone_2 (noise ceiling)"}
    assert (tmp_path / "results" / "rank_correlation.png").read_bytes()[:4] == b"\x89PNG"
    _run(args, env)  # resumed: nothing is scored again
    assert json.loads((tmp_path / "results" / "rank_correlation.json").read_text())["rows"] == rows


def test_ablation_benchmark(tmp_path, toy):
    config_file, env = toy
    _run([BENCHMARKS / "ablation.py", "--config", config_file, "--seeds", 0, 1, "--out", tmp_path / "work",
          "--results", tmp_path / "results"], env)
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert set(result["final_best"]) == {"op", "re", "random"}
    for strategy, row in result["final_best"].items():
        assert len(row["values"]) == 2 and len(result["curves"][strategy][0]) == 4
    assert len(result["comparisons"]) == 3
    assert (tmp_path / "results" / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_gpu_check_dry_run_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the one-shot would run for real")
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path / "gpu")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    for step in ("pytest -m gpu", "genomec bench", "--lengths 1024 4096 16384", "genomec search --preset small"):
        assert step in done.stdout
