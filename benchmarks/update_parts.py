"""Where one meta-update's time goes: its parts timed by the wall clock, without a profiler.

torch.profiler inflates the large ops of the query pass several times over on the CPU, so
these are plain ``perf_counter`` readings around the calls the meta-update makes: one inner
step's ``loss_and_grad``, one meta-learner step (recording its graph), the whole adaptation,
the query forward and the backward. One line per configuration, medians over --repeats
updates after two warm-up updates. Never run by CI.

    python benchmarks/update_parts.py --config mini-5shot --attention none --attention both
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F
from throughput import CONFIGS, fix_threads, synthetic_episodes, thread_count

from attnopt.adapt import adapt, query_logits
from attnopt.config import ATTENTION_MODES, resolve
from attnopt.models.build import build_model
from attnopt.runtime.device import keep_freed_memory

PARTS = ("loss_and_grad", "meta_step", "adapt", "query_forward", "backward", "update")


def measure(name: str, attention: str, repeats: int) -> str:
    """The median wall time of each part, in ms, as one line."""
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    torch.manual_seed(0)
    config = resolve(dict(n_class=n, n_shot=k, image_size=size, attention=attention))
    model = build_model(config, channels)
    learner, meta = model.learner, model.metalearner
    episode = synthetic_episodes(name, 1, torch.device("cpu"))
    support_x, support_y = episode.support_x, episode.support_y
    query_x, query_y = episode.query_x, episode.query_y
    first = slice(0, batch)  # the first support mini-batch
    times: dict[str, list[float]] = {part: [] for part in PARTS}
    for run in range(repeats + 2):
        theta = meta.c_init[None].clone()
        clock = [time.perf_counter()]
        loss, grad = learner.loss_and_grad(
            theta.detach(), support_x[:, first], support_y[:, first], None, None
        )
        clock.append(time.perf_counter())
        meta.step(grad, loss, theta, meta.initial_state((1,)))
        clock.append(time.perf_counter())
        model.zero_grad(set_to_none=True)
        adapted = adapt(learner, meta, support_x, support_y, epochs, batch)
        clock.append(time.perf_counter())
        logits = query_logits(learner, adapted, support_x, query_x)
        query_loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
        clock.append(time.perf_counter())
        query_loss.backward()
        clock.append(time.perf_counter())
        if run >= 2:  # two warm-up updates: kernel selection, the allocator
            for part, (start, end) in zip(PARTS[:-1], itertools.pairwise(clock), strict=True):
                times[part].append(1000 * (end - start))
            times["update"].append(1000 * (clock[-1] - clock[2]))
    medians = ", ".join(f"{part}={statistics.median(times[part]):.1f}" for part in PARTS)
    return (
        f"{name}: threads={thread_count()} attention={attention} shape={n}-way {k}-shot "
        f"{q}q {channels}x{size}x{size} steps={epochs}x{batch} fp32 ms: {medians}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--attention", choices=ATTENTION_MODES, action="append")
    parser.add_argument("--repeats", type=int, default=8, help="timed updates (median reported)")
    parser.add_argument("--threads", type=int, help="fixed intra-op threads (default: torch's)")
    args = parser.parse_args()
    keep_freed_memory()  # as every attnopt run does
    fix_threads(args.threads)
    for name in args.config or ["mini-5shot"]:
        for attention in args.attention or ["none"]:
            print(measure(name, attention, args.repeats), flush=True)


if __name__ == "__main__":
    main()
