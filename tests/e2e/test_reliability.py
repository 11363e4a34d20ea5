"""Crash safety, disk problems, divergence and safe loading: whatever goes wrong, every file
on disk is complete, nothing runs code it should not, and the user gets one ``error:`` line."""

from __future__ import annotations

import copy
import csv
import errno
import importlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunsCode, error_line, make_checkpoint, make_folder_dataset, mini_flags
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from attnopt.cli.commands import main
from attnopt.config import Config, resolve
from attnopt.errors import UserError
from attnopt.models.build import build_model
from attnopt.runs import fileio
from attnopt.runs.fileio import is_temp_file
from attnopt.runs.gates import FIELDS as GATE_FIELDS
from attnopt.runs.log import METRIC_FIELDS
from attnopt.training.checkpoint import load_checkpoint, save_checkpoint
from attnopt.training.guard import DivergenceGuard

KILLS = int(os.environ.get("ATTNOPT_KILLS", "8"))  # SIGKILLs at random moments of one run

TRAIN = importlib.import_module("attnopt.training.loop")
OBJECTIVE = importlib.import_module("attnopt.objective")


def tiny_data(root: Path) -> Path:
    """3 classes x 3 images per split: enough for 3-way 1-shot episodes with 1 query."""
    return make_folder_dataset(root, classes={f"n{c:08d}": 3 for c in range(3)})


def run_flags(data: Path, run: Path, *extra: str) -> list[str]:
    """A run of tiny episodes that validates and checkpoints after every one of them (the
    plain Ravi & Larochelle model: it draws one figure, not three)."""
    return mini_flags(
        data, run, "--episode", "6", "--val-freq", "1", "--epoch", "1", "--episode-val", "1",
        "--episode-test", "1", "--attention", "none", *extra,
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
        elif rel == "test_episodes.csv":
            with open(path, newline="") as f:
                assert all(0 <= float(r["accuracy"]) <= 1 for r in csv.DictReader(f))
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


def continue_or_restart(flags: list[str], last: Path) -> list[str]:
    """What a user does after a kill: resume from ckpts/last.pt, or, when the run was killed
    before its first checkpoint, start it again in its folder."""
    return ["train", *flags, *(["--resume", str(last)] if last.is_file() else ["--overwrite"])]


def test_sigkill_at_random_moments_never_leaves_a_damaged_file(tmp_path: Path) -> None:
    data, run, cache = tiny_data(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    episodes = max(6, KILLS)  # so that kills land in every phase: training, test, figures
    flags = [*run_flags(data, run), "--cache-dir", str(cache), "--episode", str(episodes)]
    last = run / "ckpts" / "last.pt"
    # Children fork from a server that has imported torch once: a kill every ~0.5 s.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["attnopt.cli.commands", "attnopt.training.loop", "torch._dynamo"]
    )  # Adam's
    warm = ctx.Process(target=os.getpid)
    warm.start()
    warm.join()
    rng = random.Random(7)
    kills = 0
    for _ in range(KILLS):
        child = ctx.Process(target=_cli, args=(continue_or_restart(flags, last),))
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
    assert kills >= 1  # the kills land wherever they land: any moment must be survivable
    # What a kill in the middle of a write leaves: hidden temp files, never read, then cleared.
    (run / "ckpts").mkdir(parents=True, exist_ok=True)
    (run / "ckpts" / ".last.pt.x1y2z3.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run / ".metrics.csv.x1y2z3.tmp").write_text("episode,split,lo")
    child = ctx.Process(target=_cli, args=(continue_or_restart(flags, last),))
    child.start()
    child.join()  # however long a loaded machine takes
    assert child.exitcode == 0
    assert check_run_folder(run) == []  # the resumed run cleared what the kills left
    assert load_checkpoint(last)["episode"] == episodes
    with open(run / "metrics.csv", newline="") as f:
        val_episodes = [int(r["episode"]) for r in csv.DictReader(f) if r["split"] == "val"]
    assert val_episodes == list(range(1, episodes + 1))
    assert (run / "test.json").is_file()


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_syncs_the_file_then_renames_then_syncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = fileio.fsync_path, os.replace
    monkeypatch.setattr(
        fileio, "fsync_path", lambda p: (events.append(f"fsync {Path(p).name}"), real_fsync(p))
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(f"rename {Path(b).name}"), real_replace(a, b))
    )
    fileio.write_json(tmp_path / "x.json", {"a": 1})
    assert events[0].startswith("fsync .x.json.") and events[1:] == [
        "rename x.json",
        f"fsync {tmp_path.name}",
    ]
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        (ValueError("a bug"), "a bug"),
    ],
)
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, failure: Exception, message: str
) -> None:
    path = tmp_path / "metrics.csv"
    fileio.write_csv(path, ["episode"], [{"episode": 1}])

    def write(f) -> None:
        f.write("episode\n1\n2")
        raise failure

    # Disk problems are the user's to fix (error: line naming the file); bugs stay bugs.
    expected = UserError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected, match=message) as raised:
        fileio.atomic_write(path, write)
    if expected is UserError:
        assert str(path) in str(raised.value)
    assert path.read_text() == "episode\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


