"""Support-set BatchNorm, the one every learner uses: a task's images normalised with the
statistics of its support set (``--bn support``) or support and query each with their own
(``--bn transductive``), and its gradient written out.

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

When every image is a support image (the inner loop) this is training-mode BatchNorm, and
``F.batch_norm`` computes it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _channel(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) against activations of ``dims`` dimensions."""
    return t.view(1, -1, *(1,) * (dims - 2))


class _SupportNorm(torch.autograd.Function):
    generate_vmap_rule = True  # user backbones run it under torch.func.vmap

    @staticmethod
    def forward(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_support: int, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # two passes (mean, then mean squared deviation): torch.var_mean's one-pass kernel is
        # not vectorised for a reduction that keeps the innermost (channels-last) dimension,
        # and took 20x as long at 84x84
        dims, axes = x.dim(), [0, *range(2, x.dim())]
        support = x[:n_support]
        # statistics in θ's precision (bf16 activations under --amp bf16: fp32)
        mean = support.mean(axes, dtype=torch.promote_types(x.dtype, weight.dtype))
        var = (support - _channel(mean, dims)).square().mean(axes)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        shift = bias - mean * scale
        # in x's precision: bf16 activations stay bf16 under --amp bf16
        out = torch.addcmul(_channel(shift.to(x.dtype), dims), x, _channel(scale.to(x.dtype), dims))
        return out, mean, invstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _, n_support, _ = inputs
        _, mean, invstd = output
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n_support = n_support
        ctx.mark_non_differentiable(mean, invstd)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        n, dims = ctx.n_support, x.dim()
        # Σ dy·x̂ and Σ dy in one pass over dy and x: training-mode BatchNorm's backward kernel,
        # given these statistics, computes exactly these two sums (its eps is unused then)
        _, d_weight, d_bias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, 0.0, [False, True, True]
        )
        scale = _channel(weight * invstd, dims)
        dx = dy * scale
        m = n * x[0, 0].numel()
        x_hat = (x[:n] - _channel(mean, dims)) * _channel(invstd, dims)  # statistics' precision
        dx[:n] -= scale * (_channel(d_bias / m, dims) + x_hat * _channel(d_weight / m, dims))
        return dx.to(x.dtype), d_weight, d_bias, None, None


def support_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    n_support: int,
    bn: str = "support",
) -> torch.Tensor:
    """BatchNorm of one batch of activations (n, C, ...) with weight, bias (C,) or None: every
    image with the statistics of the first ``n_support`` images (``bn="support"``), or support
    and query images each with their own (``bn="transductive"``); biased variance, as in
    training-mode BatchNorm."""
    if n_support >= x.shape[0]:
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    if bn == "transductive":
        return torch.cat(
            [
                F.batch_norm(part, None, None, weight, bias, training=True, eps=eps)
                for part in (x[:n_support], x[n_support:])
            ]
        )
    stats = dict(dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    weight = weight if weight is not None else torch.ones(x.shape[1], **stats)
    bias = bias if bias is not None else torch.zeros(x.shape[1], **stats)
    return _SupportNorm.apply(x, weight, bias, n_support, eps)[0]
