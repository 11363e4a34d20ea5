"""The activation layout of the built-in convolutional learners (Conv-4, ResNet-12).

B tasks travel together as one batch of grouped convolutions: activations are (n, B·C, H, W)
in channels-last memory, task b's image i in row i, channels b·C .. b·C + C - 1, and every
convolution has one group per task. BatchNorm statistics are per task and channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnopt.models.base import Learner
from attnopt.models.support_norm import support_batch_norm


class GroupedLearner(Learner):
    """A :class:`Learner` whose stages work on grouped activations (n, B·C, H, W)."""

    bn_eps: float

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        return to_grouped(x)

    def _conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
    ) -> torch.Tensor:
        """Every task's convolution (weight (B, C_out, C_in, k, k), bias (B, C_out) or None) as
        one grouped convolution, in ``amp_dtype`` when it is set (``--amp bf16``)."""
        tasks = weight.shape[0]
        with self._amp(x.device):
            flat_bias = None if bias is None else bias.flatten()
            return F.conv2d(x, weight.flatten(0, 1), flat_bias, padding=padding, groups=tasks)

    def _batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_support: int, bn: str
    ) -> torch.Tensor:
        """BatchNorm of (n, B·C, H, W) with weight, bias (B, C): per task and channel, over
        images and positions; the query images (after ``n_support``) with the support's
        statistics, or their own (``bn="transductive"``)."""
        return support_batch_norm(x, weight.flatten(), bias.flatten(), self.bn_eps, n_support, bn)

    def _tokens(self, h: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        n, channels, height, width = h.shape
        tasks, c = channels // self.attn_width, self.attn_width
        # (n, B·C, h, w) -> (B, n·h·w, C): task b's tokens, images in order
        tokens = h.permute(0, 2, 3, 1).reshape(n, height * width, tasks, c)
        tokens = tokens.permute(2, 0, 1, 3).reshape(tasks, n * height * width, c)
        # in θ's precision (fp32 also under --amp bf16)
        return tokens.to(dtype), height * width

    def _from_tokens(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        n, _, height, width = like.shape
        tasks, c = y.shape[0], self.attn_width
        # (B, n·h·w, C) -> (n, h, w, B, C) in memory = (n, B·C, h, w) channels-last
        y = y.view(tasks, n, height, width, c).permute(1, 2, 3, 0, 4).to(like.dtype).contiguous()
        return y.view(n, height, width, tasks * c).permute(0, 3, 1, 2)


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """Images of B tasks (B, n, C, H, W) -> (n, B·C, H, W) in channels-last memory.

    Task b's image i is row i, channels b·C .. b·C + C - 1: the layout of a grouped convolution
    with one group per task. Channels-last lets oneDNN (CPU) and cuDNN pick their fastest
    kernels. The strides are channels-last's exactly, also for one channel (grayscale, one
    task), where NCHW has the same memory: convolutions lay their output out by their input's
    strides, and an NCHW max-pool took 11x as long as a channels-last one on glyphs.
    """
    tasks, n, c, h, w = x.shape
    grouped = x.new_empty(n, h, w, tasks * c)  # (n, h, w, B·C) in memory
    grouped.view(n, h, w, tasks, c).copy_(x.permute(1, 3, 4, 0, 2))
    return grouped.permute(0, 3, 1, 2)


def ungroup(h: torch.Tensor, tasks: int, dtype: torch.dtype) -> torch.Tensor:
    """Grouped features (n, B·F) -> (B, n, F) in ``dtype``."""
    return h.reshape(h.shape[0], tasks, -1).transpose(0, 1).to(dtype)
