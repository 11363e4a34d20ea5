"""Meta-training throughput: episodes/s of the full meta-update on synthetic episodes.

Prints one line per configuration: device, shapes, episodes/s (median of --repeats timed
runs of --episodes episodes each) and peak memory. Never run by CI.

    python benchmarks/throughput.py                       # all configurations, CPU
    python benchmarks/throughput.py --config mini-5shot --device cuda
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from attnopt.adapt import adapt, query_logits
from attnopt.config import ATTENTION_MODES, Config
from attnopt.models import build_model

# name: (channels, image size, N, K, Q, inner epochs, inner batch size)
CONFIGS = {
    "mini-5shot": (3, 84, 5, 5, 15, 8, 25),
    "mini-1shot": (3, 84, 5, 1, 15, 12, 5),
    "glyphs-5shot": (1, 28, 5, 5, 15, 8, 25),
    "glyphs-1shot": (1, 28, 5, 1, 15, 12, 5),
}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set, which only grows across configurations
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def measure(name: str, attention: str, device: torch.device, episodes: int, repeats: int) -> str:
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    torch.manual_seed(0)
    config = Config(n_class=n, n_shot=k, image_size=size, attention=attention)
    model = build_model(config, channels).to(device)
    learner, metalearner = model.learner, model.metalearner
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    support_x = torch.randn(n * k, channels, size, size, device=device)
    query_x = torch.randn(n * q, channels, size, size, device=device)
    support_y = torch.arange(n, device=device).repeat(k)
    query_y = torch.arange(n, device=device).repeat(q)

    def meta_update() -> None:
        theta = adapt(learner, metalearner, support_x, support_y, epochs, batch)
        loss = F.cross_entropy(query_logits(learner, theta, support_x, query_x), query_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):  # warm-up: kernel selection, allocator
        meta_update()
    rates = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(episodes):
            meta_update()
        sync()
        rates.append(episodes / (time.perf_counter() - start))
    return (
        f"{name}: device={device.type} threads={torch.get_num_threads()} "
        f"attention={attention} shape={n}-way {k}-shot {q}q {channels}x{size}x{size} "
        f"steps={epochs}x{batch} B=1 "
        f"fp32 episodes/s={statistics.median(rates):.2f} "
        f"(runs: {', '.join(f'{r:.2f}' for r in rates)}) "
        f"peak_mem_mb={peak_memory_mb(device):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--attention", choices=ATTENTION_MODES, action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.config or list(CONFIGS):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for attention in args.attention or ["none"]:
            print(measure(name, attention, device, args.episodes, args.repeats), flush=True)


if __name__ == "__main__":
    main()
