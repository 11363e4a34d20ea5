"""Learning curves of several runs side by side: validation accuracy against meta-training
episodes and against meta-training time, and the training episodes' accuracy; one figure, one
line per run.

Runs compared this way should share their validation episodes (same data, N, K, Q and
--episode-val): then the curves differ only by what the runs learned. Each line gives the run,
its validation accuracies in order, the best one and the test result when there is one.

    python benchmarks/curves.py /work/runs/curve/1shot-seed0/* --png curves-1shot.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from attnopt.errors import UserError
from attnopt.figures.plot import save_figure
from attnopt.figures.report import Metrics, read_metrics, read_test


def draw(runs: dict[str, Metrics], title: str):  # -> matplotlib Figure
    """Validation accuracy (± 95% CI) of every run against episodes and against seconds, and
    the training episodes' running accuracy (a widening gap to validation is over-fitting)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.8))
    by_episode, by_time, train = fig.subplots(1, 3)
    by_time.sharey(by_episode)
    for name, metrics in runs.items():
        val = metrics.val
        # time of each validation: the run's meta-training time spread evenly over its episodes
        # (metrics.csv's own clock restarts when a run is resumed)
        seconds = metrics.seconds * val.episode / max(metrics.last_episode, 1)
        for ax, x in ((by_episode, val.episode), (by_time, seconds)):
            (drawn,) = ax.plot(x, val.accuracy, "o-", ms=3, lw=1.2, label=name)
            low, high = val.accuracy - val.ci95, val.accuracy + val.ci95
            ax.fill_between(x, low, high, alpha=0.15, lw=0, color=drawn.get_color())
        train.plot(metrics.train.episode, metrics.train.accuracy, lw=1.2, label=name)
    by_episode.set_xlabel("meta-training episode")
    by_time.set_xlabel("meta-training time (s, validation included)")
    train.set_xlabel("meta-training episode")
    by_episode.set_ylabel("validation accuracy (%)")
    train.set_ylabel("training episodes' accuracy (%, running mean)")
    for ax in (by_episode, by_time, train):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return fig


def line(name: str, metrics: Metrics, run_dir: Path) -> str:
    """One result line: validation accuracies in order, the best, the test result."""
    val = metrics.val
    if not len(val.episode):
        return f"{name}: no validation yet"
    best = int(np.nanargmax(val.accuracy))
    curve = " ".join(f"{e}:{a:.2f}" for e, a in zip(val.episode, val.accuracy, strict=True))
    test = read_test(run_dir)
    tested = f"; test {test.accuracy:.2f} ± {test.ci95:.2f}" if test else ""
    return (
        f"{name}: val {curve}; best {val.accuracy[best]:.2f} at {val.episode[best]}; "
        f"{metrics.seconds:.0f} s{tested}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (--save of attnopt train)")
    parser.add_argument("--png", type=Path, help="write the figure here")
    parser.add_argument("--labels", nargs="+", help="the runs' names (default: their folders')")
    parser.add_argument("--title", default="validation accuracy", help="the figure's title")
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs) or len(set(labels)) < len(labels):
        raise UserError(
            "give one distinct --labels name per run (two runs may share a folder name)"
        )
    runs = {name: read_metrics(run) for name, run in zip(labels, args.runs, strict=True)}
    for name, run in zip(labels, args.runs, strict=True):
        print(line(name, runs[name], run), flush=True)
    if args.png:
        print(f"wrote {save_figure(draw(runs, args.title), args.png)}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
