"""Episodes (tasks): N classes, K support and Q query images per class, drawn from an ImageSet.

Sampling is stateless: episode ``i`` of a stream depends only on (seed, stream, i), so a
resumed run draws exactly the episodes it would have drawn, and validation and test
episodes are the same for every checkpoint. The same holds for training augmentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnopt.data.augment import Augment
from attnopt.data.imageset import ImageSet

TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 0, 1, 2
EVAL_SEED = 0  # validation and test episodes do not depend on --seed
_AUGMENT_KEY = 1  # appended to (seed, stream, index) for the augmentation's own seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EpisodeIndices:
    """Rows of the ImageSet for one episode, and the labels 0..N-1 given to them.

    classes[j] is the ImageSet class that gets label j in this episode.
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


@dataclass(frozen=True)
class Episode:
    """One task as tensors on the device, or B tasks with a leading (B,) dimension.

    support_x: (N*K, C, H, W) float; support_y: (N*K,) int64.
    query_x: (N*Q, C, H, W) float; query_y: (N*Q,) int64.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W), standardised.

    Photos (3 channels) use the ImageNet mean and std; grayscale maps [0, 255] to [-1, 1].
    """
    return standardize(to_unit(images))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Float (B, C, H, W) in [0, 1] -> standardised, in place (see :func:`normalize`)."""
    if x.shape[1] == 3:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    else:
        mean, std = torch.tensor(0.5, device=x.device), torch.tensor(0.5, device=x.device)
    if x.shape[1] == 3 and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous():
        # Channels-last (as to_unit returns it): broadcasting (1, C, 1, 1) over it is slow on
        # CPU; the same operations on rows of W*C values are vectorised, with equal results.
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).view(b * h, w * c)
        rows.sub_(mean.view(c).repeat(w)).div_(std.view(c).repeat(w))
        return x
    return x.sub_(mean).div_(std)


class EpisodeSampler:
    """Draws N-way K-shot episodes with Q queries per class from ``imageset``.

    Raises UserError at construction when the set has fewer than N classes or a class has
    fewer than K + Q images.
    """

    def __init__(
        self,
        imageset: ImageSet,
        n_class: int,
        n_shot: int,
        n_query: int,
        seed: int,
        stream: int = TRAIN_STREAM,
    ) -> None:
        imageset.check_episode_shape(n_class, n_shot + n_query)
        self.imageset = imageset
        self.n_class, self.n_shot, self.n_query = n_class, n_shot, n_query
        self.seed, self.stream = seed, stream
        order = np.argsort(imageset.labels, kind="stable")
        bounds = np.cumsum(imageset.class_counts())[:-1]
        self._rows_by_class = np.split(order, bounds)

    def indices(self, index: int) -> EpisodeIndices:
        """The rows and labels of episode ``index``. Labels are assigned at random per episode."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        k, q = self.n_shot, self.n_query
        classes = rng.choice(len(self._rows_by_class), self.n_class, replace=False)
        picks = np.stack(
            [rng.choice(self._rows_by_class[c], k + q, replace=False) for c in classes]
        )
        labels = np.repeat(np.arange(self.n_class), k + q).reshape(self.n_class, k + q)
        support, query = picks[:, :k].ravel(), picks[:, k:].ravel()
        support_labels, query_labels = labels[:, :k].ravel(), labels[:, k:].ravel()
        # Shuffle so that no algorithm can read labels off the order of the images.
        s, qp = rng.permutation(len(support)), rng.permutation(len(query))
        return EpisodeIndices(classes, support[s], support_labels[s], query[qp], query_labels[qp])

    def identity(self, episodes: int) -> str:
        """A short fingerprint of episodes 0 .. ``episodes``-1: equal for two samplers exactly
        when they draw the same tasks from the same images (data, N, K, Q, seed, stream, count).

        The images enter through their class names, labels and a sample of their pixels."""
        images = self.imageset.images
        digest = hashlib.sha256()
        for part in (
            json.dumps(
                [self.n_class, self.n_shot, self.n_query, self.seed, self.stream, episodes],
            ),
            json.dumps(list(self.imageset.class_names), ensure_ascii=False),
            np.ascontiguousarray(self.imageset.labels, dtype=np.int64).tobytes(),
            str(images.shape),
            np.ascontiguousarray(images[:: max(1, len(images) // 512)]).tobytes(),
        ):
            digest.update(part.encode() if isinstance(part, str) else part)
        return digest.hexdigest()[:16]

    def augment_seed(self, index: int) -> int:
        """The seed of episode ``index``'s augmentation: independent of its sampling."""
        entropy = [self.seed, self.stream, index, _AUGMENT_KEY]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def episode(
        self, index: int, device: torch.device | str = "cpu", augment: Augment | None = None
    ) -> Episode:
        """Episode ``index`` as normalised tensors on ``device``: support_x (N*K, C, H, W) etc."""
        tasks = self.episodes([index], device, augment)
        # the first (only) task of each field; dataclasses.astuple would deep-copy the tensors
        return Episode(**{f.name: getattr(tasks, f.name)[0] for f in dataclasses.fields(tasks)})

    def episodes(
        self,
        indices: Sequence[int],
        device: torch.device | str = "cpu",
        augment: Augment | None = None,
    ) -> Episode:
        """Episodes ``indices`` stacked for a meta-batch: support_x (B, N*K, C, H, W) etc.

        One gather and one transfer for all of them. ``augment`` (training only) transforms
        each episode's images in [0, 1] on the device before they are standardised, seeded by
        :meth:`augment_seed`.
        """
        picked = [self.indices(i) for i in indices]
        rows = np.concatenate([np.concatenate((p.support, p.query)) for p in picked])
        images = torch.from_numpy(np.ascontiguousarray(self.imageset.images[rows]))
        if torch.device(device).type == "cuda":
            images = images.pin_memory()
        x = to_unit(images.to(device, non_blocking=True))
        per_task = len(rows) // len(indices)
        if augment is not None:
            x = torch.cat(
                [
                    augment(x[b * per_task : (b + 1) * per_task], self.augment_seed(i))
                    for b, i in enumerate(indices)
                ]
            )
        x = standardize(x).unflatten(0, (len(indices), per_task))
        n_support = len(picked[0].support)

        def labels(name: str) -> torch.Tensor:
            stacked = np.stack([getattr(p, name) for p in picked])
            return torch.from_numpy(stacked).to(device, non_blocking=True)

        return Episode(
            support_x=x[:, :n_support],
            support_y=labels("support_labels"),
            query_x=x[:, n_support:],
            query_y=labels("query_labels"),
        )
