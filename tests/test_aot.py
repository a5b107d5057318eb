"""Every kernel of the paper's genomes and of the zoo compiles ahead of time for sm_90 with
zero spills, without a GPU (the CI check that generated kernels are GPU-ready)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import ROOT, zoo_files
from genomec.cli import main
from genomec.codegen import generate
from genomec.codegen.aot import (
    DEFAULT_SPECIALISATION,
    DIVISIBILITY,
    Specialisation,
    compile_ahead_of_time,
    compile_modules_ahead_of_time,
    parse_arch,
    specialise,
)
from genomec.codegen import tiles
from genomec.codegen.abi import Grid
from genomec.codegen.stages import plan_stages
from genomec.codegen.tiles import TileConfig
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


def compile_all(tmp_path, dtype, head_dim, retile=True):
    modules = []
    for compiled in fused_graphs():
        generated = generate(compiled)
        module = tmp_path / f"{generated.hash}.py"
        module.write_text(generated.source)
        modules.append((generated, module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=head_dim, retile=retile)
    return [(generated, r) for (generated, _), resources in zip(modules, results) for r in resources]


# The suite's GPU dtypes and head dims (SPEC 7), plus an odd head dim. Each module takes the
# first tiles of its search space that spill nothing, as `genomec compile` does; every tile
# of the spaces gives each warp 16 score rows or more.
@pytest.mark.parametrize("dtype,head_dim", [("bf16", 64), ("fp16", 128), ("fp16", 48)])
def test_zoo_kernels_compile_for_sm90_without_spills(tmp_path, dtype, head_dim):
    report = compile_all(tmp_path, dtype, head_dim)
    assert len(report) >= len(fused_graphs())
    spilling = [(g.hash, r.name, r.spills) for g, r in report if r.spills and (g.hash, r.name, head_dim) not in KNOWN_SPILLS]
    assert not spilling, f"kernels spill registers: {spilling}"
    for generated, r in report:
        assert 0 < r.registers <= 255 and r.shared_bytes <= 228 * 1024
        kernel = next(k for k in generated.kernels if k.name == r.name)
        if kernel.grid in (Grid.QUERY_BLOCKS, Grid.KEY_BLOCKS):  # a kernel with pair tiles
            assert not tiles.duplicated(tiles.TileConfig(**r.tiles), key_blocks=kernel.grid == Grid.KEY_BLOCKS), (r.name, r.tiles)


@pytest.mark.parametrize("dtype,head_dim", [("bf16", 64), ("bf16", 128)])
def test_standard_attention_takes_the_fixed_tiles(tmp_path, dtype, head_dim):
    """As SPEC 7's suite launches it (no padding mask), standard attention compiles without
    spills with the first tiles of every search space: FlashAttention's Hopper shapes."""
    generated = generate(lower(parse_genome({"expr": "matmul(softmax(scale(matmul(q, transpose(k)))), v)"})))
    module = tmp_path / "standard.py"
    module.write_text(generated.source)
    (resources,) = compile_modules_ahead_of_time([(generated, module)], dtype=dtype, head_dim=head_dim, retile=True,
                                                 constants={"HAS_MASK": False})
    for kernel, r in zip(generated.kernels, resources):
        fixed = tiles.backward_config(dtype, head_dim).for_grid(kernel.grid) if kernel.backward else tiles.default_config(dtype, head_dim)
        assert r.spills == 0 and r.tiles == dataclasses.asdict(fixed), (r.name, r.tiles, r.spills)


# Kernels that spill at every tile of their search space (README, Fused kernels): at head dim
# 128, the backward of graphs whose key (or query) side sums three [64, 128] fp32 tiles over
# the loop, 192 of the 255 registers of the narrowest tile without duplicated scores (64 rows,
# 4 warps): two scores reading the same keys (q k^T and cos(q, k); q k^T and q q^T) and V's.
KNOWN_SPILLS = {
    (lower(parse_genome({"expr": expr})).hash, kernel, 128)
    for expr, kernels in {
        "matmul(max(softmax(scale(matmul(q, transpose(k)))), softmax(cos(q, k))), v)": ("attention_bwd_keys", "attention_bwd_queries"),
        "matmul(sub(softmax(scale(matmul(q, transpose(k)))), softmax(scale(matmul(q, transpose(q))))), v)": ("attention_bwd_keys",),
    }.items()
    for kernel in kernels
}


