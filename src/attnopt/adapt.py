"""The inner loop: support set -> adapted parameters θ_T. Used by train, test and predict alike."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad_and_value

from attnopt.models.learner import Conv4Learner
from attnopt.models.metalearner import MetaLearner, MetaState


def support_loss_and_grad(
    learner: Conv4Learner, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy L_t at θ and its gradient ∇_t, both cut from the meta-graph.

    θ is detached first: the paper treats ∇_t and L_t as constants for the meta-gradient
    (first-order approximation), which also frees this step's activations at once.
    ``torch.func`` computes the gradient even under ``torch.no_grad`` (evaluation).
    """

    def loss_fn(t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(learner(t, x), y)

    grad, loss = grad_and_value(loss_fn)(theta.detach())
    return loss.detach(), grad.detach()


def adapt(
    learner: Conv4Learner,
    metalearner: MetaLearner,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    epochs: int,
    batch_size: int,
    on_step: Callable[[int, torch.Tensor, MetaState], None] | None = None,
) -> torch.Tensor:
    """Run the learned optimizer on one task's support set.

    support_x: (N*K, C, H, W); support_y: (N*K,) labels in 0..N-1.
    ``epochs`` passes over the support set in mini-batches of ``batch_size`` give
    T = epochs * ceil(N*K / batch_size) steps. Returns θ_T (P,), differentiable with respect
    to the meta-parameters (c_I, the LSTM, the gates, attention) when grad mode is on.
    ``on_step(t, θ_t, state)`` is called after every step (for inspection and plots).
    """
    theta = metalearner.c_init  # θ_0 = c_I
    state = metalearner.initial_state()
    n = support_x.shape[0]
    t = 0
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            x, y = support_x[start : start + batch_size], support_y[start : start + batch_size]
            loss, grad = support_loss_and_grad(learner, theta, x, y)
            theta, state = metalearner.step(grad, loss, theta, state)
            t += 1
            if on_step is not None:
                on_step(t, theta, state)
    return theta


def query_logits(
    learner: Conv4Learner,
    theta: torch.Tensor,
    support_x: torch.Tensor,
    query_x: torch.Tensor,
    bn: str = "support",
) -> torch.Tensor:
    """Logits (M, N) of the adapted learner on query images (M, C, H, W).

    bn="support": BatchNorm uses the support set's statistics under θ, so each query image is
    classified on its own. bn="transductive": the query batch's own statistics.
    """
    n = support_x.shape[0]
    return learner(theta, torch.cat((support_x, query_x)), n_support=n, bn=bn)[n:]
