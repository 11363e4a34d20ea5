"""Every data set that ``--data`` names, in one place: its preset, whether ``attnopt train``
pre-trains on it by default, and its split loader.

:mod:`attnopt.config` reads the names and presets from here, so this module imports neither
the config nor the loaders: a loader is named as ``"module:function"`` of :mod:`attnopt.data`
and imported on first use (``attnopt --help`` stays quick). Every loader is called as
``loader(options, split)`` with the :class:`DataOptions` of the run.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnopt.errors import UserError

if TYPE_CHECKING:
    from attnopt.data.imageset import ImageSet


@dataclass(frozen=True)
class DataOptions:
    """What a split loader needs of a run's settings.

    root: ``--data-root`` with ``~`` expanded (None for the built-in data set).
    """

    root: Path | None
    image_size: int
    cache_dir: Path
    n_workers: int = 4
    skip_bad_images: bool = False
    crop: str = "none"

    def data_root(self) -> Path:
        """``root`` as given; UserError unless it is a folder."""
        if self.root is None or not self.root.is_dir():
            raise UserError(f"--data-root {self.root} is not a folder")
        return self.root


def default_cache_dir() -> Path:
    """``$ATTNOPT_CACHE``, else ``$XDG_CACHE_HOME/attnopt``, else ``~/.cache/attnopt``."""
    if os.environ.get("ATTNOPT_CACHE"):
        return Path(os.environ["ATTNOPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnopt"


@dataclass(frozen=True)
class DataSet:
    """One ``--data`` choice.

    preset: its settings on top of the dataclass defaults of :class:`attnopt.config.Config`.
    pretrain: whether ``attnopt train`` pre-trains on it first by default (``--pretrain``).
    loader: ``"module:function"`` in :mod:`attnopt.data`, called as ``function(options, split)``.
    """

    name: str
    preset: dict[str, Any]
    loader: str
    pretrain: bool = False

    def load(self, options: DataOptions, split: str) -> ImageSet:
        """The ``split`` ("train", "val" or "test") of this data set."""
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(f"attnopt.data.{module}"), function)(options, split)


# The dataclass defaults are the built-in data set's quick preset (it trains and tests in
# minutes on a laptop CPU); photo data sets take the seed's mini-ImageNet settings.
_PHOTO_PRESET: dict[str, Any] = {"image_size": 84, "episode": 50000, "val_freq": 1000}

REGISTRY = (
    DataSet("glyphs", {}, "glyphs:load_glyphs_split"),
    DataSet("miniimagenet", _PHOTO_PRESET, "miniimagenet:load_miniimagenet_split"),
    # Your own images train without augmentation: on real drawings at 32x32 (emoji, 500
    # episodes) --augment auto tested 5.9 and 8.6 points below none on two seeds, paired
    # (benchmarks/README.md, issue 14).
    # They are also pre-trained first (--pretrain): on emoji drawings at 32x32 it gained 4.8
    # to 5.7 points at 5- and 1-shot, for the time of 60 to 100 meta-training episodes
    # (benchmarks/README.md, issue 14). The benchmark data sets keep the published protocol,
    # which does not pre-train.
    DataSet(
        "folder", {**_PHOTO_PRESET, "augment": "none"}, "folder:load_folder_data", pretrain=True
    ),
    # The other benchmarks keep the seed's schedule; image sizes are their papers'
    # (tieredImageNet and CUB 84, CIFAR-FS and FC100 32, Omniglot 28). Omniglot papers
    # augment only with the rotations that are classes of their own.
    DataSet("tieredimagenet", _PHOTO_PRESET, "tiered:load_tiered_split"),
    DataSet("cifarfs", {**_PHOTO_PRESET, "image_size": 32}, "cifar:load_cifar_fs_split"),
    DataSet("fc100", {**_PHOTO_PRESET, "image_size": 32}, "cifar:load_fc100_split"),
    DataSet(
        "omniglot",
        {**_PHOTO_PRESET, "image_size": 28, "augment": "none"},
        "omniglot:load_omniglot_split",
    ),
    DataSet("cub", _PHOTO_PRESET, "cub:load_cub_split"),
)
BY_NAME = {data_set.name: data_set for data_set in REGISTRY}
