"""ResNet-12, the few-shot literature's standard deeper learner, as a pure function of θ.

Four residual blocks (Oreshkin et al. 2018, Lee et al. 2019 "MetaOptNet"), each three 3x3
convolutions with BatchNorm, LeakyReLU(0.1) after the first two, a 1x1 convolution with
BatchNorm as the shortcut, LeakyReLU after the sum and a 2x2 max-pool; channels 64-160-320-640;
global average pooling and a linear head. Convolutions have no bias (BatchNorm follows).
BatchNorm, task batching, the cross-attention and partial adaptation work as for Conv-4
(:mod:`attnopt.models.base`). DropBlock, which some papers add, is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnopt.models.base import HEAD, linear_head
from attnopt.models.grouped import GroupedLearner, ungroup
from attnopt.models.learner import feature_size

CHANNELS = (64, 160, 320, 640)
SLOPE = 0.1  # LeakyReLU's negative slope


def resnet12_channels(width: int) -> tuple[int, int, int, int]:
    """Channels of the four blocks for ``--width`` (the first block's): 64 -> 64-160-320-640."""
    return (width, width * 5 // 2, width * 5, width * 10)


class ResNet12Learner(GroupedLearner):
    """ResNet-12: ``logits = learner(theta, x)``.

    Args:
        in_channels, n_class, image_size, bn_eps, cross_attention, amp_dtype, attn_block,
            adapt: as for :class:`attnopt.models.learner.Conv4Learner`.
        channels: the four blocks' widths (64-160-320-640; smaller for tests). The
            cross-attention after block b has block b's width.
    """

    def __init__(
        self,
        in_channels: int,
        n_class: int,
        image_size: int,
        channels: tuple[int, ...] = CHANNELS,
        bn_eps: float = 1e-3,
        cross_attention: bool = False,
        amp_dtype: torch.dtype | None = None,
        attn_block: int = 3,
        adapt: str = "all",
    ) -> None:
        super().__init__(n_class, cross_attention, attn_block, amp_dtype, adapt)
        if len(channels) != 4:
            raise ValueError(f"ResNet-12 has 4 blocks, got {len(channels)} widths")
        feature_size(image_size)  # four 2x2 max-pools need at least 16x16 images
        self.in_channels, self.image_size = in_channels, image_size
        self.channels, self.bn_eps = tuple(channels), bn_eps
        blocks, c_in = [], in_channels
        for b, c in enumerate(channels):
            shapes = []
            for i, conv_in in ((1, c_in), (2, c), (3, c)):
                shapes += [
                    (f"block{b}.conv{i}.weight", (c, conv_in, 3, 3)),
                    (f"block{b}.bn{i}.weight", (c,)),
                    (f"block{b}.bn{i}.bias", (c,)),
                ]
            shapes += [
                (f"block{b}.shortcut.conv.weight", (c, c_in, 1, 1)),
                (f"block{b}.shortcut.bn.weight", (c,)),
                (f"block{b}.shortcut.bn.bias", (c,)),
            ]
            blocks.append(shapes)
            c_in = c
        head = [("head.weight", (n_class, c_in)), ("head.bias", (n_class,))]
        width = channels[attn_block - 1] if 1 <= attn_block <= 4 else 0
        self._set_layout(blocks, head, width)

    def _plain_init(self) -> torch.Tensor:
        """PyTorch's default initialisation of :func:`resnet12_module` (global RNG)."""
        return nn.utils.parameters_to_vector(resnet12_module(self).parameters()).detach()

    def _stage(
        self, stage: str, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        if stage == HEAD:  # global average pooling, then the linear layer
            features = ungroup(h.mean((2, 3)), p["head.bias"].shape[0], p["head.weight"].dtype)
            return linear_head(p, features)
        block = stage  # "block{b}"

        def conv_bn(x: torch.Tensor, conv: str, norm: str, padding: int) -> torch.Tensor:
            x = self._conv(x, p[f"{block}.{conv}.weight"], None, padding)
            return self._batch_norm(
                x, p[f"{block}.{norm}.weight"], p[f"{block}.{norm}.bias"], n_support, bn
            )

        out = F.leaky_relu(conv_bn(h, "conv1", "bn1", 1), SLOPE)
        out = F.leaky_relu(conv_bn(out, "conv2", "bn2", 1), SLOPE)
        out = conv_bn(out, "conv3", "bn3", 1) + conv_bn(h, "shortcut.conv", "shortcut.bn", 0)
        # leaky_relu(max_pool(x)) == max_pool(leaky_relu(x)) (monotone); pooling first is cheaper
        return F.leaky_relu(F.max_pool2d(out, 2), SLOPE)


class _Block(nn.Module):
    """One residual block as ``nn.Module``s (train-mode BatchNorm, no running statistics)."""

    def __init__(self, c_in: int, c: int, eps: float) -> None:
        super().__init__()

        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=eps, track_running_stats=False)

        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, padding=1, bias=False), bn()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), bn()
        self.conv3, self.bn3 = nn.Conv2d(c, c, 3, padding=1, bias=False), bn()
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, bias=False), bn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), SLOPE)
        out = F.leaky_relu(self.bn2(self.conv2(out)), SLOPE)
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.max_pool2d(F.leaky_relu(out, SLOPE), 2)


def resnet12_module(learner: ResNet12Learner) -> nn.Sequential:
    """The ``nn.Module`` that a plain ``learner`` computes; ``parameters()`` in θ's order."""
    layers: list[nn.Module] = []
    c_in = learner.in_channels
    for c in learner.channels:
        layers.append(_Block(c_in, c, learner.bn_eps))
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, learner.n_class)]
    return nn.Sequential(*layers)
