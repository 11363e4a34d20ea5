"""Threads and shared cores: episodes/s for each intra-op thread count and OpenMP wait policy,
alone and beside other CPU-bound processes.

Each measurement is a fresh process of throughput.py (meta-training) or eval_speed.py
(evaluation), because OpenMP reads its wait policy once, at start-up. ``--beside N`` runs N
busy processes (one pure-Python loop each: one core's worth of work apiece) while it measures.
Configurations take turns, round by round, so a change in the machine's load touches them
all alike. One line per configuration: the median over --rounds and every round's figure.

    python benchmarks/threads.py --mode eval --threads 1 2 auto --wait passive spin --beside 0 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSY = "while True: pass"
# spin: what libgomp (torch's OpenMP on Linux) does when OMP_WAIT_POLICY is not set, and what
# attnopt runs with: about 3 ms of spinning before a waiting thread sleeps
WAITS = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def run_once(args: argparse.Namespace, threads: str, wait: str, beside: int) -> float:
    """One measurement in a fresh process, with ``beside`` busy processes running."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(WAITS[wait])
    common = ["--config", args.config, "--attention", args.attention]
    if threads != "auto":  # auto: attnopt's thread governor, as a user's run gets it
        common += ["--threads", threads]
    if args.mode == "train":
        command = [sys.executable, str(HERE / "throughput.py"), *common]
        command += ["--updates", str(args.updates), "--repeats", "1"]
    else:
        command = [sys.executable, str(HERE / "eval_speed.py"), *common]
        command += ["--eval-batch", "1", "--episodes", str(args.updates)]
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(beside)]
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return float(re.search(r"episodes/s=([0-9.]+)", out.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "eval"), default="eval")
    parser.add_argument("--config", default="glyphs-5shot", help="a throughput.py configuration")
    parser.add_argument("--attention", default="both", help="both (the default model) or none")
    parser.add_argument(
        "--threads", nargs="+", default=["1", "2", "auto"], help="counts, or auto: the governor"
    )
    parser.add_argument("--wait", choices=sorted(WAITS), nargs="+", default=["passive", "spin"])
    parser.add_argument("--beside", type=int, nargs="+", default=[0, 1], help="busy processes")
    parser.add_argument("--updates", type=int, default=4, help="episodes per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per configuration")
    args = parser.parse_args()
    configs = list(itertools.product(args.beside, args.threads, args.wait))
    rates: dict[tuple[int, str, str], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for beside, threads, wait in configs:
            rates[beside, threads, wait].append(run_once(args, threads, wait, beside))
    for (beside, threads, wait), runs in rates.items():
        print(
            f"threads {args.mode} {args.config} attention={args.attention} cores={os.cpu_count()} "
            f"beside={beside} threads={threads} wait={wait} "
            f"episodes/s={statistics.median(runs):.2f} "
            f"(runs: {', '.join(f'{r:.2f}' for r in runs)}) load1={os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
