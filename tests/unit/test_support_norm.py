"""The support-statistics BatchNorm: its written-out gradient is the true one."""

from __future__ import annotations

import pytest
import torch

from attnopt.models.support_norm import support_norm


def by_autograd(x, weight, bias, n_support: int, eps: float) -> torch.Tensor:
    """The same BatchNorm spelled out for autograd to differentiate."""
    support = x[:n_support]
    mean = support.mean((0, 2, 3), keepdim=True)
    var = (support - mean).square().mean((0, 2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("n", "n_support"), [(7, 3), (4, 4), (5, 1)])
def test_gradient_passes_gradcheck(n: int, n_support: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda *a: support_norm(*a, n_support, 1e-3), inputs)


def test_forward_and_gradient_equal_autograds_of_the_same_formula() -> None:
    torch.manual_seed(1)
    x = torch.randn(30, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)
    dy = torch.randn(30, 8, 9, 9)
    results = []
    for norm in (support_norm, by_autograd):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = norm(*inputs, 10, 1e-3)
        out.backward(dy)
        results.append([out.detach(), *(t.grad for t in inputs)])
    for mine, reference in zip(*results, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)


def test_bfloat16_activations_keep_their_precision_and_get_a_gradient() -> None:
    x = torch.randn(6, 4, 5, 5).to(torch.bfloat16).requires_grad_()
    weight, bias = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    out = support_norm(x, weight, bias, 2, 1e-3)
    out.float().sum().backward()
    assert out.dtype == x.grad.dtype == torch.bfloat16
    assert weight.grad.dtype == torch.float32 and torch.isfinite(x.grad.float()).all()
