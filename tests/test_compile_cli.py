"""`genomec compile`, `genomec run --backend triton`, `genomec show --stage schedule|source`
and a CPU-mode smoke of `genomec bench`."""

import json
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import GENOMES
from genomec.cli import main

PAPER = str(GENOMES / "autobert-zero.json")
TWO_HOP = str(GENOMES / "two-hop-attention.json")
MAP_PRODUCT = str(GENOMES / "map-product-attention.json")  # outside the fused class


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOMEC_CACHE_DIR", str(tmp_path / "cache"))


def test_compile_paper_model_writes_modules_and_manifest(tmp_path, capsys):
    assert main(["compile", PAPER, "-o", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    graphs = manifest["graphs"]
    assert len(graphs) == 5  # six attention layers, layers 5 and 7 share one graph
    assert sorted(i for g in graphs for i in g["layers"]) == [1, 3, 5, 7, 9, 11]
    for g in graphs:  # every layer's keys are a transform of k (and v): computed once per token, and back through once
        assert g["fused"] and g["stages"] and [k["name"] for k in g["kernels"]] == [
            "key_rows", "attention_fwd", "attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_key_rows", "attention_bwd_queries"]
        source = (tmp_path / "out" / g["module"]).read_text()
        assert f"genome hash: {g['hash']}" in source
    assert manifest["coverage"] == {"fused": 5, "backward_fused": 5, "graphs": 5}
    assert "5 of 5 distinct attention graph(s) fused" in capsys.readouterr().out


def test_compile_with_arch_reports_kernel_resources(tmp_path):
    assert main(["compile", PAPER, "-o", str(tmp_path), "--arch", "sm_90", "--json"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["arch"] == "sm_90" and manifest["head_dim"] == 64
    for g in manifest["graphs"]:
        for k in g["kernels"]:
            assert k["spills"] == 0 and k["registers"] > 0 and k["shared_bytes"] >= 0
            # kernels with tensor-core products stage their operands in shared memory (the key-rows ones have none)
            assert k["shared_bytes"] > 0 or k["name"] in ("key_rows", "attention_bwd_key_rows"), k


def test_compile_says_when_a_graph_falls_back(tmp_path, capsys):
    assert main(["compile", MAP_PRODUCT, "-o", str(tmp_path)]) == 0
    (g,) = json.loads((tmp_path / "manifest.json").read_text())["graphs"]
    assert g["fused"] is False and g["backend"] == "reference" and g["kernels"] == [] and "t8" in g["reason"]
    assert "fallback, runs on the reference executor" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--arch", "hopper"], ["--head-dim", "0"]])
def test_compile_bad_options_exit_2(tmp_path, argv, capsys):
    assert main(["compile", PAPER, "-o", str(tmp_path), *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_compile_bad_genome_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"expr": "matmul(q, k)"}')
    assert main(["compile", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "matmul" in capsys.readouterr().err


def write_inputs(path, seed=0, shape=(2, 2, 13, 24)):
    rng = np.random.default_rng(seed)
    arrays = {n: rng.standard_normal(shape).astype(np.float32) for n in ("q", "k", "v")}
    mask = rng.random((shape[0], shape[2])) > 0.3
    mask[:, 0] = True
    np.savez(path, **arrays, mask=mask)


@pytest.mark.parametrize(
    "genome", ["standard-attention.json", "sqrt-after-softmax.json", "linear-attention.json", "two-hop-attention.json", "map-product-attention.json"]
)
def test_run_triton_backend_matches_reference(tmp_path, genome, capsys):
    write_inputs(tmp_path / "in.npz")
    for backend in ("reference", "triton"):
        argv = ["run", str(GENOMES / genome), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / f"{backend}.npz")]
        assert main([*argv, "--backend", backend]) == 0
    err = capsys.readouterr().err
    ours, reference = np.load(tmp_path / "triton.npz")["out"], np.load(tmp_path / "reference.npz")["out"]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert ("outside the fused class" in err) == (genome == "map-product-attention.json")


def test_run_triton_backend_with_grad(tmp_path):
    write_inputs(tmp_path / "in.npz")
    with np.load(tmp_path / "in.npz") as data:
        arrays = dict(data)
    np.savez(tmp_path / "in.npz", **arrays, grad_out=np.ones_like(arrays["q"]))
    for backend in ("reference", "triton"):
        argv = ["run", str(GENOMES / "cosine-attention.json"), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / f"{backend}.npz")]
        assert main([*argv, "--backend", backend, "--grad"]) == 0
    ours, reference = np.load(tmp_path / "triton.npz"), np.load(tmp_path / "reference.npz")
    for name in ("dq", "dk", "dv"):
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-4, atol=1e-5)


def test_show_schedule_and_source(capsys):
    assert main(["show", str(GENOMES / "sqrt-after-softmax.json"), "--stage", "schedule"]) == 0
    out = capsys.readouterr().out
    assert "row statistics of t3" in out and "accumulate t5" in out
    assert main(["show", str(GENOMES / "standard-attention.json"), "--stage", "source"]) == 0
    assert "@triton.jit" in capsys.readouterr().out
    assert main(["show", MAP_PRODUCT, "--stage", "source"]) == 0
    assert "fallback to the reference executor" in capsys.readouterr().out
    assert main(["show", TWO_HOP, "--stage", "schedule"]) == 0
    out = capsys.readouterr().out
    assert "stage1: computes" in out and "v <- stage1" in out and out.count("kernel attention_fwd") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-mode report")
def test_bench_without_a_gpu_says_so(tmp_path, capsys):
    assert main(["bench", str(GENOMES / "standard-attention.json"), MAP_PRODUCT, "--no-aot", "-o", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["mode"] == "cpu" and "no CUDA GPU" in result["note"] and result["environment"]["gpu"] is None
    assert [r["fused"] for r in result["rows"]] == [True, False]
    assert result["rows"][0]["frontend_ms"] > 0 and result["rows"][0]["source_bytes"] > 0
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.png").exists()
