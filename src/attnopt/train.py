"""Meta-training: episodes -> inner loop -> query loss -> Adam step on the meta-learner.

A run folder (``--save``) receives config.json, metrics.csv, train.log, ckpts/last.pt,
ckpts/best.pt (best validation accuracy) and, at the end, test.json for the best checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnopt import distributed
from attnopt.adapt import adapt_tasks, query_logits_tasks
from attnopt.checkpoint import (
    check_compatible,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from attnopt.compilation import check_compiler, compile_model
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.augment import make_augmentation
from attnopt.data.episodes import EVAL_SEED, VAL_STREAM, Episode, EpisodeSampler
from attnopt.data.prefetch import prefetch
from attnopt.distributed import Processes
from attnopt.errors import UserError
from attnopt.evaluate import EvalResult, evaluate, test_checkpoint
from attnopt.fileio import (
    check_writable,
    os_error_message,
    remove_stale_temps,
    rows_until,
    write_csv,
    write_json,
)
from attnopt.gatelog import GateLog
from attnopt.guard import DivergenceGuard
from attnopt.models import build_model
from attnopt.plot import plot_run
from attnopt.report import write_report
from attnopt.runtime import printable, seed_everything, use_deterministic_algorithms
from attnopt.tblog import TensorBoardLog, summary_writer

log = logging.getLogger("attnopt")

# Train rows: running means since the last row, the learning rate, meta-training episodes/s
# (validation excluded) and time since the start; val rows: loss, accuracy and its 95% CI.
METRIC_FIELDS = (
    "episode",
    "split",
    "loss",
    "accuracy",
    "ci95",
    "lr",
    "episodes_per_s",
    "elapsed_s",
)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_val: float
    best_episode: int
    test: EvalResult
    train_seconds: float  # the meta-training loop, validation included


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(printable(self.format(record), sys.stdout))
        except Exception:
            self.handleError(record)


class _Metrics:
    """metrics.csv, rewritten atomically on every append so it is never half-written."""

    def __init__(self, path: Path, keep_until: int | None, tensorboard: bool = False) -> None:
        self.path = path
        self.rows = rows_until(path, keep_until)  # resume: drop rows after the checkpoint
        self.tensorboard = TensorBoardLog(path.parent) if tensorboard else None

    def append(self, episode: int, split: str, **values: object) -> None:
        row = {"episode": episode, "split": split, **values}
        self.rows.append({k: _fmt(row.get(k, "")) for k in METRIC_FIELDS})
        write_csv(self.path, METRIC_FIELDS, self.rows)
        if self.tensorboard is not None:
            self.tensorboard.add(split, episode, values)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _attach_log_file(run_dir: Path) -> list[logging.Handler]:
    try:  # odd bytes in a path named in a message must not break logging
        file = logging.FileHandler(
            run_dir / "train.log", encoding="utf-8", errors="backslashreplace"
        )
    except OSError as e:
        raise UserError(os_error_message("write", run_dir / "train.log", e)) from None
    handlers: list[logging.Handler] = [_TqdmHandler(), file]
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


def train(config: Config) -> TrainResult | None:
    """Meta-train as ``config`` says, then test the best checkpoint on the test split.

    Under torchrun only rank 0 writes the run folder and returns a result; the others
    return None.
    """
    if config.tensorboard:
        summary_writer()  # a missing package is an error before anything starts
    procs, device = distributed.start(config.cpu, config.meta_batch)
    if config.deterministic:
        use_deterministic_algorithms(device)
    try:
        if config.compile:
            check_compiler(device)  # before any data is read
        if not procs.is_main:
            _train(config, procs, device, None)
            return None
        run_dir = Path(config.save)
        # Fail before any work when the run cannot be saved; clear what a killed run left.
        check_writable(run_dir, "the run folder (--save)")
        check_writable(run_dir / "ckpts", "the checkpoint folder")
        remove_stale_temps(run_dir)
        remove_stale_temps(run_dir / "ckpts")
        handlers = _attach_log_file(run_dir)
        try:
            return _train(config, procs, device, run_dir)
        finally:
            for h in handlers:
                log.removeHandler(h)
                h.close()
    except RuntimeError as e:
        if config.deterministic and "deterministic" in str(e):
            raise UserError(
                f"--deterministic: {str(e).strip().splitlines()[0]}; run without --deterministic"
            ) from None
        raise
    finally:
        distributed.stop()


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]: the episode count passed it."""
    return after // every > before // every


