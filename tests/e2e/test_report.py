"""Run reports: metrics.csv columns, ``attnopt report`` and ``--tensorboard``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import error_line, tiny_flags

from attnopt.cli.commands import main
from attnopt.figures.report import read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_have_learning_rate_speed_and_time_for_train_and_ci_for_val(
    trained_template,
) -> None:
    run = trained_template[0]
    rows = _rows(run)
    assert list(rows[0]) == [
        "episode",
        "split",
        "loss",
        "accuracy",
        "ci95",
        "lr",
        "episodes_per_s",
        "elapsed_s",
    ]
    lr = json.loads((run / "config.json").read_text())["lr"]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train and val
    for r in train:
        assert float(r["lr"]) == lr and float(r["episodes_per_s"]) > 0 and r["ci95"] == ""
        assert 0 <= float(r["accuracy"]) <= 100 and float(r["loss"]) > 0
    for r in val:
        assert float(r["ci95"]) >= 0 and float(r["loss"]) > 0 and r["lr"] == ""
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


def test_training_writes_the_report(trained_template) -> None:
    assert (trained_template[0] / "report.png").read_bytes()[:8] == PNG


def test_report_prints_best_validation_test_result_and_time(trained_run: Path, capsys) -> None:
    (trained_run / "report.png").unlink()
    assert main(["report", str(trained_run)]) == 0
    out = capsys.readouterr().out
    val = [r for r in _rows(trained_run) if r["split"] == "val"]
    best = max(val, key=lambda r: float(r["accuracy"]))  # the first of equals, as training keeps
    assert f"best val accuracy {float(best['accuracy']):.2f}% ± {float(best['ci95']):.2f}%" in out
    assert f"at episode {best['episode']} ({len(val)} validations)" in out
    test = json.loads((trained_run / "test.json").read_text())
    assert f"test accuracy {test['accuracy']:.2f}% ± {test['ci95']:.2f}%" in out
    assert "6 episodes of meta-training in " in out
    assert (trained_run / "report.png").read_bytes()[:8] == PNG
    assert not list(trained_run.glob(".*tmp"))


def test_report_without_test_json_says_so(trained_run: Path, capsys) -> None:
    (trained_run / "test.json").unlink()
    assert main(["report", str(trained_run)]) == 0
    assert "not tested yet" in capsys.readouterr().out


def test_time_adds_up_the_segments_of_a_resumed_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "metrics.csv").write_text(
        "episode,split,loss,accuracy,ci95,elapsed_s\n"  # an older file: no lr, no episodes/s
        "2,train,1.0,40,,50\n"
        "4,train,0.9,50,,100\n"
        "4,val,,45,3,130\n"
        "6,train,0.8,60,,20\n"  # resumed from episode 4: the clock restarts
        "6,val,,55,2,70\n"
    )
    metrics = read_metrics(tmp_path)
    assert metrics.seconds == 200 and metrics.last_episode == 6
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 episodes of meta-training in 3 min 20 s" in out
    assert "best val accuracy 55.00% ± 2.00% at episode 6 (2 validations)" in out


@pytest.mark.parametrize(
    ("content", "culprit"),
    [
        (None, "no metrics.csv"),
        ("episode,split,loss,accuracy,ci95,elapsed_s\n", "no rows"),
        ("episode,split,loss,accuracy,ci95,elapsed_s\nfour,train,1,2,,3\n", "damaged"),
        ("episode,split,accuracy\n2,train,50\n", "'loss'"),
    ],
)
def test_a_folder_that_is_not_a_run_exits_2(
    tmp_path: Path, content: str | None, culprit: str, capsys
) -> None:
    if content is not None:
        (tmp_path / "metrics.csv").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert culprit in line and str(tmp_path) in line
    assert not (tmp_path / "report.png").exists()


def test_report_of_a_missing_folder_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in error_line(capsys)


def test_tensorboard_without_the_package_stops_before_training(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    assert main(["train", *tiny_flags(folder_dataset, run), "--tensorboard"]) == 2
    line = error_line(capsys)
    assert "--tensorboard" in line and 'pip install "attnopt[tensorboard]"' in line
    assert not run.exists()


def test_tensorboard_gets_the_scalars_of_metrics_csv(folder_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    flags = [*tiny_flags(folder_dataset, run), "--episode", "2", "--val-freq", "2"]
    assert main(["train", *flags, "--attention", "none", "--tensorboard"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = _rows(run)
    for split, name in (("train", "loss"), ("train", "episodes_per_s"), ("val", "accuracy")):
        logged = [(e.step, e.value) for e in events.Scalars(f"{split}/{name}")]
        expected = [(int(r["episode"]), float(r[name])) for r in rows if r["split"] == split]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-5)
