"""The compile product and the kernel ABI: one schedule per graph, every kernel parameter
declared once, the cache entry carrying the ABI that launching reads."""

import ast
import json
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import ROOT, zoo_graphs
from genomec.codegen import stages
from genomec.codegen.abi import SCALARS, Element, Grid, ModuleABI, Role
from genomec.codegen.product import compile_graph
from genomec.genome import parse_genome
from genomec.ir import execute, lower
from genomec.runtime import KernelCache, load

ZOO = zoo_graphs()
STANDARD = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"


@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_every_kernel_parameter_is_a_declared_buffer(name, genome):
    graph = compile_graph(lower(genome))
    for _, module in graph.stages():
        abi = module.abi
        declared = [b.name for b in abi.buffers]
        assert len(declared) == len(set(declared))
        used = {p for k in abi.kernels for p in k.params}
        assert used - set(SCALARS) == set(declared)
        for kernel in abi.kernels:
            assert kernel.params[-len(SCALARS):] == SCALARS
            assert f"def {kernel.name}(" in module.source
            header = module.source.split(f"def {kernel.name}(", 1)[1].split("HEAD_DIM:", 1)[0]
            assert [p.strip() for p in header.split(",") if p.strip()] == list(kernel.params)  # the source's order



@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_kernel_parameters_are_the_buffers_its_body_names(name, genome):
    """The parameters come from the template pieces a kernel is built from (Emitter.access);
    read back off each kernel's body, they are the same, in template.POINTERS order."""
    import re

    from genomec.codegen.template import POINTERS

    graph = compile_graph(lower(genome))
    for _, module in graph.stages():
        tree = ast.parse(module.source)
        bodies = {f.name: ast.get_source_segment(module.source, f).split("):", 1)[1] for f in tree.body if isinstance(f, ast.FunctionDef)}
        for kernel in module.kernels:
            named = tuple(p for p in POINTERS if re.search(rf"\b{p}\b", bodies[kernel.name]))
            assert kernel.params == named + SCALARS, kernel.name

def test_a_graph_is_scheduled_once_per_compile(monkeypatch):
    schedule_module = sys.modules["genomec.codegen.schedule"]  # (the package exports the function by that name)
    calls = []
    real = schedule_module.schedule

    def counting(ir):
        calls.append(ir)
        return real(ir)

    for module in (stages, sys.modules["genomec.codegen.generate"]):
        monkeypatch.setattr(module, "schedule", counting)
    graph = compile_graph(lower(parse_genome({"expr": STANDARD})))
    assert graph.fused and len(graph.modules) == 1 and len(calls) == 1


def test_buffers_are_sized_from_the_plan():
    """Standard attention: one softmax (lse, 3 row terms of delta), one contraction
    (saved value and its cotangent), no [d,d] state, no column statistics, no key rows."""
    (module,) = compile_graph(lower(parse_genome({"expr": STANDARD}))).modules
    abi = module.abi
    b, h, n, d = 2, 3, 37, 24
    assert abi.buffer("lse_ptr").role == Role.SAVED and abi.buffer("lse_ptr").numel(b * h, n, d) == b * h * n
    assert abi.buffer("saved_ptr").numel(b * h, n, d) == b * h * n * d
    assert abi.buffer("delta_ptr").numel(b * h, n, d) == 3 * b * h * n
    # dq, dk, dv each from one kernel: written whole in the inputs' dtype, not accumulated
    assert not abi.buffer("dq_ptr").zeroed and abi.buffer("dq_ptr").element == Element.INPUT
    assert abi.buffer("dcontraction_ptr").element == Element.INPUT  # only products read it
    assert abi.buffer("mask_ptr").element == Element.FP32 and abi.buffer("mask_ptr").role == Role.GIVEN  # the key bias
    assert "global_ptr" not in [x.name for x in abi.buffers] and "key_rows_ptr" not in [x.name for x in abi.buffers]
    grids = {k.name: k.grid for k in abi.kernels}
    assert grids == {"attention_fwd": Grid.QUERY_BLOCKS, "attention_bwd_prepare": Grid.QUERY_BLOCKS,
                     "attention_bwd_keys": Grid.KEY_BLOCKS, "attention_bwd_queries": Grid.QUERY_BLOCKS}
    signature = abi.signature(abi.kernels[0], "bf16")
    assert signature["q_ptr"] == "*bf16" and signature["lse_ptr"] == "*fp32" and signature["mask_ptr"] == "*fp32"
    assert signature["seq_len"] == "i32" and signature["HEAD_DIM"] == "constexpr"


