"""Every registry entry: torch reference vs the NumPy float64 oracle, shape rules, traits."""

import numpy as np
import pytest
import torch

from genomec.genome.ops import OPS, ShapeError

HEAD_DIM = 6


def _operands(op, rng, dtype):
    """Operands of a shape the op accepts: [..., 5, 6] matrices (transposed where needed)."""
    a = rng.standard_normal((2, 5, HEAD_DIM))
    b = rng.standard_normal((2, 5, HEAD_DIM))
    if op.name == "matmul":
        b = rng.standard_normal((2, HEAD_DIM, 4))
    if op.name in ("cos", "euc"):
        b = rng.standard_normal((2, 4, HEAD_DIM))
    if op.name == "euc":
        b[0, 0] = a[0, 1]  # a zero distance: the clamp must show
    if op.name == "sqrt":
        a[0, 0, :3] = [0.0, 1e-7, -1e-7]  # around the kink
    return [a, b][: op.arity]


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_reference_matches_float64_oracle(name, dtype, tol):
    op = OPS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    xs = _operands(op, rng, dtype)
    expected = op.oracle(*xs, head_dim=HEAD_DIM)
    got = op.reference(*(torch.tensor(x, dtype=dtype) for x in xs), head_dim=HEAD_DIM, mask=None)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(OPS))
def test_gradients_are_finite_everywhere(name):
    """Every op has a finite gradient, also at 0 (sqrt's kink) and at zero distance (euc)."""
    op = OPS[name]
    xs = [torch.tensor(x, requires_grad=True) for x in _operands(op, np.random.default_rng(1), torch.float64)]
    xs[0].data[0, 0].zero_()
    if op.arity == 2 and op.name in ("euc", "cos", "add", "sub", "mul", "max"):
        xs[1].data[0, 0] = xs[0].data[0, 0] if op.name != "cos" else 0.0
    op.reference(*xs, head_dim=HEAD_DIM, mask=None).sum().backward()
    for x in xs:
        assert torch.isfinite(x.grad).all()


def test_definitions_follow_the_spec_at_chosen_points():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ref = lambda name, *xs: OPS[name].reference(*xs, head_dim=4, mask=None)  # noqa: E731
    assert torch.allclose(ref("scale", t(2.0)), t(1.0))  # always d**-0.5, d = 4
    assert ref("sqrt", t(0.0)).item() == 0.0
    assert torch.allclose(ref("sqrt", t(4.0, -4.0)), t(4.000001**0.5 - 1e-3, -(4.000001**0.5) + 1e-3))
    assert torch.allclose(ref("logsigmoid", t(0.0)), t(-np.log(2.0)))
    assert torch.allclose(ref("softsign", t(3.0, -1.0)), t(0.75, -0.5))
    # cos clamps tiny norms at 1e-6: a zero row gives 0, not NaN
    zero_row = torch.zeros(1, 3, dtype=torch.float64)
    assert ref("cos", zero_row, torch.ones(1, 3, dtype=torch.float64)).item() == 0.0
    # euc of identical rows is sqrt(1e-12) = 1e-6
    assert ref("euc", torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)).item() == pytest.approx(1e-6)


SHAPE_CASES = [
    ("transpose", [("N", "d")], ("d", "N")),
    ("matmul", [("N", "d"), ("d", "N")], ("N", "N")),
    ("matmul", [("d", "N"), ("N", "d")], ("d", "d")),
    ("cos", [("N", "d"), ("N", "d")], ("N", "N")),
    ("euc", [("d", "N"), ("d", "N")], ("d", "d")),
    ("softmax", [("d", "N")], ("d", "N")),
    ("add", [("N", "N"), ("N", "N")], ("N", "N")),
]


@pytest.mark.parametrize("name,operands,expected", SHAPE_CASES)
def test_shape_rules(name, operands, expected):
    assert OPS[name].shape(*operands) == expected


@pytest.mark.parametrize(
    "name,operands,message",
    [
        ("matmul", [("N", "d"), ("N", "d")], "matmul needs [a,b] @ [b,c], got [N,d] @ [N,d]"),
        ("add", [("N", "d"), ("d", "N")], "add needs identical shapes"),
        ("cos", [("N", "d"), ("d", "N")], "cos needs rows of equal length"),
        ("neg", [("N", "d"), ("N", "d")], "neg takes 1 operand"),
    ],
)
def test_shape_errors_say_what_is_wrong(name, operands, message):
    with pytest.raises(ShapeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        OPS[name].shape(*operands)


def test_traits_agree_with_the_definitions():
    """Commutative and odd traits are checked numerically, since rewrite rules trust them."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((2, 4, 4))
    for op in OPS.values():
        if op.commutative:
            np.testing.assert_allclose(op.oracle(x, y, head_dim=4), op.oracle(y, x, head_dim=4))
        if op.odd:
            np.testing.assert_allclose(op.oracle(-x, head_dim=4), -op.oracle(x, head_dim=4))
        if op.linear and op.arity == 1:
            np.testing.assert_allclose(op.oracle(2 * x + y, head_dim=4), 2 * op.oracle(x, head_dim=4) + op.oracle(y, head_dim=4))


def test_paper_group_is_the_papers_first_group():
    paper = {name for name, op in OPS.items() if op.paper_group}
    assert paper == set("neg transpose scale softmax logsigmoid softsign sqrt add matmul cos euc".split())
