import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import error_line, tiny_flags

from attnopt.cli import main, seed_main

REPO = Path(__file__).resolve().parents[1]


def test_train_ends_with_the_test_accuracy_line(trained_template: tuple[Path, str]) -> None:
    last = trained_template[1].strip().splitlines()[-1]
    assert last.startswith("test accuracy ") and "(95% CI, 5 episodes, 3-way 2-shot)" in last


def test_train_leaves_a_complete_run_folder(trained_run: Path) -> None:
    for name in (
        "config.json",
        "metrics.csv",
        "train.log",
        "ckpts/last.pt",
        "ckpts/best.pt",
        "test.json",
        "gates.csv",
        "gates.png",
        "meta_attention.png",
        "cross_attention.png",
    ):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["n_shot"] == 2 and config["epoch"] == 8 and config["batch_size"] == 6
    result = json.loads((trained_run / "test.json").read_text())
    assert result["episodes"] == 5 and result["n_class"] == 3 and result["n_shot"] == 2
    assert 0.0 <= result["accuracy"] <= 100.0 and result["ci95"] >= 0.0
    with open(trained_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["episode"], r["split"]) for r in rows] == [
        ("2", "train"),
        ("3", "val"),
        ("4", "train"),
        ("6", "train"),
        ("6", "val"),
    ]
    log = (trained_run / "train.log").read_text()
    assert "episode 4  train loss" in log and "val acc" in log
    assert not list(trained_run.rglob("*.tmp"))


