"""Gradients of the generated backward kernels against the float64 reference's autograd, on
the CPU through Triton's interpreter (compiled kernels when a GPU is present): every zoo
graph (fused backward, or the reference-recompute fallback, said by the module), plain and
causal, with padding masks at odd shapes; hypothesis-drawn graphs; gradcheck of the module on
tiny shapes; padded tokens get exactly zero gradient; half precision; the CLI's --grad."""

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # Triton's mode is fixed by its first import: interpret here
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_problem, relative_error, zoo_graphs
from genomec.codegen import schedule
from genomec.codegen.backward import backward_schedule
from genomec.codegen.stages import plan_stages
from genomec.genome import parse_genome
from genomec.genome.ops import OPS
from genomec.ir import execute, lower
from genomec.runtime import CompiledAttention, KernelCache, load
from strategies import attention_genomes

TOLERANCE = 1e-4  # max |ours - reference| relative to max |reference|, per gradient, fp32
STANDARD = "matmul(softmax(scale(matmul(q, transpose(k)))), v)"



ZOO = zoo_graphs()
# Outside the fused backward class: a forward that is not fused at all (a softmax of a
# contraction of two pair values).
BACKWARD_FALLBACK = {"map-product-attention[0]"}
# Causal graphs whose forward is not fused (not row-local; see test_codegen)
CAUSAL_FALLBACK = {"efficient-attention[0]", "two-hop-attention[0]", "map-product-attention[0]"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(tmp_path_factory.mktemp("kernels"))


class BackwardSpy:
    """Counts the module's fused backward launches (one per stage of a staged graph)."""

    def __init__(self, module: CompiledAttention):
        self.calls = 0
        for stage_module in stage_modules(module):
            self._count(stage_module)

    def _count(self, module: CompiledAttention) -> None:
        launch_backward = module.launch_backward

        def counted(*args, **kwargs):
            self.calls += 1
            return launch_backward(*args, **kwargs)

        module.launch_backward = counted


def stage_modules(module) -> list:
    """The CompiledAttention of each stage (the module itself for a one-stage graph)."""
    return list(getattr(module, "stage_modules", [module]))


def fused_backward_launches(module) -> int:
    return len(stage_modules(module)) if module.backward_fused else 0


def check_gradients(compiled, cache, shape, mask=True, dtype=torch.float32, seed=0, tolerance=TOLERANCE):
    """Run forward + backward through the module and through the float64 reference; compare
    every gradient; padded tokens' gradients must be exactly 0. Returns (module, fused
    backward launches, errors)."""
    module = load(compiled, cache)
    spy = BackwardSpy(module)
    inputs, grad_out, padding = random_problem(shape, dtype, seed)
    padding = padding if mask else None
    used = compiled.simplified.inputs
    ours = [t.clone().requires_grad_(True) if n in used else None for t, n in zip(inputs, "qkv")]
    module(*ours, mask=padding).backward(grad_out)
    reference = [t.double().requires_grad_(True) if n in used else None for t, n in zip(inputs, "qkv")]
    execute(compiled.simplified, *reference, mask=padding).backward(grad_out.double())
    # The same computation in this dtype through the reference executor: how well-conditioned
    # the graph is (sqrt near 0 amplifies rounding). Ours must be as good, within a factor.
    same_dtype = [t.clone().requires_grad_(True) if n in used else None for t, n in zip(inputs, "qkv")]
    execute(compiled.simplified, *same_dtype, mask=padding).backward(grad_out)
    errors, reference_errors = {}, {}
    for name, a, b, c in zip("qkv", ours, reference, same_dtype):
        if a is None:
            continue
        assert a.grad.dtype == dtype and a.grad.shape == a.shape
        errors[name] = relative_error(a.grad, b.grad)
        reference_errors[name] = relative_error(c.grad, b.grad)
        if padding is not None:
            assert (a.grad.transpose(1, 2)[~padding] == 0).all(), f"d{name} of padded tokens must be exactly 0"
    allowed = max(tolerance, 4 * max(reference_errors.values()))
    assert max(errors.values()) <= allowed, f"relative gradient errors {errors}; the {dtype} reference's {reference_errors}"
    return module, spy.calls, errors


@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_zoo_gradients_match_reference_with_padding(name, genome, cache):
    module, fused_launches, _ = check_gradients(lower(genome), cache, shape=(2, 2, 37, 24))
    assert module.backward_fused == (name not in BACKWARD_FALLBACK)
    assert fused_launches == fused_backward_launches(module)
    if not module.backward_fused:
        assert module.backward_backend == "reference (fallback)" and module.backward_reason


@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_zoo_gradients_match_reference_causal(name, genome, cache):
    compiled = lower(dataclasses.replace(genome, causal=True))
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(1, 2, 21, 16), seed=3)
    expected = name not in BACKWARD_FALLBACK and name not in CAUSAL_FALLBACK
    assert module.backward_fused == expected and fused_launches == fused_backward_launches(module)


