"""How to compute the inner loop's gradient under partial adaptation (``--adapt last|head``).

Times the learner's side of T inner steps (loss and gradient at a support mini-batch; the
meta-learner's step is left out) three ways, one line each:

- ``cached``: what attnopt does: the frozen leading stages run once per support mini-batch
  (without a graph), every step runs the adapted stages and their backward;
- ``per_step``: the frozen leading stages run again at every step (still without their
  backward);
- ``full``: the gradient of all of θ at every step (the ``--adapt all`` cost), then the
  adapted coordinates are kept.

    python benchmarks/partial_adapt.py --config mini-5shot --backbone resnet12 --adapt head
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from throughput import CONFIGS

from attnopt.config import resolve
from attnopt.models.backbones import BUILT_IN
from attnopt.models.build import build_learner


def inner_steps(learner, full, theta, x, y, steps: int, how: str) -> None:
    adapted, frozen = learner.split(theta)
    features = learner.frozen_features(frozen, x) if how == "cached" else None
    for _ in range(steps):
        if how == "cached":
            learner.loss_and_grad(adapted, x, y, frozen, features)
        elif how == "per_step":
            learner.loss_and_grad(adapted, x, y, frozen, learner.frozen_features(frozen, x))
        else:
            learner.split(full.loss_and_grad(theta, x, y)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--backbone", choices=BUILT_IN, action="append")
    parser.add_argument("--adapt", choices=("last", "head"), action="append")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    args = parser.parse_args()
    for name, backbone, adapt in itertools.product(
        args.config or ["mini-5shot"], args.backbone or ["conv4"], args.adapt or ["head", "last"]
    ):
        channels, size, n, k, _, epochs, batch = CONFIGS[name]
        flags = dict(n_class=n, n_shot=k, image_size=size, attention="none", backbone=backbone)
        learner = build_learner(resolve({**flags, "adapt": adapt}), channels)
        full = build_learner(resolve({**flags, "adapt": "all"}), channels)
        theta = learner.init_theta()[None]
        x = torch.randn(1, batch, channels, size, size)
        y = torch.arange(n).repeat(k)[None, :batch]
        steps = epochs * ((n * k) // batch)
        seconds = {}
        for how in ("cached", "per_step", "full"):
            inner_steps(learner, full, theta, x, y, 1, how)  # warm-up
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                inner_steps(learner, full, theta, x, y, steps, how)
                runs.append(time.perf_counter() - start)
            seconds[how] = statistics.median(runs)
        print(
            f"{name}: backbone={backbone} adapt={adapt} threads={torch.get_num_threads()} "
            f"inner steps={steps}x{batch} seconds per task: "
            + " ".join(f"{how}={s:.3f}" for how, s in seconds.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
