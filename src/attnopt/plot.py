"""``attnopt plot RUN_DIR``: figures of what the meta-learner learned.

- gates.png: mean input gate (the learned learning rate) and forget gate per inner step, per
  learner layer, across meta-training (after Ravi & Larochelle 2017, Fig. 3).
- meta_attention.png (``--attention meta|both``): the meta-learner's attention between the
  learner's parameter tensors at the last inner step of a validation episode.
- cross_attention.png (``--attention learner|both``): where query images look in the
  support set after block 3, on a validation episode.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from attnopt.adapt import adapt
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.episodes import Episode
from attnopt.errors import UserError
from attnopt.evaluation import eval_sampler, load_trained
from attnopt.fileio import atomic_path
from attnopt.models import FewShotModel
from attnopt.models.metalearner import AttentionMetaLearner, MetaState


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG, atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_gates(run_dir: Path) -> Path:
    """gates.png from gates.csv."""
    # series[(gate, layer)][step] = (episodes, values)
    series: dict[tuple[str, str], dict[int, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    with open(run_dir / "gates.csv", newline="") as f:
        for row in csv.DictReader(f):
            for gate in ("input_gate", "forget_gate"):
                series[(gate, row["layer"])][int(row["step"])].append(
                    (int(row["episode"]), float(row[gate]))
                )
    layers = list(dict.fromkeys(layer for _, layer in series))
    if not layers:
        raise UserError(f"{run_dir / 'gates.csv'} has no rows yet; train for --log-freq episodes")
    steps = sorted({s for per_step in series.values() for s in per_step})
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 1, len(steps)))
    fig = Figure(figsize=(2.6 * len(layers), 5))
    axes = fig.subplots(2, len(layers), squeeze=False)
    for row, gate in enumerate(("input_gate", "forget_gate")):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            for color, step in zip(colors, steps, strict=True):
                points = np.array(series[(gate, layer)][step])
                ax.plot(points[:, 0], points[:, 1], color=color, lw=1, label=f"t={step}")
            ax.set_title(f"{layer}: {gate.replace('_', ' ')}", fontsize=9)
            ax.tick_params(labelsize=7)
            if row == 1:
                ax.set_xlabel("meta-training episode", fontsize=8)
    axes[0][-1].legend(fontsize=6, title="inner step", title_fontsize=6, loc="best")
    fig.suptitle("Mean gate values per inner step (input gate = learned learning rate)")
    return save_figure(fig, run_dir / "gates.png")


def _validation_episode(run_dir: Path, config: Config, device: torch.device) -> Episode:
    return eval_sampler(load_split(config, "val"), config, "val").episode(0, device)


def plot_meta_attention(model: FewShotModel, episode: Episode, config: Config, path: Path) -> Path:
    """Attention between parameter tensors at the last inner step: rows = attending tensor
    (averaged over its chunks), columns = attended tensor (summed over its chunks), divided by
    what uniform attention would give it."""
    meta = model.metalearner
    assert isinstance(meta, AttentionMetaLearner)
    states: list[MetaState] = []
    with torch.no_grad():
        adapt(
            model.learner,
            meta,
            episode.support_x,
            episode.support_y,
            config.epoch,
            config.batch_size,
            on_step=lambda t, theta, state: states.append(state),
        )
    weights = states[-1].attention[0].cpu()  # (G, G) of the one task
    tensor_of_chunk = meta.tensor_of_chunk.cpu()
    n = int(tensor_of_chunk.max()) + 1
    onehot = F.one_hot(tensor_of_chunk, n).float()  # (G, T)
    chunks = onehot.sum(0)
    per_tensor = (onehot.T @ weights @ onehot) / chunks.unsqueeze(1)  # rows sum to 1
    # Big tensors have many chunks and so get much of any attention; divide by the share
    # uniform attention would give them: 1 = uniform, > 1 = attended more than its size says.
    per_tensor = per_tensor / (chunks / chunks.sum()).unsqueeze(0)
    names = [s.name.replace(".weight", ".w").replace(".bias", ".b") for s in model.learner.specs]
    fig = Figure(figsize=(0.32 * n + 2, 0.32 * n + 1.5))
    ax = fig.subplots()
    im = ax.imshow(per_tensor.numpy(), cmap="magma")
    ax.set_xticks(range(n), names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), names, fontsize=6)
    ax.set_xlabel("attended tensor")
    ax.set_ylabel("attending tensor")
    fig.colorbar(im, ax=ax, fraction=0.04, label="attention / uniform share")
    ax.set_title(
        "Meta-learner attention between parameter tensors (last inner step, 1 = uniform)",
        fontsize=9,
    )
    return save_figure(fig, path)


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """A standardised image (C, H, W) -> RGB floats in [0, 1], (H, W, 3), for display."""
    img = image.float().cpu()
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return img.expand(3, -1, -1).permute(1, 2, 0).numpy()


def plot_cross_attention(
    model: FewShotModel, episode: Episode, config: Config, path: Path, n_queries: int = 4
) -> Path:
    """One row per query image: the query, then every support image (sorted by class) with the
    query's attention over its positions drawn on it and the share it receives (%)."""
    learner, meta = model.learner, model.metalearner
    with torch.no_grad():
        theta = adapt(
            learner, meta, episode.support_x, episode.support_y, config.epoch, config.batch_size
        )
        order = torch.argsort(episode.support_y, stable=True)
        support_x, support_y = episode.support_x[order], episode.support_y[order]
        queries, query_y = episode.query_x[:n_queries], episode.query_y[:n_queries]
        n_support = support_x.shape[0]
        weights = learner.cross_attention_weights(
            theta, torch.cat((support_x, queries)), n_support
        )[n_support:]  # (Q, HW, S, HW)
        per_position = weights.mean(1)  # (Q, S, HW): share of each support position
    side = int(round(per_position.shape[-1] ** 0.5))
    size = support_x.shape[-1]
    gap, text_gap = max(2, size // 10), max(6, size // 3)  # text_gap: room for the shares
    rows, cols = queries.shape[0], n_support + 1
    canvas = np.ones((rows * (size + text_gap), cols * (size + gap) + gap, 3))
    jet = matplotlib.colormaps["jet"]
    heat = F.interpolate(
        per_position.reshape(rows * n_support, 1, side, side), size=(size, size), mode="bilinear"
    ).reshape(rows, n_support, size, size)
    fig = Figure(figsize=(0.55 * cols + 1, 0.6 * rows + 0.6))
    ax = fig.subplots()
    for q in range(rows):
        y = q * (size + text_gap)
        canvas[y : y + size, 0:size] = _to_rgb(queries[q])
        for s_ in range(n_support):
            x = (s_ + 1) * (size + gap) + gap
            h = (heat[q, s_] / heat[q].max()).cpu().numpy()
            canvas[y : y + size, x : x + size] = (
                0.55 * _to_rgb(support_x[s_]) + 0.45 * jet(h)[..., :3]
            )
            share = per_position[q, s_].sum().item() * 100
            same = int(support_y[s_]) == int(query_y[q])
            ax.text(
                x + size / 2,
                y + size + text_gap / 2,
                f"{share:.0f}",
                ha="center",
                va="center",
                fontsize=4,
                color="green" if same else "black",
            )
    ax.imshow(canvas.clip(0.0, 1.0))  # the blend can exceed 1 by rounding
    ax.set_axis_off()
    ax.set_title(
        "Learner cross-attention: each row a query (left); support images sorted by class, "
        "% of the query's attention (green: same class)",
        fontsize=6,
    )
    return save_figure(fig, path)


def plot_run(run_dir: str | Path, device: torch.device | None = None) -> list[Path]:
    """Write every figure that applies to the run in ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass --save of a run")
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    device = device or torch.device("cpu")
    written = [plot_gates(run_dir)]
    if config.attention == "none":
        return written
    ckpt = run_dir / "ckpts" / "best.pt"
    episode = _validation_episode(run_dir, config, device)
    model = load_trained(str(ckpt), config, episode.support_x.shape[1], device)
    if config.attention in ("meta", "both"):
        written.append(plot_meta_attention(model, episode, config, run_dir / "meta_attention.png"))
    if config.attention in ("learner", "both"):
        written.append(
            plot_cross_attention(model, episode, config, run_dir / "cross_attention.png")
        )
    return written
