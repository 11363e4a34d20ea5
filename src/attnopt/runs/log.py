"""What a training run tells: the console (above the progress bar), train.log, metrics.csv,
gates.csv and, with ``--tensorboard``, TensorBoard scalars.

Only one process writes them: under torchrun the other ranks get a :class:`QuietLog`, which
has the same methods and does nothing, so the training loop needs no ``if rank == 0``.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import torch
from tqdm import tqdm

from attnopt.errors import UserError, printable
from attnopt.models.base import Learner
from attnopt.models.metalearner import MetaState
from attnopt.runs.fileio import os_error_message, rows_until, write_csv
from attnopt.runs.gates import GateLog

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
_BUFFERED = 100_000  # log records kept until train.log exists (a run that fails early: none)


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(printable(self.format(record), sys.stdout))
        except Exception:
            self.handleError(record)


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class RunLog:
    """The run's console and files. A context manager: on entry, log lines go to the console
    and are kept in memory; :meth:`open` creates train.log (with the kept lines), metrics.csv
    and gates.csv once the run has started, so a run that fails before leaves no file."""

    def __init__(self) -> None:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        self._console = _TqdmHandler()
        self._buffer = logging.handlers.MemoryHandler(_BUFFERED, flushLevel=logging.CRITICAL + 1)
        self._handlers: list[logging.Handler] = [self._console, self._buffer]
        for handler in self._handlers:
            handler.setFormatter(fmt)
        self.metrics_path: Path | None = None
        self.rows: list[dict[str, str]] = []
        self.gates: GateLog | None = None
        self.tensorboard = None
        self._bar: tqdm | None = None

    def __enter__(self) -> RunLog:
        for handler in self._handlers:
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handler in self._handlers:
            log.removeHandler(handler)
            handler.close()
        log.propagate = True
        if self.tensorboard is not None:
            self.tensorboard.close()

    def open(
        self, run_dir: Path, learner: Learner, keep_until: int | None, tensorboard: bool
    ) -> None:
        """Start writing into ``run_dir``: train.log (appended to), metrics.csv and gates.csv
        (rows after episode ``keep_until`` dropped: a resumed run rewrites them)."""
        try:  # odd bytes in a path named in a message must not break logging
            file = logging.FileHandler(
                run_dir / "train.log", encoding="utf-8", errors="backslashreplace"
            )
        except OSError as e:
            raise UserError(os_error_message("write", run_dir / "train.log", e)) from None
        file.setFormatter(self._console.formatter)
        self._buffer.setTarget(file)
        self._buffer.flush()
        log.removeHandler(self._buffer)
        self._handlers[self._handlers.index(self._buffer)] = file
        log.addHandler(file)
        self.metrics_path = run_dir / "metrics.csv"
        self.rows = rows_until(self.metrics_path, keep_until)
        write_csv(self.metrics_path, METRIC_FIELDS, self.rows)
        self.gates = GateLog(run_dir / "gates.csv", learner, keep_until)
        if tensorboard:
            from attnopt.runs.tblog import TensorBoardLog

            self.tensorboard = TensorBoardLog(run_dir)

    def progress(self, total: int, initial: int) -> tqdm:
        """The meta-training progress bar (none when the output is not a terminal)."""
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc="meta-train",
            unit="ep",
            mininterval=0.5,
            disable=None,
        )
        return self._bar

    def gate_recorder(self, now: bool) -> Callable[[int, torch.Tensor, MetaState], None] | None:
        """An inner-loop callback recording the gates for gates.csv when ``now``, else None."""
        return self.gates.on_step if now and self.gates is not None else None

    def train(
        self,
        episode: int,
        loss: float,
        accuracy: float,
        tasks: float,
        lr: float,
        window_seconds: float,
        elapsed_s: float,
    ) -> None:
        """A train row: the mean loss and accuracy of the ``tasks`` tasks of the logging window
        that took ``window_seconds``; the gates recorded during it go to gates.csv."""
        if self.gates is not None:
            self.gates.write(episode)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.1f}%")
        log.info("episode %d  train loss %.4f  acc %.2f%%", episode, loss, accuracy)
        self.row(
            episode,
            "train",
            loss=loss,
            accuracy=accuracy,
            lr=float(lr),
            episodes_per_s=tasks / window_seconds,
            elapsed_s=elapsed_s,
        )

    def row(self, episode: int, split: str, **values: object) -> None:
        """Append a row to metrics.csv (rewritten atomically) and to TensorBoard."""
        assert self.metrics_path is not None, "RunLog.open first"
        row = {"episode": episode, "split": split, **values}
        self.rows.append({k: _fmt(row.get(k, "")) for k in METRIC_FIELDS})
        write_csv(self.metrics_path, METRIC_FIELDS, self.rows)
        if self.tensorboard is not None:
            self.tensorboard.add(split, episode, values)


class QuietLog(RunLog):
    """What torchrun ranks other than 0 get: the same methods, no output and no files."""

    def __init__(self) -> None:
        super().__init__()
        self._handlers = []

    def __enter__(self) -> QuietLog:
        log.setLevel(logging.WARNING)  # warnings still reach the console
        return self

    def open(
        self, run_dir: Path, learner: Learner, keep_until: int | None, tensorboard: bool
    ) -> None:
        return None

    def progress(self, total: int, initial: int) -> tqdm:
        return tqdm(total=total, initial=initial, disable=True)

    def train(self, *args: object) -> None:
        return None

    def row(self, episode: int, split: str, **values: object) -> None:
        return None
