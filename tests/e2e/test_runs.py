"""One run, one folder: resume continues the run it came from, --init starts a new one from its
weights, a run folder is never destroyed by another run, and a stopped run keeps its work."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import error_line, make_checkpoint, make_folder_dataset, tiny_flags

import attnopt.training.loop
import attnopt.training.pipeline
from attnopt.api import train_config
from attnopt.cli.commands import main
from attnopt.config import Config, fields_where, flag
from attnopt.data.episodes import TRAIN_STREAM, EpisodeSampler
from attnopt.errors import UserError
from attnopt.training.checkpoint import load_checkpoint

CONTINUATION_VALUES = {
    "episode": 9,
    "val_freq": 2,
    "log_freq": 3,
    "episode_val": 5,
    "episode_test": 7,
    "cpu": True,
    "tensorboard": True,
    "n_workers": 1,
    "cache_dir": "/elsewhere/cache",
    "data_root": "/moved/data",
    "lr": 0.01,
    "compile": True,
    "eval_batch": 2,
    "deterministic": True,
    "max_bad_steps": 3,
    "save_every": 1.5,
    "pin_mem": True,
    "save": "/another/run",
    "resume": None,  # set to the checkpoint by the test
}


@pytest.fixture(autouse=True)
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures are drawn and tested elsewhere (test_cli.py); here they only cost time."""
    monkeypatch.setattr(attnopt.training.pipeline, "draw_figures", lambda *a: None)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", classes={f"n{c:08d}": 4 for c in range(3)})


def train(data: Path, run: Path, *extra: str) -> int:
    """A tiny run (3-way 2-shot, 16x16, 1 inner step, the plain model) with ``extra`` flags
    winning."""
    cheap = ["--epoch", "1", "--attention", "none", "--episode-val", "2", "--episode-test", "3"]
    return main(["train", *tiny_flags(data, run), *cheap, *extra])


def run_checkpoint(tmp_path: Path) -> str:
    """An untrained checkpoint at RUN/ckpts/last.pt."""
    (tmp_path / "run" / "ckpts").mkdir(parents=True)
    return str(make_checkpoint(tmp_path / "run" / "ckpts" / "last.pt"))


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def metric_rows(run: Path) -> list[tuple[int, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["episode"]), r["split"]) for r in csv.DictReader(f)]


