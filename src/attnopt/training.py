"""Meta-training: episodes -> inner loop -> query loss -> meta-update, with validation and
checkpoints. :func:`meta_train` reads top to bottom: set up the state, loop (meta-step, log,
validate and checkpoint), return. Testing, figures and the report come after it
(:mod:`attnopt.pipeline`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from attnopt import distributed, runfolder
from attnopt.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.augment import make_augmentation
from attnopt.data.episodes import Episode, EpisodeSampler
from attnopt.data.prefetch import prefetch
from attnopt.distributed import Processes
from attnopt.errors import Interrupted, UserError
from attnopt.evaluation import EvalResult, eval_sampler, evaluate
from attnopt.guard import DivergenceGuard
from attnopt.models import FewShotModel, build_model
from attnopt.objective import EpisodeScore, InnerLoop, meta_update, score_episodes
from attnopt.runlog import RunLog
from attnopt.runtime import seed_everything

log = logging.getLogger("attnopt")


@dataclass(frozen=True)
class TrainedRun:
    """What meta-training leaves: the run folder (its ckpts/best.pt is the model to test)."""

    run_dir: Path
    best_accuracy: float
    best_episode: int
    seconds: float  # the meta-training loop, validation included
    val_seconds_per_episode: float  # how long a validation episode took (test time estimate)


class TrainingState:
    """Everything meta-training changes and a resumed run needs: the episode counter, the
    best validation so far, the logging window, the divergence guard, Adam's state and the
    random generators. Checkpoints store :meth:`state_dict`; resume calls
    :meth:`load_state_dict`."""

    def __init__(
        self, model: FewShotModel, config: Config, device: torch.device, procs: Processes
    ) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.param_groups(config.lr, config.attn_lr_scale))
        last = Path(config.save) / "ckpts" / "last.pt"
        self.guard = DivergenceGuard(
            model.parameters(), self.optimizer, config.grad_clip, config.max_bad_steps, last, procs
        )
        self.episode, self.best_accuracy, self.best_episode = 0, -1.0, 0
        # running sums over the logging window: loss·tasks, correct-task fraction, tasks
        self.window = torch.zeros(3, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "episode": self.episode,
            "best_accuracy": self.best_accuracy,
            "best_episode": self.best_episode,
            "train_state": {"window": self.window, "guard": self.guard.state_dict()},
            "rng": rng_states(),
        }

    def load_state_dict(self, ckpt: dict[str, Any], path: str) -> None:
        if ckpt["optimizer"] is not None:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as e:  # e.g. a checkpoint of an older version's parameter groups
                raise UserError(f"cannot resume the optimizer state of {path}: {e}") from None
        self.episode = ckpt["episode"]
        self.best_accuracy, self.best_episode = ckpt["best_accuracy"], ckpt["best_episode"]
        restore_rng_states(ckpt.get("rng") or {"torch": ckpt["torch_rng"]})
        state = ckpt.get("train_state") or {}
        self.guard.load_state_dict(state.get("guard", {}))
        if "window" in state:
            self.window.copy_(state["window"])

    def set_learning_rate(self, lr: float, attn_lr_scale: float) -> None:
        """``--lr`` on resume: the restored optimizer takes the new learning rate."""
        groups = self.model.param_groups(lr, attn_lr_scale)
        for group, wanted in zip(self.optimizer.param_groups, groups, strict=True):
            group["lr"] = wanted["lr"]

    def record(self, score: EpisodeScore) -> None:
        """Add a taken meta-update's loss and accuracy to the logging window."""
        tasks = score.task_accuracy.shape[0]
        self.window += torch.stack(
            (score.loss.detach() * tasks, score.task_accuracy.sum(), self.window.new_tensor(tasks))
        )

    def take_window(self, procs: Processes) -> tuple[float, float, float]:
        """Mean loss, accuracy (percent) and tasks of the window over all processes; empties
        it. NaN when every update of the window was skipped."""
        loss_sum, acc_sum, count = distributed.sum_over_processes(self.window, procs).tolist()
        self.window.zero_()
        if not count:
            return float("nan"), float("nan"), 0.0
        return loss_sum / count, 100.0 * acc_sum / count, count


class StopOnSignal:
    """SIGINT (Ctrl-C) or SIGTERM asks training to stop at the end of the current meta-update,
    after saving ckpts/last.pt; a second SIGINT stops at once. Installed only in the main
    thread (Python delivers signals there)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s: stopping after this meta-update and saving ckpts/last.pt (Ctrl-C again to "
            "stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]: the episode count passed it."""
    return after // every > before // every


