"""Meta-testing: mean query accuracy over episodes with its 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnopt.adapt import adapt_tasks, query_logits_tasks
from attnopt.checkpoint import check_compatible, load_checkpoint
from attnopt.compilation import check_compiler, compile_model
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.episodes import EVAL_SEED, TEST_STREAM, EpisodeSampler
from attnopt.data.imageset import ImageSet
from attnopt.models import FewShotModel, build_model


@dataclass(frozen=True)
class EvalResult:
    """Mean accuracy (percent) over ``episodes`` N-way K-shot episodes and its 95% CI."""

    accuracy: float
    ci95: float
    episodes: int
    n_class: int
    n_shot: int
    loss: float = float("nan")  # mean query cross-entropy

    def summary(self) -> str:
        return (
            f"{self.accuracy:.2f}% ± {self.ci95:.2f}% (95% CI, {self.episodes} episodes, "
            f"{self.n_class}-way {self.n_shot}-shot)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_interval(accuracies: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval (1.96 · sample std / √n), in percent."""
    acc = accuracies.double() * 100.0
    n = acc.numel()
    half = 1.96 * acc.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return acc.mean().item(), half


def evaluate(
    model: FewShotModel,
    sampler: EpisodeSampler,
    config: Config,
    episodes: int,
    device: torch.device,
    desc: str = "eval",
) -> EvalResult:
    """Adapt to ``episodes`` episodes of ``sampler`` and score the query sets.

    ``config.eval_batch`` episodes (by default 20 on a GPU, 1 on the CPU) are adapted
    together; the result does not depend on it (tasks never interact), only the speed does.
    """
    per_batch = config.eval_batch or (20 if device.type == "cuda" else 1)
    accuracies, losses = [], []
    was_training = model.training
    model.eval()
    with (
        torch.no_grad(),
        tqdm(
            total=episodes, desc=desc, unit="ep", leave=False, mininterval=0.5, disable=None
        ) as bar,
    ):
        for start in range(0, episodes, per_batch):
            indices = range(start, min(start + per_batch, episodes))
            ep = sampler.episodes(indices, device)
            theta = adapt_tasks(
                model.learner,
                model.metalearner,
                ep.support_x,
                ep.support_y,
                config.epoch,
                config.batch_size,
            )
            logits = query_logits_tasks(model.learner, theta, ep.support_x, ep.query_x, config.bn)
            accuracies.append((logits.argmax(-1) == ep.query_y).float().mean(1))
            losses.append(
                F.cross_entropy(logits.flatten(0, 1), ep.query_y.flatten(), reduction="none")
            )
            bar.update(len(indices))
    model.train(was_training)
    mean, ci = confidence_interval(torch.cat(accuracies).cpu())
    loss = torch.cat(losses).mean().item()
    return EvalResult(mean, ci, episodes, config.n_class, config.n_shot, loss)


def load_trained(path: str, config: Config, in_channels: int, device: torch.device) -> FewShotModel:
    """The model stored in checkpoint ``path``, checked against ``config``."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, config, in_channels, path)
    model = build_model(config, in_channels)
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def test_checkpoint(
    path: str, config: Config, device: torch.device, test_set: ImageSet | None = None
) -> EvalResult:
    """Evaluate checkpoint ``path`` on ``config.episode_test`` episodes of the test split."""
    if config.compile:
        check_compiler(device)  # before the test set is decoded
    test_set = test_set if test_set is not None else load_split(config, "test")
    sampler = EpisodeSampler(
        test_set, config.n_class, config.n_shot, config.n_eval, EVAL_SEED, TEST_STREAM
    )
    model = load_trained(path, config, test_set.channels, device)
    if config.compile:
        compile_model(model)
    return evaluate(model, sampler, config, config.episode_test, device, "test")