@pytest.mark.parametrize(
    "expr",
    [
        "matmul(softmax(scale(matmul(add(q, k), transpose(k)))), add(q, k))",  # q on both sides, values from q and k
        "tanh(mul(matmul(softmax(euc(q, q)), v), sigmoid(q)))",  # euc(x, x), post values reading a query-side value
        "matmul(softmax(scale(matmul(softmax(q), transpose(k)))), relu(v))",  # softmax over the head dim
        "add(matmul(softmax(cos(q, k)), v), matmul(sigmoid(scale(matmul(q, transpose(k)))), neg(v)))",  # two contractions
        "matmul(tanh(euc(q, q)), k)",  # found by hypothesis: tanh' where |tanh| ~ 1 (no 1 - out^2 cancellation)
    ],
)
def test_chains_on_both_sides_and_several_contractions(expr, cache):
    compiled = lower(parse_genome({"expr": expr}))
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 1, 19, 24), seed=5)
    assert module.backward_fused and fused_launches == 1


@pytest.mark.parametrize(
    "expr",
    [
        "matmul(sigmoid(q), scale(matmul(transpose(sigmoid(k)), v)))",  # a [d,d] state
        "tanh(matmul(matmul(q, matmul(transpose(k), v)), softmax(matmul(transpose(q), k))))",  # two states, [d,d] @ [d,d]
        "matmul(q, matmul(transpose(add(q, k)), q))",  # q on the query rows and in the state
        "mul(tanh(q), softmax(add(k, v)))",  # pointwise in the token: no reduction at all
    ],
)
def test_graphs_without_a_pass_over_keys(expr, cache):
    """[d,d] states (the reduction kernel's buffer, kept from the forward) and token-pointwise
    graphs: the state's cotangent is reduced over the query rows, then spread over its rows."""
    compiled = lower(parse_genome({"expr": expr}))
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 2, 37, 24), seed=8)
    assert module.backward_fused and fused_launches == 1


@pytest.mark.parametrize(
    "expr",
    [
        "matmul(softmax(q), matmul(softmax(transpose(k)), v))",  # efficient attention: the softmax read by a state
        "matmul(sigmoid(q), matmul(tanh(softmax(transpose(k))), transpose(softmax(transpose(v)))))",  # two, a chain after one
        "matmul(transpose(softmax(transpose(q))), matmul(softmax(transpose(q)), v))",  # read by the query rows and a state
        "mul(q, transpose(softmax(transpose(k))))",  # by the query rows only: no state at all
        # next to a pass over keys: the key-pass kernels leave their shares of dP in a buffer
        "matmul(softmax(scale(matmul(q, softmax(transpose(k))))), transpose(softmax(transpose(v))))",  # keys and values
        "add(matmul(softmax(scale(matmul(transpose(softmax(transpose(q))), transpose(k)))), v), matmul(q, matmul(softmax(transpose(k)), v)))",
    ],
)
def test_softmaxes_over_tokens(expr, cache):
    """Column statistics kept from the forward; dX = P * (dP - delta), delta = sum over the
    real tokens of P * dP, summed by the global kernel after the states' cotangents."""
    compiled = lower(parse_genome({"expr": expr}))
    assert backward_schedule(schedule(compiled.simplified)).fused
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 2, 37, 24), seed=11)
    assert module.backward_fused and fused_launches == 1


@pytest.mark.parametrize(
    "expr",
    [
        "add(matmul(softmax(scale(matmul(q, transpose(k)))), v), matmul(q, matmul(transpose(k), v)))",  # read by a query value
        "matmul(matmul(sqrt(softmax(scale(matmul(q, transpose(k))))), v), softmax(matmul(transpose(k), v)))",  # by a post value
        # found by fuzzing: dc = dy @ G^T holds garbage past HEAD_DIM (a [d,d] value's padded rows)
        "matmul(matmul(softmax(softmax(cos(q, v))), sigmoid(v)), softmax(matmul(transpose(q), k)))",
    ],
)
def test_states_next_to_a_pass_over_keys(expr, cache):
    """The key-pass kernels' share, then the states': the global kernel reduces dG over the
    query rows from d_out and the saved contraction values."""
    compiled = lower(parse_genome({"expr": expr}))
    plan = backward_schedule(schedule(compiled.simplified))
    assert plan.fused and plan.kernels[-2:] == ("attention_bwd_global", "attention_bwd_state_rows")
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 2, 37, 24), seed=12)
    assert module.backward_fused and fused_launches == 1


