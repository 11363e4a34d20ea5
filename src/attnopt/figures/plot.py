"""``attnopt plot RUN_DIR``: figures of what the meta-learner learned.

- gates.png: mean input gate (the learned learning rate) and forget gate per inner step, per
  learner layer (after Ravi & Larochelle 2017, Fig. 3), and how they moved in meta-training.
- meta_attention.png (``--attention meta|both``): the meta-learner's attention between the
  learner's parameter tensors at the last inner step of a validation episode.
- cross_attention.png (``--attention learner|both``): whether query images attend to the
  support images of their own class, over every query of a few validation episodes.

matplotlib is imported inside the drawing functions, so that ``import attnopt`` does not
load it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from attnopt.adapt import adapt
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.episodes import Episode
from attnopt.errors import UserError
from attnopt.figures.stats import (
    UNIFORM_TOLERANCE,
    ClassShare,
    deviation_from_layer_mean,
    same_class_shares,
    support_image_shares,
)
from attnopt.models.build import FewShotModel
from attnopt.models.metalearner import AttentionMetaLearner, MetaState
from attnopt.runs.fileio import atomic_path
from attnopt.training.evaluation import eval_sampler, load_trained

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
    from matplotlib.image import AxesImage

CROSS_ATTENTION_EPISODES = 4  # validation episodes whose every query cross_attention.png sums up


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG, atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


GATES = ("input_gate", "forget_gate")


@dataclass(frozen=True)
class GateTable:
    """gates.csv as tensors: values[gate] is (episodes, steps, layers), NaN where no row."""

    episodes: list[int]
    steps: list[int]
    layers: list[str]
    values: dict[str, torch.Tensor]


def read_gates(path: Path) -> GateTable:
    """gates.csv (see ``attnopt.runs.gates``); UserError when it is missing, empty or not one."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; train with --log-freq to record the gates")
    try:
        with open(path, newline="") as f:
            rows = [
                (int(r["episode"]), int(r["step"]), r["layer"], *(float(r[g]) for g in GATES))
                for r in csv.DictReader(f)
            ]
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not an attnopt gates file ({e}); delete it or retrain") from e
    if not rows:
        raise UserError(f"{path} has no rows yet; train for --log-freq episodes")
    episodes = sorted({r[0] for r in rows})
    steps = sorted({r[1] for r in rows})
    layers = list(dict.fromkeys(r[2] for r in rows))
    values = {g: torch.full((len(episodes), len(steps), len(layers)), float("nan")) for g in GATES}
    at = (
        {e: i for i, e in enumerate(episodes)},
        {s: i for i, s in enumerate(steps)},
        {name: i for i, name in enumerate(layers)},
    )
    for episode, step, layer, *gates in rows:
        for gate, value in zip(GATES, gates, strict=True):
            values[gate][at[0][episode], at[1][step], at[2][layer]] = value
    return GateTable(episodes, steps, layers, values)


