"""The folder layout: ``ROOT/<split>/<class>/<image>`` (the seed's mini-ImageNet layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnopt.data.cache import split_key
from attnopt.data.decode import cached_decode, content_signature, is_image_file
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import SPLITS
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError


def list_folder_split(split_dir: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels and the class names (sorted sub-folder names) of one split."""
    if not split_dir.is_dir():
        raise UserError(
            f"missing split folder {split_dir}; expected "
            f"{split_dir.parent}/{{train,val,test}}/<class>/<image>"
        )
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(
            f"{split_dir} has no class sub-folders; expected {split_dir}/<class>/<image>"
        )
    paths, labels = class_images(class_dirs)
    return paths, labels, [d.name for d in class_dirs]


def class_images(class_dirs: list[Path]) -> tuple[list[Path], np.ndarray]:
    """The image files of each class folder, sorted by name, and their labels (the folder's
    index in ``class_dirs``)."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and is_image_file(f))
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def load_folder_split(options: DataOptions, split: str) -> ImageSet:
    """One split of a folder-layout data set, decoded once to RGB and cached.

    With ``--skip-bad-images`` unreadable images are left out (and logged) instead of being an
    error.
    """
    root = options.data_root().resolve()
    split_dir = root / split
    paths, labels, class_names = list_folder_split(split_dir)
    key = split_key("folder", root, split, content_signature(paths, root))
    return cached_decode(paths, labels, class_names, key, options, str(split_dir))


def load_folder_data(options: DataOptions, split: str) -> ImageSet:
    """``--data folder``: one split, after checking that the folders of all three are there."""
    root = options.data_root()
    for name in SPLITS:  # fail before spending minutes decoding another split
        if not (root / name).is_dir():
            raise UserError(
                f"missing split folder {root / name}; expected "
                f"{root}/{{train,val,test}}/<class>/<image>"
            )
    return load_folder_split(options, split)
