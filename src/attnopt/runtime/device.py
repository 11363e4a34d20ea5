"""Where a run executes: device choice, seeding and how the process allocates memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import random

import numpy as np
import torch


def select_device(force_cpu: bool, index: int | None = None) -> torch.device:
    """``--cpu`` forces the CPU; otherwise CUDA (GPU ``index``, e.g. torchrun's local rank)
    when available, else the CPU (the run's first log line names the device)."""
    keep_freed_memory()
    if force_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # TF32 tensor cores for the meta-learner's matmuls (cuDNN convolutions use them by
        # default): θ's update itself is elementwise and stays in full fp32.
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda", index)
    return torch.device("cpu")


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory that tensors free, for the next ones to reuse.

    An inner step allocates and frees activations of up to hundreds of MB. By default glibc
    maps large blocks afresh from the system and unmaps them when freed, so every step paid a
    page fault for each 4 KiB it touched: 210,000 faults per meta-update at mini-ImageNet
    shapes, a quarter of its time (benchmarks/README.md). Here the heap keeps what it held:
    the resident memory stays at the run's peak. Returns False where the C library is not
    glibc (macOS, musl): nothing changes there.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    # no block from mmap; give memory back only above 2 GiB of free heap top
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


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