# --- disk problems ---------------------------------------------------------------------------


def test_disk_full_while_checkpointing_names_the_file_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = tmp_path / "run"
    real_fsync = fileio.fsync_path
    writes = {"last.pt": 0}

    def fsync(path) -> None:  # the disk fills up during the second write of last.pt
        if Path(path).name.startswith(".last.pt."):
            writes["last.pt"] += 1
            if writes["last.pt"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(fileio, "fsync_path", fsync)
    assert main(["train", *run_flags(tiny_data(tmp_path / "data"), run)]) == 2
    line = error_line(capsys)
    assert str(run / "ckpts" / "last.pt") in line and "No space left on device" in line
    assert load_checkpoint(run / "ckpts" / "last.pt")["episode"] == 1
    assert check_run_folder(run) == []


def _read_only_run(tmp_path: Path, capsys) -> None:
    """A run into ``tmp_path/ro`` fails before any data is decoded, naming the folder."""
    cache = tmp_path / "cache"
    argv = ["train", *run_flags(tiny_data(tmp_path / "data"), tmp_path / "ro" / "run")]
    assert main([*argv, "--cache-dir", str(cache)]) == 2
    line = error_line(capsys)
    assert str(tmp_path / "ro") in line and "--save" in line
    assert not cache.exists()  # failed fast: nothing was decoded


def test_read_only_save_folder_fails_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "ro" / "run").mkdir(parents=True)
    (tmp_path / "ro" / "run").chmod(0o555)
    try:
        if os.access(tmp_path / "ro" / "run", os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (see the simulated test)")
        _read_only_run(tmp_path, capsys)
    finally:
        (tmp_path / "ro" / "run").chmod(0o755)


def test_read_only_file_system_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    read_only = str(tmp_path / "ro")
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(read_only):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *args, **kwargs)

        return call

    os.mkdir(read_only)
    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    _read_only_run(tmp_path, capsys)


# --- divergence ------------------------------------------------------------------------------


def inject_nan(monkeypatch: pytest.MonkeyPatch, bad_episodes: set[int]) -> None:
    """Make the query logits of these training episodes (1-based) NaN."""
    calls = {"episode": 0}
    real = OBJECTIVE.query_logits

    def query_logits(*args, **kwargs):
        logits = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # validation and test
            return logits
        calls["episode"] += 1  # one meta-update per episode (--meta-batch 1)
        return logits * float("nan") if calls["episode"] in bad_episodes else logits

    monkeypatch.setattr(OBJECTIVE, "query_logits", query_logits)


def record_checkpoints(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict]:
    """episode -> (model, optimizer) state of every last.pt the run saves."""
    saved: dict[int, dict] = {}
    real = TRAIN.save_checkpoint

    def save(path, **kwargs):
        real(path, **kwargs)
        if Path(path).name == "last.pt":
            saved[kwargs["episode"]] = copy.deepcopy(
                {"model": kwargs["model"], "optimizer": kwargs["optimizer"]}
            )

    monkeypatch.setattr(TRAIN, "save_checkpoint", save)
    return saved


def adam_steps(state: dict) -> int:
    return int(state["optimizer"]["state"][0]["step"])