class TestResume:
    def test_a_resumed_run_keeps_its_settings_and_its_folder(
        self, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run = tmp_path / "one_shot"
        assert train(data, run, "--n-shot", "1", "--episode", "2", "--val-freq", "2") == 0
        monkeypatch.chdir(tmp_path / "data")  # no --save: the checkpoint's folder, not ./logs
        last = run / "ckpts" / "last.pt"
        assert main(["train", "--resume", str(last), "--episode", "4"]) == 0
        config = json.loads((run / "config.json").read_text())
        assert (config["n_shot"], config["epoch"], config["batch_size"]) == (1, 1, 3)
        assert config["episode"] == 4 and config["save"] == str(run)
        # --data folder started from its own pre-training (--init): resumed all the same
        assert config["init"] == str(run / "pretrain" / "pretrained.pt")
        assert not (tmp_path / "data" / "logs").exists()
        assert load_checkpoint(last)["episode"] == 4
        assert metric_rows(run) == [(2, "train"), (2, "val"), (4, "train"), (4, "val")]

    @pytest.mark.parametrize("name", sorted(CONTINUATION_VALUES))
    def test_each_continuation_setting_may_change(self, name: str, tmp_path: Path) -> None:
        ckpt = run_checkpoint(tmp_path)
        value = ckpt if name == "resume" else CONTINUATION_VALUES[name]
        config = train_config({"resume": ckpt, name: value})
        assert getattr(config, name) == value
        saved = load_checkpoint(ckpt)["config"]
        others = {n: getattr(saved, n) for n in saved.to_dict() if n not in ("save", "resume")}
        assert {n: getattr(config, n) for n in others if n != name} == {
            n: v for n, v in others.items() if n != name
        }

    def test_the_continuation_settings_are_exactly_those_tested(self) -> None:
        assert {f.name for f in fields_where("continuation")} == set(CONTINUATION_VALUES)

    @pytest.mark.parametrize(
        ("name", "value"),
        [("n_shot", 1), ("attention", "none"), ("seed", 4), ("augment", "none"), ("amp", "bf16")],
    )
    def test_a_flag_that_disagrees_with_the_checkpoint_is_an_error(
        self, name: str, value: object, tmp_path: Path
    ) -> None:
        ckpt = run_checkpoint(tmp_path)
        saved = getattr(load_checkpoint(ckpt)["config"], name)
        with pytest.raises(UserError) as e:
            train_config({"resume": ckpt, name: value})
        message = str(e.value)
        assert f"{flag(name)} {value} disagrees" in message
        assert f"trained with {flag(name)} {saved}" in message and f"--init {ckpt}" in message

    def test_lr_on_resume_is_applied_to_the_restored_optimizer(
        self, data: Path, tmp_path: Path
    ) -> None:
        run = tmp_path / "run"
        flags = [
            "--episode",
            "2",
            "--val-freq",
            "2",
            "--attention",
            "both",
            "--attn-lr-scale",
            "0.5",
        ]
        assert train(data, run, *flags) == 0
        last = run / "ckpts" / "last.pt"
        assert main(["train", "--resume", str(last), "--episode", "4", "--lr", "0.004"]) == 0
        groups = load_checkpoint(last)["optimizer"]["param_groups"]
        # the meta-learner, c_I (a tenth: pre-trained, K = 2) and the attention (a half)
        assert [g["lr"] for g in groups] == pytest.approx([0.004, 0.0004, 0.002])
        with open(run / "metrics.csv", newline="") as f:
            lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["split"] == "train"]
        assert lrs == [0.001, 0.004]
        assert "learning rate 0.004 (was 0.001)" in (run / "train.log").read_text()

    @pytest.mark.parametrize("best", ["copied", "missing"])
    def test_a_run_resumed_into_another_folder_finishes_there(
        self, best: str, data: Path, tmp_path: Path
    ) -> None:
        first, second = tmp_path / "first", tmp_path / "second"
        assert train(data, first, "--episode", "3", "--val-freq", "3") == 0
        if best == "missing":
            (first / "ckpts" / "best.pt").unlink()
        before = files(first)
        last = first / "ckpts" / "last.pt"
        assert main(["train", "--resume", str(last), "--save", str(second), "--episode", "6"]) == 0
        assert files(first) == before  # the original run is left as it was
        assert (second / "ckpts" / "best.pt").is_file()
        assert json.loads((second / "test.json").read_text())["episodes"] == 3
        assert json.loads((second / "config.json").read_text())["save"] == str(second)
        assert [e for e, s in metric_rows(second) if s == "val"] == [3, 6]


class TestRunFolders:
    def test_a_new_run_never_replaces_a_run(self, data: Path, tmp_path: Path, capsys) -> None:
        run = tmp_path / "run"
        assert train(data, run) == 0
        before = files(run)
        assert train(data, run, "--episode", "2") == 2
        line = error_line(capsys)
        assert str(run) in line and "--resume" in line and "--overwrite" in line
        assert files(run) == before

    def test_overwrite_replaces_the_run(self, data: Path, tmp_path: Path) -> None:
        run = tmp_path / "run"
        assert train(data, run) == 0
        (run / "notes.txt").write_text("mine")  # not a run file: kept
        assert train(data, run, "--episode", "2", "--val-freq", "2", "--overwrite") == 0
        assert load_checkpoint(run / "ckpts" / "last.pt")["episode"] == 2
        assert metric_rows(run) == [(2, "train"), (2, "val")]
        assert (run / "notes.txt").read_text() == "mine"

    def test_a_failed_start_leaves_nothing(self, tmp_path: Path, capsys) -> None:
        data = make_folder_dataset(tmp_path / "small", classes={"a": 2, "b": 2, "c": 2})
        run = tmp_path / "new" / "run"
        assert train(data, run) == 2  # 2-shot 2-query episodes need 4 images per class
        assert "fewer than" in error_line(capsys)
        assert not (tmp_path / "new").exists()

    @pytest.mark.parametrize("umask", [0o022, 0o027])
    def test_files_get_the_permissions_of_the_umask(
        self, umask: int, data: Path, tmp_path: Path
    ) -> None:
        from matplotlib.figure import Figure

        from attnopt.figures.plot import save_figure

        previous = os.umask(umask)
        try:
            run = tmp_path / "run"
            assert train(data, run, "--episode", "1", "--val-freq", "1") == 0
            save_figure(Figure(figsize=(1, 1)), run / "figure.png")
        finally:
            os.umask(previous)
        written = [run / "config.json", run / "metrics.csv", run / "gates.csv", run / "test.json"]
        written += [run / "test_episodes.csv", run / "ckpts" / "best.pt", run / "figure.png"]
        for path in written:
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
        assert (run / "ckpts").stat().st_mode & 0o777 == 0o777 & ~umask


