"""``attnopt report RUN_DIR``: learning curves (report.png) and a short summary of a run.

Reads metrics.csv (and test.json when the run has been tested); also written at the end of
every training run.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnopt.errors import UserError
from attnopt.figures.plot import save_figure
from attnopt.training.evaluation import EvalResult, duration

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REQUIRED = ("episode", "split", "loss", "accuracy", "ci95", "elapsed_s")


@dataclass(frozen=True)
class Curve:
    """One split's rows of metrics.csv as arrays (NaN where a cell is empty)."""

    episode: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    ci95: np.ndarray


@dataclass(frozen=True)
class Metrics:
    train: Curve
    val: Curve
    seconds: float  # meta-training time, validation included, summed over resumed segments
    last_episode: int


def _number(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_metrics(run_dir: Path) -> Metrics:
    """metrics.csv of ``run_dir``; UserError when the folder is not a run or the file is bad."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; pass the --save folder of a training run")
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.csv; pass the --save folder of a training run")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} is not an attnopt metrics file (no column {missing[0]!r})")
            rows = [
                (r["split"], int(r["episode"]), *(_number(r[c]) for c in REQUIRED[2:]))
                for r in reader
            ]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); retrain or restore it") from None
    if not rows:
        raise UserError(
            f"{path} has no rows yet: the run stopped before its first log line (one every "
            "--log-freq episodes); resume it with --resume, or report on it later"
        )

    def curve(split: str) -> Curve:
        picked = np.array([r[1:5] for r in rows if r[0] == split], dtype=float).reshape(-1, 4)
        return Curve(picked[:, 0].astype(int), picked[:, 1], picked[:, 2], picked[:, 3])

    # elapsed_s restarts at 0 when a run is resumed: add up the segments.
    elapsed = [r[5] for r in rows if not math.isnan(r[5])]
    seconds, peak = 0.0, 0.0
    for previous, value in zip([0.0, *elapsed], elapsed, strict=False):
        if value < previous:
            seconds += peak
        peak = value
    return Metrics(curve("train"), curve("val"), seconds + peak, max(r[1] for r in rows))


def read_test(run_dir: Path) -> EvalResult | None:
    """test.json of ``run_dir`` as an EvalResult; None when the run has not been tested."""
    path = run_dir / "test.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        return EvalResult(**{f.name: saved[f.name] for f in fields(EvalResult) if f.name in saved})
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); rerun `attnopt test`") from None


def draw(metrics: Metrics, title: str) -> Figure:
    """Accuracy and loss against episodes: train (running means) and validation (± 95% CI)."""
    from matplotlib.figure import Figure  # here, so that `import attnopt` does not load it

    fig = Figure(figsize=(10, 3.8))
    acc_ax, loss_ax = fig.subplots(1, 2)
    train, val = metrics.train, metrics.val
    acc_ax.plot(train.episode, train.accuracy, color="tab:blue", lw=1.2, label="train")
    loss_ax.plot(train.episode, train.loss, color="tab:blue", lw=1.2, label="train")
    if len(val.episode):
        acc_ax.fill_between(
            val.episode,
            val.accuracy - val.ci95,
            val.accuracy + val.ci95,
            color="tab:orange",
            alpha=0.25,
            lw=0,
            label="val 95% CI",
        )
        acc_ax.plot(val.episode, val.accuracy, "o-", color="tab:orange", ms=3, lw=1.2, label="val")
        best = int(np.nanargmax(val.accuracy))
        acc_ax.plot(
            val.episode[best], val.accuracy[best], "*", color="tab:red", ms=10, label="best val"
        )
        if not np.isnan(val.loss).all():
            loss_ax.plot(val.episode, val.loss, "o-", color="tab:orange", ms=3, lw=1.2, label="val")
    acc_ax.set_ylabel("query accuracy (%)")
    loss_ax.set_ylabel("query cross-entropy")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("meta-training episode")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def summarize(metrics: Metrics, test: EvalResult | None) -> str:
    """A few lines: time, best validation accuracy and where, test result if present."""
    lines = [f"{metrics.last_episode} episodes of meta-training in {duration(metrics.seconds)}"]
    val = metrics.val
    if len(val.episode):
        best = int(np.nanargmax(val.accuracy))
        lines.append(
            f"best val accuracy {val.accuracy[best]:.2f}% ± {val.ci95[best]:.2f}% at episode "
            f"{val.episode[best]} ({len(val.episode)} validations)"
        )
    else:
        lines.append("no validation yet")
    lines.append(f"test accuracy {test.summary()}" if test else "not tested yet (no test.json)")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> tuple[Path, str]:
    """Write ``run_dir/report.png`` (atomically); returns its path and the summary."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    test = read_test(run_dir)
    title = f"{run_dir.resolve().name}: learning curves"
    if test:
        title += f" (test {test.accuracy:.2f}% ± {test.ci95:.2f}%)"
    path = save_figure(draw(metrics, title), run_dir / "report.png")
    return path, summarize(metrics, test)
