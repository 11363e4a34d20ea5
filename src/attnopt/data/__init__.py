"""Data: image sets on disk -> cached uint8 arrays -> episodes.

The data sets that ``--data`` names and their loaders are listed in
:mod:`attnopt.data.registry`; importing this package loads none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from attnopt.data.registry import BY_NAME, DataOptions, default_cache_dir

if TYPE_CHECKING:
    from attnopt.config import Config
    from attnopt.data.imageset import ImageSet


def load_split(config: Config, split: str) -> ImageSet:
    """The ``split`` ("train", "val" or "test") of the data set that ``config`` names."""
    return BY_NAME[config.data].load(data_options(config), split)


def data_options(config: Config) -> DataOptions:
    """The settings of ``config`` that the split loaders read."""
    return DataOptions(
        root=Path(config.data_root).expanduser() if config.data_root is not None else None,
        image_size=config.image_size,
        cache_dir=Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir(),
        n_workers=config.n_workers,
        skip_bad_images=config.skip_bad_images,
        crop=config.crop,
    )