def _start(
    config: Config, procs: Processes, device: torch.device, run_log: RunLog, overwrite: bool
) -> tuple[TrainingState, EpisodeSampler, EpisodeSampler, Path]:
    """Everything the loop needs, in an order that fails early: the run folder is checked
    before any data is read and created only once everything else has worked."""
    if procs.is_main:
        runfolder.check(config, overwrite)
    seed_everything(config.seed)
    source = config.resume or config.init
    ckpt = load_checkpoint(source) if source else None  # before decoding data
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    train_sampler = EpisodeSampler(
        train_set, config.n_class, config.n_shot, config.n_eval, config.seed
    )
    if ckpt is None:
        model = build_model(config, train_set.channels)
    else:
        model = model_from_checkpoint(ckpt, config, train_set.channels, source)
    state = TrainingState(model.to(device), config, device, procs)
    if config.resume:
        state.load_state_dict(ckpt, config.resume)
        state.set_learning_rate(config.lr, config.attn_lr_scale)
    run_dir = Path(config.save)
    if procs.is_main:
        has_best = runfolder.create(config, overwrite)
        keep_until = state.episode if config.resume else None
        run_log.open(run_dir, model.learner, keep_until, config.tensorboard)
        if config.resume:
            log.info("resumed from %s at episode %d", config.resume, state.episode)
            if ckpt["optimizer"] and config.lr != ckpt["config"].lr:
                log.info("learning rate %g (was %g)", config.lr, ckpt["config"].lr)
        elif config.init:
            log.info("new run from the weights of %s", config.init)
    else:
        has_best = True
    if not distributed.any_process(has_best, procs) and state.best_episode:
        log.warning(
            "no ckpts/best.pt to continue from: the best is chosen among the remaining validations"
        )
        state.best_accuracy, state.best_episode = -1.0, 0
    log.info(
        "meta-training %d-way %d-shot on %s (%d train classes), %d parameters in the "
        "learner, meta-batch %d%s, device %s",
        config.n_class,
        config.n_shot,
        train_set.source,
        len(train_set.class_names),
        model.learner.num_params,
        config.meta_batch,
        f" over {procs.world} processes" if procs.world > 1 else "",
        device.type,
    )
    return state, train_sampler, eval_sampler(val_set, config, "val"), run_dir


def _save(state: TrainingState, config: Config, channels: int, path: Path) -> None:
    save_checkpoint(
        path,
        config=config,
        in_channels=channels,
        model=state.model.state_dict(),
        **state.state_dict(),
    )


def _validate_and_checkpoint(
    state: TrainingState,
    sampler: EpisodeSampler,
    config: Config,
    device: torch.device,
    procs: Processes,
    run_log: RunLog,
    elapsed: float,
) -> EvalResult:
    """Validate (every process its share), log it, and on rank 0 write ckpts/best.pt when
    the accuracy is the best so far, and ckpts/last.pt."""
    val = evaluate(state.model, sampler, config, config.episode_val, device, "val", procs)
    log.info("episode %d  val acc %s", state.episode, val.summary())
    run_log.row(
        state.episode, "val", loss=val.loss, accuracy=val.accuracy, ci95=val.ci95, elapsed_s=elapsed
    )
    channels = sampler.imageset.channels
    if val.accuracy > state.best_accuracy:
        state.best_accuracy, state.best_episode = val.accuracy, state.episode
        if procs.is_main:
            _save(state, config, channels, Path(config.save) / "ckpts" / "best.pt")
    if procs.is_main:
        _save(state, config, channels, Path(config.save) / "ckpts" / "last.pt")
    return val


def meta_train(
    config: Config,
    procs: Processes,
    device: torch.device,
    run_log: RunLog,
    overwrite: bool = False,
) -> TrainedRun:
    """Meta-train as ``config`` says, validating every ``--val-freq`` episodes (and at the
    end) and keeping ckpts/best.pt and ckpts/last.pt in the run folder. Raises
    :class:`Interrupted` after saving when SIGINT/SIGTERM asks it to stop."""
    state, train_sampler, val_sampler, run_dir = _start(config, procs, device, run_log, overwrite)
    channels, last = train_sampler.imageset.channels, run_dir / "ckpts" / "last.pt"
    model, inner = state.model, InnerLoop.of(config)
    if config.compile:
        from attnopt.compilation import compile_model  # torch.compile: only when asked for

        compile_model(model)
    augment = make_augmentation(config.augment, channels, config.image_size)  # training only
    t0 = window_t0 = saved_t = time.perf_counter()
    val_seconds = float("nan")
    firsts = range(state.episode, config.episode, config.meta_batch)

    def meta_batch(first: int) -> Episode:
        return train_sampler.episodes(procs.share(first, config.meta_batch), device, augment)

    # On a GPU the next episodes are assembled while the current meta-update runs; on the CPU
    # a second thread only competes with torch's own threads (measured 38% slower).
    batches = prefetch(meta_batch, firsts) if device.type == "cuda" else map(meta_batch, firsts)
    with StopOnSignal() as stop, run_log.progress(config.episode, state.episode) as bar:
        for first, episodes in zip(firsts, batches, strict=True):
            state.episode = first + config.meta_batch  # tasks seen after this meta-update
            end = state.episode >= config.episode
            log_now = _crossed(first, state.episode, config.log_freq) or end
            score = score_episodes(model, episodes, inner, run_log.gate_recorder(log_now))
            if meta_update(state.guard, score.loss, state.episode, procs):
                state.record(score)
            bar.update(config.meta_batch)
            if log_now:
                now = time.perf_counter()
                lr = state.optimizer.param_groups[0]["lr"]
                run_log.train(
                    state.episode, *state.take_window(procs), lr, now - window_t0, now - t0
                )
                window_t0 = now
            if _crossed(first, state.episode, config.val_freq) or end:
                val_t0 = time.perf_counter()
                val = _validate_and_checkpoint(
                    state, val_sampler, config, device, procs, run_log, val_t0 - t0
                )
                val_seconds = val.seconds / max(val.episodes, 1)
                saved_t = time.perf_counter()
                window_t0 += saved_t - val_t0
            elif procs.is_main and time.perf_counter() - saved_t >= 60 * config.save_every:
                _save(state, config, channels, last)
                saved_t = time.perf_counter()
            if distributed.any_process(stop.requested, procs) and not end:
                if procs.is_main:
                    _save(state, config, channels, last)
                    log.info("interrupted at episode %d; saved %s", state.episode, last)
                raise Interrupted(state.episode, str(last))
    if state.guard.skipped:
        log.warning("%d updates skipped: non-finite loss or meta-gradient", state.guard.skipped)
    return TrainedRun(
        run_dir, state.best_accuracy, state.best_episode, time.perf_counter() - t0, val_seconds
    )
