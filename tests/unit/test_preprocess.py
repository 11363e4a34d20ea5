import math

import torch

from attnopt.models.metalearner import preprocess

P = 10.0


def reference(v: float) -> tuple[float, float]:
    """DESIGN.md: (log|v| / p, sign v) if |v| >= e^-p, else (-1, e^p · v)."""
    if abs(v) >= math.exp(-P):
        return math.log(abs(v)) / P, math.copysign(1.0, v) if v != 0 else 0.0
    return -1.0, math.exp(P) * v


def test_preprocess_matches_the_formula_on_edge_values() -> None:
    values = [
        0.0,
        1e-30,
        -1e-30,
        1e-6,
        -1e-6,
        math.exp(-P),
        -math.exp(-P),
        0.5,
        -0.5,
        1.0,
        -1.0,
        1e6,
        -1e6,
        3e38,
        -3e38,
    ]
    out = preprocess(torch.tensor(values, dtype=torch.float64))
    assert out.shape == (len(values), 2)
    for v, (a, b) in zip(values, out.tolist(), strict=True):
        ra, rb = reference(v)
        assert math.isclose(a, ra, rel_tol=1e-9, abs_tol=1e-12), v
        assert math.isclose(b, rb, rel_tol=1e-9, abs_tol=1e-12), v


def test_preprocess_is_finite_and_scale_free() -> None:
    v = torch.tensor([0.0, 1e-45, 1e-3, 1e3, 1e30], dtype=torch.float32)
    out = preprocess(v)
    assert torch.isfinite(out).all()
    # Large values differ in the log channel by log(ratio)/p, not by the ratio itself.
    assert math.isclose(out[4, 0] - out[3, 0], math.log(1e27) / P, rel_tol=1e-5)


def test_preprocess_of_zero_is_minus_one_and_zero() -> None:
    assert preprocess(torch.zeros(1)).tolist() == [[-1.0, 0.0]]
