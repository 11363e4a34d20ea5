"""Prototypical Networks (Snell et al. 2017) on attnopt's episodes: the baseline to beat.

The same Conv-4 (four blocks of conv 3x3 with 32 filters -> BatchNorm -> ReLU -> max-pool 2)
embeds images; a query is classified by its squared Euclidean distance to each class's mean
support embedding (the prototype). Episodes come from attnopt's EpisodeSampler and
load_split, so the training episodes are those `attnopt train --seed S` draws and the
validation and test episodes are exactly attnopt's (same data, N, K, Q and fixed eval seed).
Adam, the best validation checkpoint is tested, one result line:

    python benchmarks/protonet.py --data folder --data-root /work/data/clipart \\
        --image-size 32 --n-shot 5 --episode 1000 --val-freq 250 --save /tmp/proto

--save DIR writes the test record of an attnopt run: DIR/test.json (with the fingerprint of
the test episodes) and DIR/test_episodes.csv (each episode's query accuracy and loss), and
the best network as DIR/best.pt, so `attnopt compare DIR RUN_DIR` pairs ProtoNet with any
attnopt run tested on the same episodes. --init PRETRAINED starts the Conv-4 from the
features of `attnopt pretrain` (the same start as `attnopt train --init PRETRAINED`). In the
result line train_s is the training loop with its validations and wall_s adds the test
(decoding the data is not counted). Pass --threads 1 on a shared machine: two threads that
compete with other jobs run several times slower than one.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnopt.config import resolve
from attnopt.data import load_split
from attnopt.data.augment import make_augmentation
from attnopt.data.episodes import EVAL_SEED, TEST_STREAM, VAL_STREAM, Episode, EpisodeSampler
from attnopt.errors import UserError
from attnopt.runs.fileio import atomic_write
from attnopt.runs.records import write_test_record
from attnopt.runtime.device import seed_everything
from attnopt.training.checkpoint import PRETRAINED, load_checkpoint
from attnopt.training.evaluation import EvalResult, confidence_interval


class Conv4Embedding(nn.Sequential):
    """Conv-4 without the classifier: images (n, C, H, W) -> embeddings (n, width·s·s)."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, width, width, width):
            layers += [
                nn.Conv2d(c_in, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        super().__init__(*layers, nn.Flatten())


def load_features(net: Conv4Embedding, path: str) -> None:
    """Start ``net`` from the convolution and BatchNorm weights of ``attnopt pretrain``'s
    checkpoint ``path`` (the features that start c_I in ``attnopt train --init``)."""
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != PRETRAINED:
        raise UserError(f"--init {path} is not a checkpoint of attnopt pretrain")
    state = {}
    for b in range(4):  # nn.Sequential: conv, BatchNorm, ReLU, max-pool per block
        for layer, part in ((4 * b, "conv"), (4 * b + 1, "bn")):
            for kind in ("weight", "bias"):
                state[f"{layer}.{kind}"] = ckpt["model"][f"block{b}.{part}.{kind}"]
    try:
        net.load_state_dict(state, strict=False)  # BatchNorm's running statistics: fresh
    except RuntimeError as e:
        raise UserError(f"--init {path} does not fit this Conv-4: {e}") from None


def query_logits(net: nn.Module, ep: Episode, n_class: int) -> torch.Tensor:
    """Negative squared distances (N*Q, N) of the query embeddings to the class prototypes."""
    z = net(torch.cat((ep.support_x, ep.query_x)))
    support, query = z[: len(ep.support_x)], z[len(ep.support_x) :]
    prototypes = torch.stack([support[ep.support_y == c].mean(0) for c in range(n_class)])
    return -torch.cdist(query, prototypes).pow(2)


@torch.no_grad()
def evaluate(
    net: nn.Module, sampler: EpisodeSampler, episodes: int, n_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode query accuracy (fraction) and mean query loss over ``episodes`` episodes."""
    net.eval()
    accuracy, loss = torch.empty(episodes), torch.empty(episodes)
    for i in range(episodes):
        ep = sampler.episode(i)
        logits = query_logits(net, ep, n_class)
        accuracy[i] = (logits.argmax(1) == ep.query_y).float().mean()
        loss[i] = F.cross_entropy(logits, ep.query_y)
    net.train()
    return accuracy, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind in (
        ("--data", str),
        ("--data-root", str),
        ("--cache-dir", str),
        ("--image-size", int),
        ("--n-class", int),
        ("--n-shot", int),
        ("--n-eval", int),
        ("--episode", int),
        ("--episode-val", int),
        ("--episode-test", int),
        ("--val-freq", int),
        ("--lr", float),
        ("--augment", str),
        ("--seed", int),
    ):
        parser.add_argument(flag, type=kind, help="as in attnopt train")
    parser.add_argument("--save", type=Path, help="write the test record (test.json) here")
    parser.add_argument("--init", help="start from the features of attnopt pretrain's checkpoint")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = vars(parser.parse_args())
    save, threads, init = args.pop("save"), args.pop("threads"), args.pop("init")
    if threads:
        torch.set_num_threads(threads)
    # attnopt's defaults and presets for everything not given, e.g. Q = 15, 600 test episodes
    config = resolve({**args, "augment": args["augment"] or "none", "cpu": True})
    seed_everything(config.seed)
    n, k, q = config.n_class, config.n_shot, config.n_eval
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    train = EpisodeSampler(train_set, n, k, q, config.seed)
    val = EpisodeSampler(val_set, n, k, q, EVAL_SEED, VAL_STREAM)
    augment = make_augmentation(config.augment, train_set.channels, config.image_size)
    net = Conv4Embedding(train_set.channels)
    if init:
        load_features(net, init)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)

    start = time.perf_counter()
    best_acc, best_episode, best_state = -1.0, 0, copy.deepcopy(net.state_dict())
    for episode in range(1, config.episode + 1):
        ep = train.episode(episode - 1, augment=augment)
        loss = F.cross_entropy(query_logits(net, ep, n), ep.query_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if episode % config.val_freq == 0 or episode == config.episode:
            acc = evaluate(net, val, config.episode_val, n)[0].mean().item() * 100
            print(f"episode {episode} loss {loss.item():.3f} val {acc:.2f}%", flush=True)
            if acc > best_acc:
                best_acc, best_episode = acc, episode
                best_state = copy.deepcopy(net.state_dict())
    train_seconds = time.perf_counter() - start

    net.load_state_dict(best_state)
    test = EpisodeSampler(load_split(config, "test"), n, k, q, EVAL_SEED, TEST_STREAM)
    accuracy, losses = evaluate(net, test, config.episode_test, n)
    mean, ci = confidence_interval(accuracy)
    if save:
        result = EvalResult(
            mean, ci, config.episode_test, n, k, losses.mean().item(),
            accuracy.double().numpy(), losses.double().numpy(),
            episodes_id=test.identity(config.episode_test),
        )  # fmt: skip
        save.mkdir(parents=True, exist_ok=True)
        atomic_write(save / "best.pt", lambda f: torch.save(best_state, f), "wb")
        write_test_record(save / "test.json", result, save / "best.pt", best_episode, save)
    print(
        f"protonet: data={config.data} image_size={config.image_size} {n}-way {k}-shot "
        f"q={q} episodes={config.episode} seed={config.seed} augment={config.augment} "
        f"test={mean:.2f}+-{ci:.2f} ({config.episode_test} episodes) "
        f"best_val={best_acc:.2f}@{best_episode} train_s={train_seconds:.0f} "
        f"wall_s={time.perf_counter() - start:.0f}"
    )


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
