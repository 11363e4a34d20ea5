"""Where a run executes: device choice and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def select_device(force_cpu: bool, index: int | None = None) -> torch.device:
    """``--cpu`` forces the CPU; otherwise CUDA (GPU ``index``, e.g. torchrun's local rank)
    when available, else the CPU (the run's first log line names the device)."""
    if force_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # TF32 tensor cores for the meta-learner's matmuls (cuDNN convolutions use them by
        # default): θ's update itself is elementwise and stays in full fp32.
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda", index)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms(device: torch.device) -> None:
    """``--deterministic``: on CUDA, only deterministic kernels (cuBLAS with a fixed workspace,
    no cuDNN autotuning); an operation without one raises instead of silently varying.

    CPU kernels already give the same results for the same seed, so on the CPU it changes
    nothing. Call it before the first CUDA operation: cuBLAS reads its setting once.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)
