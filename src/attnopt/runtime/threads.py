"""Intra-op threads on the CPU: as many as the cores that other processes leave free.

PyTorch splits each large kernel over its OpenMP threads and waits for the slowest one. On
an idle machine the threads spin between kernels (OpenMP's default), which is what makes two
threads pay at all on attnopt's many small kernels: 4.7 meta-training episodes/s at glyph
shapes against 3.1 with one thread, and 2.8 when the threads sleep instead of spinning
(benchmarks/README.md, issue 17). Beside another CPU-bound process, the same two spinning
threads run 5-50x slower than one thread: one of them keeps losing its core, and every kernel
waits for it. So a CPU run checks, about once a second, how much of its cores the rest of the
machine used, and keeps one thread per core that was left free.

The number of threads changes how some sums are rounded, so a run on a machine whose load
changes is not reproducible bit for bit. Set ``OMP_NUM_THREADS`` to fix the number: then
nothing changes it, and a run with ``--seed`` repeats exactly.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
# A core counts as free while other processes use less than this share of it: a thread that
# loses its core a quarter of the time already costs more than it brings.
BUSY_SHARE = 0.25
PROC_STAT = Path("/proc/stat")


def busy_seconds(cpus: set[int], stat: Path = PROC_STAT) -> float | None:
    """CPU seconds spent so far on ``cpus`` by every process (Linux's /proc/stat), or None
    where the file cannot be read (not Linux)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait
            values = [int(v) for v in fields[:8]]
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_for(free_cores: float, most: int) -> int:
    """Threads for ``free_cores`` cores left free by other processes (at least 1)."""
    return max(1, min(most, math.floor(free_cores + BUSY_SHARE)))


class ThreadGovernor:
    """Calls ``torch.set_num_threads`` as the machine's load changes; :meth:`tick` between
    episodes. ``most``: the thread count of an idle machine (torch's default)."""

    def __init__(
        self,
        cpus: set[int],
        most: int,
        busy: Callable[[], float | None] | None = None,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus, self.most = cpus, most
        self._busy = busy or (lambda: busy_seconds(cpus))
        self._own, self._clock = own, clock
        self._last = self._read(clock())

    def _read(self, now: float) -> tuple[float, float, float]:
        return now, self._busy() or 0.0, self._own()

    def tick(self) -> None:
        """Adjust the threads to the load since the last adjustment (at most once per
        :data:`CHECK_SECONDS`)."""
        clock = self._clock()
        elapsed = clock - self._last[0]
        if elapsed < CHECK_SECONDS:
            return  # before reading /proc/stat: this runs after every episode
        now = self._read(clock)
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
        self._last = now
        threads = threads_for(len(self.cpus) - others, self.most)
        if threads != torch.get_num_threads():
            log.info(
                "%d intra-op threads (other processes used %.1f of %d cores)",
                threads, others, len(self.cpus),
            )  # fmt: skip
            torch.set_num_threads(threads)


class _Fixed:
    def tick(self) -> None:
        pass


def governor(device: torch.device) -> ThreadGovernor | _Fixed:
    """A :class:`ThreadGovernor` for a CPU run, or one that does nothing: on GPUs, where
    ``OMP_NUM_THREADS`` fixes the count, on one core or where the load cannot be read."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pinned = "OMP_NUM_THREADS" in os.environ
    if device.type != "cpu" or pinned or len(cpus) < 2 or busy_seconds(cpus) is None:
        return _Fixed()
    return ThreadGovernor(cpus, _idle_threads())


@functools.cache
def _idle_threads() -> int:
    """torch's own thread count, read before any governor changed it."""
    return torch.get_num_threads()
