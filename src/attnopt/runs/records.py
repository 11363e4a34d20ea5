"""Test records: an evaluation's summary (test.json or evals/NAME.json) and the per-episode
accuracies and losses beside it (test_episodes.csv), written and read back."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnopt.config import Config
from attnopt.errors import UserError
from attnopt.runs.fileio import write_csv, write_json

if TYPE_CHECKING:
    from attnopt.training.evaluation import EvalResult

EPISODE_FIELDS = ("episode", "accuracy", "loss")


@dataclass(frozen=True)
class TestRecord:
    """A saved evaluation: the summary (test.json or evals/NAME.json) and the per-episode
    accuracies and losses (the CSV beside it)."""

    path: Path
    summary: dict[str, Any]
    accuracy: list[float]
    loss: list[float]


def episodes_csv(summary_path: Path) -> Path:
    """test.json -> test_episodes.csv; evals/x.json -> evals/x_episodes.csv."""
    return summary_path.with_name(f"{summary_path.stem}_episodes.csv")


def eval_name(checkpoint: str | os.PathLike, config: Config) -> str:
    """evals/<name>.json for an ad-hoc test: the checkpoint and what was tested."""
    return (
        f"{Path(checkpoint).stem}-{config.n_class}way-{config.n_shot}shot-"
        f"{config.n_eval}query-{config.episode_test}episodes"
    )


def write_test_record(
    summary_path: Path,
    result: EvalResult,
    checkpoint: str | os.PathLike,
    checkpoint_episode: int,
    run_dir: Path,
) -> None:
    """Write an EvalResult as ``summary_path`` (JSON) and its per-episode CSV, the
    checkpoint's path relative to ``run_dir`` where it lies inside it."""
    path = Path(checkpoint)
    try:
        shown = str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        shown = str(path.resolve())
    rows = [
        {"episode": i, "accuracy": f"{a:.6g}", "loss": f"{lo:.6g}"}
        for i, (a, lo) in enumerate(zip(result.episode_accuracy, result.episode_loss, strict=True))
    ]
    write_csv(episodes_csv(summary_path), EPISODE_FIELDS, rows)
    summary = {
        **result.to_dict(),
        "checkpoint": shown,
        "episode": checkpoint_episode,
        "episodes_id": result.episodes_id,
    }
    write_json(summary_path, summary)


def read_test_record(path: str | os.PathLike) -> TestRecord:
    """A run folder (its test.json) or a test record's JSON file, with its episodes."""
    path = Path(path)
    summary_path = path / "test.json" if path.is_dir() else path
    if summary_path.suffix == ".csv":  # the per-episode file beside a record, not the record
        record = summary_path.with_name(summary_path.name.removesuffix("_episodes.csv") + ".json")
        raise UserError(f"{path} holds the episodes of {record.name}: pass {record} instead")
    if not summary_path.is_file():
        what = "has no test.json (it was not tested yet)" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {what}; pass a run folder or a test record (.json)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        with open(episodes_csv(summary_path), newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        accuracy = [float(r["accuracy"]) for r in rows]
        loss = [float(r["loss"]) for r in rows]
    except FileNotFoundError:
        raise UserError(
            f"{summary_path} has no per-episode results beside it "
            f"({episodes_csv(summary_path).name}); rerun `attnopt test` with this version"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{summary_path} is damaged ({e}); rerun `attnopt test`") from None
    return TestRecord(summary_path, summary, accuracy, loss)
