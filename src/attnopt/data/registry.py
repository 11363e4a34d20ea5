"""The few-shot benchmarks read from their released files: ``--data`` name -> loader.

Each loader takes (data root, split, config, cache folder) and returns the split's ImageSet;
the presets of these data sets are in :data:`attnopt.config.PRESETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from attnopt.config import Config
from attnopt.data.cifar import CIFAR_FS_SPLIT, FC100_SPLIT, load_cifar_split
from attnopt.data.cub import load_cub_split
from attnopt.data.imageset import ImageSet
from attnopt.data.omniglot import load_omniglot_split
from attnopt.data.tiered import load_tiered_split

Loader = Callable[[Path, str, Config, Path], ImageSet]

LOADERS: dict[str, Loader] = {
    "tieredimagenet": lambda root, split, c, cache: load_tiered_split(
        root, split, c.image_size, cache, c.n_workers, c.skip_bad_images
    ),
    "cifarfs": lambda root, split, c, cache: load_cifar_split(
        CIFAR_FS_SPLIT, root, split, c.image_size, cache, c.n_workers
    ),
    "fc100": lambda root, split, c, cache: load_cifar_split(
        FC100_SPLIT, root, split, c.image_size, cache, c.n_workers
    ),
    "omniglot": lambda root, split, c, cache: load_omniglot_split(
        root, split, c.image_size, cache, c.n_workers
    ),
    "cub": lambda root, split, c, cache: load_cub_split(
        root, split, c.image_size, cache, c.n_workers, c.skip_bad_images, c.crop
    ),
}
