"""The Python API: apply a trained meta-learner to your own images, train and evaluate.

    import attnopt
    model = attnopt.load("logs/ckpts/best.pt")           # device="cpu" | "cuda"
    task = model.adapt(support_images, support_labels)   # PIL images, paths or tensors
    probs = task.predict_proba(query_images)             # (M, n) numpy, columns = task.classes
    labels = task.predict(query_images)                  # the label values given to adapt

Images are converted exactly like the training data (decoded, converted to the checkpoint's
channels, resized to its ``--image-size``, standardised) and adapted with the same
:func:`attnopt.adapt.adapt` as training, with support-set BatchNorm statistics, so the
prediction for an image never depends on the other query images.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config, Saved, resolve
from attnopt.data.decode import decode_image, image_to_array
from attnopt.data.episodes import standardize, to_unit
from attnopt.errors import UserError
from attnopt.models.base import Learner
from attnopt.models.build import FewShotModel, build_model
from attnopt.runtime.device import select_device
from attnopt.training.checkpoint import as_saved, load_checkpoint, refuse_pretrained
from attnopt.training.evaluation import EvalResult, load_trained, test_checkpoint
from attnopt.training.pipeline import TrainResult, train_and_test

# One image: a file path, a Pillow image, or a float tensor (C, H, W) in [0, 1].
ImageLike = str | os.PathLike | Image.Image | torch.Tensor
# Many images: a sequence of those, or one float tensor (B, C, H, W) in [0, 1].
Images = Sequence[ImageLike] | torch.Tensor

QUERY_CHUNK = 256  # query images per forward pass (bounds memory; results do not depend on it)


def make_config(config: Config | None = None, **flags: Any) -> Config:
    """A validated Config from command-line flags as keywords (``n_shot=1``, ``data="folder"``,
    ``data_root="..."``), on top of ``config`` or, without it, the data set's preset."""
    if config is None:
        return resolve(flags)
    return resolve(flags, command="test", saved=Saved(config))


def train_config(flags: dict[str, Any]) -> Config:
    """The Config of ``attnopt train`` with these flags (:func:`attnopt.config.resolve`), with
    the checkpoint named by ``resume`` or ``init`` loaded."""
    path = flags.get("resume") or flags.get("init")
    if not path:
        return resolve(flags)
    ckpt = load_checkpoint(path)
    if flags.get("resume"):
        refuse_pretrained(ckpt, path)
    return resolve(flags, saved=as_saved(ckpt, path))


def train(
    config: Config | None = None, *, overwrite: bool = False, **flags: Any
) -> TrainResult | None:
    """Meta-train (``attnopt train``), test the best checkpoint and return the result.

    ``attnopt.train(n_shot=1, save="runs/1shot")`` or ``attnopt.train(attnopt.make_config(...))``;
    keyword flags are applied on top of ``config``. ``resume="RUN/ckpts/last.pt"`` continues
    that run (its settings must not change, but for ``episode``, ``lr`` and the other
    continuation settings); ``init=CKPT`` starts a new run from a checkpoint's weights.
    ``overwrite=True`` replaces a run already in the ``save`` folder. Returns None on torchrun
    processes other than rank 0.
    """
    settings = {**config.to_dict(), **flags} if config is not None else flags
    return train_and_test(train_config(settings), overwrite)


