"""``attnopt pretrain``: supervised pre-training of the learner's feature extractor.

The learner's network (Conv-4 of ``--width`` filters, with a linear layer over *all*
meta-training classes) is trained as an ordinary classifier: cross-entropy, training
augmentation (``--augment``), SGD with momentum and a cosine learning-rate schedule. Its
convolution and BatchNorm weights then start c_I in ``attnopt train --init PRETRAINED``: the
meta-learner begins from features that already tell the training classes apart (the standard
lever of modern few-shot learning), while the N-way head, whose rows are new classes in every
episode, starts at zeros or at random (``--init-head``). BatchNorm uses batch statistics, as
the learner always does.

The folder ``--save`` receives ``pretrained.pt`` (a checkpoint of kind "pretrained"),
``config.json`` and ``metrics.csv`` (loss and accuracy per epoch). ``attnopt train
--pretrain`` (the default for ``--data folder``) runs the same pre-training as its first
phase, into RUN_DIR/pretrain (:func:`pretrain_first`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnopt.config import PRETRAIN_DEFAULTS, Config
from attnopt.data import load_split
from attnopt.data.augment import make_augmentation
from attnopt.data.episodes import standardize, to_unit
from attnopt.data.imageset import ImageSet
from attnopt.errors import UserError
from attnopt.models.build import FewShotModel
from attnopt.models.learner import Conv4Learner, reference_module
from attnopt.runs.fileio import remove_stale_temps, write_csv, write_json
from attnopt.runs.folder import PRETRAIN_FOLDER
from attnopt.runtime import threads
from attnopt.runtime.device import seed_everything, select_device
from attnopt.training.checkpoint import PRETRAINED, restore_rng_states, rng_states, save_checkpoint
from attnopt.training.distributed import Processes

log = logging.getLogger("attnopt")

CHECKPOINT = "pretrained.pt"
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
METRICS = ("epoch", "loss", "accuracy", "lr", "elapsed_s")


@dataclass(frozen=True)
class PretrainResult:
    checkpoint: Path  # pretrained.pt (not written when pre-training did not write)
    loss: float  # the last epoch's mean training loss
    accuracy: float  # and its training accuracy (percent, on augmented images)
    seconds: float
    features: dict[str, Any]  # pretrained.pt's kind, model, in_channels, episode and classes


def _check_folder(folder: Path, overwrite: bool) -> None:
    if (folder / CHECKPOINT).exists() and not overwrite:
        raise UserError(
            f"--save {folder} already holds {CHECKPOINT}; choose another --save folder or "
            "pass --overwrite to replace it"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder --save {folder}: {e.strerror or e}") from None
    remove_stale_temps(folder)


class _Classifier:
    """The learner as an ordinary classifier over the training classes, with its optimizer,
    schedule and augmentation."""

    def __init__(self, config: Config, train_set: ImageSet, device: torch.device) -> None:
        self.config, self.train_set, self.device = config, train_set, device
        classes = len(train_set.class_names)
        self.learner = Conv4Learner(
            train_set.channels, classes, config.image_size, config.width, config.bn_eps
        )
        self.net = reference_module(self.learner).to(device)  # parameters in θ's order
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=config.pretrain_lr,
            momentum=MOMENTUM,
            nesterov=True,
            weight_decay=WEIGHT_DECAY,
        )
        self.steps = math.ceil(len(train_set.labels) / config.pretrain_batch)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, config.pretrain_epochs * self.steps
        )
        self.augment = make_augmentation(config.augment, train_set.channels, config.image_size)
        self.labels = torch.from_numpy(train_set.labels.astype(np.int64))
        self.rng = np.random.default_rng([config.seed, 7])  # batches and augmentation
        self.threads = threads.governor(device)

    def epoch(self, number: int) -> tuple[float, float]:
        """One pass over the training images in a new order: mean loss and accuracy (%)."""
        totals = np.zeros(3)  # loss·n, correct, n
        for rows in np.array_split(self.rng.permutation(len(self.labels)), self.steps):
            rows = np.sort(rows)
            images = self.train_set.images[rows]
            x = to_unit(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
            if self.augment is not None:
                x = self.augment(x, int(self.rng.integers(2**63)))
            y = self.labels[rows].to(self.device)
            logits = self.net(standardize(x))
            loss = F.cross_entropy(logits, y)
            if not math.isfinite(loss.item()):
                raise UserError(
                    f"pre-training diverged in epoch {number} (loss {loss.item()}); lower "
                    "--pretrain-lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            self.threads.tick()
            correct = (logits.detach().argmax(1) == y).sum().item()
            totals += (loss.item() * len(rows), correct, len(rows))
        return float(totals[0] / totals[2]), float(100 * totals[1] / totals[2])

    def weights(self) -> dict[str, torch.Tensor]:
        """The network's parameters by the learner's names (θ's tensors)."""
        theta = nn.utils.parameters_to_vector(self.net.parameters()).detach().cpu()
        return {name: t.clone() for name, t in self.learner.unflatten(theta).items()}


def pretrain(
    config: Config,
    overwrite: bool = False,
    device: torch.device | None = None,
    writes: bool = True,
) -> PretrainResult:
    """Pre-train the learner's feature extractor on the training split as ``config`` says and
    write ``pretrained.pt`` into ``config.save``. ``device`` None: as ``--cpu`` says;
    ``writes`` False: train only (the other processes of a torchrun job)."""
    folder = Path(config.save)
    if writes:
        _check_folder(folder, overwrite)
    seed_everything(config.seed)
    device = device or select_device(config.cpu)
    train_set = load_split(config, "train")
    classifier = _Classifier(config, train_set, device)
    if writes:
        write_json(folder / "config.json", config.to_dict())
    log.info(
        "pre-training on %s: %d images of %d classes, %d epochs of %d steps, device %s",
        train_set.source, len(train_set.labels), len(train_set.class_names),
        config.pretrain_epochs, classifier.steps, device.type,
    )  # fmt: skip
    start, rows = time.perf_counter(), []
    for epoch in range(1, config.pretrain_epochs + 1):
        lr = classifier.optimizer.param_groups[0]["lr"]
        loss, accuracy = classifier.epoch(epoch)
        log.info("epoch %d  loss %.4f  acc %.2f%%  lr %.4g", epoch, loss, accuracy, lr)
        values = (epoch, loss, accuracy, lr, time.perf_counter() - start)
        rows.append({k: f"{v:.6g}" for k, v in zip(METRICS, values, strict=True)})
        if writes:
            write_csv(folder / "metrics.csv", METRICS, rows)
    path = folder / CHECKPOINT
    features = {
        "kind": PRETRAINED,
        "model": classifier.weights(),
        "in_channels": train_set.channels,
        "episode": config.pretrain_epochs,
        "classes": [str(name) for name in train_set.class_names],
    }
    if writes:
        save_checkpoint(
            path,
            config=config,
            in_channels=features["in_channels"],
            model=features["model"],
            optimizer=None,
            episode=features["episode"],
            best_accuracy=accuracy,
            best_episode=config.pretrain_epochs,
            kind=PRETRAINED,
            extra={"classes": features["classes"]},
        )
        log.info("wrote %s", path)
    return PretrainResult(path, loss, accuracy, time.perf_counter() - start, features)


def pretrain_first(
    config: Config, procs: Processes, device: torch.device
) -> tuple[Config, dict[str, Any]]:
    """``attnopt train --pretrain``: pre-train the features into RUN_DIR/pretrain exactly as
    ``attnopt pretrain`` with the run's settings and its own defaults would; return the run's
    config that starts from them (``--init``) and the features. Under torchrun every process
    pre-trains (rank 0 alone writes), so none waits on another for longer than the process
    group allows. The global random generators are left as they were: the run is the one the
    two commands make."""
    folder = Path(config.save) / PRETRAIN_FOLDER
    log.info("pre-training the features first (--no-pretrain skips it)")
    states = rng_states()
    settings = replace(config, save=str(folder), **PRETRAIN_DEFAULTS)
    # overwrite: the run's own folder, which runfolder.check has found free for this run
    result = pretrain(settings, overwrite=True, device=device, writes=procs.is_main)
    restore_rng_states(states)
    return replace(config, init=str(result.checkpoint)), result.features


def feature_names(learner: Conv4Learner) -> list[str]:
    """The learner's parameter tensors that pre-training provides: everything before the head
    (convolutions and BatchNorm)."""
    return [s.name for s in learner.specs if s.name.startswith("block")]


def init_from_pretrained(
    model: FewShotModel, ckpt: dict[str, Any], head: str, path: str | Path
) -> None:
    """Start ``model``'s c_I from the feature extractor of pre-trained checkpoint ``ckpt``
    (read from ``path``): its convolution and BatchNorm weights exactly; the N-way head at
    zeros (``head="zeros"``) or as initialised (``"random"``); anything else (the
    cross-attention) as initialised. UserError when the shapes differ."""
    learner, weights = model.learner, ckpt["model"]
    if not isinstance(learner, Conv4Learner):
        raise UserError(
            f"{path} holds Conv-4 features (attnopt pretrain trains the Conv-4 learner); start "
            "from it with --backbone conv4"
        )
    if ckpt["in_channels"] != learner.in_channels:
        raise UserError(
            f"{path} was pre-trained on {ckpt['in_channels']}-channel images, this run's data "
            f"has {learner.in_channels}; pre-train on data like this run's"
        )
    specs = {s.name: s for s in learner.specs}
    with torch.no_grad():
        c_init = model.metalearner.c_init
        for name in feature_names(learner):
            spec, value = specs[name], weights.get(name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape:
                found = "missing" if value is None else f"of shape {tuple(value.shape)}"
                raise UserError(
                    f"{path} does not fit this learner: its {name} is {found}, the learner's "
                    f"is {spec.shape}; pre-train with this run's settings"
                )
            c_init[spec.offset : spec.offset + spec.numel] = value.reshape(-1)
        if head == "zeros":
            for name in ("head.weight", "head.bias"):
                spec = specs[name]
                c_init[spec.offset : spec.offset + spec.numel] = 0.0
