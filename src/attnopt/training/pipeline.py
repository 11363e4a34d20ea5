"""A whole training run, as ``attnopt train`` and :func:`attnopt.train` do it: meta-train,
test the best checkpoint (test.json and test_episodes.csv), then draw the figures and the
report.

Under torchrun every process meta-trains and tests its share; rank 0 writes the files and,
once the processes have parted, draws the figures alone (nobody waits for it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from attnopt.config import Config
from attnopt.errors import UserError
from attnopt.runs import records
from attnopt.runs.log import QuietLog, RunLog
from attnopt.runtime.device import use_deterministic_algorithms
from attnopt.training import distributed
from attnopt.training.evaluation import EvalResult, duration, test_checkpoint
from attnopt.training.loop import TrainedRun, meta_train

log = logging.getLogger("attnopt")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_val: float
    best_episode: int
    test: EvalResult
    train_seconds: float  # the meta-training loop, validation included


def test_best(
    trained: TrainedRun, config: Config, device: torch.device, procs: distributed.Processes
) -> EvalResult:
    """Test ckpts/best.pt of a finished run and, on rank 0, write test.json beside it."""
    best = trained.run_dir / "ckpts" / "best.pt"
    estimate = trained.val_seconds_per_episode * config.episode_test
    log.info(
        "testing %s (episode %d) on %d test episodes%s; --episode-test sets how many",
        best,
        trained.best_episode,
        config.episode_test,
        f", about {duration(estimate)} at the validation speed" if estimate == estimate else "",
    )
    result = test_checkpoint(str(best), config, device, procs=procs)
    if procs.is_main:
        records.write_test_record(
            trained.run_dir / "test.json", result, best, trained.best_episode, trained.run_dir
        )
    log.info("best val accuracy %.2f%% at episode %d", trained.best_accuracy, trained.best_episode)
    log.info("test of %s: %s", best.relative_to(trained.run_dir), result.summary())
    return result


def draw_figures(run_dir: Path, device: torch.device) -> None:
    """The gate and attention figures and report.png of a run."""
    from attnopt.figures.plot import plot_run  # matplotlib: only when figures are drawn
    from attnopt.figures.report import write_report

    plot_run(run_dir, device)
    write_report(run_dir)


def train_and_test(config: Config, overwrite: bool = False) -> TrainResult | None:
    """Meta-train as ``config`` says, test the best checkpoint, draw the figures.

    ``overwrite`` replaces a run already in the ``--save`` folder (otherwise an error).
    Under torchrun only rank 0 returns a result; the others return None.
    """
    if config.tensorboard:
        from attnopt.runs.tblog import summary_writer

        summary_writer()  # a missing package is an error before anything starts
    procs, device = distributed.start(config.cpu, config.meta_batch)
    failed = True
    try:
        if config.deterministic:
            use_deterministic_algorithms(device)
        if config.compile:
            from attnopt.runtime.compilation import check_compiler

            check_compiler(device)  # before any data is read
        with RunLog() if procs.is_main else QuietLog() as run_log:
            trained = meta_train(config, procs, device, run_log, overwrite)
            distributed.barrier(procs)  # rank 0 has written ckpts/best.pt
            test = test_best(trained, config, device, procs)
        failed = False
    except RuntimeError as e:
        if config.deterministic and "deterministic" in str(e):
            raise UserError(
                f"--deterministic: {str(e).strip().splitlines()[0]}; run without --deterministic"
            ) from None
        raise
    finally:
        distributed.stop(failed)
    if not procs.is_main:
        return None
    draw_figures(trained.run_dir, device)
    return TrainResult(
        trained.run_dir, trained.best_accuracy, trained.best_episode, test, trained.seconds
    )
