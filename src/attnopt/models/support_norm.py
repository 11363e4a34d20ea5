"""BatchNorm of support and query images with the support images' statistics, and its
gradient written out.

Meta-training scores the query set with the statistics of the support set under θ_T, so the
meta-gradient flows into the query images directly and into the support images through the
mean and variance. Left to autograd, the forward's slice, two reductions and ``addcmul``
(a (1, C, 1, 1) scale broadcast over a channels-last map) made a backward of a dozen passes
over the activations and zero-filled copies of them: at 84x84 it was 40% of a meta-training
step (benchmarks/README.md, issue 17). Here it is one pass for the two sums and one for the
gradient. With x̂ = (x − μ)·σ⁻¹ and μ, σ² over the m support positions of a channel:

    ∂b = Σ dy,   ∂w = Σ dy·x̂      (over every image)
    ∂x = w·σ⁻¹·dy                                   (query images)
    ∂x = w·σ⁻¹·(dy − ∂b/m − x̂·∂w/m)                 (support images)
"""

from __future__ import annotations

from typing import Any

import torch


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class _SupportNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        n_support: int,
        eps: float,
    ) -> torch.Tensor:
        # two passes (mean, then mean squared deviation): torch.var_mean's one-pass kernel is
        # not vectorised for a reduction that keeps the innermost (channels-last) dimension,
        # and took 20x as long at 84x84
        support = x[:n_support]
        # statistics in θ's precision (bf16 activations under --amp bf16: fp32)
        mean = support.mean((0, 2, 3), dtype=torch.promote_types(x.dtype, weight.dtype))
        var = (support - _channel(mean)).square().mean((0, 2, 3))
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        shift = bias - mean * scale
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n_support = n_support
        # in x's precision: bf16 activations stay bf16 under --amp bf16
        return torch.addcmul(_channel(shift.to(x.dtype)), x, _channel(scale.to(x.dtype)))

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        n = ctx.n_support
        x_hat = (x - _channel(mean)) * _channel(invstd)  # in the statistics' precision
        d_bias = dy.sum((0, 2, 3), dtype=mean.dtype)
        d_weight = (dy * x_hat).sum((0, 2, 3))
        scale = _channel(weight * invstd)
        dx = dy * scale
        m = n * x.shape[2] * x.shape[3]
        dx[:n] -= scale * (_channel(d_bias / m) + x_hat[:n] * _channel(d_weight / m))
        return dx.to(x.dtype), d_weight, d_bias, None, None


def support_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_support: int, eps: float
) -> torch.Tensor:
    """BatchNorm of (n, C, H, W) with weight, bias (C,): every image with the statistics of
    the first ``n_support`` images (biased variance, as in training-mode BatchNorm)."""
    return _SupportNorm.apply(x, weight, bias, n_support, eps)
