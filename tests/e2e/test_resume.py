"""Exact resume and determinism on the CPU: a run interrupted after a checkpoint and resumed
ends exactly where the uninterrupted run ends, and the same seed gives the same run twice.

Compared: the final checkpoint (meta-parameters, optimizer, counters, RNG states), every
row of metrics.csv and gates.csv, and test.json; metrics.csv's ``elapsed_s`` and
``episodes_per_s`` are wall time, which no two runs share, so they are left out.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset

from attnopt.api import train
from attnopt.config import Config, resolve
from attnopt.data.episodes import TRAIN_STREAM, EpisodeSampler
from attnopt.models.build import build_model
from attnopt.training.checkpoint import load_checkpoint, restore_rng_states, save_checkpoint

WALL_TIME = ("elapsed_s", "episodes_per_s")
EPISODES, KILLED_IN = 8, 6  # checkpoints after episodes 3, 6, 8; logs after 2, 4, 6, 8

PIPELINE = importlib.import_module("attnopt.training.pipeline")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def config(data: Path, save: Path, **changes) -> Config:
    flags = {
        "data": "folder",
        "data_root": str(data),
        "image_size": 16,
        "n_class": 3,
        "n_shot": 1,
        "n_eval": 2,
        "epoch": 1,
        "episode": EPISODES,
        "val_freq": 3,  # the checkpoint at 3 falls inside the logging window 3..4
        "log_freq": 2,
        "episode_val": 1,
        "episode_test": 2,
        "n_workers": 1,
        "cpu": True,
        "seed": 3,
        "save": str(save),
    }
    return resolve({**flags, **changes})


def outcome(run: Path) -> dict:
    """Everything a finished run leaves that must not depend on an interruption."""
    ckpt = load_checkpoint(run / "ckpts" / "last.pt")
    # paths differ (init: the run's own pretrain/ folder)
    ckpt["config"] = dataclasses.replace(ckpt["config"], save="", resume=None, init=None)
    with open(run / "metrics.csv", newline="") as f:
        metrics = [{k: v for k, v in r.items() if k not in WALL_TIME} for r in csv.DictReader(f)]
    with open(run / "gates.csv", newline="") as f:
        gates = list(csv.DictReader(f))
    test = json.loads((run / "test.json").read_text())
    return {"ckpt": ckpt, "metrics": metrics, "gates": gates, "test": test}


def assert_same(a: object, b: object, where: str = "") -> None:
    """Equal nested dicts/lists, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(PIPELINE, "draw_figures", lambda *a: None)  # figures: not compared
    return make_folder_dataset(tmp_path / "data", classes={f"n{c:08d}": 3 for c in range(4)})


def test_same_seed_same_run_and_an_interrupted_run_resumes_exactly(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(config(data, tmp_path / "a"))
    train(config(data, tmp_path / "b"))
    reference = outcome(tmp_path / "a")
    assert_same(outcome(tmp_path / "b"), reference)  # deterministic with --seed on the CPU

    real_episodes = EpisodeSampler.episodes

    def episodes(self, indices, *args, **kwargs):
        if self.stream == TRAIN_STREAM and KILLED_IN - 1 in indices:
            raise Killed
        return real_episodes(self, indices, *args, **kwargs)

    run = tmp_path / "c"
    with monkeypatch.context() as m:
        m.setattr(EpisodeSampler, "episodes", episodes)
        with pytest.raises(Killed):
            train(config(data, run))
    last = run / "ckpts" / "last.pt"
    interrupted = load_checkpoint(last)
    assert interrupted["episode"] == 3 and interrupted["train_state"]["window"][2] == 1  # tasks
    assert not torch.equal(
        interrupted["model"]["metalearner.c_init"], reference["ckpt"]["model"]["metalearner.c_init"]
    )  # training moved the meta-parameters after the interruption: the comparison means something
    train(config(data, run, resume=str(last)))
    assert_same(outcome(run), reference)


def test_checkpoints_carry_the_python_numpy_and_torch_random_states(tmp_path: Path) -> None:
    config = resolve({"image_size": 16, "n_class": 2, "attention": "none"})
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # state mid-stream, gauss cached
    save_checkpoint(
        tmp_path / "c.pt",
        config=config,
        in_channels=1,
        model=build_model(config, 1).state_dict(),
        optimizer=None,
        episode=1,
        best_accuracy=0.0,
        best_episode=0,
    )
    expected = (random.random(), random.gauss(0, 1), np.random.normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.normal(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
