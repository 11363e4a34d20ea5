"""Crash safety, disk problems, divergence and safe loading: whatever goes wrong, every file
on disk is complete, nothing runs code it should not, and the user gets one ``error:`` line."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line, make_folder_dataset, mini_flags
from PIL import Image

from attnopt.checkpoint import load_checkpoint
from attnopt.cli import main
from attnopt.config import Config
from attnopt.fileio import is_temp_file
from attnopt.gatelog import FIELDS as GATE_FIELDS
from attnopt.train import METRIC_FIELDS

KILLS = 8  # SIGKILLs at random moments of one run


def tiny_data(root: Path) -> Path:
    """3 classes x 3 images per split: enough for 3-way 1-shot episodes with 1 query."""
    return make_folder_dataset(root, classes={f"n{c:08d}": 3 for c in range(3)})


def run_flags(data: Path, run: Path, *extra: str) -> list[str]:
    """A run of tiny episodes that validates and checkpoints after every one of them."""
    return mini_flags(
        data, run, "--episode", "6", "--val-freq", "1", "--epoch", "1", "--episode-val", "1",
        "--episode-test", "1", *extra,
    )  # fmt: skip


def _cli(argv: list[str]) -> None:
    """A child process running ``attnopt ARGV``."""
    sys.exit(main(argv))


def check_run_folder(run: Path) -> list[Path]:
    """Assert every file of ``run`` is complete and loadable; returns leftover temp files."""
    temps = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run).as_posix()
        if is_temp_file(path):  # a write that was cut off; no reader opens these
            temps.append(path)
        elif rel == "config.json":
            Config.from_dict(json.loads(path.read_text()))
        elif rel == "test.json":
            assert 0 <= json.loads(path.read_text())["accuracy"] <= 100
        elif rel in ("metrics.csv", "gates.csv"):
            fields = METRIC_FIELDS if rel == "metrics.csv" else GATE_FIELDS
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
            assert tuple(reader.fieldnames or ()) == fields, rel
            assert all(None not in r and len(r) == len(fields) for r in rows), rel
            assert all(int(r["episode"]) >= 1 for r in rows), rel
        elif rel.startswith("ckpts/") and rel.endswith(".pt"):
            ckpt = load_checkpoint(path)
            assert all(torch.isfinite(v).all() for v in ckpt["model"].values()), rel
        elif rel.endswith(".png"):
            with Image.open(path) as img:
                img.verify()
        else:  # train.log is append-only text: its last line may be cut off
            assert rel == "train.log", f"unexpected file {rel}"
    return temps


def check_cache(cache: Path) -> None:
    """Every visible cache entry is complete: its index matches its arrays."""
    for entry in (e for e in cache.iterdir() if not e.name.startswith(".")):
        index = json.loads((entry / "index.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="r")
        assert list(images.shape) == index["shape"]
        assert len(np.load(entry / "labels.npy")) == images.shape[0]


def test_sigkill_at_random_moments_never_leaves_a_damaged_file(tmp_path: Path) -> None:
    data, run, cache = tiny_data(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    flags = [*run_flags(data, run), "--cache-dir", str(cache)]
    last = run / "ckpts" / "last.pt"
    # Children fork from a server that has imported torch once: a kill every ~0.5 s.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["attnopt.cli", "attnopt.train", "torch._dynamo"])  # Adam's
    warm = ctx.Process(target=os.getpid)
    warm.start()
    warm.join()
    rng = random.Random(7)
    kills = 0
    for _ in range(KILLS):
        argv = ["train", *flags, *(["--resume", str(last)] if last.is_file() else [])]
        child = ctx.Process(target=_cli, args=(argv,))
        child.start()
        child.join(timeout=rng.uniform(0.0, 0.8))
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            kills += 1
        else:
            assert child.exitcode == 0
        check_run_folder(run)
        if cache.is_dir():
            check_cache(cache)
    assert kills >= KILLS // 2
    # What a kill in the middle of a write leaves: hidden temp files, never read, then cleared.
    (run / "ckpts" / ".last.pt.x1y2z3.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run / ".metrics.csv.x1y2z3.tmp").write_text("episode,split,lo")
    child = ctx.Process(target=_cli, args=(["train", *flags, "--resume", str(last)],))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert check_run_folder(run) == []  # the resumed run cleared what the kills left
    assert load_checkpoint(last)["episode"] == 6
    with open(run / "metrics.csv", newline="") as f:
        val_episodes = [int(r["episode"]) for r in csv.DictReader(f) if r["split"] == "val"]
    assert val_episodes == [1, 2, 3, 4, 5, 6]
    assert (run / "test.json").is_file()
