"""Accuracy at an equal wall-clock budget: backbones, widths, --adapt modes, plain and MLAL.

Each run meta-trains for --minutes of wall time (no validation: the whole budget goes to
meta-updates; training is stopped by SIGINT, which saves ckpts/last.pt), then tests those
final weights on the --episode-test fixed test episodes (the same for every run: paired) and
writes the test record (RUN/evals/*.json, as ``attnopt test`` does) that ``attnopt compare``
pairs. One result line per run, with the episodes the budget bought.

    python benchmarks/backbone_accuracy.py --minutes 4 --run conv4:32:all:none \
        --run resnet12:64:head:both
    python benchmarks/backbone_accuracy.py --data folder --data-root EMOJI --image-size 32 \
        --run conv4:32:all:none

A run is BACKBONE:WIDTH:ADAPT:ATTENTION. --threads 1 keeps runs comparable on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import torch

from attnopt.api import train
from attnopt.config import Saved, resolve
from attnopt.errors import Interrupted
from attnopt.runs import records
from attnopt.training.checkpoint import load_checkpoint
from attnopt.training.evaluation import test_checkpoint


def test_and_record(checkpoint: str, run_dir: Path, episodes: int):
    """``attnopt test --resume CHECKPOINT --episode-test EPISODES --cpu``: the result, and its
    record in RUN_DIR/evals for ``attnopt compare``."""
    ckpt = load_checkpoint(checkpoint)
    flags = {"episode_test": episodes, "cpu": True}
    config = resolve(flags, command="test", saved=Saved(ckpt["config"]))
    result = test_checkpoint(checkpoint, config, torch.device("cpu"))
    record = run_dir / "evals" / f"{records.eval_name(checkpoint, config)}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    records.write_test_record(record, result, checkpoint, ckpt["episode"], run_dir)
    return result, record


def run(spec: str, args: argparse.Namespace) -> str:
    backbone, width, adapt, attention = spec.split(":")
    data = Path(args.data_root).name if args.data_root else args.data
    save = args.out / f"{data}-{args.image_size}-{backbone}{width}-{adapt}-{attention}-s{args.seed}"
    config = resolve(
        {
            "data": args.data, "data_root": args.data_root, "image_size": args.image_size,
            "n_shot": args.shot, "backbone": backbone, "width": int(width), "adapt": adapt,
            "attention": attention, "seed": args.seed, "episode": 10**7, "val_freq": 10**7,
            "log_freq": 100, "save_every": 10**6, "episode_test": args.episode_test,
            "cpu": True, "save": str(save),
        }
    )  # fmt: skip
    stop = threading.Timer(args.minutes * 60, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    stop.start()
    try:
        train(config, overwrite=True)
        raise RuntimeError("the run ended before its budget: raise --episode")
    except Interrupted as e:
        checkpoint, episodes = e.checkpoint, e.episode
    finally:
        stop.cancel()
    trained = time.perf_counter() - start
    result, record = test_and_record(str(checkpoint), save, args.episode_test)
    return (
        f"budget: data={data} {args.image_size}px {args.shot}-shot backbone={backbone} "
        f"width={width} adapt={adapt} attention={attention} seed={args.seed} "
        f"threads={torch.get_num_threads()} minutes={args.minutes:g} episodes={episodes} "
        f"train_s={trained:.0f} test={result.accuracy:.2f}+-{result.ci95:.2f} "
        f"({result.episodes} episodes) record={record}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="B:W:ADAPT:ATTENTION")
    parser.add_argument("--minutes", type=float, default=4.0, help="meta-training wall time")
    parser.add_argument("--data", default="glyphs")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--episode-test", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/attnopt-backbones"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for spec in args.run:
        print(run(spec, args), flush=True)


if __name__ == "__main__":
    main()
