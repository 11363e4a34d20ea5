"""Meta-training: episodes -> inner loop -> query loss -> meta-update, with validation and
checkpoints. :func:`meta_train` reads top to bottom: set up the state, loop (meta-step, log,
validate and checkpoint), return. Testing, figures and the report come after it
(:mod:`attnopt.training.pipeline`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.augment import make_augmentation
from attnopt.data.episodes import Episode, EpisodeSampler
from attnopt.data.prefetch import prefetch
from attnopt.errors import Interrupted, UserError
from attnopt.models.build import FewShotModel, build_model
from attnopt.objective import EpisodeScore, InnerLoop, meta_update, score_episodes
from attnopt.runs import folder as runfolder
from attnopt.runs.log import RunLog
from attnopt.runtime.device import seed_everything
from attnopt.runtime.threads import governor
from attnopt.training import distributed
from attnopt.training.checkpoint import (
    PRETRAINED,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from attnopt.training.distributed import Processes
from attnopt.training.evaluation import eval_sampler, evaluate
from attnopt.training.guard import DivergenceGuard
from attnopt.training.pretrain import init_from_pretrained, pretrain_first

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
        self.optimizer = torch.optim.Adam(
            model.param_groups(config.lr, config.attn_lr_scale, config.init_lr_scale)
        )
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

    def set_learning_rate(self, config: Config) -> None:
        """``--lr`` on resume: the restored optimizer takes the new learning rate."""
        groups = self.model.param_groups(config.lr, config.attn_lr_scale, config.init_lr_scale)
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


class _Clock:
    """A run's wall time: since the start, in the current logging window (validation
    excluded) and since ckpts/last.pt was last written."""

    def __init__(self) -> None:
        self.start = self.window = self.saved = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def take_window(self) -> float:
        """Seconds of meta-training in the logging window that ends now."""
        now = time.perf_counter()
        seconds, self.window = now - self.window, now
        return seconds

    def exclude(self, since: float) -> None:
        """Leave the time since ``since`` (a validation) out of the logging window."""
        self.window += time.perf_counter() - since

    def saved_now(self) -> None:
        self.saved = time.perf_counter()

    def save_due(self, minutes: float) -> bool:
        return time.perf_counter() - self.saved >= 60 * minutes


class _Run:
    """What the steps of one meta-training run share (set up by :func:`_start`)."""

    def __init__(
        self,
        config: Config,
        procs: Processes,
        device: torch.device,
        run_log: RunLog,
        state: TrainingState,
        samplers: tuple[EpisodeSampler, EpisodeSampler],
    ) -> None:
        self.config, self.procs, self.device, self.run_log = config, procs, device, run_log
        self.state, (self.train_sampler, self.val_sampler) = state, samplers
        self.run_dir = Path(config.save)
        self.channels = self.train_sampler.imageset.channels
        self.inner = InnerLoop.of(config, training=True)
        self.clock = _Clock()
        self.threads = governor(device)
        self.val_seconds = float("nan")  # per validation episode, for the test's estimate
        if config.compile:
            from attnopt.runtime.compilation import (
                compile_model,  # torch.compile: only when asked for
            )

            compile_model(state.model)
        # training episodes only
        self.augment = make_augmentation(config.augment, self.channels, config.image_size)

    def batches(self, firsts: range) -> Iterator[Episode]:
        """The meta-batch of episodes starting at each of ``firsts`` (this process's share).
        On a GPU the next one is assembled while the current meta-update runs; on the CPU a
        second thread only competes with torch's own threads (measured 38% slower)."""

        def meta_batch(first: int) -> Episode:
            share = self.procs.share(first, self.config.meta_batch)
            return self.train_sampler.episodes(share, self.device, self.augment)

        return (
            prefetch(meta_batch, firsts) if self.device.type == "cuda" else map(meta_batch, firsts)
        )

    def meta_step(self, episodes: Episode, episode: int, record_gates: bool) -> None:
        """One meta-update; ``episode`` counts the tasks seen after it."""
        self.state.episode = episode
        gates = self.run_log.gate_recorder(record_gates)
        score = score_episodes(self.state.model, episodes, self.inner, gates)
        if meta_update(self.state.guard, score.loss, episode, self.procs):
            self.state.record(score)
        self.threads.tick()

    def log_window(self) -> None:
        lr = self.state.optimizer.param_groups[0]["lr"]
        loss, accuracy, tasks = self.state.take_window(self.procs)
        self.run_log.train(
            self.state.episode,
            loss,
            accuracy,
            tasks,
            lr,
            self.clock.take_window(),
            self.clock.elapsed(),
        )

    def save(self, name: str) -> None:
        """Write ckpts/``name`` (rank 0 only)."""
        if self.procs.is_main:
            save_checkpoint(
                self.run_dir / "ckpts" / name,
                config=self.config,
                in_channels=self.channels,
                model=self.state.model.state_dict(),
                **self.state.state_dict(),
            )
        self.clock.saved_now()

    def validate_and_checkpoint(self) -> None:
        """Validate (every process its share) and log it; write ckpts/best.pt when the
        accuracy is the best so far, and ckpts/last.pt."""
        since, state = time.perf_counter(), self.state
        val = evaluate(
            state.model,
            self.val_sampler,
            self.config,
            self.config.episode_val,
            self.device,
            "val",
            self.procs,
        )
        log.info("episode %d  val acc %s", state.episode, val.summary())
        self.run_log.row(
            state.episode,
            "val",
            loss=val.loss,
            accuracy=val.accuracy,
            ci95=val.ci95,
            elapsed_s=since - self.clock.start,
        )
        if val.accuracy > state.best_accuracy:
            state.best_accuracy, state.best_episode = val.accuracy, state.episode
            self.save("best.pt")
        self.save("last.pt")
        self.val_seconds = val.seconds_per_episode
        self.clock.exclude(since)

    def stop(self) -> None:
        """SIGINT/SIGTERM: save ckpts/last.pt and raise :class:`Interrupted`."""
        self.save("last.pt")
        last = self.run_dir / "ckpts" / "last.pt"
        log.info("interrupted at episode %d; saved %s", self.state.episode, last)
        raise Interrupted(self.state.episode, str(last))

    def finished(self) -> TrainedRun:
        skipped = self.state.guard.skipped
        if skipped:
            log.warning("%d updates skipped: non-finite loss or meta-gradient", skipped)
        return TrainedRun(
            self.run_dir,
            self.state.best_accuracy,
            self.state.best_episode,
            self.clock.elapsed(),
            self.val_seconds,
        )


def _start(
    config: Config, procs: Processes, device: torch.device, run_log: RunLog, overwrite: bool
) -> _Run:
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
    val_sampler = eval_sampler(val_set, config, "val")
    pretraining = config.pretrain and ckpt is None
    if pretraining:  # after the data's checks: a failed start leaves nothing
        config, ckpt = pretrain_first(config, procs, device)
        source = config.init
    if ckpt is None or ckpt["kind"] == PRETRAINED:
        model = build_model(config, train_set.channels)
        if ckpt is not None:
            init_from_pretrained(model, ckpt, config.init_head, source)
    else:
        model = model_from_checkpoint(ckpt, config, train_set.channels, source)
    state = TrainingState(model.place(device), config, device, procs)
    if pretraining:  # GPUs may round the processes' pre-trainings apart: rank 0's is the run's
        distributed.broadcast_from_main(model.metalearner.c_init, procs)
    if config.resume:
        state.load_state_dict(ckpt, config.resume)
        state.set_learning_rate(config)
    has_best = True
    if procs.is_main:
        has_best = runfolder.create(config, overwrite)
        keep_until = state.episode if config.resume else None
        run_log.open(Path(config.save), model.learner, keep_until, config.tensorboard)
        if config.resume:
            log.info("resumed from %s at episode %d", config.resume, state.episode)
            if config.lr != ckpt["config"].lr:
                log.info("learning rate %g (was %g)", config.lr, ckpt["config"].lr)
        elif config.init and ckpt["kind"] == PRETRAINED:
            log.info(
                "new run: c_I's features from %s (pre-trained %d epochs on %d classes), head %s",
                config.init, ckpt["episode"], len(ckpt.get("classes", ())), config.init_head,
            )  # fmt: skip
        elif config.init:
            log.info("new run from the weights of %s", config.init)
    if not distributed.all_processes(has_best, procs) and state.best_episode:
        log.warning("no ckpts/best.pt to continue from: the best is chosen among the rest")
        state.best_accuracy, state.best_episode = -1.0, 0
    log.info(
        "meta-training %d-way %d-shot on %s (%d train classes), %d parameters in the "
        "learner, meta-batch %d%s, device %s",
        config.n_class, config.n_shot, train_set.source, len(train_set.class_names),
        model.learner.num_params, config.meta_batch,
        f" over {procs.world} processes" if procs.world > 1 else "", device.type,
    )  # fmt: skip
    return _Run(config, procs, device, run_log, state, (train_sampler, val_sampler))


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
    run = _start(config, procs, device, run_log, overwrite)
    firsts = range(run.state.episode, config.episode, config.meta_batch)
    with StopOnSignal() as stop, run_log.progress(config.episode, run.state.episode) as bar:
        for first, episodes in zip(firsts, run.batches(firsts), strict=True):
            episode = first + config.meta_batch  # tasks seen after this meta-update
            end = episode >= config.episode
            log_now = _crossed(first, episode, config.log_freq) or end
            run.meta_step(episodes, episode, record_gates=log_now)
            bar.update(config.meta_batch)
            if log_now:
                run.log_window()
            if _crossed(first, episode, config.val_freq) or end:
                run.validate_and_checkpoint()
            elif run.clock.save_due(config.save_every):
                run.save("last.pt")
            if distributed.any_process(stop.requested, procs) and not end:
                run.stop()
    return run.finished()
