"""Conv-4 base learner as a pure function of one flat parameter vector θ.

Four blocks of conv 3x3 (32 filters, padding 1) -> BatchNorm -> ReLU -> max-pool 2, then a
linear layer to N logits (Ravi & Larochelle 2017, after Vinyals et al. 2016). θ is sliced
into views, never copied into ``nn.Parameter``s, so one learner serves both the inner loop
(gradients at a detached θ) and the meta-objective (logits at a θ that carries the graph).
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


class Conv4Learner:
    """The learner: ``logits = learner(theta, x)``.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        n_class: N, the number of logits.
        image_size: side of the square input images.
        width: filters per conv layer (32 in the paper).
        bn_eps: BatchNorm epsilon (``--bn-eps``).
    """

    def __init__(
        self, in_channels: int, n_class: int, image_size: int, width: int = 32, bn_eps: float = 1e-3
    ) -> None:
        self.in_channels, self.n_class, self.image_size = in_channels, n_class, image_size
        self.width, self.bn_eps = width, bn_eps
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
        self.specs: tuple[ParamSpec, ...] = ()
        offset = 0
        for name, shape in shapes:
            self.specs += (ParamSpec(name, shape, offset),)
            offset += math.prod(shape)
        self.num_params = offset

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ (P,) as named parameter tensors."""
        return {s.name: theta[s.offset : s.offset + s.numel].view(s.shape) for s in self.specs}

    def init_theta(self) -> torch.Tensor:
        """PyTorch's default initialisation of the equivalent ``nn.Module`` as a flat vector.

        Draws from the global torch RNG (seeded by ``--seed``).
        """
        return nn.utils.parameters_to_vector(reference_module(self).parameters()).detach()

    def __call__(
        self, theta: torch.Tensor, x: torch.Tensor, n_stat: int | None = None
    ) -> torch.Tensor:
        """Logits (B, N) for images ``x`` (B, C, H, W).

        BatchNorm normalises with the statistics of the first ``n_stat`` images of the batch
        (all of them when None). Passing ``cat([support, query])`` with ``n_stat=len(support)``
        normalises the query with the support set's statistics, so a query image's logits do
        not depend on the other query images.
        """
        p = self.unflatten(theta)
        # channels-last lets oneDNN (CPU) and cuDNN pick their fastest convolution kernels
        x = x.contiguous(memory_format=torch.channels_last)
        for b in range(N_BLOCKS):
            x = F.conv2d(x, p[f"block{b}.conv.weight"], p[f"block{b}.conv.bias"], padding=1)
            x = self._batch_norm(x, p[f"block{b}.bn.weight"], p[f"block{b}.bn.bias"], n_stat)
            # relu(max_pool(x)) == max_pool(relu(x)); pooling first makes the ReLU 4x cheaper
            x = F.relu(F.max_pool2d(x, 2))
        return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])

    def _batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_stat: int | None
    ) -> torch.Tensor:
        if n_stat is None or n_stat == x.shape[0]:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.bn_eps)
        var, mean = torch.var_mean(x[:n_stat], dim=(0, 2, 3), unbiased=False)
        scale = weight * torch.rsqrt(var + self.bn_eps)
        shift = bias - mean * scale
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


def reference_module(learner: Conv4Learner) -> nn.Sequential:
    """The ``nn.Module`` that ``learner`` computes (train-mode BatchNorm, no running stats).

    Its ``parameters()`` come in θ's order, so ``parameters_to_vector`` maps it onto θ.
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
