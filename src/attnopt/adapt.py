"""The inner loop: support set -> adapted parameters θ_T. Used by train, test and predict alike.

Tasks of a meta-batch are adapted together, not in a Python loop: the learner carries all tasks
in one grouped convolution (each task its own θ) and the meta-learner treats every coordinate
of every task as one row of its shared LSTM. One task is a meta-batch of one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnopt.models.base import Learner
from attnopt.models.metalearner import MetaLearner, MetaState


def adapt(
    learner: Learner,
    metalearner: MetaLearner,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    epochs: int,
    batch_size: int,
    on_step: Callable[[int, torch.Tensor, MetaState], None] | None = None,
) -> torch.Tensor:
    """Run the learned optimizer on the support sets of B tasks at once.

    support_x: (B, N*K, C, H, W); support_y: (B, N*K) labels in 0..N-1.
    ``epochs`` passes over each support set in mini-batches of ``batch_size`` give
    T = epochs * ceil(N*K / batch_size) steps. Returns θ_T (B, P), differentiable with respect
    to the meta-parameters (c_I, the LSTM, the gates, attention) when grad mode is on.
    With partial adaptation (``learner.adapt``) the meta-learner updates the adapted
    coordinates θ_a only; the others stay at θ_0 = c_I, and the learner's frozen leading stages
    run once per support mini-batch. ``on_step(t, θ_t, state)`` is called after every step
    (for inspection and plots) with the whole θ_t (B, P) and the state of the adapted rows.
    One task is a meta-batch of one: ``support_x[None], support_y[None]`` in, ``θ_T[0]`` out.
    """
    tasks, n = support_x.shape[:2]
    adapted, frozen = learner.split(metalearner.c_init)
    # θ_0 = c_I for every task (a copy, not an expanded view: one memory layout for every
    # step, so torch.compile (--compile) traces the step once); the frozen part is shared
    theta = adapted.repeat(tasks, 1)
    frozen = None if frozen is None else frozen.expand(tasks, -1)
    state = metalearner.initial_state((tasks,))
    prefix: dict[int, torch.Tensor | None] = {}  # frozen stages' output per mini-batch
    t = 0
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            batch = slice(start, start + batch_size)
            x, y = support_x[:, batch], support_y[:, batch]
            if start not in prefix:
                prefix[start] = learner.frozen_features(frozen, x)
            loss, grad = learner.loss_and_grad(theta, x, y, frozen, prefix[start])
            theta, state = metalearner.step(grad, loss, theta, state)
            t += 1
            if on_step is not None:
                on_step(t, learner.merge(theta, frozen), state)
    return learner.merge(theta, frozen)


def query_logits(
    learner: Learner,
    theta: torch.Tensor,
    support_x: torch.Tensor,
    query_x: torch.Tensor,
    bn: str = "support",
) -> torch.Tensor:
    """Logits (B, M, N) of B adapted learners θ (B, P) on their query images (B, M, C, H, W).

    bn="support": BatchNorm uses each support set's statistics under θ, so each query image is
    classified on its own. bn="transductive": the query batch's own statistics.
    One task: ``theta[None], support_x[None], query_x[None]`` in, logits ``[0]`` (M, N) out.
    """
    n = support_x.shape[1]
    return learner(theta, torch.cat((support_x, query_x), dim=1), n_support=n, bn=bn)[:, n:]
