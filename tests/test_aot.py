"""Every kernel of the paper's genomes and of the zoo compiles ahead of time for sm_90 with
zero spills, without a GPU (the CI check that generated kernels are GPU-ready)."""

import dataclasses
import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import ROOT, zoo_files
from genomec.cli import main
from genomec.codegen import generate
from genomec.codegen.aot import compile_ahead_of_time, compile_modules_ahead_of_time, parse_arch
from genomec.codegen.stages import plan_stages
from genomec.codegen.tiles import backward_candidates
from genomec.genome import attention_graphs, load_genome, parse_genome
from genomec.ir import lower


def fused_graphs():
    """Every distinct fused graph of the zoo: the stages of a graph that runs in stages."""
    graphs = {}
    for path in zoo_files():
        for graph in attention_graphs(load_genome(path)):
            for stage in plan_stages(lower(graph)).stages:
                graphs.setdefault(stage.compiled.hash, stage.compiled)
    return list(graphs.values())


def compile_all(tmp_path, dtype, head_dim):
    modules = []
    for compiled in fused_graphs():
        generated = generate(compiled)
        module = tmp_path / f"{generated.hash}.py"
        module.write_text(generated.source)
        modules.append((generated, module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=head_dim)
    return [(generated.hash, r) for (generated, _), resources in zip(modules, results) for r in resources]


# The suite's GPU dtypes and head dims (SPEC 7), plus an odd head dim.
@pytest.mark.parametrize("dtype,head_dim", [("bf16", 64), ("fp16", 128), ("fp16", 48)])
def test_zoo_kernels_compile_for_sm90_without_spills(tmp_path, dtype, head_dim):
    report = compile_all(tmp_path, dtype, head_dim)
    assert len(report) >= len(fused_graphs())
    spilling = [(h, r.name, r.spills) for h, r in report if r.spills]
    assert not spilling, f"kernels spill registers: {spilling}"
    for _, r in report:
        assert 0 < r.registers <= 255 and r.shared_bytes <= 228 * 1024


PAPER = ROOT / "genomes" / "autobert-zero.json"


@pytest.mark.parametrize("dtype,head_dim", [("bf16", 64), ("fp16", 128)])
def test_paper_backward_kernels_compile_for_sm90_without_spills(tmp_path, dtype, head_dim):
    """Every attention graph of the paper's model, plain and causal: its backward is fused
    (three kernels, with the backward tiles) and every kernel compiles with zero spills."""
    modules = []
    for graph in attention_graphs(load_genome(PAPER)):
        for causal in (False, True):
            generated = generate(lower(dataclasses.replace(graph, causal=causal)))
            assert generated.backward.fused, generated.backward.reason
            module = tmp_path / f"{generated.hash}.py"
            module.write_text(generated.source)
            modules.append((dataclasses.replace(generated, kernels=generated.backward_kernels), module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=head_dim)
    report = [(g.hash, r.name, r.registers, r.spills) for (g, _), resources in zip(modules, results) for r in resources]
    assert [name for _, name, _, _ in report] == ["attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_queries"] * len(modules)
    assert not [row for row in report if row[3]], f"backward kernels spill registers: {report}"
    assert all(0 < registers <= 255 for _, _, registers, _ in report)


# One graph of each backward class beyond the paper's: a softmax over tokens (with a chain
# after it), [d,d] states next to a pass over keys (and a softmax over tokens too), nested
# softmaxes over keys.
BACKWARD_CLASSES = {
    "softmax over tokens": "matmul(sigmoid(q), matmul(tanh(softmax(transpose(k))), v))",
    "states and keys": "add(matmul(softmax(scale(matmul(q, transpose(k)))), v), matmul(q, matmul(transpose(k), v)))",
    "softmax over tokens, states and keys": "add(matmul(softmax(scale(matmul(q, softmax(transpose(k))))), v), matmul(q, matmul(softmax(transpose(k)), v)))",
    "nested softmaxes": "matmul(softmax(softmax(scale(matmul(q, transpose(k))))), v)",
}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_backward_classes_compile_for_sm90_without_spills(tmp_path, dtype):
    modules = []
    for name, expr in BACKWARD_CLASSES.items():
        generated = generate(lower(parse_genome({"expr": expr})))
        assert generated.backward.fused, (name, generated.backward.reason)
        module = tmp_path / f"{generated.hash}.py"
        module.write_text(generated.source)
        modules.append((dataclasses.replace(generated, kernels=generated.backward_kernels), module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=64)
    report = [(r.name, r.registers, r.spills) for resources in results for r in resources]
    assert len(report) == sum(len(g.kernels) for g, _ in modules)
    assert not [row for row in report if row[2]], f"backward kernels spill registers: {report}"
    assert all(0 < registers <= 255 for _, registers, _ in report)


def test_single_module_compiles_in_a_child_of_an_interpreting_process(tmp_path):
    (compiled,) = [c for c in fused_graphs() if c.simplified.inputs == ("q", "k", "v")][:1]
    generated = generate(compiled)
    module = tmp_path / "kernels.py"
    module.write_text(generated.source)
    resources = compile_ahead_of_time(generated, module, arch="sm_90", dtype="fp16", head_dim=64)
    assert [r.name for r in resources] == ["attention_fwd", "attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_queries"]
    assert all(r.spills == 0 and r.compile_seconds > 0 for r in resources)


def test_arch_names():
    assert parse_arch("sm_90") == parse_arch("sm90") == parse_arch("90") == parse_arch("sm_90a") == 90
    with pytest.raises(ValueError):
        parse_arch("hopper")


def test_compile_retiles_a_backward_that_spills_with_the_default_tiles(tmp_path):
    """Two softmaxes over tokens: the state-rows backward kernel holds many token tiles. Any
    kernel that spills with the fixed backward tiles is compiled with the next candidates
    of the search space; the manifest then reports zero spills and the tiles that gave them."""
    genome = tmp_path / "two-column-softmaxes.json"
    genome.write_text('{"expr": "matmul(sigmoid(q), matmul(tanh(softmax(transpose(k))), transpose(softmax(transpose(v)))))"}')
    assert main(["compile", str(genome), "-o", str(tmp_path / "out"), "--arch", "sm_90", "--json"]) == 0
    (graph,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["graphs"]
    assert graph["backward"]["fused"]
    assert [k["spills"] for k in graph["kernels"]] == [0] * len(graph["kernels"])
    tiles = [dataclasses.asdict(c) for c in backward_candidates("fp16", 64)]
    assert all(k["tile_config"] in tiles[1:] for k in graph["kernels"] if "tile_config" in k)
