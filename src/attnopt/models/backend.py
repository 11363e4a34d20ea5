"""The fast paths a model takes, chosen once for the device it runs on.

The method's equations are written once each (the meta-learner's step in metalearner.py, the
learners' forward passes, :meth:`attnopt.models.base.Learner.loss_and_grad`'s ``torch.func``
gradient). Two of them have a faster way to compute the same numbers that pays on the CPU
only. Which ones a model takes is a :class:`Backend`, chosen by :func:`choose_backend` when the
model is placed on its device (:meth:`attnopt.models.build.FewShotModel.place`) and when it is
compiled (:func:`attnopt.runtime.compilation.compile_model`), never inside a step. Both paths
are tested against the plain ones (tests/unit/test_backend.py), and the engine as a whole
against :mod:`attnopt.models.reference`.

The layout every built-in learner uses on every device (B tasks as grouped, channels-last
convolutions; :mod:`attnopt.models.grouped`) and the support-set BatchNorm
(:mod:`attnopt.models.support_norm`) are not choices: they are how the engine computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CELL_COLUMNS = 4096  # coordinates per block of the LSTM cell when no graph is recorded


@dataclass(frozen=True)
class Backend:
    """Which fast paths to take. The default is the plain computation everywhere.

    ``inner_step_by_kernels``: Conv-4's inner step (loss and ∇_t at a support mini-batch) from
    its forward and backward kernels, without autograd's graph (:mod:`attnopt.models.inner_grad`;
    the same result as ``torch.func.grad`` bit for bit, 15-25% faster on the CPU). It covers
    ``--adapt all`` without ``--amp``; other learners and settings ignore it.
    ``cell_columns``: when no graph is recorded (validation, test, prediction), the
    meta-learner's LSTM cell runs in blocks of this many coordinates, whose gates stay in the
    CPU's cache between the matrix product and the elementwise passes (the product alone ran
    1.7x as fast). None: the whole cell at once.
    """

    inner_step_by_kernels: bool = False
    cell_columns: int | None = None


PLAIN = Backend()


def choose_backend(device: torch.device | str) -> Backend:
    """The fast paths for an eager model on ``device``: both on the CPU; none on GPUs, where
    neither was measured faster (and a compiled model is PLAIN: Inductor fuses the plain
    equations itself)."""
    if torch.device(device).type == "cpu":
        return Backend(inner_step_by_kernels=True, cell_columns=CELL_COLUMNS)
    return PLAIN