PAPER = ROOT / "genomes" / "autobert-zero.json"


@pytest.mark.parametrize("dtype,head_dim", [("bf16", 64), ("fp16", 128)])
def test_paper_backward_kernels_compile_for_sm90_without_spills(tmp_path, dtype, head_dim):
    """Every attention graph of the paper's model, causal, with a padding mask: its
    backward is fused (the key-block kernel goes back through the key-side transforms in a
    kernel per token block) and every kernel compiles with zero spills, with the first
    backward tiles of the search space that give none."""
    modules = []
    for graph in attention_graphs(load_genome(PAPER)):
        for causal in (True,):  # (plain, they are in the zoo's test above)
            generated = generate(lower(dataclasses.replace(graph, causal=causal)))
            assert generated.backward.fused, generated.backward.reason
            module = tmp_path / f"{generated.hash}.py"
            module.write_text(generated.source)
            modules.append((generated, module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=head_dim, passes=("backward",), retile=True)
    report = [(g.hash, r.name, r.registers, r.spills) for (g, _), resources in zip(modules, results) for r in resources]
    assert [name for _, name, _, _ in report] == [
        "attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_key_rows", "attention_bwd_queries"] * len(modules)
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
        modules.append((generated, module))
    results = compile_modules_ahead_of_time(modules, arch="sm_90", dtype=dtype, head_dim=64, passes=("backward",), retile=True)
    report = [(r.name, r.registers, r.spills) for resources in results for r in resources]
    assert len(report) == sum(len(g.backward_kernels) for g, _ in modules)
    assert not [row for row in report if row[2]], f"backward kernels spill registers: {report}"
    assert all(0 < registers <= 255 for _, registers, _ in report)


def test_single_module_compiles_in_a_child_of_an_interpreting_process(tmp_path):
    (compiled,) = [c for c in fused_graphs() if c.simplified.inputs == ("q", "k", "v")][:1]
    generated = generate(compiled)
    module = tmp_path / "kernels.py"
    module.write_text(generated.source)
    resources = compile_ahead_of_time(generated, module, arch="sm_90", dtype="fp16", head_dim=64)
    assert [r.name for r in resources] == [k.name for k in generated.kernels] and "attention_bwd_keys" in [r.name for r in resources]
    assert all(r.registers > 0 and r.compile_seconds > 0 for r in resources)


def test_arch_names():
    assert parse_arch("sm_90") == parse_arch("sm90") == parse_arch("90") == parse_arch("sm_90a") == 90
    with pytest.raises(ValueError):
        parse_arch("hopper")


def test_compile_retiles_a_backward_that_spills_with_the_default_tiles(tmp_path):
    """A module whose backward kernels spill with the fixed backward tiles is compiled with the
    next candidates of the search space: cosine attention's key-block kernel spills with the
    fixed ones (128 keys; fp16, head dim 64), and the manifest reports zero spills and the
    tiles that gave them."""
    genome = ROOT / "genomes" / "cosine-attention.json"
    assert main(["compile", str(genome), "-o", str(tmp_path / "out"), "--arch", "sm_90", "--json"]) == 0
    (graph,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["graphs"]
    assert graph["backward"]["fused"]
    assert [k["spills"] for k in graph["kernels"]] == [0] * len(graph["kernels"])
    fixed = tiles.backward_config("fp16", 64)
    keys = next(k for k in graph["kernels"] if k["name"] == "attention_bwd_keys")
    assert keys["tile_config"] != dataclasses.asdict(fixed.keys)
    assert TileConfig(**keys["tile_config"]) in [c.keys for c in tiles.backward_candidates("fp16", 64)[1:]]


# -- compiling what a launch compiles -------------------------------------------------------

# In a process that compiles (this one may interpret): the JIT's own specialisation of the
# arguments the runtime passes (tensors from torch's allocator, seq_len and num_heads as
# they are), through `JITFunction`'s binder and `_pack_args` as `JITFunction.run` calls
# them (Triton 3.6 to 3.9), against the signature, constants and attrs AOT compiles with.
JIT_SPECIALISATION = """
import json, sys
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
from genomec.codegen.abi import KernelInterface
from genomec.codegen.aot import Specialisation, _constants, specialise
from genomec.codegen.modules import import_module_file
from genomec.codegen.tiles import backward_config, default_config

job = json.loads(sys.stdin.read())
module = import_module_file(job["module"], interpret=False)
backend = make_backend(GPUTarget("cuda", 90, 32))
torch_dtype = {"*bf16": torch.bfloat16, "*fp32": torch.float32}
mismatches = []
for k in job["kernels"]:
    kernel = KernelInterface.from_json(k)
    fn = getattr(module, kernel.name)
    types = k["types"]  # the module ABI's signature
    config = backward_config("bf16", 64).for_grid(kernel.grid) if kernel.backward else default_config("bf16", 64)
    constants = _constants(kernel, "bf16", 64, config, False)
    for seq_len, num_heads in ((4096, 16), (37, 12), (1, 1)):
        ints = {"seq_len": seq_len, "num_heads": num_heads}
        args = {p: ints[p] if p in ints else torch.empty(64, dtype=torch_dtype[types[p]]) for p in kernel.params}
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(**args, **constants, **config.launch_options())
        _, jit_signature, jit_constants, jit_attrs = fn._pack_args(backend, {**constants, **config.launch_options()}, bound, specialization, options)
        signature, ones, attrs = specialise(fn.arg_names, types, ints, aligned_pointers=True)
        jit_ones = {fn.arg_names[path[0]]: value for path, value in jit_constants.items() if fn.arg_names[path[0]] in ints}
        jit_attrs = {path: value for path, value in jit_attrs.items() if value}  # the JIT lists constexprs with none
        if (jit_signature, jit_ones, jit_attrs) != (signature, ones, attrs):
            mismatches.append([kernel.name, seq_len, num_heads, str((jit_signature, jit_ones, jit_attrs)), str((signature, ones, attrs))])
print(json.dumps(mismatches))
"""


def compile_mode_child(code: str, job: dict):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", code], input=json.dumps(job), capture_output=True, text=True, env=env, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


STANDARD = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"


def standard_module(tmp_path):
    generated = generate(lower(parse_genome({"expr": STANDARD})))
    module = tmp_path / "standard.py"
    module.write_text(generated.source)
    return generated, module


def test_aot_specialises_arguments_as_the_jit_does(tmp_path):
    """Every pointer 16-divisible, seq_len and num_heads 16-divisible when they are multiples
    of 16 and constants when they are 1: what the JIT gives a launch, forward and backward."""
    generated, module = standard_module(tmp_path)
    job = {"module": str(module), "kernels": [dataclasses.asdict(k) | {"types": generated.abi.signature(k, "bf16")} for k in generated.kernels]}
    assert compile_mode_child(JIT_SPECIALISATION, job) == []


def test_specialisation_of_the_default_launch():
    types = {"q_ptr": "*bf16", "mask_ptr": "*fp32", "seq_len": "i32", "num_heads": "i32", "BLOCK_M": "constexpr"}
    names = list(types)
    default = specialise(names, types, {"seq_len": 4096, "num_heads": 16}, aligned_pointers=True)
    assert default == (types, {}, {(i,): DIVISIBILITY for i in range(4)})
    odd = specialise(names, types, {"seq_len": 37, "num_heads": 1}, aligned_pointers=False)
    assert odd == ({**types, "num_heads": "constexpr"}, {"num_heads": 1}, {})
    assert DEFAULT_SPECIALISATION == Specialisation(aligned_pointers=True, seq_len=4096, num_heads=16)


# With the launch's alignment K and V arrive by 16-byte cp.async; without it (the kernel
# ahead-of-time compilation used to check) every element is a 2-byte global load.
VECTORISED_LOADS = """
import json, re, sys
from genomec.codegen.abi import KernelInterface
from genomec.codegen.aot import Specialisation, _constants, compile_kernel
from genomec.codegen.modules import import_module_file
from genomec.codegen.tiles import default_config

job = json.loads(sys.stdin.read())
k = job["kernel"]
kernel = KernelInterface.from_json(k)
fn = getattr(import_module_file(job["module"], interpret=False), kernel.name)
config = default_config("bf16", 64)
found = {}
for label, spec in (("launch", Specialisation()), ("bare", Specialisation(aligned_pointers=False, seq_len=37, num_heads=12))):
    compiled, resources = compile_kernel(fn, k["types"], _constants(kernel, "bf16", 64, config, False),
                                         config.launch_options(), 90, spec)
    ptx = compiled.asm["ptx"]
    found[label] = dict(cp_async_16=len(re.findall(r"cp\\.async\\.\\w+\\.shared\\.global\\s*\\[[^]]*\\],\\s*\\[[^]]*\\],\\s*(?:16|0x10)\\b", ptx)),
                        two_byte_loads=len(re.findall(r"ld\\.global\\S*\\.b16", ptx)), registers=resources.registers, spills=resources.spills)
print(json.dumps(found))
"""


def test_launch_specialisation_gives_vectorised_loads(tmp_path):
    generated, module = standard_module(tmp_path)
    found = compile_mode_child(VECTORISED_LOADS, {"module": str(module), "kernel": dataclasses.asdict(generated.kernels[0]) | {"types": generated.abi.signature(generated.kernels[0], "bf16")}})
    assert found["launch"]["cp_async_16"] > 0 and found["bare"]["cp_async_16"] == 0
    assert found["bare"]["two_byte_loads"] >= 2 * 16 and found["launch"]["two_byte_loads"] < found["bare"]["two_byte_loads"]
    assert found["launch"]["spills"] == 0  # (without the launch's alignment, 128 x 64 tiles spill: every element a register)


# The hardware's approximations (MUFU.EX2, MUFU.LG2 by inline PTX) are in a compiled
# kernel only: the interpreter runs no PTX and takes Triton's exact functions. Logsigmoid's
# log(1 + exp(-|x|)) takes them with half-precision inputs, not with fp32 ones.
APPROXIMATIONS = """
import json, sys
from genomec.codegen.abi import KernelInterface
from genomec.codegen.aot import _constants, compile_kernel
from genomec.codegen.modules import import_module_file
from genomec.codegen.tiles import default_config

job = json.loads(sys.stdin.read())
k = job["kernel"]
kernel = KernelInterface.from_json(k)
fn = getattr(import_module_file(job["module"], interpret=False), kernel.name)
found = {}
for dtype in ("bf16", "fp32"):
    config = default_config(dtype, 64)
    types = {p: t.replace("bf16", dtype) for p, t in k["types"].items()}
    compiled, _ = compile_kernel(fn, types, _constants(kernel, dtype, 64, config, False), config.launch_options(), 90)
    ptx = compiled.asm["ptx"]
    found[dtype] = {"lg2": ptx.count("lg2.approx.ftz.f32"), "ex2": ptx.count("ex2.approx.ftz.f32")}
print(json.dumps(found))
"""


def test_logsigmoid_takes_the_hardware_log_with_half_precision_inputs(tmp_path):
    generated = generate(lower(parse_genome({"expr": "matmul(logsigmoid(scale(matmul(q, transpose(k)))), v)"})))
    module = tmp_path / "logsigmoid.py"
    module.write_text(generated.source)
    (kernel,) = [k for k in generated.kernels if k.name == "attention_fwd"]
    job = {"module": str(module), "kernel": dataclasses.asdict(kernel) | {"types": generated.abi.signature(kernel, "bf16")}}
    found = compile_mode_child(APPROXIMATIONS, job)
    assert found["bf16"]["lg2"] > 0 and found["bf16"]["ex2"] > 0
    assert found["fp32"]["lg2"] == 0  # Triton's exact log, and the tiny-x correction
