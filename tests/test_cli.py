"""The command line: every exit code, messages without tracebacks, the npz contract."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import GENOMES, SHARED_GENOMES
from genomec.cli import main
from genomec.genome import load_genome
from genomec.ir import execute, lower


def run_cli(*args):
    """Run `python -m genomec` in a fresh process: what a user sees."""
    return subprocess.run([sys.executable, "-m", "genomec", *map(str, args)], capture_output=True, text=True)


def test_check_accepts_the_shared_genomes():
    shared = [SHARED_GENOMES / name for name in ("autobert-zero.json", "bert-base.json", "standard-attention.json")]
    result = run_cli("check", *shared)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == 3
    assert "hash " in result.stdout and "softmax" in result.stdout


def test_check_json_and_verbose(capsys):
    assert main(["check", str(GENOMES / "autobert-zero.json"), "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["kind"] == "model"
    assert sorted(i for g in report["graphs"] for i in g["layers"]) == [1, 3, 5, 7, 9, 11]
    assert len(report["graphs"]) == 5  # layers 5 and 7 share one graph
    assert main(["check", "-v", str(GENOMES / "standard-attention.json")]) == 0
    assert "passes: dce" in capsys.readouterr().out


def test_check_rejects_bad_files_with_exit_2_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [{"id": "s", "op": "matmul", "args": ["q", "k"]}], "output": "s"}')
    result = run_cli("check", GENOMES / "standard-attention.json", bad, tmp_path / "missing.json")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert f"{bad}: node 's': matmul needs [a,b] @ [b,c], got [N,d] @ [N,d]" in lines
    assert f"{tmp_path / 'missing.json'}: no such file" in lines
    assert "standard-attention.json: ok" in result.stdout  # the good file is still checked


def test_check_json_reports_problems(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"expr": "neg(q"}')
    assert main(["check", "--json", str(bad)]) == 2
    [report] = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "expected ',' or ')'" in report["problems"][0]


def test_usage_errors_exit_2():
    assert run_cli("check").returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert main(["show", str(GENOMES / "standard-attention.json"), "--stage", "nope"]) == 2


def test_show_stages_and_drawings(tmp_path, capsys):
    path = GENOMES / "autobert-zero.json"
    assert main(["show", str(path), "--stage", "parsed"]) == 0
    parsed = capsys.readouterr().out
    assert main(["show", str(path)]) == 0
    simplified = capsys.readouterr().out
    assert "e1 = neg(k)" in parsed and "t0 = " in simplified and parsed != simplified
    png, dot = tmp_path / "m.png", tmp_path / "m.dot"
    assert main(["show", str(path), "--dot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["show", str(path), "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph") and text.count("subgraph cluster_") == 5
    assert main(["show", str(path), "--dot", str(tmp_path / "m.svg")]) == 2


def test_ops_lists_the_registry(capsys):
    from genomec.genome.ops import OPS

    assert main(["ops", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(OPS)
    assert main(["ops"]) == 0
    assert "pairwise cosine of rows" in capsys.readouterr().out


def _write_inputs(path, shape=(2, 2, 5, 4), grad=False, **override):
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name in ("q", "k", "v")}
    arrays["mask"] = np.array([[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=bool)
    if grad:
        arrays["grad_out"] = rng.standard_normal(shape).astype(np.float32)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_run_writes_outputs_and_gradients(tmp_path):
    genome_path = GENOMES / "autobert-zero.json"
    arrays = _write_inputs(tmp_path / "in.npz", grad=True)
    out_path = tmp_path / "out.npz"
    result = run_cli("run", genome_path, "--layer", 11, "--inputs", tmp_path / "in.npz", "--out", out_path, "--grad")
    assert result.returncode == 0, result.stderr
    got = np.load(out_path)
    ir = lower(load_genome(genome_path).layers[11].graph).simplified
    q, k, v = (torch.from_numpy(arrays[n]).double().requires_grad_() for n in ("q", "k", "v"))
    out = execute(ir, q, k, v, mask=torch.from_numpy(arrays["mask"]))
    out.backward(torch.from_numpy(arrays["grad_out"]).double())
    np.testing.assert_allclose(got["out"], out.detach().numpy(), rtol=1e-4, atol=1e-5)
    for name, t in zip(("dq", "dk", "dv"), (q, k, v)):
        np.testing.assert_allclose(got[name], t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_run_gives_zero_gradients_for_an_unused_input(tmp_path):
    _write_inputs(tmp_path / "in.npz", grad=True)
    genome = tmp_path / "g.json"
    genome.write_text('{"expr": "matmul(softmax(matmul(q, transpose(k))), q)"}')
    assert main(["run", str(genome), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz"), "--grad"]) == 0
    got = np.load(tmp_path / "o.npz")
    assert (got["dv"] == 0).all() and np.abs(got["dk"]).sum() > 0


@pytest.mark.parametrize(
    "override,message",
    [
        ({"q": np.zeros((2, 2, 5, 4), dtype=np.float64)}, "'q' must be float32, got float64"),
        ({"k": np.zeros((2, 5, 4), dtype=np.float32)}, "'k' must be [B, H, N, d]"),
        ({"v": np.zeros((2, 2, 6, 4), dtype=np.float32)}, "'v' has shape [2, 2, 6, 4], but another input has [2, 2, 5, 4]"),
        ({"mask": np.ones((2, 4), dtype=bool)}, "'mask' must be bool [B, N] = [2, 5]"),
        ({"v": None}, "the graph reads 'v', but the file has no array 'v'"),
        ({"bias": np.zeros(3, dtype=np.float32)}, "unknown array 'bias'"),
    ],
)
def test_run_rejects_bad_arrays(tmp_path, override, message):
    _write_inputs(tmp_path / "in.npz", **override)
    result = run_cli("run", GENOMES / "standard-attention.json", "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.npz")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "o.npz").exists()


def test_run_input_problems(tmp_path, capsys):
    standard = str(GENOMES / "standard-attention.json")
    (tmp_path / "junk.npz").write_text("not a zip")
    assert main(["run", standard, "--inputs", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    _write_inputs(tmp_path / "in.npz")
    assert main(["run", standard, "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz"), "--grad"]) == 2
    assert "--grad needs an array 'grad_out'" in capsys.readouterr().err
    model = str(GENOMES / "autobert-zero.json")
    assert main(["run", model, "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    assert main(["run", model, "--layer", "0", "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    assert "--layer 0 is not an attention layer" in capsys.readouterr().err


def test_runtime_failure_exits_1_and_keeps_earlier_results(tmp_path, monkeypatch, capsys):
    _write_inputs(tmp_path / "in.npz")
    out = tmp_path / "out.npz"
    argv = ["run", str(GENOMES / "standard-attention.json"), "--inputs", str(tmp_path / "in.npz"), "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()

    def disk_full(file, **arrays):  # the disk fills up halfway through writing
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: OSError: [Errno 28] No space left on device" in err and "Traceback" not in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]  # no temporary file left


@pytest.mark.parametrize(
    "out, message",
    [
        ("no/such/dir/o.npz", "the folder {tmp}/no/such/dir does not exist"),
        (".", "is a folder; name the file to write"),
        ("in.npz/o.npz", "{tmp}/in.npz is not a folder"),
        ("in.npz/sub/o.npz", "{tmp}/in.npz is a file, not a folder"),
    ],
)
def test_run_refuses_a_bad_out_path_before_any_work(tmp_path, out, message):
    _write_inputs(tmp_path / "in.npz")
    out = tmp_path / out
    # --inputs names a missing file: the --out path is checked first, before anything is read
    result = run_cli("run", GENOMES / "standard-attention.json", "--inputs", tmp_path / "missing.npz", "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"genomec run: --out {out}: " + message.format(tmp=tmp_path)


def test_version():
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"genomec {version('genomec')}"
