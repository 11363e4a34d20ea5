"""The public PyTorch port's meta-training throughput, for the ratio attnopt is measured by.

The port (github.com/markdtw/meta-learning-lstm-pytorch) is not part of attnopt and is never
downloaded: point --port-dir at a checkout of it. Its own modules do the work (``Learner``,
``MetaLearner`` and ``main.train_learner``, the inner loop); this script feeds them the
synthetic episodes of throughput.py (same shapes, same inner steps) and times the meta-update
as the port's ``main()`` runs it: inner loop, query loss, backward, clipping, an Adam step.
Prints one line per configuration, as throughput.py does, to be run beside it:

    python benchmarks/port_throughput.py --port-dir ~/src/meta-learning-lstm-pytorch
    python benchmarks/throughput.py --config mini-5shot --attention none
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from throughput import CONFIGS, fix_threads
from torch import nn


def import_port(port_dir: Path) -> types.SimpleNamespace:
    """The port's modules. Its main.py imports its data loader, which needs torchvision (not
    installed here, and unused: the episodes are synthetic), so that import is stubbed."""
    if not (port_dir / "main.py").is_file():
        sys.exit(f"error: --port-dir {port_dir} holds no main.py of the port")
    sys.path.insert(0, str(port_dir))  # its modules import each other by bare name
    sys.modules.setdefault("dataloader", types.SimpleNamespace(prepare_data=None))
    # its main.py by path: attnopt's checkout has a main.py of its own
    spec = importlib.util.spec_from_file_location("port_main", port_dir / "main.py")
    port_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port_main)
    import learner
    import metalearner

    return types.SimpleNamespace(
        Learner=learner.Learner, MetaLearner=metalearner.MetaLearner, main=port_main
    )


def measure(port: types.SimpleNamespace, name: str, updates: int, repeats: int) -> str:
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    if channels != 3:
        sys.exit(f"error: the port's learner takes RGB images only, not --config {name}")
    torch.manual_seed(0)
    args = types.SimpleNamespace(epoch=epochs, batch_size=batch)
    learner_w_grad = port.Learner(size, 1e-3, 0.95, n)
    learner_wo_grad = port.Learner(size, 1e-3, 0.95, n)
    metalearner = port.MetaLearner(4, 20, learner_w_grad.get_flat_params().size(0))
    metalearner.metalstm.init_cI(learner_w_grad.get_flat_params())
    optimizer = torch.optim.Adam(metalearner.parameters(), 1e-3)
    support_x, query_x = (
        torch.randn(n * k, channels, size, size),
        torch.randn(n * q, channels, size, size),
    )
    support_y, query_y = torch.arange(n).repeat_interleave(k), torch.arange(n).repeat_interleave(q)

    def one_update() -> None:  # the body of the port's meta-training loop (main.main)
        for module in (learner_w_grad, learner_wo_grad):
            module.reset_batch_stats()
            module.train()
        c_i = port.main.train_learner(learner_w_grad, metalearner, support_x, support_y, args)
        learner_wo_grad.transfer_params(learner_w_grad, c_i)
        loss = learner_wo_grad.criterion(learner_wo_grad(query_x), query_y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(metalearner.parameters(), 0.25)
        optimizer.step()

    for _ in range(2):  # warm-up
        one_update()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(updates):
            one_update()
        rates.append(updates / (time.perf_counter() - start))
    return (
        f"port {name}: device=cpu threads={torch.get_num_threads()} "
        f"params={learner_w_grad.get_flat_params().numel()} "
        f"shape={n}-way {k}-shot {q}q {channels}x{size}x{size} steps={epochs}x{batch} B=1 fp32 "
        f"episodes/s={statistics.median(rates):.2f} (runs: {', '.join(f'{r:.2f}' for r in rates)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-dir", type=Path, required=True, help="a checkout of the port")
    parser.add_argument(
        "--config", choices=sorted(c for c in CONFIGS if CONFIGS[c][0] == 3), action="append"
    )
    parser.add_argument("--updates", type=int, default=3, help="meta-updates per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, help="fixed intra-op threads (default: torch's)")
    args = parser.parse_args()
    fix_threads(args.threads)
    port = import_port(args.port_dir.expanduser())
    for name in args.config or ["mini-5shot"]:
        print(measure(port, name, args.updates, args.repeats), flush=True)


if __name__ == "__main__":
    main()