class TestInit:
    def test_init_starts_a_new_run_from_the_weights(self, data: Path, tmp_path: Path) -> None:
        source, new = tmp_path / "source", tmp_path / "new"
        assert train(data, source, "--episode", "2", "--val-freq", "2") == 0
        best = source / "ckpts" / "best.pt"
        # A learning rate so small that the new run cannot move the weights it starts from.
        assert train(data, new, "--init", str(best), "--episode", "2", "--val-freq", "2",
                     "--lr", "1e-12", "--seed", "9") == 0  # fmt: skip
        start = load_checkpoint(best)
        ended = load_checkpoint(new / "ckpts" / "last.pt")
        for name, value in start["model"].items():
            torch.testing.assert_close(ended["model"][name], value, rtol=0, atol=1e-9)
        steps = {int(s["step"]) for s in ended["optimizer"]["state"].values()}
        assert steps == {2}  # a fresh optimizer: this run's 2 updates only
        assert json.loads((new / "config.json").read_text())["init"] == str(best)
        assert metric_rows(new) == [(2, "train"), (2, "val")]

    def test_init_takes_the_checkpoints_architecture(self, tmp_path: Path) -> None:
        ckpt = make_checkpoint(tmp_path / "c.pt", attention="meta", image_size=20)
        config = train_config({"init": str(ckpt), "data": "folder", "data_root": "/d"})
        assert (config.attention, config.image_size, config.n_class) == ("meta", 20, 3)
        assert config.episode == 50000  # the photo preset: a new run

    def test_init_into_another_architecture_is_an_error(
        self, data: Path, tmp_path: Path, capsys
    ) -> None:
        ckpt = make_checkpoint(tmp_path / "c.pt", image_size=16)
        assert train(data, tmp_path / "run", "--init", str(ckpt), "--attention", "none") == 2
        assert "--attention both" in error_line(capsys)

    def test_resume_and_init_exclude_each_other(self, tmp_path: Path) -> None:
        ckpt = str(make_checkpoint(tmp_path / "c.pt"))
        with pytest.raises(UserError, match="--init"):
            train_config({"resume": ckpt, "init": ckpt})


class TestStopping:
    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_a_signal_saves_last_pt_at_the_end_of_the_meta_update(
        self, signum: int, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
    ) -> None:
        real = EpisodeSampler.episodes

        def episodes(self, indices, *args, **kwargs):
            if self.stream == TRAIN_STREAM and 2 in indices:  # during episode 3
                os.kill(os.getpid(), signum)
            return real(self, indices, *args, **kwargs)

        monkeypatch.setattr(EpisodeSampler, "episodes", episodes)
        handler = signal.getsignal(signum)
        run = tmp_path / "run"
        assert train(data, run, "--val-freq", "100") == 130
        last = run / "ckpts" / "last.pt"
        assert load_checkpoint(last)["episode"] == 3
        err = capsys.readouterr().err
        assert f"interrupted at episode 3; continue with: attnopt train --resume {last}" in err
        assert f"interrupted at episode 3; saved {last}" in (run / "train.log").read_text()
        assert signal.getsignal(signum) is handler  # restored

    def test_save_every_writes_last_pt_between_validations(
        self, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        saved: list[tuple[str, int]] = []
        real = attnopt.training.loop.save_checkpoint

        def save(path, **kwargs):
            saved.append((Path(path).name, kwargs["episode"]))
            real(path, **kwargs)

        monkeypatch.setattr(attnopt.training.loop, "save_checkpoint", save)
        run = tmp_path / "run"
        assert train(data, run, "--episode", "4", "--val-freq", "3", "--save-every", "0") == 0
        # every meta-update; at 3 and 4 (the end) through the validation, after best.pt
        assert [episode for name, episode in saved if name == "last.pt"] == [1, 2, 3, 4]
        assert saved[2] == ("best.pt", 3)


def test_settings_that_fix_shapes_are_compared_as_a_whole(tmp_path: Path) -> None:
    from attnopt.training.checkpoint import check_compatible

    ckpt = load_checkpoint(make_checkpoint(tmp_path / "c.pt", attention="meta", image_size=20))
    config = Config(n_class=3, image_size=24, attention="both")
    with pytest.raises(UserError) as e:
        check_compatible(ckpt, config, 3, "c.pt")
    assert "trained with --attention meta --image-size 20" in str(e.value)
    assert "this run uses --attention both --image-size 24" in str(e.value)
