"""The README's main job and the seed-compatible scripts, run at tiny sizes."""

import json
import subprocess
from pathlib import Path

import pytest

from attnopt.cli.commands import main

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--episode",
    "4",
    "--val-freq",
    "2",
    "--episode-val",
    "3",
    "--episode-test",
    "4",
    "--log-freq",
    "2",
    "--image-size",
    "16",
    "--n-eval",
    "2",
    "--cpu",
]


def test_default_main_job_trains_on_glyphs_and_tests(small_glyphs, tmp_path: Path, capsys) -> None:
    run = tmp_path / "logs"
    assert main(["train", "--save", str(run), *TINY]) == 0
    assert "5-way 5-shot" in capsys.readouterr().out.strip().splitlines()[-1]
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "glyphs" and config["n_shot"] == 5
    assert json.loads((run / "test.json").read_text())["episodes"] == 4


@pytest.mark.parametrize("shot", ["5", "1"])
def test_seed_scripts_train_then_evaluate(shot: str, folder_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data-root", str(folder_dataset), *TINY]
    train = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / f"train_{shot}s_5c.sh"),
            *common,
            "--save",
            str(run),
            "--n-shot",
            "1" if shot == "1" else "2",
            "--batch-size",
            "5" if shot == "1" else "10",
        ],
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["episode"] == 4 and config["epoch"] == (12 if shot == "1" else 8)
    assert config["hidden_size"] == 20 and config["grad_clip"] == 0.25
    evaluate = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / f"eval_{shot}s_5c.sh"),
            *common,
            "--n-shot",
            "1" if shot == "1" else "2",
            "--batch-size",
            "5" if shot == "1" else "10",
            "--resume",
            str(run / "ckpts" / "best.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert evaluate.stdout.strip().splitlines()[-1].startswith("test accuracy ")
    assert "(95% CI, 600 episodes" not in evaluate.stdout  # --episode-test 4 won
