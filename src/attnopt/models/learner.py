"""Conv-4 base learner as a pure function of one flat parameter vector θ.

Four blocks of conv 3x3 (32 filters, padding 1) -> BatchNorm -> ReLU -> max-pool 2, then a
linear layer to N logits (Ravi & Larochelle 2017, after Vinyals et al. 2016). θ is sliced
into views, never copied into ``nn.Parameter``s, so one learner serves both the inner loop
(gradients at a detached θ) and the meta-objective (logits at a θ that carries the graph).

With ``cross_attention=True`` (MLAL's base-learner, ``--attention learner|both``) the feature
map after block 3 attends to the support set of its episode (see :meth:`Conv4Learner.forward`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

N_BLOCKS = 4


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor inside θ: its name, shape and offset."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def feature_size(image_size: int) -> int:
    """Side of the feature map after four 2x2 max-pools (floor division, as nn.MaxPool2d)."""
    for _ in range(N_BLOCKS):
        image_size //= 2
    if image_size < 1:
        raise ValueError("images must be at least 16x16 pixels for four 2x2 max-pools")
    return image_size


class Conv4Learner(nn.Module):
    """The learner: ``logits = learner(theta, x)``.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        n_class: N, the number of logits.
        image_size: side of the square input images.
        width: filters per conv layer (32 in the paper).
        bn_eps: BatchNorm epsilon (``--bn-eps``).
        cross_attention: add MLAL's support-set cross-attention after a conv block.
        attn_block: the block (1-4) after which the cross-attention sits (3 in MLAL).
        amp_dtype: run the conv blocks (convolution, normalisation, ReLU, pooling) in this
            dtype (``--amp bf16``); θ, the cross-attention, the head and the loss stay fp32.

    The module's own parameters are meta-parameters that the inner loop does not adapt: only
    ``attn_scale`` (per-channel, zero-initialised) when ``cross_attention`` is on.
    """

    def __init__(
        self,
        in_channels: int,
        n_class: int,
        image_size: int,
        width: int = 32,
        bn_eps: float = 1e-3,
        cross_attention: bool = False,
        amp_dtype: torch.dtype | None = None,
        attn_block: int = 3,
    ) -> None:
        super().__init__()
        if not 1 <= attn_block <= N_BLOCKS:
            raise ValueError(f"attn_block must be in 1..{N_BLOCKS}, got {attn_block}")
        self.amp_dtype, self.attn_block = amp_dtype, attn_block
        self.in_channels, self.n_class, self.image_size = in_channels, n_class, image_size
        self.width, self.bn_eps, self.cross_attention = width, bn_eps, cross_attention
        side = feature_size(image_size)
        shapes: list[tuple[str, tuple[int, ...]]] = []
        c_in = in_channels
        for b in range(N_BLOCKS):
            shapes += [
                (f"block{b}.conv.weight", (width, c_in, 3, 3)),
                (f"block{b}.conv.bias", (width,)),
                (f"block{b}.bn.weight", (width,)),
                (f"block{b}.bn.bias", (width,)),
            ]
            c_in = width
        shapes += [("head.weight", (n_class, width * side * side)), ("head.bias", (n_class,))]
        if cross_attention:  # after the plain layout, so shared coordinates keep their offsets
            shapes += [("attn.norm.weight", (width,)), ("attn.norm.bias", (width,))]
            shapes += [
                (f"attn.{w}.weight", (width, width)) for w in ("query", "key", "value", "out")
            ]
            # y = x + attn_scale ⊙ W_O·Attn(...): a meta-parameter, zero at first, so the untrained
            # model is exactly the plain one during the whole inner loop (∂L/∂θ_attn = 0).
            self.attn_scale = nn.Parameter(torch.zeros(width))
        self.specs: tuple[ParamSpec, ...] = ()
        offset = 0
        for name, shape in shapes:
            self.specs += (ParamSpec(name, shape, offset),)
            offset += math.prod(shape)
        self.num_params = offset

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ (*tasks, P) as named parameter tensors (*tasks, *shape)."""
        lead = theta.shape[:-1]
        return {
            s.name: theta[..., s.offset : s.offset + s.numel].view(*lead, *s.shape)
            for s in self.specs
        }

    def init_theta(self) -> torch.Tensor:
        """PyTorch's default initialisation of the equivalent ``nn.Module``s, as a flat vector.

        Draws from the global torch RNG (seeded by ``--seed``); the plain coordinates are drawn
        first, so they are the same with and without cross-attention.
        """
        parts = [nn.utils.parameters_to_vector(reference_module(self).parameters()).detach()]
        if self.cross_attention:
            parts += [torch.ones(self.width), torch.zeros(self.width)]  # LayerNorm
            for _ in range(4):  # W_Q, W_K, W_V, W_O as nn.Linear(width, width, bias=False)
                parts.append(nn.Linear(self.width, self.width, bias=False).weight.detach().ravel())
        return torch.cat(parts)

    def forward(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        n_support: int | None = None,
        bn: str = "support",
    ) -> torch.Tensor:
        """Logits (n, N) for images ``x`` (n, C, H, W) under θ (P,); or, for B tasks at once,
        logits (B, n, N) for images (B, n, C, H, W) under θ (B, P), task b's images under θ_b.

        The first ``n_support`` images of each task are its support set (all of them when
        None); the rest are query images. Support images provide the cross-attention keys
        and values, and with ``bn="support"`` the BatchNorm statistics, so a query image's
        logits depend on its task's support set and itself only. ``bn="transductive"``
        normalises the query images with their own batch statistics instead.
        """
        if theta.dim() == 1:
            return self.forward(theta[None], x[None], n_support, bn)[0]
        p = self.unflatten(theta)
        n_support = x.shape[1] if n_support is None else n_support
        x = _to_grouped(x)
        for b in range(N_BLOCKS):
            x = self._block(p, b, x, n_support, bn)
            if self.cross_attention and b == self.attn_block - 1:
                x = self._cross_attend(p, x, n_support)
        tasks, n = theta.shape[0], x.shape[0]
        # (n, B·C, s, s) -> (B, n, C·s·s), flattened in (C, s, s) order as nn.Flatten does
        features = x.reshape(n, tasks, -1).transpose(0, 1).to(theta.dtype)
        head = p["head.weight"].transpose(1, 2)  # (B, C·s·s, N)
        return torch.baddbmm(p["head.bias"].unsqueeze(1), features, head)

    def loss_and_grad(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy L_t of each task at its θ, and the gradient ∇_t, cut from the
        meta-graph: the inner loop's step (support mini-batch) before the meta-learner's update.

        theta: (B, P); x: (B, n, C, H, W); y: (B, n). Returns loss (B,) and grad (B, P).
        θ is detached first: the paper treats ∇_t and L_t as constants for the meta-gradient
        (first-order approximation), which also frees this step's activations at once.
        ``torch.func`` computes the gradient even under ``torch.no_grad`` (evaluation).
        """

        def total_loss(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self(t, x)
            per_image = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            per_task = per_image.view(y.shape).mean(1)
            # tasks are independent, so ∂(Σ_b L_b)/∂θ_b = ∂L_b/∂θ_b: every task's own gradient
            return per_task.sum(), per_task

        grads, loss = torch.func.grad(total_loss, has_aux=True)(theta.detach())
        return loss.detach(), grads.detach()

    def _block(
        self, p: dict[str, torch.Tensor], b: int, x: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        weight, bias = p[f"block{b}.conv.weight"], p[f"block{b}.conv.bias"]
        tasks = weight.shape[0]
        # one grouped convolution carries all tasks: group g = task g's channels and filters
        with torch.autocast(
            x.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=bool(self.amp_dtype)
        ):
            x = F.conv2d(x, weight.flatten(0, 1), bias.flatten(), padding=1, groups=tasks)
        x = self._batch_norm(
            x, p[f"block{b}.bn.weight"].flatten(), p[f"block{b}.bn.bias"].flatten(), n_support, bn
        )
        # relu(max_pool(x)) == max_pool(relu(x)); pooling first makes the ReLU 4x cheaper
        return F.relu(F.max_pool2d(x, 2))

    def _batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        """BatchNorm of (n, B·C, H, W): per task and channel, over images and positions."""
        if n_support == x.shape[0]:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.bn_eps)
        if bn == "transductive":  # support and query each with their own statistics
            return torch.cat(
                [
                    F.batch_norm(part, None, None, weight, bias, training=True, eps=self.bn_eps)
                    for part in (x[:n_support], x[n_support:])
                ]
            )
        # two passes (mean, then mean squared deviation): torch.var_mean's one-pass kernel is
        # not vectorised for a reduction that keeps the innermost (channels-last) dimension,
        # and took 20x as long at 84x84
        support = x[:n_support]
        # statistics in θ's precision (bf16 activations under --amp bf16: fp32)
        mean = support.mean((0, 2, 3), dtype=torch.promote_types(x.dtype, weight.dtype))
        var = (support - mean.view(1, -1, 1, 1)).square().mean((0, 2, 3))
        scale = weight * torch.rsqrt(var + self.bn_eps)
        shift = bias - mean * scale
        # in x's precision: bf16 activations stay bf16 under --amp bf16
        scale, shift = scale.to(x.dtype).view(1, -1, 1, 1), shift.to(x.dtype).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)

    def _attention_inputs(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, n_support: int
    ) -> tuple[torch.Tensor, ...]:
        """Tokens (B, n·HW, C), and q (B, n·HW, C), k and v (B, n_support·HW, C) per task."""
        n, _, h, w = x.shape
        tasks = p["attn.norm.weight"].shape[0]
        # (n, B·C, h, w) -> (B, n·h·w, C): task b's tokens, images in order
        tokens = x.permute(0, 2, 3, 1).reshape(n, h * w, tasks, self.width)
        # in θ's precision (fp32 also under --amp bf16)
        tokens = tokens.permute(2, 0, 1, 3).reshape(tasks, n * h * w, self.width)
        tokens = tokens.to(p["attn.norm.weight"].dtype)
        normed = F.layer_norm(tokens, (self.width,))  # LN(x) with each task's affine:
        normed = torch.addcmul(
            p["attn.norm.bias"].unsqueeze(1), normed, p["attn.norm.weight"].unsqueeze(1)
        )
        support = normed[:, : n_support * h * w]  # keys/values: the support set only
        return (
            tokens,
            normed @ p["attn.query.weight"].transpose(1, 2),
            support @ p["attn.key.weight"].transpose(1, 2),
            support @ p["attn.value.weight"].transpose(1, 2),
        )

    def _cross_attend(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, n_support: int
    ) -> torch.Tensor:
        """y = x + γ ⊙ W_O · softmax(q kᵀ / √d) v with q = LN(x) W_Q, k = LN(s) W_K, v = LN(s) W_V,
        s the support set's tokens (MLAL's base-learner attention, with the softmax)."""
        n, _, h, w = x.shape
        tokens, q, k, v = self._attention_inputs(p, x, n_support)
        attended = F.scaled_dot_product_attention(q, k, v)
        y = tokens + self.attn_scale * (attended @ p["attn.out.weight"].transpose(1, 2))
        tasks = y.shape[0]
        # (B, n·h·w, C) -> (n, h, w, B, C) in memory = (n, B·C, h, w) channels-last
        y = y.view(tasks, n, h, w, self.width).permute(1, 2, 3, 0, 4).to(x.dtype).contiguous()
        return y.view(n, h, w, tasks * self.width).permute(0, 3, 1, 2)

    def cross_attention_weights(
        self, theta: torch.Tensor, x: torch.Tensor, n_support: int
    ) -> torch.Tensor:
        """Attention of every image's positions over the support positions (after block
        ``attn_block``).

        theta (P,), x (n, C, H, W). Returns (n, HW, n_support, HW): for image i and position j,
        a distribution over the positions of the support images. For inspection and plots.
        """
        p = self.unflatten(theta[None])
        x = _to_grouped(x[None])
        for b in range(self.attn_block):
            x = self._block(p, b, x, n_support, "support")
        _, q, k, _ = self._attention_inputs(p, x, n_support)
        weights = torch.softmax(q[0] @ k[0].T / math.sqrt(self.width), dim=-1)
        hw = x.shape[2] * x.shape[3]
        return weights.reshape(x.shape[0], hw, n_support, hw)


def _to_grouped(x: torch.Tensor) -> torch.Tensor:
    """Images of B tasks (B, n, C, H, W) -> (n, B·C, H, W) in channels-last memory.

    Task b's image i is row i, channels b·C .. b·C + C - 1: the layout of a grouped convolution
    with one group per task. Channels-last lets oneDNN (CPU) and cuDNN pick their fastest
    kernels. For one task this is a view of an episode's (channels-last) images.
    """
    tasks, n, c, h, w = x.shape
    grouped = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, tasks * c).permute(0, 3, 1, 2)
    return grouped.contiguous(memory_format=torch.channels_last)


def reference_module(learner: Conv4Learner) -> nn.Sequential:
    """The ``nn.Module`` that a plain ``learner`` computes (train-mode BatchNorm, no running
    stats). Its ``parameters()`` come in θ's order, so ``parameters_to_vector`` maps it onto θ.
    """
    layers: list[nn.Module] = []
    c_in = learner.in_channels
    for _ in range(N_BLOCKS):
        layers += [
            nn.Conv2d(c_in, learner.width, 3, padding=1),
            nn.BatchNorm2d(learner.width, eps=learner.bn_eps, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c_in = learner.width
    side = feature_size(learner.image_size)
    layers += [nn.Flatten(), nn.Linear(learner.width * side * side, learner.n_class)]
    return nn.Sequential(*layers)
