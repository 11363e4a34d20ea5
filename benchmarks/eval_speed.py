"""Meta-testing speed: seconds for 600 test episodes (adaptation + query scoring, no grad).

One line per (configuration, --eval-batch): device, shapes, tasks adapted together, seconds for
--episodes episodes, episodes/s and the process's CPU milliseconds per episode (all threads: on
a shared machine less inflated by the other jobs than the wall clock). Synthetic images in an
in-memory ImageSet; never run by CI.

    python benchmarks/eval_speed.py --config glyphs-5shot --eval-batch 1 --eval-batch 20
    python benchmarks/eval_speed.py --device cuda --config mini-5shot --eval-batch 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from throughput import CONFIGS, fix_threads, thread_count

from attnopt.config import AMP_MODES, ATTENTION_MODES, Config
from attnopt.data.imageset import ImageSet
from attnopt.models.build import build_model
from attnopt.runtime.compilation import compile_model
from attnopt.runtime.device import keep_freed_memory
from attnopt.training.evaluation import eval_sampler, evaluate


def measure(
    name: str,
    eval_batch: int,
    amp: str,
    device: torch.device,
    episodes: int,
    compiled: bool,
    attention: str = "none",
) -> str:
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    rng = np.random.default_rng(0)
    classes, per_class = 20, k + q
    images = rng.integers(0, 256, (classes * per_class, size, size, channels), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    imageset = ImageSet(images, labels, tuple(f"c{i}" for i in range(classes)), "synthetic")
    config = Config(
        n_class=n, n_shot=k, n_eval=q, image_size=size, epoch=epochs, batch_size=batch,
        eval_batch=eval_batch, amp=amp, attention=attention,
    )  # fmt: skip
    sampler = eval_sampler(imageset, config, "test")
    torch.manual_seed(0)
    model = build_model(config, channels, device)
    if compiled:
        compile_model(model)
    evaluate(model, sampler, config, min(episodes, 2 * eval_batch), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    evaluate(model, sampler, config, episodes, device)  # ends with a host copy: synchronised
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return (
        f"eval {name}: device={device.type} threads={thread_count()} "
        f"attention={attention} "
        f"shape={n}-way {k}-shot {q}q {channels}x{size}x{size} steps={epochs}x{batch} "
        f"eval_batch={eval_batch} {'fp32' if amp == 'none' else amp} compile={compiled} "
        f"episodes={episodes} "
        f"seconds={seconds:.1f} episodes/s={episodes / seconds:.1f} "
        f"cpu_ms/episode={1000 * cpu / episodes:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--eval-batch", type=int, action="append")
    parser.add_argument("--amp", choices=AMP_MODES, default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--compile", action="store_true", help="as attnopt's --compile")
    parser.add_argument("--attention", choices=ATTENTION_MODES, action="append")
    parser.add_argument(
        "--threads", type=int, help="fixed intra-op threads (default: attnopt's thread governor)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # as every attnopt run does (attnopt.runtime.device.select_device)
    fix_threads(args.threads)
    for name in args.config or ["glyphs-5shot"]:
        for attention in args.attention or ["none"]:
            for eval_batch in args.eval_batch or [20]:
                line = measure(
                    name, eval_batch, args.amp, device, args.episodes, args.compile, attention
                )
                print(line, flush=True)


if __name__ == "__main__":
    main()
