"""The thread governor: one intra-op thread per core that other processes leave free."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags
from test_api import _as_kwargs

import attnopt
from attnopt.runtime import threads
from attnopt.runtime.threads import ThreadGovernor, busy_seconds, governor, threads_for
from attnopt.training import evaluation
from attnopt.training import loop as training


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Machine:
    """A fake machine: seconds pass, other processes and this one use CPU time."""

    def __init__(self) -> None:
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def governor(self, cores: int = 2) -> ThreadGovernor:
        return ThreadGovernor(
            set(range(cores)),
            most=cores,
            busy=lambda: self.busy,
            own=lambda: self.own,
            clock=lambda: self.now,
        )


@pytest.mark.parametrize(
    ("free", "most", "expected"),
    [(2.0, 2, 2), (1.8, 2, 2), (1.7, 2, 1), (1.0, 2, 1), (0.0, 2, 1), (7.9, 4, 4), (3.5, 8, 3)],
)
def test_a_core_counts_as_free_while_others_use_under_a_quarter_of_it(
    free: float, most: int, expected: int
) -> None:
    assert threads_for(free, most) == expected


def test_threads_follow_the_other_processes_load() -> None:
    machine = Machine()
    governed = machine.governor()
    torch.set_num_threads(2)
    machine.run(2.0, own_cores=2.0, other_cores=0.0)  # alone: our spinning threads count as ours
    governed.tick()
    assert torch.get_num_threads() == 2
    machine.run(2.0, own_cores=1.3, other_cores=0.7)  # another job arrives and shares a core
    governed.tick()
    assert torch.get_num_threads() == 1
    machine.run(2.0, own_cores=1.0, other_cores=1.0)  # it keeps its core
    governed.tick()
    assert torch.get_num_threads() == 1
    machine.run(0.5, own_cores=1.0, other_cores=0.0)  # it ends, but half a second says little
    governed.tick()
    assert torch.get_num_threads() == 1
    machine.run(0.5, own_cores=1.0, other_cores=0.0)
    governed.tick()
    assert torch.get_num_threads() == 2


def test_busy_seconds_reads_only_the_processs_own_cores(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 0 300 9000 50 0 0 0 0 0\n"
        "cpu0 100 0 50 1000 10 0 5 0 0 0\n"
        "cpu1 200 10 50 1000 20 3 0 2 0 0\n"
        "cpu2 600 0 200 7000 20 0 0 0 0 0\n"
        "intr 5 0 0\nctxt 10\n"
    )
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds({0, 1}, stat) == pytest.approx((155 + 265) / hz)
    assert busy_seconds({0}, tmp_path / "missing") is None


def test_a_fixed_thread_count_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not isinstance(governor(torch.device("cpu")), ThreadGovernor)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not isinstance(governor(torch.device("cuda")), ThreadGovernor)
    monkeypatch.setattr(threads, "busy_seconds", lambda cpus: None)  # not Linux
    assert not isinstance(governor(torch.device("cpu")), ThreadGovernor)


def test_training_and_evaluation_adjust_the_threads_after_every_update_and_batch(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks: list[str] = []

    class Counting:
        def __init__(self, where: str) -> None:
            self.where = where

        def tick(self) -> None:
            ticks.append(self.where)

    monkeypatch.setattr(training, "governor", lambda device: Counting("train"))
    monkeypatch.setattr(evaluation, "governor", lambda device: Counting("eval"))
    flags = _as_kwargs(tiny_flags(folder_dataset, tmp_path / "run"))
    settings = {"episode": 3, "val_freq": 3, "episode_val": 2, "episode_test": 5, "eval_batch": 2}
    attnopt.train(**{**flags, **settings})
    assert ticks == ["train"] * 3 + ["eval"] * (1 + 3)  # evaluation batches of 2 episodes
