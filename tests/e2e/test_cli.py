import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import error_line, tiny_flags

from attnopt.cli.commands import main, seed_main

REPO = Path(__file__).resolve().parents[2]


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


def test_an_unknown_flag_points_to_the_commands_own_help(capsys) -> None:
    assert main(["train", "--frobnicate"]) == 2
    line = error_line(capsys)
    assert "--frobnicate" in line and "`attnopt train --help`" in line


def test_main_py_help_shows_the_mode_flag_and_the_settings(capsys) -> None:
    assert seed_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python main.py --mode train|test")
    assert "--n-shot" in out and "attnopt COMMAND" not in out


def test_help_shows_the_defaults_of_the_config_and_of_each_data_sets_preset(capsys) -> None:
    from attnopt.cli.commands import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--hidden-size HIDDEN_SIZE meta-learner LSTM hidden size (default: 20)" in text
    assert "(default by --data: 400 (glyphs), 50000 (miniimagenet, folder," in text
    assert "--max-bad-steps" in text and "--deterministic" in text and "--overwrite" in text


def test_a_text_file_named_like_a_checkpoint_says_what_it_is_not(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("just some notes\n")
    assert main(["test", "--resume", str(notes)]) == 2
    line = error_line(capsys)
    assert f"{notes} is not an attnopt checkpoint: it is a text file" in line


def test_make_config_names_an_unknown_setting() -> None:
    import attnopt

    with pytest.raises(attnopt.UserError, match="unknown setting 'nshot'; did you mean 'n_shot'"):
        attnopt.make_config(nshot=1)


def test_a_data_error_is_the_only_line_on_stderr(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attnopt", "train", "--data", "folder", "--data-root",
         str(tmp_path / "missing"), "--save", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert str(tmp_path / "missing") in proc.stderr and not (tmp_path / "run").exists()


def test_import_attnopt_and_help_load_neither_matplotlib_nor_the_compiler() -> None:
    probe = (
        "import sys, attnopt\n"
        "from attnopt.cli.commands import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = ('matplotlib', 'torch', 'torch._dynamo', 'torch._inductor', 'scipy')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "import attnopt.training.loop, attnopt.training.evaluation\n"
        "loop, evaluation = attnopt.training.loop, attnopt.training.evaluation\n"
        "print(callable(attnopt.train), loop.__name__, evaluation.__name__)\n"
        "print([m for m in ('matplotlib', 'torch._dynamo', 'scipy') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "True attnopt.training.loop attnopt.training.evaluation", "[]"]


def test_a_bad_training_image_suggests_skipping_it(folder_dataset: Path, tmp_path: Path, capsys):
    bad = folder_dataset / "train" / "train_n00000000" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    assert main(["train", *tiny_flags(folder_dataset, tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert str(bad) in line and "--skip-bad-images" in line


def test_report_on_a_run_stopped_before_its_first_log_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "episode,split,loss,accuracy,ci95,lr,episodes_per_s,elapsed_s\n"
    )
    assert main(["report", str(run)]) == 2
    assert "stopped before its first log line" in error_line(capsys)


def test_evaluation_speaks_when_no_progress_bar_is_shown(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import attnopt.training.evaluation

    monkeypatch.setattr(attnopt.training.evaluation, "PROGRESS_SECONDS", 0.0)  # a line per episode
    caplog.set_level("INFO", logger="attnopt")
    ckpt = trained_run / "ckpts" / "best.pt"
    assert (
        main(["test", "--resume", str(ckpt), "--episode-test", "3", "--eval-batch", "1", "--cpu"])
        == 0
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test: ")]
    assert [line.split(" episodes")[0] for line in lines] == ["test: 1/3", "test: 2/3"]
    assert all("left)" in line for line in lines)