def test_a_non_finite_loss_skips_its_update_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    inject_nan(monkeypatch, {2, 3})
    saved = record_checkpoints(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", *run_flags(tiny_data(tmp_path / "data"), run), "--episode", "4"]) == 0
    assert [adam_steps(saved[e]) for e in (1, 2, 3, 4)] == [1, 1, 1, 2]
    for episode in (2, 3):  # parameters and optimizer state exactly as after episode 1
        for key, value in saved[1]["model"].items():
            assert torch.equal(saved[episode]["model"][key], value), key
        for key, value in saved[1]["optimizer"]["state"][0].items():
            assert torch.equal(saved[episode]["optimizer"]["state"][0][key], value), key
    assert not torch.equal(
        saved[4]["model"]["metalearner.c_init"], saved[1]["model"]["metalearner.c_init"]
    )
    log = (run / "train.log").read_text()
    assert "episode 2: non-finite query loss nan; update skipped (1 in a row, 1 in all)" in log
    assert "episode 3: non-finite query loss nan; update skipped (2 in a row, 2 in all)" in log
    with open(run / "metrics.csv", newline="") as f:
        train_loss = {r["episode"]: r["loss"] for r in csv.DictReader(f) if r["split"] == "train"}
    assert train_loss["2"] == train_loss["3"] == "nan" and float(train_loss["4"]) > 0


def test_consecutive_non_finite_losses_stop_training_naming_the_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    inject_nan(monkeypatch, set(range(3, 100)))
    run = tmp_path / "run"
    argv = ["train", *run_flags(tiny_data(tmp_path / "data"), run), "--max-bad-steps", "2"]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "training diverged at episode 4" in line and "--max-bad-steps 2" in line
    assert str(run / "ckpts" / "last.pt") in line
    ckpt = load_checkpoint(run / "ckpts" / "last.pt")  # intact, finite, not past the failure
    assert ckpt["episode"] == 3 and adam_steps(ckpt) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert check_run_folder(run) == []


def test_a_non_finite_meta_gradient_skips_the_update() -> None:
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    guard = DivergenceGuard(layer.parameters(), optimizer, 0.25, 3, Path("none.pt"))
    layer(torch.ones(1, 3)).sum().backward()
    assert guard.step(1, torch.tensor(1.0))
    before = copy.deepcopy((layer.state_dict(), optimizer.state_dict()))
    layer.weight.register_hook(lambda g: g * float("inf"))
    for episode in (2, 3):
        optimizer.zero_grad()
        loss = layer(torch.ones(1, 3)).sum()
        loss.backward()
        assert torch.isfinite(loss) and not guard.step(episode, loss)
    assert guard.state_dict() == {"consecutive": 2, "skipped": 2}
    for key, value in before[0].items():
        assert torch.equal(layer.state_dict()[key], value)
    assert optimizer.state_dict()["state"][0]["step"] == before[1]["state"][0]["step"] == 1
    optimizer.zero_grad()
    with pytest.raises(UserError, match="episode 4: 3 consecutive.*meta-gradient norm"):
        layer(torch.ones(1, 3)).sum().backward()
        guard.step(4, torch.tensor(1.0))


def test_a_checkpoint_with_non_finite_values_is_never_written(tmp_path: Path) -> None:
    config = resolve({"image_size": 16, "n_class": 2})
    model = build_model(config, 3)
    path = tmp_path / "last.pt"
    kwargs = dict(config=config, in_channels=3, optimizer=None, best_accuracy=50.0, best_episode=1)
    save_checkpoint(path, model=model.state_dict(), episode=1, **kwargs)
    with torch.no_grad():
        model.metalearner.c_init[5] = float("nan")
    with pytest.raises(
        UserError, match="not saving .*metalearner.c_init is not finite at episode 2"
    ):
        save_checkpoint(path, model=model.state_dict(), episode=2, **kwargs)
    assert load_checkpoint(path)["episode"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- safe loading ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (untrained) checkpoint."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "real.pt").read_bytes()


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
@pytest.mark.parametrize("command", ["test", "train"])
def test_a_checkpoint_that_would_run_code_is_refused(
    tmp_path: Path, container: str, command: str, capsys
) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"format": "attnopt-checkpoint", "version": 1, "model": RunsCode(marker)}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    extra = ["--data-root", str(tmp_path), "--data", "folder"] if command == "train" else []
    assert main([command, "--resume", str(path), "--save", str(tmp_path / "run"), *extra]) == 2
    line = error_line(capsys)
    assert str(path) in line and "damaged or not an attnopt checkpoint" in line
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_checkpoint_is_a_user_error(
    tmp_path: Path, checkpoint_bytes: bytes, keep: float, capsys
) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(checkpoint_bytes[: int(len(checkpoint_bytes) * keep)])
    assert main(["test", "--resume", str(path)]) == 2
    assert str(path) in error_line(capsys)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_damage_to_a_checkpoint_is_a_user_error_or_harmless(
    checkpoint_bytes: bytes, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Random bytes, and a real checkpoint with random bytes overwritten: loading either
    works or raises UserError, never anything else."""
    blob = data.draw(
        st.one_of(
            st.binary(max_size=2000),
            st.lists(
                st.tuples(st.integers(0, len(checkpoint_bytes) - 1), st.binary(min_size=1)),
                min_size=1,
                max_size=4,
            ).map(lambda edits: _overwrite(checkpoint_bytes, edits)),
        )
    )
    path = tmp_path_factory.mktemp("fuzz") / "x.pt"
    path.write_bytes(blob)
    try:
        ckpt = load_checkpoint(path)
    except UserError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(ckpt["config"], Config)


def _overwrite(blob: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(blob)
    for at, new in edits:
        out[at : at + len(new)] = new
    return bytes(out)


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"model": None}, "'model'"),
        ({"config": "{not json"}, "configuration"),
        ({"config": json.dumps({"n_class": "five"})}, "configuration"),
        ({"config": json.dumps({"n_class": 0})}, "--n-class"),
        ({"episode": "3"}, "'episode'"),
    ],
)
def test_a_checkpoint_with_a_broken_structure_is_a_user_error(
    tmp_path: Path, checkpoint_bytes: bytes, change: dict, culprit: str
) -> None:
    path = tmp_path / "odd.pt"
    path.write_bytes(checkpoint_bytes)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, **change}, path)
    with pytest.raises(UserError, match=f"checkpoint {path} is damaged.*{culprit}"):
        load_checkpoint(path)