@pytest.mark.parametrize(
    "expr,causal",
    [
        ("matmul(softmax(softmax(scale(matmul(q, transpose(k))))), v)", False),
        ("matmul(add(softmax(scale(matmul(q, transpose(k)))), softmax(softmax(cos(q, k)))), v)", True),  # two at level 1
    ],
)
def test_nested_softmaxes_over_keys(expr, causal, cache):
    """A softmax of a softmax: the prepare kernel sums delta one nesting level at a time,
    the outermost first (the inner dP comes back through the outer softmax)."""
    compiled = lower(parse_genome({"expr": expr, "causal": causal}))
    plan = backward_schedule(schedule(compiled.simplified))
    assert plan.fused and len(plan.softmax_levels) == 2
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 1, 19, 24), seed=13)
    assert module.backward_fused and fused_launches == 1


@pytest.mark.parametrize(
    "expr,causal,seed",
    [
        # found by hypothesis: v is both the query and the key, unscaled: |v_i|^2 dominates every row
        ("matmul(softmax(matmul(v, transpose(v))), q)", False, 1),
        ("matmul(softmax(matmul(q, transpose(q))), v)", False, 1),
        ("matmul(softmax(matmul(k, transpose(k))), v)", False, 1),
        ("matmul(softmax(matmul(k, transpose(k))), v)", True, 3),
        # a statistics pass (not the online softmax) and two softmaxes, both saturated
        ("matmul(add(softmax(matmul(v, transpose(v))), softmax(matmul(q, transpose(q)))), k)", False, 2),
    ],
)
def test_saturated_softmax_gradients_keep_their_digits(expr, causal, seed, cache):
    """A softmax whose row is dominated by one key: dS = P (dP - delta) cancels there, so
    the kernels take dS at the row's largest score as minus the others (backward_template.STAR_*).
    The tight tolerance is the point: the plain formula is 1e-3 to 1e-2 off here."""
    compiled = lower(parse_genome({"expr": expr, "causal": causal}))
    module, _, errors = check_gradients(compiled, cache, shape=(2, 1, 19, 24), seed=seed, tolerance=1e-5)
    assert module.backward_fused
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("expr", ["matmul(neg(euc(abs(k), max(neg(k), k))), q)", "matmul(scale(euc(q, add(relu(logsigmoid(k)), q))), v)"])
def test_regression_euc_of_coincident_rows_gradients(expr, cache):
    """Found by hypothesis: dq 1.1e-4 off (the float32 reference: 1.5e-7), from the forward's
    rounding noise at rows that coincide but are different nodes (test_codegen's case)."""
    compiled = lower(parse_genome({"expr": expr}))
    _, _, errors = check_gradients(compiled, cache, shape=(2, 1, 19, 24), seed=0, tolerance=2e-6)
    assert max(errors.values()) <= 2e-6, errors


def test_backward_outside_the_class_says_why():
    expr = "matmul(softmax(scale(matmul(matmul(q, matmul(transpose(k), v)), transpose(k)))), v)"  # a state in the scores
    plan = backward_schedule(schedule(lower(parse_genome({"expr": expr})).simplified))
    assert not plan.fused and "reads a [d,d] state inside the pass over keys" in plan.reason


@pytest.mark.parametrize("head_dim", [20, 40])
@pytest.mark.parametrize("seq_len", [2, 33])
def test_head_dims_and_lengths_at_block_edges(head_dim, seq_len, cache):
    compiled = lower(parse_genome({"expr": "matmul(softmax(neg(euc(q, k))), v)"}))
    # no mask at 2 tokens: with one of them padded, the q/k gradients are 0 up to rounding
    check_gradients(compiled, cache, shape=(1, 2, seq_len, head_dim), mask=seq_len > 2, seed=seq_len + head_dim)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_gradients_accumulate_in_fp32(dtype, tolerance, cache):
    check_gradients(lower(parse_genome({"expr": STANDARD})), cache, shape=(1, 2, 37, 24), dtype=dtype, tolerance=tolerance)


