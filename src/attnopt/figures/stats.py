"""The numbers behind the figures of ``attnopt plot``, kept free of plotting (no matplotlib)
so they can be tested on their own.

Cross-attention: with N classes of K support images each, attention spread evenly over the
N·K support images puts 1/N of a query's attention on the K images of its own class; that
uniform share is what cross_attention.png compares every query against.

Gates: the layers' gates differ by a few percent of their value, which a plot of the values
cannot show; gates.png also draws each layer's deviation from the mean over the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# A mean same-class share within this fraction of the uniform share (e.g. 18-22% for
# 5-way) reads as uniform however many queries there are: it is too small to matter.
UNIFORM_TOLERANCE = 0.1


def support_image_shares(weights: torch.Tensor) -> torch.Tensor:
    """Share of each query's attention that lands on each support image.

    weights: (Q, HW, S, HW), every query position's distribution over the support positions
    (``Learner.cross_attention_weights``). Returns (Q, S): averaged over the query's
    positions, summed over the support image's positions; rows sum to 1.
    """
    return weights.sum(-1).mean(1)


def same_class_shares(
    shares: torch.Tensor, support_y: torch.Tensor, query_y: torch.Tensor
) -> torch.Tensor:
    """shares (Q, S) from :func:`support_image_shares` -> (Q,): the share of each query's
    attention on the support images of its own class."""
    same = support_y.unsqueeze(0) == query_y.unsqueeze(1)  # (Q, S)
    return (shares * same).sum(1)


@dataclass(frozen=True)
class ClassShare:
    """Same-class shares of many queries against the uniform share 1/N."""

    shares: torch.Tensor  # (Q,) in [0, 1]
    n_class: int

    @property
    def uniform(self) -> float:
        return 1.0 / self.n_class

    @property
    def mean(self) -> float:
        return self.shares.double().mean().item()

    @property
    def ci95(self) -> float:
        """Half-width of the normal 95% interval of the mean (0 for a single query). It treats
        the queries as independent, which those of one episode (one support set) are not
        quite: the tolerance of :attr:`verdict` covers the difference."""
        n = self.shares.numel()
        return 1.96 * self.shares.double().std().item() / math.sqrt(n) if n > 1 else 0.0

    @property
    def verdict(self) -> str:
        """'uniform' when the mean is within the 95% interval or within UNIFORM_TOLERANCE of
        1/N; otherwise 'own class' (above) or 'other classes' (below)."""
        gap = self.mean - self.uniform
        if abs(gap) <= max(self.ci95, UNIFORM_TOLERANCE * self.uniform):
            return "uniform"
        return "own class" if gap > 0 else "other classes"

    def sentence(self) -> str:
        """The verdict as one line for a figure title, with the numbers behind it."""
        numbers = f"{100 * self.mean:.1f}% ± {100 * self.ci95:.1f}%"
        uniform = f"1/N = {100 * self.uniform:.1f}%"
        if self.verdict == "uniform":
            return (
                "attention to the query's own class is indistinguishable from uniform: "
                f"{numbers} vs {uniform}"
            )
        ratio = f"{self.mean / self.uniform:.2g}× the uniform {uniform}"
        if self.verdict == "own class":
            return f"attention favours the query's own class: {numbers} = {ratio}"
        return f"attention avoids the query's own class: {numbers} = {ratio}"


def deviation_from_layer_mean(values: torch.Tensor) -> torch.Tensor:
    """values (..., L), one gate per learner layer -> each layer's deviation from the mean over
    the L layers, in percent of that mean (0 = the layer's gate equals the average)."""
    mean = values.mean(-1, keepdim=True)
    return 100 * (values / mean - 1)