def _train(
    config: Config, procs: Processes, device: torch.device, run_dir: Path | None
) -> TrainResult | None:
    """The meta-training loop; ``run_dir`` is None on processes other than rank 0."""
    seed_everything(config.seed)
    ckpt = load_checkpoint(config.resume) if config.resume else None  # before decoding data
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    train_sampler = EpisodeSampler(
        train_set, config.n_class, config.n_shot, config.n_eval, config.seed
    )
    val_sampler = EpisodeSampler(
        val_set, config.n_class, config.n_shot, config.n_eval, EVAL_SEED, VAL_STREAM
    )
    channels = train_set.channels
    augment = make_augmentation(config.augment, channels, config.image_size)  # training only
    model = build_model(config, channels).to(device)
    if config.compile:
        compile_model(model)
    learner, metalearner = model.learner, model.metalearner
    optimizer = torch.optim.Adam(model.param_groups(config.lr, config.attn_lr_scale))
    last = Path(config.save) / "ckpts" / "last.pt"
    guard = DivergenceGuard(
        model.parameters(), optimizer, config.grad_clip, config.max_bad_steps, last, procs
    )
    # running sums over the logging window: loss·tasks, correct-task fraction, tasks (kept
    # in checkpoints, so that a resumed run logs what the uninterrupted one would)
    window = torch.zeros(3, device=device)

    start, best_acc, best_episode = 0, -1.0, 0
    if ckpt is not None:
        check_compatible(ckpt, config, channels, config.resume)
        model.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is not None:
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as e:  # e.g. a checkpoint of an older version's parameter groups
                raise UserError(
                    f"cannot resume the optimizer state of {config.resume}: {e}"
                ) from None
        start, best_acc, best_episode = ckpt["episode"], ckpt["best_accuracy"], ckpt["best_episode"]
        restore_rng_states(ckpt.get("rng") or {"torch": ckpt["torch_rng"]})
        state = ckpt.get("train_state") or {}
        guard.load_state_dict(state.get("guard", {}))
        if "window" in state:
            window.copy_(state["window"])
        log.info("resumed from %s at episode %d", config.resume, start)
    main = run_dir is not None
    if main:
        ckpt_dir = run_dir / "ckpts"
        write_json(run_dir / "config.json", config.to_dict())
        keep_until = start if config.resume else None
        metrics = _Metrics(run_dir / "metrics.csv", keep_until, config.tensorboard)
        gates = GateLog(run_dir / "gates.csv", learner, keep_until)
        log.info(
            "meta-training %d-way %d-shot on %s (%d train classes), %d parameters in the "
            "learner, meta-batch %d%s, device %s",
            config.n_class,
            config.n_shot,
            train_set.source,
            len(train_set.class_names),
            learner.num_params,
            config.meta_batch,
            f" over {procs.world} processes" if procs.world > 1 else "",
            device.type,
        )

    def save(path: Path, episode: int) -> None:
        save_checkpoint(
            path,
            config=config,
            in_channels=channels,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            episode=episode,
            best_accuracy=best_acc,
            best_episode=best_episode,
            train_state={"window": window, "guard": guard.state_dict()},
        )

    t0 = time.perf_counter()
    window_t0 = t0  # start of the current logging window, validation time excluded
    bar = tqdm(
        total=config.episode,
        initial=start,
        desc="meta-train",
        unit="ep",
        mininterval=0.5,
        disable=None if main else True,  # no bar when the output is not a terminal (logs, CI)
    )
    firsts = range(start, config.episode, config.meta_batch)

    def meta_batch(first: int) -> Episode:
        return train_sampler.episodes(procs.share(first, config.meta_batch), device, augment)

    # On a GPU the next episodes are assembled while the current meta-update runs; on the CPU
    # a second thread only competes with torch's own threads (measured 38% slower).
    batches = prefetch(meta_batch, firsts) if device.type == "cuda" else map(meta_batch, firsts)
    for first, ep in zip(firsts, batches, strict=True):
        episode = first + config.meta_batch  # tasks seen after this meta-update
        log_now = _crossed(first, episode, config.log_freq) or episode >= config.episode
        theta = adapt_tasks(
            learner,
            metalearner,
            ep.support_x,
            ep.support_y,
            config.epoch,
            config.batch_size,
            on_step=gates.on_step if main and log_now else None,
        )
        logits = query_logits_tasks(learner, theta, ep.support_x, ep.query_x, config.bn)
        # the mean over the tasks of each task's mean query cross-entropy (equal-sized tasks)
        loss = F.cross_entropy(logits.flatten(0, 1), ep.query_y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(model.parameters(), procs)
        if guard.step(episode, loss):  # clips; skips a non-finite update
            tasks = ep.query_y.shape[0]
            correct = (logits.detach().argmax(-1) == ep.query_y).float().mean(1).sum()
            window += torch.stack((loss.detach() * tasks, correct, window.new_tensor(tasks)))
        bar.update(config.meta_batch)
        if log_now:
            loss_sum, acc_sum, count = distributed.sum_over_processes(window, procs).tolist()
            window.zero_()
            now = time.perf_counter()
            if main:
                gates.write(episode)
                nan = float("nan")  # every update of the window skipped
                mean_loss = loss_sum / count if count else nan
                mean_acc = 100.0 * acc_sum / count if count else nan
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.1f}%")
                log.info("episode %d  train loss %.4f  acc %.2f%%", episode, mean_loss, mean_acc)
                metrics.append(
                    episode=episode,
                    split="train",
                    loss=mean_loss,
                    accuracy=mean_acc,
                    lr=float(optimizer.param_groups[0]["lr"]),
                    episodes_per_s=count / (now - window_t0),
                    elapsed_s=now - t0,
                )
            window_t0 = now
        if main and (_crossed(first, episode, config.val_freq) or episode >= config.episode):
            val_t0 = time.perf_counter()
            val = evaluate(model, val_sampler, config, config.episode_val, device, "val")
            log.info("episode %d  val acc %s", episode, val.summary())
            metrics.append(
                episode=episode,
                split="val",
                loss=val.loss,
                accuracy=val.accuracy,
                ci95=val.ci95,
                elapsed_s=time.perf_counter() - t0,
            )
            if val.accuracy > best_acc:
                best_acc, best_episode = val.accuracy, episode
                save(ckpt_dir / "best.pt", episode)
            save(ckpt_dir / "last.pt", episode)
            window_t0 += time.perf_counter() - val_t0
    bar.close()
    if not main:
        return None
    metrics.close()
    if guard.skipped:
        log.warning("%d updates skipped: non-finite loss or meta-gradient", guard.skipped)
    train_seconds = time.perf_counter() - t0

    result = test_checkpoint(str(ckpt_dir / "best.pt"), config, device)
    write_json(
        run_dir / "test.json",
        {**result.to_dict(), "checkpoint": "ckpts/best.pt", "episode": best_episode},
    )
    log.info("best val accuracy %.2f%% at episode %d", best_acc, best_episode)
    plot_run(run_dir, device)
    write_report(run_dir)
    return TrainResult(run_dir, best_acc, best_episode, result, train_seconds)
