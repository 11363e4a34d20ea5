"""Meta-training throughput: episodes/s of the full meta-update on synthetic episodes.

Prints one line per configuration: device, shapes, meta-batch B, precision, episodes (tasks)
per second (median of --repeats timed runs of --updates meta-updates each) and peak memory.
Never run by CI.

    python benchmarks/throughput.py                       # all configurations, CPU, B=1
    python benchmarks/throughput.py --config glyphs-5shot --meta-batch 1 --meta-batch 8
    python benchmarks/throughput.py --config mini-5shot --device cuda --meta-batch 32 --amp bf16
    python benchmarks/throughput.py --config mini-5shot --compile none --compile step --compile all
    python benchmarks/throughput.py --config rgb32-5shot --backbone resnet12 --adapt head
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from attnopt.config import ADAPT_MODES, AMP_MODES, ATTENTION_MODES, ATTN_FEEDS, resolve
from attnopt.data.episodes import Episode
from attnopt.models.backbones import BUILT_IN
from attnopt.models.build import build_model
from attnopt.objective import InnerLoop, meta_update, score_episodes
from attnopt.runtime.compilation import PARTS, compile_model
from attnopt.runtime.device import keep_freed_memory
from attnopt.runtime.threads import governor
from attnopt.training.distributed import Processes
from attnopt.training.guard import DivergenceGuard

# name: (channels, image size, N, K, Q, inner epochs, inner batch size)
CONFIGS = {
    "mini-5shot": (3, 84, 5, 5, 15, 8, 25),
    "mini-1shot": (3, 84, 5, 1, 15, 12, 5),
    "glyphs-5shot": (1, 28, 5, 5, 15, 8, 25),
    "glyphs-1shot": (1, 28, 5, 1, 15, 12, 5),
    "rgb32-5shot": (3, 32, 5, 5, 15, 8, 25),  # CIFAR-FS / FC100 shapes
}
# --compile: what is compiled (attnopt's --compile: all)
COMPILED = {"none": (), "step": ("step",), "all": PARTS}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set, which only grows across configurations
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def measure(
    name: str,
    attention: str,
    tasks: int,
    amp: str,
    device: torch.device,
    updates: int,
    repeats: int,
    attn_block: int = 3,
    compiled: str = "none",
    learner: tuple[str, int | None, str | None] = ("conv4", None, None),
    attn_feeds: str | None = None,
) -> str:
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    backbone, width, adapt = learner
    torch.manual_seed(0)
    config = resolve(
        dict(
            n_class=n, n_shot=k, image_size=size, attention=attention, amp=amp,
            attn_block=attn_block, backbone=backbone, width=width, adapt=adapt,
            attn_feeds=attn_feeds,
        )
    )  # fmt: skip
    model = compile_model(build_model(config, channels, device), COMPILED[compiled])
    optimizer = torch.optim.Adam(model.param_groups(config.lr, config.attn_lr_scale))
    guard = DivergenceGuard(model.parameters(), optimizer, config.grad_clip, 10, Path("unused"))
    episodes = synthetic_episodes(name, tasks, device)
    inner = InnerLoop(epochs, batch)
    threads = governor(device)

    def one_update() -> None:  # exactly what the training loop runs per meta-update
        score = score_episodes(model, episodes, inner)
        meta_update(guard, score.loss, 0, Processes())
        threads.tick()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    for _ in range(2):  # warm-up: compilation, kernel selection, allocator
        one_update()
    sync()
    warmup = time.perf_counter() - start
    rates, cpu_start = [], time.process_time()
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(updates):
            one_update()
        sync()
        rates.append(updates * tasks / (time.perf_counter() - start))
    # the process's CPU time, all threads: on a shared machine less inflated than the clock
    cpu_ms = 1000 * (time.process_time() - cpu_start) / (repeats * updates * tasks)
    return (
        f"{name}: device={device.type} threads={thread_count()} "
        f"backbone={config.backbone} width={config.width} adapt={config.adapt} "
        f"params={model.learner.num_params} adapted={model.learner.num_adapted} "
        f"attention={attention} attn_block={attn_block} attn_feeds={config.attn_feeds} "
        f"shape={n}-way {k}-shot {q}q {channels}x{size}x{size} "
        f"steps={epochs}x{batch} B={tasks} compile={compiled} "
        f"{'fp32' if amp == 'none' else amp} episodes/s={statistics.median(rates):.2f} "
        f"(runs: {', '.join(f'{r:.2f}' for r in rates)}) cpu_ms/episode={cpu_ms:.0f} "
        f"peak_mem_mb={peak_memory_mb(device):.0f} warmup_s={warmup:.1f}"
    )


def synthetic_episodes(name: str, tasks: int, device: torch.device) -> Episode:
    """``tasks`` episodes of random images at configuration ``name``'s shapes, channels-last
    as the episode sampler delivers them."""
    channels, size, n, k, q = CONFIGS[name][:5]
    return Episode(
        support_x=torch.randn(tasks, n * k, size, size, channels, device=device).movedim(-1, 2),
        support_y=torch.arange(n, device=device).repeat(k).expand(tasks, -1),
        query_x=torch.randn(tasks, n * q, size, size, channels, device=device).movedim(-1, 2),
        query_y=torch.arange(n, device=device).repeat(q).expand(tasks, -1),
    )


def fix_threads(count: int | None) -> None:
    """``--threads N``: N threads throughout, as ``OMP_NUM_THREADS`` fixes them for attnopt;
    None leaves the count to attnopt's thread governor."""
    if count:
        os.environ["OMP_NUM_THREADS"] = str(count)
        torch.set_num_threads(count)


def thread_count() -> str:
    """'2', or 'auto(1)' where attnopt's thread governor chose the count (now 1)."""
    now = torch.get_num_threads()
    return str(now) if "OMP_NUM_THREADS" in os.environ else f"auto({now})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--attention", choices=ATTENTION_MODES, action="append")
    parser.add_argument("--meta-batch", type=int, action="append", help="tasks per update (1)")
    parser.add_argument("--amp", choices=AMP_MODES, action="append")
    parser.add_argument("--attn-block", type=int, default=3, help="cross-attention placement")
    parser.add_argument("--attn-feeds", choices=ATTN_FEEDS, help="default: attnopt's")
    parser.add_argument("--compile", choices=sorted(COMPILED), action="append")
    parser.add_argument("--backbone", choices=BUILT_IN, action="append")
    parser.add_argument("--width", type=int, action="append", help="default: the backbone's")
    parser.add_argument("--adapt", choices=ADAPT_MODES, action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=5, help="meta-updates per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument(
        "--threads", type=int, help="fixed intra-op threads (default: attnopt's thread governor)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # as every attnopt run does (attnopt.runtime.device.select_device)
    fix_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as attnopt does on GPUs
    learners = list(
        itertools.product(args.backbone or ["conv4"], args.width or [None], args.adapt or [None])
    )
    for name in args.config or list(CONFIGS):
        for attention in args.attention or ["none"]:
            for tasks in args.meta_batch or [1]:
                for amp, compiled, learner in itertools.product(
                    args.amp or ["none"], args.compile or ["none"], learners
                ):
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    line = measure(
                        name,
                        attention,
                        tasks,
                        amp,
                        device,
                        args.updates,
                        args.repeats,
                        args.attn_block,
                        compiled,
                        learner,
                        args.attn_feeds,
                    )
                    print(line, flush=True)


if __name__ == "__main__":
    main()
