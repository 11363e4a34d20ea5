"""Where a run executes: device choice and seeding."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger("attnopt")


def select_device(force_cpu: bool) -> torch.device:
    """``--cpu`` forces the CPU; otherwise CUDA when available, else the CPU with a notice."""
    if force_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # TF32 tensor cores for the meta-learner's matmuls (cuDNN convolutions use them by
        # default): θ's update itself is elementwise and stays in full fp32.
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda")
    log.info("CUDA is not available; running on the CPU")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