def test_test_mode_evaluates_a_checkpoint_under_a_name_of_its_own(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ckpt = trained_run / "ckpts" / "best.pt"
    runs_own = (trained_run / "test.json").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(
        elsewhere
    )  # the checkpoint's path is recorded relative to its run, not to here
    assert main(["test", "--resume", str(ckpt), "--episode-test", "7", "--cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith("(95% CI, 7 episodes, 3-way 2-shot)")
    assert (trained_run / "test.json").read_bytes() == runs_own  # the run's own result stays
    record = trained_run / "evals" / "best-3way-2shot-2query-7episodes.json"
    first = json.loads(record.read_text())
    assert first["episodes"] == 7 and first["checkpoint"] == "ckpts/best.pt"
    with open(record.with_name(record.stem + "_episodes.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in rows] == list(range(7))
    mean = 100 * sum(float(r["accuracy"]) for r in rows) / 7
    assert mean == pytest.approx(first["accuracy"], abs=1e-3)
    # Same episodes, same checkpoint: the same accuracy, episode by episode.
    assert main(["test", "--resume", str(ckpt), "--episode-test", "7", "--cpu"]) == 0
    assert json.loads(record.read_text()) == first


def test_test_mode_with_another_shot_count(trained_run: Path, capsys) -> None:
    ckpt = trained_run / "ckpts" / "best.pt"
    assert main(["test", "--resume", str(ckpt), "--n-shot", "1", "--cpu"]) == 0
    assert "3-way 1-shot" in capsys.readouterr().out


def test_resume_continues_from_the_checkpoint(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    flags = tiny_flags(folder_dataset, trained_run)
    flags[flags.index("--episode") + 1] = "8"
    last = trained_run / "ckpts" / "last.pt"
    assert main(["train", *flags, "--resume", str(last)]) == 0
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["episode"] == 8
    with open(trained_run / "metrics.csv", newline="") as f:
        episodes = [int(r["episode"]) for r in csv.DictReader(f)]
    assert episodes == [2, 3, 4, 6, 6, 8, 8]


def test_resume_into_another_architecture_is_refused(
    trained_run: Path, folder_dataset: Path, capsys
) -> None:
    flags = tiny_flags(folder_dataset, trained_run)
    flags[flags.index("--n-class") + 1] = "4"
    assert main(["train", *flags, "--resume", str(trained_run / "ckpts" / "last.pt")]) == 2
    assert "--n-class 3" in error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["train", "--no-such-flag"], "--no-such-flag"),
        (["train", "--n-shot", "abc"], "--n-shot"),
        (["train", "--n-shot", "0"], "--n-shot"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--input-size", "3"], "--input-size"),
        (["train", "--image-size", "8"], "--image-size"),
        (["train", "--data", "miniimagenet"], "--data-root"),
        (["train", "--batch-size", "26"], "--batch-size"),
        (["train", "--pin-mem", "maybe"], "--pin-mem"),
        (["test"], "--resume"),
        (["test", "--resume", "/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
        (["train", "--data", "miniimagenet", "--data-root", "/no/such/dir"], "/no/such/dir"),
    ],
)
def test_bad_flags_exit_2_with_one_error_line(argv: list[str], culprit: str, capsys) -> None:
    assert main(argv) == 2
    assert culprit in error_line(capsys)


def test_damaged_checkpoint_is_a_user_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["test", "--resume", str(bad)]) == 2
    assert str(bad) in error_line(capsys)


@pytest.mark.parametrize(
    ("mutate", "culprit"),
    [
        ("missing_split", "val"),
        ("too_few_images", "train_n00000004"),
        ("unreadable", "broken.jpg"),
    ],
)
def test_bad_data_exits_2_naming_the_path(
    folder_dataset: Path, tmp_path: Path, mutate: str, culprit: str, capsys
) -> None:

    if mutate == "missing_split":
        shutil.rmtree(folder_dataset / "val")
    elif mutate == "too_few_images":
        for f in sorted((folder_dataset / "train" / "train_n00000004").iterdir())[1:]:
            f.unlink()
    else:
        (folder_dataset / "train" / "train_n00000001" / "broken.jpg").write_bytes(b"junk")
    run = tmp_path / "run"
    assert main(["train", *tiny_flags(folder_dataset, run)]) == 2
    assert culprit in error_line(capsys)
    assert not (run / "ckpts" / "last.pt").exists()


def test_seed_entry_point_maps_mode_onto_the_commands(trained_run: Path, capsys) -> None:
    ckpt = trained_run / "ckpts" / "best.pt"
    assert seed_main(["--mode", "test", "--resume", str(ckpt), "--episode-test", "3"]) == 0
    assert "3 episodes" in capsys.readouterr().out
    assert seed_main(["--mode", "fly"]) == 2
    assert "--mode" in error_line(capsys)


def test_console_script_and_main_py_exit_2_on_bad_flags(tmp_path: Path) -> None:
    for cmd in (
        [sys.executable, "-m", "attnopt", "train", "--n-class", "x"],
        [sys.executable, str(REPO / "main.py"), "--mode", "train", "--n-class", "x"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith("error: ") and "--n-class" in proc.stderr


def test_checkpoint_of_one_attention_variant_refuses_another(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = trained_run / "ckpts" / "best.pt"
    assert json.loads((trained_run / "config.json").read_text())["attention"] == "both"
    assert main(["test", "--resume", str(ckpt), "--attention", "none", "--cpu"]) == 2
    line = error_line(capsys)
    assert "--attention both" in line and str(ckpt) in line


def test_gate_log_has_every_inner_step_and_layer_of_each_logged_episode(trained_run: Path) -> None:
    with open(trained_run / "gates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {(r["episode"], r["step"], r["layer"]) for r in rows}
    layers = ["block0", "block1", "block2", "block3", "head", "attn"]
    expected = {(str(e), str(t), layer) for e in (2, 4, 6) for t in range(1, 9) for layer in layers}
    assert keys == expected and len(rows) == len(expected)
    assert all(0 < float(r["input_gate"]) < 1 and 0 < float(r["forget_gate"]) < 1 for r in rows)


def test_plot_command_redraws_the_figures(trained_run: Path, capsys) -> None:
    (trained_run / "gates.png").unlink()
    assert main(["plot", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "gates.png" in out and "cross_attention.png" in out
    assert (trained_run / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_folder_that_is_not_a_run_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path)]) == 2
    assert str(tmp_path) in error_line(capsys)
