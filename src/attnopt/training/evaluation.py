"""Meta-testing: per-episode query accuracy and loss, their mean and 95% confidence interval.

Validation and test episodes depend only on the data, N, K, Q, the split and a fixed seed
(:func:`eval_sampler`), so two runs tested alike saw the same tasks, episode by episode.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.episodes import EVAL_SEED, TEST_STREAM, VAL_STREAM, EpisodeSampler
from attnopt.data.imageset import ImageSet
from attnopt.models.build import FewShotModel
from attnopt.objective import InnerLoop, score_episodes
from attnopt.runtime.threads import governor
from attnopt.training import distributed
from attnopt.training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger("attnopt")

STREAMS = {"val": VAL_STREAM, "test": TEST_STREAM}
PROGRESS_SECONDS = 60.0  # a progress line this often when no progress bar is shown


@dataclass(frozen=True)
class EvalResult:
    """Mean accuracy (percent) over ``episodes`` N-way K-shot episodes and its 95% CI.

    ``episode_accuracy`` and ``episode_loss`` hold each episode's query accuracy (fraction)
    and mean query cross-entropy, in episode order; ``seconds`` the wall time it took and
    ``seconds_per_episode`` an episode's time after the first batch (which, under
    ``--compile``, includes compiling), for estimates of longer evaluations.
    """

    accuracy: float
    ci95: float
    episodes: int
    n_class: int
    n_shot: int
    loss: float = float("nan")  # mean query cross-entropy
    episode_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    episode_loss: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    seconds: float = float("nan")
    seconds_per_episode: float = float("nan")
    episodes_id: str = ""  # fingerprint of the episodes (EpisodeSampler.identity)

    def summary(self) -> str:
        return (
            f"{self.accuracy:.2f}% ± {self.ci95:.2f}% (95% CI, {self.episodes} episodes, "
            f"{self.n_class}-way {self.n_shot}-shot)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary figures (the per-episode values go to a CSV file of their own)."""
        keys = ("accuracy", "ci95", "episodes", "n_class", "n_shot", "loss")
        return {k: getattr(self, k) for k in keys}


def confidence_interval(accuracies: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval (1.96 · sample std / √n), in percent."""
    acc = accuracies.double() * 100.0
    n = acc.numel()
    half = 1.96 * acc.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return acc.mean().item(), half


def eval_sampler(imageset: ImageSet, config: Config, split: str) -> EpisodeSampler:
    """The fixed validation or test episodes of ``imageset`` for ``config``'s N, K and Q."""
    return EpisodeSampler(
        imageset, config.n_class, config.n_shot, config.n_eval, EVAL_SEED, STREAMS[split]
    )


class _Progress:
    """A progress bar on a terminal; otherwise a log line every PROGRESS_SECONDS."""

    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="ep",
            leave=False,
            mininterval=0.5,
            disable=True if quiet else None,
        )
        self.lines = not quiet and self.bar.disable
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        now = time.perf_counter()
        if self.lines and now - self.last >= PROGRESS_SECONDS and self.done < self.total:
            rate = self.done / (now - self.start)
            left = (self.total - self.done) / rate
            log.info(
                "%s: %d/%d episodes (%.2f episodes/s, about %s left)",
                self.desc,
                self.done,
                self.total,
                rate,
                duration(left),
            )
            self.last = now

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 10 min'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def evaluate(
    model: FewShotModel,
    sampler: EpisodeSampler,
    config: Config,
    episodes: int,
    device: torch.device,
    desc: str = "eval",
    procs: distributed.Processes | None = None,
) -> EvalResult:
    """Adapt to ``episodes`` episodes of ``sampler`` and score the query sets.

    ``config.eval_batch`` episodes (by default 20 on a GPU, 4 on the CPU) are adapted
    together; tasks never interact, so only the speed and the rounding depend on it.
    Under torchrun (``procs``) every process takes its share of the episodes and all of them
    return the whole result, so no process waits while another evaluates alone.
    """
    procs = procs or distributed.Processes()
    per_batch = config.eval_batch or (20 if device.type == "cuda" else 4)
    inner = InnerLoop.of(config)
    share = procs.share_of(episodes)
    scores = torch.zeros(2, len(share), device=device)  # accuracy, loss per episode
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    progress = _Progress(episodes, desc, quiet=not procs.is_main)
    threads = governor(device)
    warm = (start, 0)  # the clock when the first batch ended, and its episodes
    with torch.no_grad():
        for at in range(0, len(share), per_batch):
            indices = share[at : at + per_batch]
            score = score_episodes(model, sampler.episodes(indices, device), inner)
            scores[:, at : at + len(indices)] = torch.stack((score.task_accuracy, score.task_loss))
            progress.update(len(indices) * procs.world)
            threads.tick()
            if at == 0 and len(share) > len(indices):
                warm = (time.perf_counter(), len(indices))
    progress.close()
    end = time.perf_counter()
    model.train(was_training)
    accuracy, loss = distributed.gather_episodes(scores, episodes, procs).cpu().double()
    mean, ci = confidence_interval(accuracy)
    return EvalResult(
        mean,
        ci,
        episodes,
        config.n_class,
        config.n_shot,
        loss.mean().item(),
        accuracy.numpy(),
        loss.numpy(),
        end - start,
        (end - warm[0]) / max((len(share) - warm[1]) * procs.world, 1),
        sampler.identity(episodes),
    )


def load_trained(path: str, config: Config, in_channels: int, device: torch.device) -> FewShotModel:
    """The model stored in checkpoint ``path``, checked against ``config``."""
    return model_from_checkpoint(load_checkpoint(path), config, in_channels, path).place(device)


def test_checkpoint(
    path: str,
    config: Config,
    device: torch.device,
    test_set: ImageSet | None = None,
    procs: distributed.Processes | None = None,
) -> EvalResult:
    """Evaluate checkpoint ``path`` on ``config.episode_test`` episodes of the test split."""
    from attnopt.runtime.compilation import (  # torch.compile: on demand
        check_compiler,
        compile_model,
    )

    if config.compile:
        check_compiler(device)  # before the test set is decoded
    test_set = test_set if test_set is not None else load_split(config, "test")
    model = load_trained(path, config, test_set.channels, device)
    if config.compile:
        compile_model(model)
    sampler = eval_sampler(test_set, config, "test")
    return evaluate(model, sampler, config, config.episode_test, device, "test", procs)
