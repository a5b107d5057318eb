"""The static kernel benchmark (`benchmarks/kernel_static.py`, `genomec bench --static`) at
toy scope: one of our kernels and the reference's beside it, compiled for sm_90 and read
from their SASS; and its bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import GENOMES, ROOT
from genomec.api import distinct_graphs
from genomec.cli import main
from genomec.runtime.bench import suite_graphs
from genomec.runtime.kernel_static import REFERENCE, run_static

STANDARD = GENOMES / "standard-attention.json"


def check_rows(result, tiles_choice="same"):
    ours, reference = result["rows"]
    assert (ours["impl"], ours["kernel"], ours["pass"], ours["dtype"], ours["head_dim"]) == ("genomec", "attention_fwd", "forward", "bf16", 64)
    assert (reference["impl"], reference["kernel"], reference["tiles_choice"]) == (REFERENCE, "flash_forward", tiles_choice)
    if tiles_choice == "same":
        assert reference["tiles"] == ours["tiles"]
    for row in (ours, reference):
        loop = row["main_loop"]
        assert row["spills"] == 0 and 0 < row["registers"] <= 255 and row["shared_bytes"] > 0
        assert loop["instructions"] > 0 and loop["instructions_per_element"] > 0 and loop["mufu"]["EX2"] > 0
        assert sum(loop["wgmma"].values()) > 0 and loop["mma_sync"] == {}  # Hopper's wgmma, no mma.sync left
        assert loop["score_duplication"] >= 1 and loop["mma_work_ratio"] >= 1
        assert any(name.startswith("LDGSTS.128") for name in loop["loads"])  # 16-byte cp.async: the launch's alignment


def test_benchmark_script_on_one_kernel(tmp_path):
    """The script in a fresh process (which compiles in place), through `genomec bench --static`."""
    out = tmp_path / "static"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_static.py"), "--out", str(out), str(STANDARD),
         "--head-dims", "64", "--passes", "forward", "--reference-tiles", "same"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "kernel_static.json").read_text())
    assert result["arch"] == "sm_90" and "N=4096" in result["specialisation"]
    assert result["environment"]["triton"] and result["environment"]["torch"] and result["environment"]["date"]
    check_rows(result)
    table = (out / "kernel_static.md").read_text()
    assert "## bf16, head dim 64" in table and "| standard-attention | attention_fwd |" in table and "flash_forward (same tiles)" in table
    assert "Standard attention, main loop: attention_fwd:" in table


def test_run_static_from_an_interpreting_process(tmp_path):
    """This process interprets: the compilation runs in a child; the best tiles' search says
    what each candidate gave."""
    graphs = suite_graphs(distinct_graphs, [STANDARD])
    result = run_static(graphs, tmp_path, head_dims=(64,), passes=("forward",), reference_tiles=("best",), progress=None)
    check_rows(result, "best")
    tried = result["rows"][1]["candidates"]
    assert len(tried) > 1 and all(c["spills"] == 0 for c in tried if c["tiles"] == str_tiles(result["rows"][1]["tiles"]))
    assert json.loads((tmp_path / "kernel_static.json").read_text())["rows"] == result["rows"]


def str_tiles(t):
    from genomec.codegen.tiles import TileConfig

    return str(TileConfig(**t))


@pytest.mark.parametrize("argv", [
    ["--static", "--lengths", "1024"],
    ["--static", "--no-aot"],
    ["--static", "--head-dims", "48"],
    ["--passes", "forward"],
    ["--reference-tiles", "best"],
    ["--static", "--passes", "sideways"],
])
def test_static_bad_options_exit_2(tmp_path, argv, capsys):
    assert main(["bench", "-o", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
