"""One meta-step: an episode batch -> query loss, per-task accuracy and logits; and the
meta-update that follows it. Training, evaluation and the throughput benchmark all call
these two functions, so what is measured is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.data.episodes import Episode
from attnopt.models.build import FewShotModel
from attnopt.models.metalearner import MetaState
from attnopt.training import distributed
from attnopt.training.guard import DivergenceGuard


@dataclass(frozen=True)
class InnerLoop:
    """How the learner is adapted: ``epochs`` passes over the support set in mini-batches of
    ``batch_size``, then the query set scored with ``bn`` BatchNorm statistics."""

    epochs: int
    batch_size: int
    bn: str = "support"

    @classmethod
    def of(cls, config: Config, training: bool = False) -> InnerLoop:
        """The inner loop of validation and test, or of meta-training (``--bn-train``)."""
        bn = config.bn_train if training and config.bn_train != "same" else config.bn
        return cls(config.epoch, config.batch_size, bn)


@dataclass(frozen=True)
class EpisodeScore:
    """What one meta-step computes for a batch of B tasks.

    loss: the mean query cross-entropy over all query images (differentiable: the
    meta-objective); task_loss, task_accuracy: (B,) per task, detached; logits: (B, M, N).
    """

    loss: torch.Tensor
    task_loss: torch.Tensor
    task_accuracy: torch.Tensor
    logits: torch.Tensor


def score_episodes(
    model: FewShotModel,
    episodes: Episode,
    inner: InnerLoop,
    on_step: Callable[[int, torch.Tensor, MetaState], None] | None = None,
) -> EpisodeScore:
    """Adapt the learner to each task's support set, then score its query set.

    ``episodes`` holds B tasks (support_x (B, N*K, C, H, W), ...). Under ``torch.no_grad``
    (evaluation) nothing is kept for a meta-gradient. ``on_step`` sees every inner step.
    """
    theta = adapt(
        model.learner,
        model.metalearner,
        episodes.support_x,
        episodes.support_y,
        inner.epochs,
        inner.batch_size,
        on_step,
    )
    logits = query_logits(model.learner, theta, episodes.support_x, episodes.query_x, inner.bn)
    y = episodes.query_y
    # the mean over the tasks of each task's mean query cross-entropy (equal-sized tasks)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    with torch.no_grad():
        per_image = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        task_loss = per_image.view(y.shape).mean(1)
        task_accuracy = (logits.argmax(-1) == y).float().mean(1)
    return EpisodeScore(loss, task_loss, task_accuracy, logits.detach())


def meta_update(
    guard: DivergenceGuard, loss: torch.Tensor, episode: int, procs: distributed.Processes
) -> bool:
    """Backpropagate the meta-objective ``loss``, average the meta-gradient over the torchrun
    processes, clip it and take Adam's step (all through ``guard``, which skips an update
    whose loss or gradient is not finite). Returns whether the update was taken."""
    guard.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(guard.parameters, procs)
    return guard.step(episode, loss)