def test_a_gradient_two_kernels_write_is_fp32():
    """q is read as queries and as keys: the key-block kernel stores its share of dq (fp32),
    the query-block kernel adds its own; k and v, from one kernel each, in the inputs' dtype."""
    (module,) = compile_graph(lower(parse_genome({"expr": "matmul(softmax(scale(matmul(q, transpose(q)))), v)"}))).modules
    writers = {p: [k.name for k in module.abi.backward_kernels if p in k.params] for p in ("dq_ptr", "dv_ptr")}
    assert writers == {"dq_ptr": ["attention_bwd_keys", "attention_bwd_queries"], "dv_ptr": ["attention_bwd_keys"]}
    assert module.abi.buffer("dq_ptr").element == Element.FP32 and module.abi.buffer("dv_ptr").element == Element.INPUT
    keys, queries = (k for k in module.abi.backward_kernels if k.name in writers["dq_ptr"])
    source = module.source
    keys_text = source[source.index(f"def {keys.name}("):source.index(f"def {queries.name}(")]
    queries_text = source[source.index(f"def {queries.name}("):]
    assert "tl.store(dq_ptr + head_offset" in keys_text and "tl.load(dq_ptr" not in keys_text  # the first writer stores
    assert "tl.load(dq_ptr" in queries_text  # the second adds


def test_key_side_values_are_computed_once_per_token():
    """A key-side transform that only products read (the paper's layer 1: logsigmoid of -k as
    keys) is written by the key-rows kernel, and the passes over keys read it."""
    expr = "matmul(softmax(scale(matmul(q,neg(transpose(logsigmoid(neg(k))))))),add(q,k))"
    (module,) = compile_graph(lower(parse_genome({"expr": expr}))).modules
    assert [k.name for k in module.abi.forward_kernels] == ["key_rows", "attention_fwd"]
    key_rows = module.abi.buffer("key_rows_ptr")
    assert key_rows.role == Role.STATE and key_rows.element == Element.INPUT and key_rows.count == 2
    source = module.source
    forward = source[source.index("def attention_fwd("):source.index("def attention_bwd_prepare(")]
    assert "logsigmoid" not in forward and "_softplus" not in forward and "tl.load(key_rows_ptr" in forward
    # the backward reads them in its query-block loop and goes back through them per token block
    assert [k.name for k in module.abi.backward_kernels] == [
        "attention_bwd_prepare", "attention_bwd_keys", "attention_bwd_key_rows", "attention_bwd_queries"]


def test_the_cache_entry_carries_the_abi_that_launch_reads(tmp_path):
    expr = "matmul(softmax(matmul(q, softmax(transpose(k)))), v)"  # a reduction kernel and column statistics
    compiled = lower(parse_genome({"expr": expr}))
    (generated,) = compile_graph(compiled).modules
    cache = KernelCache(tmp_path)
    entry = cache.get_or_build(compiled)
    stored = json.loads((entry.path / "entry.json").read_text())["abi"]
    assert ModuleABI.from_json(stored) == generated.abi == entry.abi
    assert {k.grid for k in entry.abi.kernels} >= {Grid.HEADS, Grid.QUERY_BLOCKS}
    # and the module launched from it matches the reference, forward and backward
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 19, 16, generator=g, requires_grad=True) for _ in range(3))
    module = load(compiled, cache)
    assert module.fused and module.backward_fused
    out = module(q, k, v)
    reference = execute(compiled.simplified, *(t.double() for t in (q, k, v)))
    assert (out.double() - reference).abs().max() <= 1e-4 * reference.abs().max()
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_launch_reads_the_abi_not_the_scheduler():
    tree = ast.parse((ROOT / "runtime" / "launch.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in imported if m.endswith(("schedule", "backward", "backward_plan", "template"))}, imported
