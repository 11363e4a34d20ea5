"""Divergence guard: a meta-update whose loss or meta-gradient is not finite is skipped.

The training loop calls :meth:`DivergenceGuard.step` in place of clip + ``optimizer.step()``.
A skipped update leaves the parameters and the optimizer state untouched, so one bad
episode (a NaN from an extreme batch) costs nothing; a run of them means training diverged,
and it stops with a UserError before anything non-finite reaches a checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from attnopt.errors import UserError
from attnopt.training import distributed

log = logging.getLogger("attnopt")


class DivergenceGuard:
    """Clips the meta-gradient and steps ``optimizer`` only when the update is finite.

    After ``max_bad_steps`` consecutive skipped updates :meth:`step` raises a UserError
    naming the episode and ``checkpoint``, the last good checkpoint to resume from. Under
    torchrun (``procs``) all processes skip an update when any of them sees a bad one.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
        max_bad_steps: int,
        checkpoint: Path,
        procs: distributed.Processes | None = None,
    ) -> None:
        self.parameters = list(parameters)
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.max_bad_steps = max_bad_steps
        self.checkpoint = checkpoint
        self.procs = procs or distributed.Processes()
        self.consecutive = 0  # bad updates in a row, up to the current episode
        self.skipped = 0  # bad updates in all

    def step(self, episode: int, loss: torch.Tensor) -> bool:
        """Clip and apply the gradients of ``loss`` (already backpropagated); False when the
        update was skipped because the loss or the gradient norm is NaN or infinite."""
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        bad = distributed.sum_over_processes(bad.float(), self.procs) > 0
        if not bool(bad):  # one host sync
            self.optimizer.step()
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        what = (
            f"query loss {loss.item()}"
            if not torch.isfinite(loss.detach())
            else f"meta-gradient norm {norm.item()}"
        )
        log.warning(
            "episode %d: non-finite %s; update skipped (%d in a row, %d in all)",
            episode,
            what,
            self.consecutive,
            self.skipped,
        )
        if self.consecutive >= self.max_bad_steps:
            resume = (
                f"the last good checkpoint {self.checkpoint} is intact; lower --lr or "
                "--grad-clip and --resume it"
                if self.checkpoint.is_file()
                else "no checkpoint was saved yet; lower --lr or --grad-clip"
            )
            raise UserError(
                f"training diverged at episode {episode}: {self.consecutive} consecutive "
                f"non-finite losses or meta-gradients (--max-bad-steps {self.max_bad_steps}, "
                f"last: {what}); {resume}"
            )
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped = int(state.get("skipped", 0))
