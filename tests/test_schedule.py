"""The scheduler: index-space classes, stages and passes per zoo genome, the fallback with
its reason, and what the generated source may store (never a [N,N] value)."""

import json
import re

import pytest
import torch

from conftest import zoo_files
from genomec.codegen import generate, schedule
from genomec.codegen import template as T
from genomec.codegen.backward import BackwardKind
from genomec.codegen.schedule import KernelRole, NodeKind, PassKind
from genomec.codegen.stages import plan_stages
from genomec.genome import attention_graphs, load_genome, parse_genome
from genomec.genome.ops import OPS, OpKind, ScoreVJP
from genomec.ir import lower


def plan(expr, causal=False):
    return schedule(lower(parse_genome({"expr": expr, "causal": causal})).simplified)


def zoo_schedule(stem):
    (graph,) = {lower(g).hash: g for g in attention_graphs(load_genome(f"genomes/{stem}.json"))}.values()
    return schedule(lower(graph).simplified)


# genome -> (kernels, passes of the attention kernel)
EXPECTED = {
    "standard-attention": (["attention_fwd"], ["online"]),
    "causal-attention": (["attention_fwd"], ["online"]),
    "cosine-attention": (["attention_fwd"], ["online"]),
    "euclidean-attention": (["attention_fwd"], ["online"]),
    "sigmoid-attention": (["attention_fwd"], ["accumulate"]),
    "relu-attention": (["attention_fwd"], ["accumulate"]),
    "sqrt-after-softmax": (["attention_fwd"], ["statistics", "accumulate"]),
    "max-of-two-maps": (["attention_fwd"], ["statistics", "accumulate"]),
    "differential-attention": (["attention_fwd"], ["statistics", "accumulate"]),
    "linear-attention": (["reduce_tokens", "attention_fwd"], []),
    "efficient-attention": (["reduce_tokens", "attention_fwd"], []),
}


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_zoo_stages_and_passes(stem):
    sched = zoo_schedule(stem)
    kernels, passes = EXPECTED[stem]
    assert sched.fused
    assert [k.name for k in sched.kernels] == kernels
    assert sched.attention.passes == passes
    assert [s["kernel"] for s in sched.stages()] == kernels


def test_paper_graphs_are_fused_with_online_softmax():
    for graph in attention_graphs(load_genome("genomes/autobert-zero.json")):
        sched = schedule(lower(graph).simplified)
        assert sched.fused and sched.attention.passes == ["online"], sched.reason


def test_map_product_falls_back_naming_the_node():
    sched = zoo_schedule("map-product-attention")
    assert not sched.fused and sched.needs_stage is None
    assert "matmul" in sched.reason and "pair" in sched.reason and sched.reason.startswith("node 't8'")


@pytest.mark.parametrize(
    "expr,why",
    [
        ("matmul(softmax(transpose(matmul(q, transpose(k)))), v)", "transpose"),  # keys become queries
        ("matmul(softmax(matmul(matmul(softmax(matmul(q, transpose(k))), v), transpose(k))), v)", "stage of its own"),
        ("transpose(matmul(transpose(v), softmax(matmul(q, transpose(k)))))", "not fusable"),  # sums over queries
    ],
)
def test_outside_the_fused_class(expr, why):
    sched = plan(expr)
    assert not sched.fused and why in sched.reason


def test_causal_needs_a_row_local_graph():
    assert plan("matmul(sigmoid(q), matmul(transpose(sigmoid(k)), v))").fused
    sched = plan("matmul(sigmoid(q), matmul(transpose(sigmoid(k)), v))", causal=True)
    assert not sched.fused and "row-local" in sched.reason


def test_softmax_of_a_softmax_gets_two_statistics_passes():
    sched = plan("matmul(softmax(sigmoid(softmax(matmul(q, transpose(k))))), v)")
    assert sched.attention.passes == ["statistics", "statistics", "accumulate"]


def test_linear_ops_after_softmax_stay_online():
    sched = plan("matmul(neg(scale(softmax(matmul(q, transpose(k))))), v)")
    assert sched.attention.passes == ["online"]


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: p.stem)
def test_generated_kernels_store_no_pair_values(path):
    """[N,N] values live in registers: the only stores are the output, the [d,d] global
    values, the column statistics, the key rows the forward computes once, and for the
    backward [N]- and [N,d]-sized buffers (log-sum-exp, contraction values and their
    cotangents, softmax row terms, key-side cotangents, gradients)."""
    for graph in attention_graphs(load_genome(path)):
        for stage in plan_stages(lower(graph)).stages:
            _assert_stores_no_pair_values(generate(stage.compiled).source)


def _assert_stores_no_pair_values(source):
    stored = set(re.findall(r"tl\.store\((\w+)", source))
    backward = {"lse_ptr", "saved_ptr", "dcontraction_ptr", "delta_ptr", "dkey_rows_ptr", "dcolumn_ptr", "column_delta_ptr", "dglobal_ptr",
                "dq_ptr", "dk_ptr", "dv_ptr"}
    assert stored <= {"out_ptr", "global_ptr", "stats_ptr", "key_rows_ptr"} | backward, stored
    stores = "".join(re.findall(r"tl\.store\([^\n]*", source))
    assert "_ij" not in stores and "_ji" not in stores


def test_zero_preserving_ops_map_zero_to_zero():
    """The emitter skips head-dim masking after ops marked `zero_preserving`; their
    reference implementations must agree, and the other elementwise ops must not be zero there."""
    zero = torch.zeros(2, 3)
    for name, op in OPS.items():
        if op.zero_preserving or op.elementwise:
            out = op.reference(*([zero] * op.arity), head_dim=4, mask=None)
            assert (out == 0).all() == op.zero_preserving, name


def test_elementwise_and_score_ops_have_triton_spellings():
    for name, op in OPS.items():
        spelled = op.kind in (OpKind.ELEMENTWISE, OpKind.SCORE)
        assert (op.triton is not None) == spelled, name
        assert (op.triton_vjp is not None) == spelled, name
        if op.kind is OpKind.ELEMENTWISE:
            assert len(op.triton_vjp) == op.arity, name
        if op.kind is OpKind.SCORE:  # one rule for the side whose rows the pair tile's are: both sides, as the op is symmetric
            assert isinstance(op.triton_vjp, ScoreVJP) and op.swap_transposes, name


def _defined(sources) -> set[str]:
    return set(re.findall(r"^def (_\w+)\(", "".join(sources), re.M))


def _called(spellings) -> set[str]:
    return set(re.findall(r"\b(_\w+)\(", " ".join(spellings)))


def test_spellings_call_only_helpers_their_op_brings():
    """An op's Triton code calls the template's generic helpers and its own (`triton_helpers`,
    and for its derivative `triton_vjp_helpers`): adding an op touches the registry only."""
    generic = _defined([T.HEADER])
    for name, op in OPS.items():
        assert _called([op.triton or ""]) <= generic | _defined(op.triton_helpers), name
        assert _called(op.triton_vjp or ()) <= generic | _defined(op.triton_helpers + op.triton_vjp_helpers), name


def test_kinds_and_roles_write_their_text():
    """Kernel names and kinds go into generated source, cache entries, manifests and
    `genomec show` as the plain text they stand for."""
    for member in (OpKind.SCORE, NodeKind.COLUMN_SOFTMAX, PassKind.COLUMN_STATISTICS, KernelRole.ATTENTION, BackwardKind.KEYS):
        assert f"{member}" == "{}".format(member) == str(member) == member.value
        assert json.dumps({"kernel": member}) == json.dumps({"kernel": member.value})
