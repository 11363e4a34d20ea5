"""ImageSet: one split of a data set as a uint8 array, decoded once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnopt.errors import UserError


@dataclass(frozen=True)
class ImageSet:
    """One split of a data set.

    images: uint8 array (num_images, H, W, C), possibly memory-mapped.
    labels: int64 array (num_images,), indices into ``class_names``.
    class_names: one name per class.
    source: where it came from (a path or a data set name), used in error messages.
    skipped: unreadable image files left out (``--skip-bad-images``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError("labels must have one entry per image")

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def class_counts(self) -> np.ndarray:
        """Number of images of each class, shape (num_classes,)."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def check_episode_shape(self, n_class: int, n_per_class: int) -> None:
        """UserError unless N-way episodes with ``n_per_class`` images per class can be drawn."""
        if len(self.class_names) < n_class:
            raise UserError(
                f"{self.source} has {len(self.class_names)} classes, fewer than "
                f"--n-class {n_class}; lower --n-class or add classes"
            )
        counts = self.class_counts()
        small = [
            (self.class_names[c], int(counts[c])) for c in np.flatnonzero(counts < n_per_class)
        ]
        if small:
            name, count = small[0]
            more = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
            skip = f" after skipping {len(self.skipped)} unreadable images" if self.skipped else ""
            raise UserError(
                f"class '{name}' in {self.source} has {count} images{skip}, fewer than "
                f"--n-shot + --n-eval = {n_per_class}{more}; add images or lower --n-shot/--n-eval"
            )