def evaluate(checkpoint: str | os.PathLike, device: str | None = None, **flags: Any) -> EvalResult:
    """Evaluate a checkpoint on test episodes (``attnopt test``) and return the result.

    The checkpoint's settings are the defaults; ``flags`` override them (``episode_test=100``,
    ``n_shot=1``). Writes no file. ``device`` None: CUDA when available.
    """
    config = resolve(flags, command="test", saved=as_saved(load_checkpoint(checkpoint), checkpoint))
    dev = torch.device(device) if device is not None else select_device(config.cpu)
    return test_checkpoint(str(checkpoint), config, dev)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> FewShotClassifier:
    """The trained model in checkpoint ``path``, ready to adapt to your support sets."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} is not available here; use device='cpu'")
    ckpt = load_checkpoint(path)
    config: Config = ckpt["config"]
    model = load_trained(str(path), config, ckpt["in_channels"], device)
    return FewShotClassifier(model, config, ckpt["in_channels"], str(path))


def head_rows(learner: Learner, theta: torch.Tensor, n_class: int) -> torch.Tensor:
    """θ (P,) of an N-way ``learner`` cut to ``n_class``-way: the head keeps its first rows.

    Every other parameter (convolutions, BatchNorm, attention) is shared by all classes.
    """
    parts = []
    for name, tensor in learner.unflatten(theta).items():
        parts.append((tensor[:n_class] if name.startswith("head.") else tensor).reshape(-1))
    return torch.cat(parts)


def narrow(model: FewShotModel, config: Config, channels: int, n_class: int) -> FewShotModel:
    """The same meta-learner for ``n_class``-way tasks (n_class <= N): c_I's head keeps its
    first ``n_class`` rows; the LSTM, gates and attention weights do not depend on N."""
    if n_class == config.n_class:
        return model
    with torch.random.fork_rng(devices=[]):  # build_model draws an initialisation: discarded
        small = build_model(dataclasses.replace(config, n_class=n_class), channels)
    state = model.state_dict()
    state["metalearner.c_init"] = head_rows(model.learner, state["metalearner.c_init"], n_class)
    small.load_state_dict(state)
    return small.place(model.metalearner.c_init.device).eval()


class FewShotClassifier:
    """A trained meta-learner (see :func:`load`).

    ``channels`` (1 or 3) and ``image_size`` are those of its training data; ``n_class`` is the
    most classes a support set may have.
    """

    def __init__(self, model: FewShotModel, config: Config, channels: int, source: str) -> None:
        self.model = model.eval()
        self.config = config
        self.channels = channels
        self.source = source
        self.device = model.metalearner.c_init.device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def n_class(self) -> int:
        return self.config.n_class

    def images_to_tensor(self, images: Images) -> torch.Tensor:
        """Standardised float (B, C, H, W) on the model's device, as training episodes are.

        Paths and Pillow images are converted to the checkpoint's channels and resized to its
        image size (as the training data was); tensors must be float in [0, 1], (C, H, W) or
        (B, C, H, W), with the checkpoint's channels and image size.
        """
        if isinstance(images, torch.Tensor):
            unit = self._check_tensor(images if images.dim() == 4 else images.unsqueeze(0))
        else:
            if isinstance(images, (str, os.PathLike, Image.Image)):
                images = [images]
            if len(images) == 0:
                raise UserError("no images given")
            unit = torch.cat([self._one(image) for image in images])
        return standardize(unit.to(self.device, dtype=torch.float32, copy=True))

    def _one(self, image: ImageLike) -> torch.Tensor:
        """One image as float (1, C, S, S) in [0, 1]."""
        mode = "L" if self.channels == 1 else "RGB"
        if isinstance(image, torch.Tensor):
            return self._check_tensor(image.unsqueeze(0) if image.dim() == 3 else image)
        if isinstance(image, Image.Image):
            array = image_to_array(image, self.image_size, mode)
        elif isinstance(image, (str, os.PathLike)):
            array = decode_image(Path(image), self.image_size, mode)
        else:
            raise UserError(
                f"cannot use a {type(image).__name__} as an image; pass paths, PIL images "
                "or float tensors (C, H, W) in [0, 1]"
            )
        return to_unit(torch.from_numpy(array.copy()).unsqueeze(0))  # Pillow's is read-only

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise UserError(
                f"image tensor of shape {tuple(x.shape)} does not fit checkpoint {self.source}, "
                f"which takes (B, {', '.join(map(str, expected))}) floats in [0, 1] "
                f"({self.channels}-channel {self.image_size}x{self.image_size} images); convert "
                "it, or pass paths or PIL images, which are converted for you"
            )
        if not x.is_floating_point():
            raise UserError(f"image tensors must be floats in [0, 1], got {x.dtype}; divide by 255")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise UserError(
                f"image tensors must be floats in [0, 1], got values in [{x.min():.3g}, "
                f"{x.max():.3g}]; pass unnormalised pixels (attnopt standardises them)"
            )
        return x

    def adapt(self, images: Images, labels: Sequence[Hashable]) -> AdaptedTask:
        """Adapt the learner to a support set: ``images`` with one label each (class names or
        ints; at least 2 and at most :attr:`n_class` classes, any number of images per class).

        Classes are ordered by sorting the labels; class ``j`` uses row ``j`` of the learned
        classifier head. The inner loop runs the same number of steps as in training.
        """
        labels = labels.tolist() if isinstance(labels, (torch.Tensor, np.ndarray)) else labels
        labels = list(labels)
        try:
            classes = tuple(sorted(set(labels)))
        except TypeError:
            raise UserError(
                "support labels must be all class names (strings) or all ints"
            ) from None
        if len(classes) > self.n_class:
            raise UserError(
                f"the support set has {len(classes)} classes ({_names(classes)}), more than the "
                f"{self.n_class} that checkpoint {self.source} was trained for; use at most "
                f"{self.n_class} classes, or train with --n-class {len(classes)}"
            )
        if len(classes) < 2:
            raise UserError(
                f"the support set has {len(classes)} class{'' if len(classes) == 1 else 'es'}; "
                "give images of at least 2 classes"
            )
        x = self.images_to_tensor(images)
        if x.shape[0] != len(labels):
            raise UserError(f"{x.shape[0]} support images but {len(labels)} labels")
        index = {c: j for j, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels], device=self.device)
        # Interleave the classes (fixed order), so mini-batches are not blocks of one class.
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order.to(self.device)], y[order.to(self.device)]
        model = narrow(self.model, self.config, self.channels, len(classes))
        epochs, batch_size = inner_loop_shape(self.config, len(y))
        with torch.no_grad():
            theta = adapt(model.learner, model.metalearner, x[None], y[None], epochs, batch_size)[0]
        return AdaptedTask(self, model.learner, theta, x, classes)


def inner_loop_shape(config: Config, n_support: int) -> tuple[int, int]:
    """(passes, mini-batch size) for a support set of ``n_support`` images.

    The learned optimizer was meta-trained for T = ``--epoch`` passes of s = ceil(N·K /
    ``--batch-size``) steps each. Any support set gets the same passes, each in the smallest
    mini-batches that take at most s steps: by default (s = 1) the whole support set, so
    exactly T steps, whatever the number of shots.
    """
    steps_per_pass = math.ceil(config.n_class * config.n_shot / config.batch_size)
    return config.epoch, math.ceil(n_support / steps_per_pass)


class AdaptedTask:
    """The learner adapted to one support set; classifies any number of query images.

    ``classes``: the support labels in column order of :meth:`predict_proba`.
    """

    def __init__(
        self,
        classifier: FewShotClassifier,
        learner: Learner,
        theta: torch.Tensor,
        support_x: torch.Tensor,
        classes: tuple[Hashable, ...],
    ) -> None:
        self.classifier = classifier
        self.learner = learner
        self.theta = theta
        self.support_x = support_x
        self.classes = classes

    def predict_proba(self, images: Images) -> np.ndarray:
        """Class probabilities (M, n) for M query images, columns in :attr:`classes` order.

        Each image is normalised with the support set's BatchNorm statistics, so its row does
        not depend on the other images passed with it.
        """
        x = self.classifier.images_to_tensor(images)
        with torch.no_grad():
            logits = torch.cat(
                [
                    query_logits(
                        self.learner,
                        self.theta[None],
                        self.support_x[None],
                        chunk[None],
                        bn="support",
                    )[0]
                    for chunk in x.split(QUERY_CHUNK)
                ]
            )
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    def predict(self, images: Images) -> list[Hashable]:
        """The most probable class of each query image, as the label values given to adapt."""
        return [self.classes[j] for j in self.predict_proba(images).argmax(1)]


def _names(classes: Sequence[Hashable], shown: int = 8) -> str:
    more = f", ... ({len(classes) - shown} more)" if len(classes) > shown else ""
    return ", ".join(map(str, classes[:shown])) + more
