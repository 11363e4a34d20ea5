"""Attention ablation on the built-in data set: none / meta / learner / both.

Every run meta-trains with the same budget and seed-derived episodes, validates, and tests
its best checkpoint on the same 600 test episodes. One result line per run:

    python benchmarks/ablation.py --out /tmp/ablation            # the full grid (~40 min, CPU)
    python benchmarks/ablation.py --shots 1 --variants none both --seeds 0 1
    python benchmarks/ablation.py --shots 1 --variants both --attn-block 4 --attn-lr-scale 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from attnopt.api import train
from attnopt.config import ATTENTION_MODES, resolve


def run(out: Path, variant: str, shot: int, seed: int, episodes: int, attn: dict) -> str:
    tag = "-".join(f"{k}{v}" for k, v in attn.items())
    config = resolve(
        {
            **attn,
            "attention": variant,
            "n_shot": shot,
            "seed": seed,
            "episode": episodes,
            "val_freq": episodes,  # one validation, at the end: the budget goes to training
            "log_freq": 25,
            "episode_val": 100,
            "episode_test": 600,
            "cpu": True,
            "save": str(out / f"{variant}-{shot}shot-seed{seed}-{episodes}-{tag}"),
        }
    )
    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
    return (
        f"ablation: data=glyphs variant={variant} shot={shot} seed={seed} episodes={episodes} "
        f"attn_chunk={config.attn_chunk} attn_block={config.attn_block} "
        f"attn_lr_scale={config.attn_lr_scale} "
        f"test={result.test.accuracy:.2f}+-{result.test.ci95:.2f} "
        f"best_val={result.best_val:.2f}@{result.best_episode} "
        f"s_per_episode={result.train_seconds / episodes:.3f} wall_s={wall:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/attnopt-ablation"))
    parser.add_argument("--variants", nargs="+", choices=ATTENTION_MODES, default=None)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--attn-chunk", type=int, default=None)
    parser.add_argument("--attn-block", type=int, default=None)
    parser.add_argument("--attn-lr-scale", type=float, default=None)
    args = parser.parse_args()
    attn = {
        k: v
        for k, v in (
            ("attn_chunk", args.attn_chunk),
            ("attn_block", args.attn_block),
            ("attn_lr_scale", args.attn_lr_scale),
        )
        if v is not None
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    for shot in args.shots:
        for variant in args.variants or ["none", "both", "meta", "learner"]:
            # two seeds for the comparison that matters (none vs both), one for the others
            seeds = args.seeds or ([0, 1] if variant in ("none", "both") else [0])
            for seed in seeds:
                print(run(args.out, variant, shot, seed, args.episodes, attn), flush=True)


if __name__ == "__main__":
    main()
