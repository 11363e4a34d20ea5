"""``--compile``: torch.compile the inner loop's hot paths, in place.

Three parts are compiled: the meta-learner's step (its per-coordinate LSTM and gates, a dozen
elementwise passes over P rows that Inductor fuses), the learner's inner step (forward and
gradient at a support mini-batch) and the learner's forward (query logits). Measured on the
2-core CPU (benchmarks/README.md), MLAL meta-trains 1.7x as fast at 28x28 and 1.2x at
84x84; on GPUs the learner's elementwise passes (BatchNorm, ReLU, pooling) are where the
time goes (issue 5's probe), unmeasured here.

Compiled functions compute what the eager ones do: equal to rounding (tested in float64).
The first meta-updates and the first validation run slowly while the graphs compile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable

import torch

from attnopt.errors import UserError
from attnopt.models.backend import PLAIN
from attnopt.models.build import FewShotModel

# the meta-learner's step, the learner's inner step, the learner's forward
PARTS = ("step", "loss_and_grad", "forward")


def check_compiler(device: torch.device) -> None:
    """UserError when torch.compile cannot build kernels for ``device``: Inductor needs a C++
    compiler for the CPU and Triton for GPUs. Checked before any work starts."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise UserError("--compile needs Triton on GPUs (pip install triton)")
        if torch.cuda.get_device_capability(device) < (7, 0):  # Triton's oldest GPUs
            name = torch.cuda.get_device_name(device)
            raise UserError(f"--compile: {name} is too old for Triton; run without --compile")
        return
    candidates = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in candidates):
        raise UserError(
            "--compile needs a C++ compiler on the CPU (g++ or clang++, or $CXX); "
            "install one or run without --compile"
        )


def compile_model(model: FewShotModel, parts: Iterable[str] = PARTS) -> FewShotModel:
    """Replace the ``parts`` (names from :data:`PARTS`) of ``model`` by compiled versions.

    Only methods are wrapped, never parameters: ``state_dict`` and checkpoints are unchanged.
    The compiled parts' owners take the plain paths (:data:`attnopt.models.backend.PLAIN`):
    Inductor traces the equations as written and fuses them itself.
    """
    owners = {"step": model.metalearner, "loss_and_grad": model.learner, "forward": model.learner}
    for part in parts:
        owner = owners[part]
        if part != "forward":  # the learner's forward has no fast path of its own
            owner.use_backend(PLAIN)
        setattr(owner, part, torch.compile(getattr(owner, part)))
    return model
