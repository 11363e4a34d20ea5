"""Bytes the meta-graph keeps per task: the exact count, for any backbone and size.

One meta-step (the inner loop, then the query loss of θ_T) runs on PyTorch's ``meta`` device,
where tensors have shapes and no data: nothing is computed or allocated, so even ResNet-12
with every coordinate adapted (56 GB to over a terabyte per task) is counted in a second. The
autograd graph of the query loss is walked and the storage of every tensor it saves is added
up once (the count equals the same walk on real CPU tensors, checked for Conv-4). Prints one
line per configuration: parameters P, adapted P_a, the bytes kept per task (the θ trajectory
with the meta-learner's states, and the query forward), and the GPU memory this predicts at a
meta-batch of B tasks: B x per task + the meta-parameters with their gradient and Adam's two
moments. Workspace and allocator slack come on top. fp32 (autocast does not run on ``meta``).

    python benchmarks/graph_memory.py --config mini-5shot --backbone conv4 --backbone resnet12
    python benchmarks/graph_memory.py --config rgb32-5shot --backbone resnet12 --meta-batch 16
"""

from __future__ import annotations

import argparse
import itertools

import torch
from throughput import CONFIGS

from attnopt.adapt import adapt
from attnopt.config import ADAPT_MODES, ATTENTION_MODES, resolve
from attnopt.data.episodes import Episode
from attnopt.models.backbones import BUILT_IN
from attnopt.models.build import build_model
from attnopt.objective import InnerLoop, score_episodes

GB = 1e9


def saved_bytes(output: torch.Tensor) -> int:
    """Bytes of the distinct storages that the autograd graph of ``output`` keeps (also on the
    meta device, where storages have no data pointer)."""
    seen, total, stack, visited = set(), 0, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            value = getattr(node, name)
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage._cdata if t.device.type == "meta" else storage.data_ptr()
                    if key not in seen:
                        seen.add(key)
                        total += storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return total


def measure(name: str, backbone: str, width: int | None, adapt_mode: str | None, attention: str,
            tasks: int, device: str, attn_chunk: int = 64) -> str:  # fmt: skip
    channels, size, n, k, q, epochs, batch = CONFIGS[name]
    torch.manual_seed(0)
    config = resolve(
        dict(
            n_class=n, n_shot=k, image_size=size, attention=attention, backbone=backbone,
            width=width, adapt=adapt_mode, attn_chunk=attn_chunk,
        )
    )  # fmt: skip
    model = build_model(config, channels, device)
    support_y = torch.arange(n, device=device).repeat(k)[None]
    episodes = Episode(
        support_x=torch.randn(1, n * k, channels, size, size, device=device),
        support_y=support_y,
        query_x=torch.randn(1, n * q, channels, size, size, device=device),
        query_y=torch.arange(n, device=device).repeat(q)[None],
    )
    theta = adapt(model.learner, model.metalearner, episodes.support_x, support_y, epochs, batch)
    trajectory = saved_bytes(theta)
    del theta
    total = saved_bytes(score_episodes(model, episodes, InnerLoop(epochs, batch)).loss)
    weights = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    return (
        f"{name}: backbone={config.backbone} width={config.width} adapt={config.adapt} "
        f"attention={attention} attn_chunk={attn_chunk} params={model.learner.num_params} "
        f"adapted={model.learner.num_adapted} steps={epochs}x{batch} "
        f"per_task_gb={total / GB:.3f} (trajectory {trajectory / GB:.3f}, query forward "
        f"{(total - trajectory) / GB:.3f}) meta_params_with_adam_gb={weights / GB:.3f} "
        f"predicted_B{tasks}_gb={(tasks * total + weights) / GB:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--backbone", choices=BUILT_IN, action="append")
    parser.add_argument("--width", type=int, action="append", help="default: the backbone's")
    parser.add_argument("--adapt", choices=ADAPT_MODES, action="append")
    parser.add_argument("--attention", choices=ATTENTION_MODES, action="append")
    parser.add_argument("--attn-chunk", type=int, action="append", help="default: 64")
    parser.add_argument("--meta-batch", type=int, default=32, help="B of the prediction (32)")
    parser.add_argument("--device", default="meta", help="meta (count only) or cpu (check)")
    args = parser.parse_args()
    for name, backbone, width, adapt_mode, attention, chunk in itertools.product(
        args.config or ["mini-5shot"],
        args.backbone or ["conv4"],
        args.width or [None],
        args.adapt or list(ADAPT_MODES),
        args.attention or ["none", "both"],
        args.attn_chunk or [64],
    ):
        line = measure(
            name, backbone, width, adapt_mode, attention, args.meta_batch, args.device, chunk
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
