"""attnopt compare (paired differences on identical test episodes) and attnopt info."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ablation import across_seeds
from conftest import error_line
from scipy import stats

from attnopt.cli.commands import main
from attnopt.cli.compare import paired_difference


def test_the_paired_difference_is_the_mean_of_the_episode_differences() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 1.0, 600)
    b = np.clip(a + rng.normal(0.02, 0.05, 600), 0, 1)
    mean, low, high, p = paired_difference(a, b)
    diff = 100 * (b - a)
    half = stats.t.ppf(0.975, 599) * diff.std(ddof=1) / np.sqrt(600)
    assert mean == pytest.approx(diff.mean())
    assert (low, high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(600))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 599))
    assert paired_difference(a, a)[:3] == (0.0, 0.0, 0.0)  # identical runs: no difference


def test_the_interval_over_seeds_treats_each_seed_as_one_observation() -> None:
    mean, low, high = across_seeds([0.82, 0.30, -0.10, 0.60])
    sem = np.std([0.82, 0.30, -0.10, 0.60], ddof=1) / 2
    assert mean == pytest.approx(0.405)
    assert (low, high) == pytest.approx(
        (0.405 - stats.t.ppf(0.975, 3) * sem, 0.405 + stats.t.ppf(0.975, 3) * sem)
    )
    two = across_seeds([1.0, 0.0])  # two seeds: 12.7 times the half-spread either side
    assert two == pytest.approx((0.5, 0.5 - 12.706 * 0.5, 0.5 + 12.706 * 0.5), abs=1e-3)
    assert across_seeds([0.4, 0.4]) == (0.4, 0.4, 0.4)
    one = across_seeds([0.7])
    assert one[0] == 0.7 and np.isnan(one[1]) and np.isnan(one[2])


@pytest.fixture
def tested(trained_run: Path, capsys) -> tuple[Path, Path]:
    """Two test records of the tiny run's best.pt on the same 6 episodes: its own BatchNorm
    mode (support statistics) and ``--bn transductive``, saved elsewhere."""
    ckpt = str(trained_run / "ckpts" / "best.pt")
    assert main(["test", "--resume", ckpt, "--episode-test", "6", "--cpu"]) == 0
    other = ["--bn", "transductive", "--save", str(trained_run / "other")]
    assert main(["test", "--resume", ckpt, "--episode-test", "6", "--cpu", *other]) == 0
    capsys.readouterr()
    name = "evals/best-3way-2shot-2query-6episodes.json"
    return trained_run / name, trained_run / "other" / name


def _accuracies(record: Path) -> np.ndarray:
    rows = record.with_name(record.stem + "_episodes.csv").read_text().splitlines()[1:]
    return np.array([float(r.split(",")[1]) for r in rows])


def _shifted(record: Path, folder: Path) -> Path:
    """A copy of test record ``record`` whose first episode scored one query better: records
    that surely differ (two tiny models' records can tie on every episode)."""
    folder.mkdir()
    copy = folder / record.name
    shutil.copy(record, copy)
    lines = record.with_name(record.stem + "_episodes.csv").read_text().splitlines()
    index, accuracy, loss = lines[1].split(",")
    lines[1] = f"{index},{float(accuracy) + 1 / 6:.6f},{loss}"
    copy.with_name(copy.stem + "_episodes.csv").write_text("\n".join(lines) + "\n")
    return copy


def test_compare_prints_the_paired_difference_of_each_record_against_the_first(
    tested: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    best, _ = tested
    shifted = _shifted(best, tmp_path / "shifted")
    assert main(["compare", str(best), str(shifted), str(best)]) == 0
    out = capsys.readouterr().out.splitlines()
    mean, low, high, _ = paired_difference(_accuracies(best), _accuracies(shifted))
    assert mean == pytest.approx(100 / 6 / 6, abs=1e-3)  # one query of 6, on one episode of 6
    assert out[0].startswith(f"A = {best}: ")
    assert out[2].startswith(f"  B - A: {mean:+.2f} points (95% CI {low:+.2f} to {high:+.2f})")
    assert out[4].startswith("  B - A: +0.00 points")  # a record against itself
    assert "identical on every episode" in out[4] and "equal on 6" in out[4]
    assert "p = " in out[2] and "nan" not in out[2] + out[4]


def test_compare_refuses_records_of_other_episodes(
    tested: tuple[Path, Path], trained_run: Path, capsys
) -> None:
    best, _ = tested
    ckpt = trained_run / "ckpts" / "last.pt"
    assert main(["test", "--resume", str(ckpt), "--episode-test", "5", "--cpu"]) == 0
    other = trained_run / "evals" / "last-3way-2shot-2query-5episodes.json"
    assert main(["compare", str(best), str(other)]) == 2
    line = error_line(capsys)
    assert str(other) in line and "same episodes" in line


def test_compare_refuses_a_record_without_its_episodes(
    tested: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    best, transductive = tested
    lonely = tmp_path / "lonely.json"
    shutil.copy(transductive, lonely)
    assert main(["compare", str(best), str(lonely)]) == 2
    assert "per-episode" in error_line(capsys)


def test_compare_points_from_an_episodes_file_to_its_record(
    trained_run: Path, tested: tuple[Path, Path], capsys
) -> None:
    episodes = trained_run / "test_episodes.csv"
    assert main(["compare", str(episodes), str(trained_run)]) == 2
    assert error_line(capsys).endswith(f"pass {trained_run / 'test.json'} instead")
    best = tested[0]
    assert main(["compare", str(best.with_name(best.stem + "_episodes.csv")), str(best)]) == 2
    assert error_line(capsys).endswith(f"pass {best} instead")


def test_compare_takes_run_folders(trained_run: Path, tmp_path: Path, capsys) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(trained_run, twin)
    assert main(["compare", str(trained_run), str(twin)]) == 0
    assert "B - A: +0.00 points" in capsys.readouterr().out


def test_info_tells_how_a_checkpoint_was_trained_without_data(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import attnopt.data

    def no_data(*args: object) -> None:
        raise AssertionError("attnopt info read data")

    monkeypatch.setattr(attnopt.data, "load_split", no_data)
    assert main(["info", str(trained_run / "ckpts" / "last.pt")]) == 0
    out = capsys.readouterr().out
    test = json.loads((trained_run / "test.json").read_text())
    assert "3-way 2-shot, 2 queries per class" in out and "data: folder" in out
    assert "MLAL" in out and "episode 6 of 6" in out
    assert f"{test['accuracy']:.2f}% ± {test['ci95']:.2f}%" in out
