"""``--tensorboard``: the rows of metrics.csv also as TensorBoard scalars (optional extra)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnopt.errors import UserError

INSTALL = 'pip install "attnopt[tensorboard]"'


def summary_writer() -> Callable[..., Any]:
    """torch's SummaryWriter class; UserError saying how to install it when it is missing.

    Called before training starts, so a missing package never costs a run.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            f"--tensorboard needs the tensorboard package, which is not installed; "
            f"install it with: {INSTALL}"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes ``<split>/<column>`` scalars (e.g. ``train/loss``, ``val/accuracy``) per episode
    into ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        self.writer = summary_writer()(log_dir=str(run_dir / "tensorboard"))

    def add(self, split: str, episode: int, values: dict[str, object]) -> None:
        for name, value in values.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"{split}/{name}", value, episode)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