@settings(max_examples=int(os.environ.get("GENOMEC_HYPOTHESIS_EXAMPLES", "20")))
@given(genome=attention_genomes(max_nodes=8), seed=st.integers(0, 2**16))
def test_random_graphs_backward_fused_or_fall_back(genome, seed, tmp_path_factory):
    """Any valid graph: the fused backward matches the reference's gradients, or the module
    says its backward recomputes through the reference executor (and matches too)."""
    compiled = lower(genome)
    cache = KernelCache(tmp_path_factory.getbasetemp() / "random-backward-kernels")
    stages = plan_stages(compiled).stages
    fused = bool(stages) and all(backward_schedule(schedule(s.compiled.simplified)).fused for s in stages)
    module, fused_launches, _ = check_gradients(compiled, cache, shape=(2, 1, 19, 24), seed=seed)
    assert module.backward_fused == fused and fused_launches == fused_backward_launches(module)
    assert module.backward_fused or module.backward_reason


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("expr", [STANDARD, "matmul(softsign(cos(q, k)), v)"])
def test_gradcheck_of_the_module(expr, mask, cache):
    """torch.autograd.gradcheck (finite differences, so fp32-sized tolerances) on tiny shapes."""
    module = load(lower(parse_genome({"expr": expr})), cache)
    assert module.backward_fused
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g).requires_grad_(True) for _ in range(3))
    padding = torch.tensor([[True, True, False, True, False]]) if mask else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not of double precision.*")  # fp32: the kernels' widest dtype
        assert torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, mask=padding), (q, k, v), eps=1e-3, atol=2e-3, rtol=1e-2)


def test_forward_without_grad_saves_nothing(cache):
    """No input requires grad: the plain forward runs (no statistics saved), same output."""
    module = load(lower(parse_genome({"expr": STANDARD})), cache)
    (q, k, v), _, mask = random_problem((1, 2, 19, 16))
    plain = module(q, k, v, mask=mask)
    out, saved = module.launch(q, k, v, mask, save_for_backward=True)
    assert torch.equal(plain, out) and saved["lse_ptr"].numel() == 2 * 19 and torch.isfinite(saved["lse_ptr"]).all()


def test_unused_inputs_get_no_gradient(cache):
    compiled = lower(parse_genome({"expr": "matmul(softmax(scale(matmul(q, transpose(k)))), q)"}))
    module = load(compiled, cache)
    (q, k, _), grad_out, mask = random_problem((1, 2, 19, 16))
    q.requires_grad_(True), k.requires_grad_(True)
    module(q, k, None, mask=mask).backward(grad_out)
    assert module.backward_fused and q.grad is not None and k.grad is not None


def test_cli_run_grad_uses_the_fused_backward(tmp_path, capsys):
    from genomec.cli import main

    genome = tmp_path / "g.json"
    genome.write_text('{"expr": "matmul(softmax(scale(matmul(q, transpose(k)))), v)"}')
    (q, k, v), grad_out, mask = random_problem((2, 2, 13, 16), seed=9)
    np.savez(tmp_path / "in.npz", q=q.numpy(), k=k.numpy(), v=v.numpy(), mask=mask.numpy(), grad_out=grad_out.numpy())
    assert main(["run", str(genome), "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz"), "--backend", "triton", "--grad"]) == 0
    assert "outside the fused backward class" not in capsys.readouterr().err
    result = np.load(tmp_path / "out.npz")
    compiled = lower(parse_genome({"expr": STANDARD}))
    reference = [t.double().requires_grad_(True) for t in (q, k, v)]
    execute(compiled.simplified, *reference, mask=mask).backward(grad_out.double())
    for name, t in zip("qkv", reference):
        assert relative_error(torch.from_numpy(result["d" + name]), t.grad) <= TOLERANCE


# -- GPU: real sizes and dtypes (skipped without CUDA) ------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,genome", ZOO, ids=[n for n, _ in ZOO])
def test_gpu_zoo_gradients_at_real_sizes(name, genome, dtype, tmp_path):
    compiled = lower(genome)
    module = load(compiled, KernelCache(tmp_path))
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = [torch.randn(2, 4, 1024, 64, device="cuda", generator=g).to(dtype) for _ in range(3)]
    grad_out = torch.randn(2, 4, 1024, 64, device="cuda", generator=g).to(dtype)
    mask = torch.rand(2, 1024, device="cuda", generator=g) > 0.2
    used = compiled.simplified.inputs
    ours = [t.clone().requires_grad_(True) if n in used else None for t, n in zip(inputs, "qkv")]
    module(*ours, mask=mask).backward(grad_out)
    reference = [t.double().requires_grad_(True) if n in used else None for t, n in zip(inputs, "qkv")]
    execute(compiled.simplified, *reference, mask=mask).backward(grad_out.double())
    for a, b in zip(ours, reference):
        if a is not None:
            assert relative_error(a.grad, b.grad) < 3e-2


