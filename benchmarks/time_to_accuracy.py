"""Time to accuracy: wall time until validation accuracy first reaches --target, per meta-batch.

Meta-trains on the built-in data set with each --meta-batch B (and its learning rate), the
same number of episodes (tasks) and the same validation episodes, then reads metrics.csv.
One line per run. Batching must not buy speed with accuracy: compare the times to the same
target and the final test accuracies.

    python benchmarks/time_to_accuracy.py --meta-batch 1 --meta-batch 4 --lr 1e-3 --lr 2e-3
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from attnopt.api import train
from attnopt.config import resolve


def run(out: Path, meta_batch: int, lr: float, args: argparse.Namespace) -> str:
    save = out / f"B{meta_batch}-lr{lr:g}-seed{args.seed}"
    config = resolve(
        {
            "meta_batch": meta_batch,
            "lr": lr,
            "n_shot": args.shot,
            "episode": args.episodes,
            "val_freq": args.val_freq,
            "log_freq": args.val_freq,
            "episode_val": 100,
            "episode_test": 600,
            "seed": args.seed,
            "cpu": args.device == "cpu",
            "save": str(save),
        }
    )
    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
    with open(save / "metrics.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    reached = next((r for r in val if float(r["accuracy"]) >= args.target), None)
    when = (
        f"episode={reached['episode']} seconds={float(reached['elapsed_s']):.0f}"
        if reached
        else "not reached"
    )
    return (
        f"time-to-accuracy: data=glyphs {args.shot}-shot B={meta_batch} lr={lr:g} "
        f"seed={args.seed} target={args.target:g}% {when} "
        f"best_val={result.best_val:.2f} test={result.test.accuracy:.2f}+-{result.test.ci95:.2f} "
        f"train_s={result.train_seconds:.0f} wall_s={wall:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, action="append", required=True)
    parser.add_argument("--lr", type=float, action="append", required=True, help="one per B")
    parser.add_argument("--target", type=float, default=95.0, help="validation accuracy, %%")
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=800)
    parser.add_argument("--val-freq", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/attnopt-time-to-accuracy"))
    args = parser.parse_args()
    if len(args.lr) != len(args.meta_batch):
        parser.error("give one --lr per --meta-batch")
    if args.threads:
        torch.set_num_threads(args.threads)
    for meta_batch, lr in zip(args.meta_batch, args.lr, strict=True):
        print(run(args.out, meta_batch, lr, args), flush=True)


if __name__ == "__main__":
    main()