def _log_axis(ax: Axes) -> None:
    """Log y axis labelled with plain numbers (1, 2, 5 per decade; more within one decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if high / low < 10 else (1.0, 2.0, 5.0)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_gates(run_dir: Path) -> Path:
    """gates.png from gates.csv."""
    return save_figure(draw_gates(read_gates(run_dir / "gates.csv")), run_dir / "gates.png")


def draw_gates(table: GateTable) -> Figure:
    """Per gate (columns): each learner layer's gate per inner step at the last logged
    episode, its deviation from the mean over the layers, and its mean over the inner steps
    across meta-training. The forget gate is drawn as 1 - f on a log scale: f sits just below
    1, and 1 - f is how much θ shrinks per step."""
    from matplotlib.figure import Figure

    last = table.episodes[-1]
    fig = Figure(figsize=(10, 10), layout="constrained")
    axes = fig.subplots(3, 2)
    names = {"input_gate": "input gate i", "forget_gate": "1 − forget gate f"}
    headers = {
        "input_gate": "Input gate i: the learned learning rate",
        "forget_gate": "1 − forget gate f: how much θ shrinks per step",
    }
    for col, gate in enumerate(GATES):
        shown = table.values[gate] if gate == "input_gate" else 1 - table.values[gate]
        per_step = shown[-1]  # (steps, layers) at the last logged episode
        deviation = deviation_from_layer_mean(per_step)
        over_training = torch.nanmean(shown, 1)  # (episodes, layers)
        for i, layer in enumerate(table.layers):
            style = dict(color=f"C{i}", marker="o", ms=3, lw=1.5, label=layer)
            axes[0][col].plot(table.steps, per_step[:, i].numpy(), **style)
            axes[1][col].plot(table.steps, deviation[:, i].numpy(), **style)
            axes[2][col].plot(table.episodes, over_training[:, i].numpy(), **style)
        spread = float(torch.nan_to_num(deviation.abs()).max())
        axes[0][col].set_title(f"{headers[gate]}\nper inner step, at episode {last}")
        axes[1][col].set_title(f"layers differ by up to {spread:.1f}% (episode {last})")
        axes[2][col].set_title("mean over the inner steps, across meta-training")
        axes[0][col].set_ylabel(names[gate])
        axes[1][col].set_ylabel("% from the mean of the layers")
        axes[2][col].set_ylabel(f"{names[gate]}, mean over steps")
        axes[1][col].axhline(0, color="0.5", lw=0.8)
        for row in (0, 2):
            _log_axis(axes[row][col])
        for row in (0, 1):
            axes[row][col].set_xlabel("inner step t")
            axes[row][col].set_xticks(table.steps)
        axes[2][col].set_xlabel("meta-training episode")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), title="learner layer")
    return fig


def _validation_episodes(config: Config, device: torch.device, count: int) -> list[Episode]:
    """The first ``count`` episodes of the validation stream (the ones validation uses)."""
    sampler = eval_sampler(load_split(config, "val"), config, "val")
    return [sampler.episode(i, device) for i in range(count)]


def _ratio_norm(ratios: torch.Tensor) -> LogNorm:
    """A log colour scale centred on 1 (uniform) spanning at least 1/2 .. 2, so attention
    near uniform stays pale and a glance tells how far from uniform it is."""
    from matplotlib.colors import LogNorm

    spread = max(2.0, float(ratios.max()), 1 / max(float(ratios.min()), 1e-3))
    return LogNorm(1 / spread, spread)


def _ratio_colorbar(
    fig: Figure, image: AxesImage, ax: Axes | list[Axes], norm: LogNorm, label: str
) -> None:
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label(label)
    top = int(np.floor(np.log2(norm.vmax) + 1e-9))  # the scale is symmetric: 2^-top .. 2^top
    stride = max(1, int(np.ceil(top / 3)))  # at most 7 ticks
    ticks = [2.0**k for k in range(-top, top + 1) if k % stride == 0]
    bar.set_ticks(ticks, labels=[f"{t:g}×" if t >= 1 else f"1/{1 / t:g}×" for t in ticks])
    bar.minorticks_off()


def plot_meta_attention(model: FewShotModel, episode: Episode, config: Config, path: Path) -> Path:
    """Attention between parameter tensors at the last inner step: rows = attending tensor
    (averaged over its chunks), columns = attended tensor (summed over its chunks), divided by
    what uniform attention would give it."""
    from matplotlib.figure import Figure

    meta = model.metalearner
    assert isinstance(meta, AttentionMetaLearner)
    states: list[MetaState] = []
    with torch.no_grad():
        adapt(
            model.learner,
            meta,
            episode.support_x[None],
            episode.support_y[None],
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
    specs = model.learner.adapted_specs  # the meta-learner's tensors: the adapted ones
    names = [s.name.replace(".weight", ".w").replace(".bias", ".b") for s in specs]
    fig = Figure(figsize=(0.3 * n + 3, 0.3 * n + 1.5), layout="constrained")
    ax = fig.subplots()
    norm = _ratio_norm(per_tensor)
    image = ax.imshow(per_tensor.numpy(), cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("attended tensor")
    ax.set_ylabel("attending tensor")
    _ratio_colorbar(fig, image, ax, norm, "attention / uniform share (1× = uniform)")
    low, high = float(per_tensor.min()), float(per_tensor.max())
    ax.set_title(
        "Meta-learner attention between the learner's parameter tensors\n"
        f"at the last inner step: {low:.2f}× to {high:.2f}× the uniform share"
    )
    return save_figure(fig, path)


@dataclass(frozen=True)
class EpisodeAttention:
    """One validation episode's cross-attention, support images and queries sorted by class.

    shares (Q, S): share of each query's attention on each support image (rows sum to 1);
    support_y (S,), query_y (Q,): their labels.
    """

    shares: torch.Tensor
    support_y: torch.Tensor
    query_y: torch.Tensor


def episode_attention(model: FewShotModel, episode: Episode, config: Config) -> EpisodeAttention:
    """Adapt to ``episode``'s support set, then measure where every query looks (after block
    ``--attn-block``)."""
    learner, meta = model.learner, model.metalearner
    with torch.no_grad():
        theta = adapt(
            learner,
            meta,
            episode.support_x[None],
            episode.support_y[None],
            config.epoch,
            config.batch_size,
        )[0]
        s_order = torch.argsort(episode.support_y, stable=True)
        q_order = torch.argsort(episode.query_y, stable=True)
        n_support = s_order.numel()
        images = torch.cat((episode.support_x[s_order], episode.query_x[q_order]))
        weights = learner.cross_attention_weights(theta, images, n_support)[n_support:]
    return EpisodeAttention(
        support_image_shares(weights).cpu(),
        episode.support_y[s_order].cpu(),
        episode.query_y[q_order].cpu(),
    )


def class_share(episodes: list[EpisodeAttention], n_class: int) -> ClassShare:
    """Same-class shares of every query of ``episodes`` against the uniform 1/N."""
    shares = [same_class_shares(e.shares, e.support_y, e.query_y) for e in episodes]
    return ClassShare(torch.cat(shares), n_class)


def _class_ticks(ax: Axes, labels: torch.Tensor, axis: str) -> None:
    """Tick each class block of a sorted label axis at its centre, with lines between."""
    classes, counts = torch.unique_consecutive(labels, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    centres = [end - count / 2 - 0.5 for end, count in zip(ends, counts.tolist(), strict=True)]
    names = [str(int(c) + 1) for c in classes]
    if axis == "x":
        ax.set_xticks(centres, names)
        for end in ends[:-1]:
            ax.axvline(end - 0.5, color="black", lw=0.8)
    else:
        ax.set_yticks(centres, names)
        for end in ends[:-1]:
            ax.axhline(end - 0.5, color="black", lw=0.8)
    ax.tick_params(length=0)


def _draw_share_histogram(ax: Axes, summary: ClassShare, n_episodes: int) -> None:
    uniform = 100 * summary.uniform
    band = UNIFORM_TOLERANCE * uniform
    label = f"counts as uniform (±{UNIFORM_TOLERANCE:.0%} of 1/N)"
    ax.axvspan(uniform - band, uniform + band, color="0.85", label=label)
    counts, _, _ = ax.hist(
        100 * summary.shares.numpy(), bins=np.linspace(0, 100, 41), color="tab:blue"
    )
    ax.set_ylim(0, 1.45 * max(counts.max(), 1))  # headroom: the legend never hides a bar
    ax.axvline(100 * summary.mean, color="tab:red", lw=2, label=f"mean {100 * summary.mean:.1f}%")
    ax.axvline(uniform, color="black", ls="--", lw=1.5, label=f"uniform: 1/N = {uniform:.0f}%")
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the query's attention on its own class (%)")
    ax.set_ylabel("queries")
    ax.set_title(f"{summary.shares.numel()} queries, {n_episodes} validation episodes")
    ax.legend(loc="upper right")


def _draw_heat_map(ax: Axes, episode: EpisodeAttention, norm: Normalize, index: int) -> AxesImage:
    from matplotlib.patches import Rectangle

    ratio = episode.shares * episode.shares.shape[1]  # 1 = the uniform share 1/S
    image = ax.imshow(
        ratio.numpy(), cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest"
    )
    _class_ticks(ax, episode.support_y, "x")
    _class_ticks(ax, episode.query_y, "y")
    for c in torch.unique(episode.query_y).tolist():  # frame the query's own class
        rows = torch.nonzero(episode.query_y == c).flatten()
        cols = torch.nonzero(episode.support_y == c).flatten()
        if rows.numel() and cols.numel():
            corner = (cols[0].item() - 0.5, rows[0].item() - 0.5)
            ax.add_patch(
                Rectangle(corner, cols.numel(), rows.numel(), fill=False, ec="black", lw=2.5)
            )
    ax.set_xlabel("support image, by class\n(framed: the query's own class)")
    ax.set_ylabel("query image, by class")
    ax.set_title(f"validation episode {index + 1}")
    return image


def draw_cross_attention(
    episodes: list[EpisodeAttention], summary: ClassShare, heat_maps: int, title: str
) -> Figure:
    """Left: histogram of every query's same-class share against 1/N. Right: query x support
    heat maps of the first ``heat_maps`` episodes, coloured by share / uniform share."""
    from matplotlib.figure import Figure

    shown = episodes[:heat_maps]
    fig = Figure(figsize=(4.5 + 3.3 * len(shown), 5.2), layout="constrained")
    axes = fig.subplots(1, 1 + len(shown), width_ratios=[1.4] + [1.0] * len(shown))
    _draw_share_histogram(axes[0], summary, len(episodes))
    norm = _ratio_norm(torch.cat([e.shares.flatten() * e.shares.shape[1] for e in shown]))
    for i, (ax, episode) in enumerate(zip(axes[1:], shown, strict=True)):
        image = _draw_heat_map(ax, episode, norm, i)
    if shown:
        label = "share of the query's attention / uniform share 1/(N·K)"
        _ratio_colorbar(fig, image, list(axes[1:]), norm, label)
    verdict = summary.sentence()
    fig.suptitle(f"{title}\n{verdict[0].upper()}{verdict[1:]}", fontweight="bold")
    return fig


def plot_cross_attention(
    model: FewShotModel, episodes: list[Episode], config: Config, path: Path, heat_maps: int = 2
) -> Path:
    """cross_attention.png: does each query attend to the support images of its own class?"""
    measured = [episode_attention(model, episode, config) for episode in episodes]
    summary = class_share(measured, config.n_class)
    title = (
        f"Learner cross-attention after block {config.attn_block}, "
        f"{config.n_class}-way {config.n_shot}-shot"
    )
    return save_figure(draw_cross_attention(measured, summary, heat_maps, title), path)


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
    episodes = _validation_episodes(config, device, CROSS_ATTENTION_EPISODES)
    model = load_trained(str(ckpt), config, episodes[0].support_x.shape[1], device)
    if config.attention in ("meta", "both"):
        path = run_dir / "meta_attention.png"
        written.append(plot_meta_attention(model, episodes[0], config, path))
    if config.attention in ("learner", "both"):
        path = run_dir / "cross_attention.png"
        written.append(plot_cross_attention(model, episodes, config, path))
    return written