@pytest.mark.gpu
def test_gpu_fused_backward_writes_no_pair_buffer(tmp_path):
    """Peak memory of forward + backward stays near inputs + outputs + gradients."""
    compiled = lower(parse_genome({"expr": "matmul(max(softmax(cos(q, k)), softmax(scale(matmul(q, transpose(k))))), v)"}))
    module = load(compiled, KernelCache(tmp_path))
    q, k, v = (torch.randn(1, 8, 8192, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    module(q, k, v).sum().backward()  # compile first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    module(q, k, v).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    # output + 3 gradients (+ their fp32 accumulators) + contraction values/cotangents: O(N d)
    assert extra <= 12 * q.numel() * q.element_size() + 2**22


# -- the model's attention layer on the kernels ----------------------------------------------


@pytest.mark.parametrize("expr", [STANDARD, "matmul(softmax(scale(matmul(q, transpose(k)))), q)"])
def test_model_attention_layer_on_the_kernels_matches_the_reference(expr):
    """`models.GenomeAttention` (projections of the inputs the graph reads, the graph per
    head, output projection) on the fused kernels and on the reference executor."""
    from genomec.models import GenomeBertConfig
    from genomec.models.attention_backend import attention_function
    from genomec.models.modeling import GenomeAttention

    torch.manual_seed(0)
    graph = parse_genome({"expr": expr})
    layers = {
        backend: GenomeAttention(GenomeBertConfig(genome={"expr": expr}, hidden_size=48, num_heads=2, attention_backend=backend), graph)
        for backend in ("triton", "reference")
    }
    kernels, reference = layers["triton"], layers["reference"]
    reference.load_state_dict(kernels.state_dict())
    assert sorted(kernels.projections) == sorted(lower(graph).simplified.inputs)
    x = torch.randn(2, 13, 48)
    mask = torch.rand(2, 13) > 0.3
    mask[:, 0] = True
    out = kernels(x, mask)
    out.square().sum().backward()
    expected = reference(x, mask)
    expected.square().sum().backward()
    assert kernels.runs_on() == [("triton", None)]
    assert relative_error(out, expected.detach().double()) <= TOLERANCE
    for (name, a), b in zip(kernels.named_parameters(), reference.parameters()):
        assert relative_error(a.grad, b.grad.double()) <= TOLERANCE, name
    assert attention_function(lower(graph), "auto", x.device).backend == "reference"  # auto on CPU


# -- the registry's derivative rules --------------------------------------------------------


class _TorchTriton:
    """The few `tl` functions the registry's Triton spellings use, on float64 torch tensors."""

    where = staticmethod(torch.where)
    abs = staticmethod(torch.abs)
    exp = staticmethod(torch.exp)
    sqrt = staticmethod(torch.sqrt)
    sigmoid = staticmethod(torch.sigmoid)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(lambda x, y: torch.minimum(x, torch.as_tensor(y, dtype=x.dtype)))


def _evaluate_spelling(spelling: str, head_dim: int, **values):
    names = {f"_{k}": v for k, v in values.items()}
    text = spelling.format(**{k: f"_{k}" for k in values})
    return eval(text, {"tl": _TorchTriton, "HEAD_SCALE": head_dim**-0.5, **names})  # noqa: S307 (our own registry)


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items() if op.elementwise))
def test_registry_vjp_spellings_match_torch_autograd(name):
    """Every elementwise op's `triton_vjp` (evaluated on float64 tensors) equals torch
    autograd of its reference implementation, including at 0 and at ties."""
    op = OPS[name]
    assert op.triton_vjp is not None and len(op.triton_vjp) == op.arity
    g = torch.Generator().manual_seed(1)
    operands = [torch.cat([torch.randn(64, generator=g, dtype=torch.float64) * 3, torch.zeros(2, dtype=torch.float64)]) for _ in range(op.arity)]
    if op.arity == 2:
        operands[1][:8] = operands[0][:8]  # ties (max)
    leaves = [x.clone().requires_grad_(True) for x in operands]
    out = op.reference(*leaves, head_dim=24, mask=None)
    cotangent = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(out, leaves, cotangent)
    values = dict(zip("xy", operands), out=out.detach(), grad=cotangent)
    for position, rule in enumerate(op.triton_vjp):
        ours = _evaluate_spelling(rule, 24, **values)
        ours = torch.as_tensor(ours, dtype=torch.float64).expand_as(expected[position])
        assert torch.allclose(ours, expected[position], rtol=1e-9, atol=1e-12), (name, position, rule)
