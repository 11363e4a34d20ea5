"""Conv-4 base learner as a pure function of one flat parameter vector θ.

Four blocks of conv 3x3 (32 filters, padding 1) -> BatchNorm -> ReLU -> max-pool 2, then a
linear layer to N logits (Ravi & Larochelle 2017, after Vinyals et al. 2016). θ is sliced
into views, never copied into ``nn.Parameter``s, so one learner serves both the inner loop
(gradients at a detached θ) and the meta-objective (logits at a θ that carries the graph).

With ``cross_attention=True`` (MLAL's base-learner, ``--attention learner|both``) the feature
map after block 3 attends to the support set of its episode (see :meth:`Learner.forward`).
The learner contract itself (stages, partial adaptation, the cross-attention) is in
:mod:`attnopt.models.base`; ResNet-12 is :mod:`attnopt.models.resnet12`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from attnopt.models import inner_grad
from attnopt.models.backend import Backend
from attnopt.models.base import HEAD, Learner, ParamSpec, linear_head
from attnopt.models.grouped import GroupedLearner, ungroup

N_BLOCKS = 4
__all__ = ["Conv4Learner", "Learner", "ParamSpec", "feature_size", "reference_module"]


def feature_size(image_size: int) -> int:
    """Side of the feature map after four 2x2 max-pools (floor division, as nn.MaxPool2d)."""
    for _ in range(N_BLOCKS):
        image_size //= 2
    if image_size < 1:
        raise ValueError("images must be at least 16x16 pixels for four 2x2 max-pools")
    return image_size


class Conv4Learner(GroupedLearner):
    """The paper's learner: ``logits = learner(theta, x)``.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        n_class: N, the number of logits.
        image_size: side of the square input images.
        width: filters per conv layer (32 in the paper, 64 in ProtoNet/MAML comparisons).
        bn_eps: BatchNorm epsilon (``--bn-eps``).
        cross_attention: add MLAL's support-set cross-attention after a conv block.
        amp_dtype: run the conv blocks (convolution, normalisation, ReLU, pooling) in this
            dtype (``--amp bf16``); θ, the cross-attention, the head and the loss stay fp32.
        attn_block: the block (1-4) after which the cross-attention sits (3 in MLAL).
        adapt: which coordinates the inner loop adapts (``all``, ``last`` or ``head``).
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
        adapt: str = "all",
    ) -> None:
        super().__init__(n_class, cross_attention, attn_block, amp_dtype, adapt)
        self.in_channels, self.image_size = in_channels, image_size
        self.width, self.bn_eps = width, bn_eps
        side = feature_size(image_size)
        blocks, c_in = [], in_channels
        for b in range(N_BLOCKS):
            blocks.append(
                [
                    (f"block{b}.conv.weight", (width, c_in, 3, 3)),
                    (f"block{b}.conv.bias", (width,)),
                    (f"block{b}.bn.weight", (width,)),
                    (f"block{b}.bn.bias", (width,)),
                ]
            )
            c_in = width
        head = [("head.weight", (n_class, width * side * side)), ("head.bias", (n_class,))]
        self._set_layout(blocks, head, width)

    def _plain_init(self) -> torch.Tensor:
        """PyTorch's default initialisation of the equivalent ``nn.Module``s (global RNG)."""
        return nn.utils.parameters_to_vector(reference_module(self).parameters()).detach()

    def use_backend(self, backend: Backend) -> None:
        """:meth:`Learner.use_backend`; the written-out inner step covers ``--adapt all``
        without ``--amp`` only (bf16 autocast and partial adaptation take ``torch.func``)."""
        covered = self.adapt == "all" and self.amp_dtype is None
        kernels = backend.inner_step_by_kernels and covered
        self.backend = dataclasses.replace(backend, inner_step_by_kernels=kernels)

    def loss_and_grad(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        frozen: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Learner.loss_and_grad`, from the kernels themselves
        (:mod:`attnopt.models.inner_grad`) when the backend says so."""
        if self.backend.inner_step_by_kernels:
            return inner_grad.loss_and_grad(self, theta, x, y)
        return super().loss_and_grad(theta, x, y, frozen, features)

    def _stage(
        self, stage: str, p: dict[str, torch.Tensor], h: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        if stage == HEAD:
            # (n, B·C, s, s) -> (B, n, C·s·s), flattened in (C, s, s) order as nn.Flatten does
            features = ungroup(h, p["head.bias"].shape[0], p["head.weight"].dtype)
            return linear_head(p, features)
        block = stage  # "block{b}"
        h = self._conv(h, p[f"{block}.conv.weight"], p[f"{block}.conv.bias"], padding=1)
        h = self._batch_norm(h, p[f"{block}.bn.weight"], p[f"{block}.bn.bias"], n_support, bn)
        # relu(max_pool(x)) == max_pool(relu(x)); pooling first makes the ReLU 4x cheaper
        return F.relu(F.max_pool2d(h, 2))


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
