"""Conv-4's inner step written out: the support loss at θ and its gradient from the forward
and backward kernels themselves, without a generic autograd graph.

The inner loop's gradient ∇_t is a constant for the meta-gradient (first-order), so nothing
here has to be differentiable. ``torch.func.grad`` records every view, reshape and slice of
θ and replays them backwards; here each block saves what its backward kernel needs and the
gradient is written straight into the slices of one (B, P) tensor. The kernels are those
autograd would call (convolution, batch-norm, max-pool and ReLU backward), so the result is
the same, bit for bit (tests/unit/test_backend.py). Taken where the model's backend says
so (:mod:`attnopt.models.backend`). MLAL's cross-attention (a few small tensors
after one block) keeps autograd, on its own small graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnopt.models.grouped import GroupedLearner, to_grouped

_ATTN = ("attn.norm.weight", "attn.norm.bias") + tuple(
    f"attn.{w}.weight" for w in ("query", "key", "value", "out")
)


def loss_and_grad(
    learner: GroupedLearner, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Conv4Learner.loss_and_grad` (fp32 or fp64, every image a support image):
    theta (B, P), x (B, n, C, H, W), y (B, n) -> mean cross-entropy (B,) and its gradient
    (B, P)."""
    tasks, n = y.shape
    theta = theta.detach()
    p, grad = learner.unflatten(theta), torch.empty_like(theta)
    g = learner.unflatten(grad)
    h = to_grouped(x)
    saved, attention = [], None
    for b in range(learner.n_blocks):
        record = _block_forward(learner, p, b, h, tasks)
        saved.append(record)
        h = record[-1]
        if learner.cross_attention and b == learner.attn_block - 1:
            attention = _attention_forward(learner, p, h, n)
            h = attention[-1].detach()
    # logits (B, n, N) = features (B, n, C·s·s) @ head.weightᵀ + head.bias
    features = h.reshape(n, tasks, -1).transpose(0, 1)
    head = p["head.weight"].transpose(1, 2)
    logits = torch.baddbmm(p["head.bias"].unsqueeze(1), features, head)
    log_probs = torch.log_softmax(logits, dim=-1)
    loss = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
    # ∂(Σ_b L_b)/∂logits = softmax - onehot(y), over n images per task
    d_log_probs = torch.zeros_like(log_probs).scatter_(-1, y.unsqueeze(-1), -1.0 / n)
    d_logits = torch._log_softmax_backward_data(d_log_probs, log_probs, -1, log_probs.dtype)
    g["head.bias"].copy_(d_logits.sum(1))
    g["head.weight"].copy_(torch.bmm(features.transpose(1, 2), d_logits).transpose(1, 2))
    d = torch.bmm(d_logits, head.transpose(1, 2)).transpose(0, 1).reshape(h.shape)
    for b in reversed(range(learner.n_blocks)):
        if attention is not None and b == learner.attn_block - 1:
            d = _attention_backward(g, attention, d)
        d = _block_backward(learner, g, b, saved[b], d, tasks)
    return loss, grad


def _block_forward(
    learner: GroupedLearner, p: dict[str, torch.Tensor], b: int, h: torch.Tensor, tasks: int
) -> tuple[torch.Tensor, ...]:
    """conv -> BatchNorm (the batch's statistics) -> max-pool -> ReLU, as Conv4Learner._stage;
    returns what the backward needs, the block's output last."""
    weight, gamma = p[f"block{b}.conv.weight"].flatten(0, 1), p[f"block{b}.bn.weight"].flatten()
    conv = F.conv2d(h, weight, p[f"block{b}.conv.bias"].flatten(), padding=1, groups=tasks)
    normed, mean, invstd = torch.native_batch_norm(
        conv,
        gamma,
        p[f"block{b}.bn.bias"].flatten(),
        None,
        None,
        True,
        0.0,
        learner.bn_eps,
    )
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(normed, [2, 2], [2, 2])
    return h, weight, conv, gamma, mean, invstd, normed, indices, torch.relu(pooled)


def _block_backward(
    learner: GroupedLearner,
    g: dict[str, torch.Tensor],
    b: int,
    record: tuple[torch.Tensor, ...],
    d: torch.Tensor,
    tasks: int,
) -> torch.Tensor:
    """The block's gradients into ``g``; returns the gradient at its input (block 0: None)."""
    h, weight, conv, gamma, mean, invstd, normed, indices, out = record
    d = torch.ops.aten.threshold_backward(d, out, 0)
    d = torch.ops.aten.max_pool2d_with_indices_backward(
        d, normed, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
    )
    d, d_gamma, d_beta = torch.ops.aten.native_batch_norm_backward(
        d,
        conv,
        gamma,
        None,
        None,
        mean,
        invstd,
        True,
        learner.bn_eps,
        [True, True, True],
    )
    g[f"block{b}.bn.weight"].copy_(d_gamma.view(tasks, -1))
    g[f"block{b}.bn.bias"].copy_(d_beta.view(tasks, -1))
    d_h, d_weight, d_bias = torch.ops.aten.convolution_backward(
        d,
        h,
        weight,
        [weight.shape[0]],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        tasks,
        [b > 0, True, True],
    )
    g[f"block{b}.conv.weight"].copy_(d_weight.view(g[f"block{b}.conv.weight"].shape))
    g[f"block{b}.conv.bias"].copy_(d_bias.view(tasks, -1))
    return d_h


def _attention_forward(
    learner: GroupedLearner, p: dict[str, torch.Tensor], h: torch.Tensor, n: int
) -> tuple:
    """The cross-attention on a small autograd graph of its own: the block's output and the
    attention's slices of θ as leaves."""
    with torch.enable_grad():
        leaves = {name: p[name].detach().requires_grad_() for name in _ATTN}
        h = h.detach().requires_grad_()
        return h, leaves, learner._cross_attend(leaves, h, n)


def _attention_backward(
    g: dict[str, torch.Tensor], attention: tuple, d: torch.Tensor
) -> torch.Tensor:
    h, leaves, out = attention
    grads = torch.autograd.grad(out, (h, *leaves.values()), d)
    for name, value in zip(_ATTN, grads[1:], strict=True):
        g[name].copy_(value)
    return grads[0]
