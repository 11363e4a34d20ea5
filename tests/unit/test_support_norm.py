"""The support-statistics BatchNorm: its written-out gradient is the true one."""

from __future__ import annotations

import pytest
import torch

from attnopt.models.support_norm import support_batch_norm


def support_norm(x, weight, bias, n_support: int, eps: float) -> torch.Tensor:
    return support_batch_norm(x, weight, bias, eps, n_support)


def by_autograd(x, weight, bias, n_support: int, eps: float) -> torch.Tensor:
    """The same BatchNorm spelled out for autograd to differentiate, for (n, C, ...)."""
    support, dims, shape = x[:n_support], [0, *range(2, x.dim())], (1, -1, *(1,) * (x.dim() - 2))
    mean = support.mean(dims, keepdim=True)
    var = (support - mean).square().mean(dims, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


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


@pytest.mark.parametrize("shape", [(7, 3), (7, 3, 5), (7, 3, 4, 4)])
def test_any_activation_shape_and_missing_affine(shape) -> None:
    """Feature vectors (BatchNorm1d), sequences and maps; a layer without weight or bias
    (affine=False) normalises only."""
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    out = support_batch_norm(x, None, None, 1e-3, 4)
    torch.testing.assert_close(out, by_autograd(x, ones, zeros, 4, 1e-3))
    assert torch.autograd.gradcheck(lambda t: support_batch_norm(t, None, None, 1e-3, 4), [x])


def test_transductive_and_all_support_use_each_batch_s_own_statistics() -> None:
    torch.manual_seed(3)
    x, weight, bias = torch.randn(6, 3, 4, 4), torch.rand(3) + 0.5, torch.randn(3)
    both = support_batch_norm(x, weight, bias, 1e-3, 2, "transductive")
    for part, rows in ((x[:2], both[:2]), (x[2:], both[2:])):
        torch.testing.assert_close(rows, by_autograd(part, weight, bias, len(part), 1e-3))
    torch.testing.assert_close(
        support_batch_norm(x, weight, bias, 1e-3, 6), by_autograd(x, weight, bias, 6, 1e-3)
    )


def test_under_vmap_and_func_grad_as_per_task() -> None:
    """User backbones batch tasks with torch.func.vmap and take ∇_t with torch.func.grad."""
    torch.manual_seed(4)
    x = torch.randn(3, 7, 2, 4, 4, dtype=torch.float64)  # 3 tasks
    weight = torch.rand(3, 2, dtype=torch.float64) + 0.5
    bias = torch.randn(3, 2, dtype=torch.float64)

    def loss(w, b, images):
        return support_batch_norm(images, w, b, 1e-3, 4).square().mul(images).sum()

    batched = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(weight, bias, x)
    for t in range(3):
        w, b = (v[t].clone().requires_grad_() for v in (weight, bias))
        by_task = torch.autograd.grad(
            by_autograd(x[t], w, b, 4, 1e-3).square().mul(x[t]).sum(), (w, b)
        )
        for got, expected in zip(batched, by_task, strict=True):
            torch.testing.assert_close(got[t], expected)
