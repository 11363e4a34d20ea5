"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (32x32 photos, 600 per class).

Two layouts each:

- the split pickles they are commonly distributed as, ``ROOT/CIFAR_FS_<split>.pickle`` or
  ``ROOT/FC100_<split>.pickle``: ``{'data': uint8 (N, 32, 32, 3), 'labels': [CIFAR-100 class
  label per image]}`` (Python 2 pickles with text or byte-string keys accepted);
- CIFAR-100's own python archive, ``ROOT/cifar-100-python/{train,test,meta}``: every image of
  both of its files, split by class name (CIFAR-FS) or super-class name (FC100) with the
  published lists in :mod:`attnopt.data.cifar_splits`.

Classes are sorted by name (which is CIFAR-100's label order) and the images of a class keep
their order in the files (the archive's ``train`` before its ``test``), so the same images
give the same arrays in both layouts. A split pickle holding a class of another split is an
error: splits never share classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.data.cache import cached_imageset, split_key
from attnopt.data.cifar_splits import CIFAR_FS, FC100, FINE_NAMES
from attnopt.data.decode import content_signature, resize_images
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import Layout, pick_layout
from attnopt.data.pickle_layout import as_text, read_pickle, require_keys, text_keys
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

log = logging.getLogger(__name__)

ARCHIVE = "cifar-100-python"
ARCHIVE_FILES = ("train", "test", "meta")
SPLIT_EXPECTED = "{'data': uint8 (N, 32, 32, 3), 'labels': [CIFAR-100 class label per image]}"
ARCHIVE_EXPECTED = (
    "CIFAR-100's python version: {'data': uint8 (N, 3072), 'fine_labels': [...], ...} "
    "and meta {'fine_label_names': [100 names], ...}"
)


@dataclass(frozen=True)
class CifarSplit:
    """A few-shot split of CIFAR-100: its name, its pickles' prefix and its classes."""

    name: str
    prefix: str
    classes: dict[str, tuple[str, ...]]

    @property
    def layouts(self) -> dict[str, Layout]:
        archive = f"ROOT/{ARCHIVE}/{{{','.join(ARCHIVE_FILES)}}}"
        return {
            "split pickles": Layout(
                f"ROOT/{self.prefix}_{{train,val,test}}.pickle",
                lambda r, s: [r / f"{self.prefix}_{s}.pickle"],
            ),
            "CIFAR-100 archive": Layout(
                archive, lambda r, s: [r / ARCHIVE / f for f in ARCHIVE_FILES]
            ),
        }


CIFAR_FS_SPLIT = CifarSplit("CIFAR-FS", "CIFAR_FS", CIFAR_FS)
FC100_SPLIT = CifarSplit("FC100", "FC100", FC100)


def load_cifar_split(dataset: CifarSplit, options: DataOptions, split: str) -> ImageSet:
    """One split of CIFAR-FS or FC100 (``dataset``) in whichever layout ``--data-root`` holds,
    resized to ``--image-size`` and cached."""
    root, image_size = options.data_root().resolve(), options.image_size
    layout = pick_layout(root, dataset.layouts, dataset.name)
    files = list(dataset.layouts[layout].needs(root, split))
    content = content_signature(files, root)
    key = split_key(layout, root, split, content, dataset=dataset.name, image_size=image_size)
    source = str(files[0] if layout == "split pickles" else root / ARCHIVE)

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        if layout == "split pickles":
            images, fine = _read_split_pickle(files[0], dataset, split)
        else:
            images, fine = _read_archive(root / ARCHIVE, dataset.classes[split])
        present = np.unique(fine)
        if len(present) < len(dataset.classes[split]):
            log.warning(
                "%s holds %d of the %d classes of %s's %s split",
                source,
                len(present),
                len(dataset.classes[split]),
                dataset.name,
                split,
            )
        rows = np.argsort(fine, kind="stable")  # label order is name order
        labels = np.searchsorted(present, fine[rows])
        resized = resize_images(images[rows], image_size, options.n_workers, f"resizing {source}")
        return resized, labels, [FINE_NAMES[c] for c in present]

    name = f"{dataset.prefix.lower()}-{split}"
    return cached_imageset(options.cache_dir, name, key, build, source)


def load_cifar_fs_split(options: DataOptions, split: str) -> ImageSet:
    """``--data cifarfs``: one split of CIFAR-FS."""
    return load_cifar_split(CIFAR_FS_SPLIT, options, split)


def load_fc100_split(options: DataOptions, split: str) -> ImageSet:
    """``--data fc100``: one split of FC100."""
    return load_cifar_split(FC100_SPLIT, options, split)


def _read_split_pickle(
    path: Path, dataset: CifarSplit, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), CIFAR-100 label per image) of a split pickle."""
    fields = text_keys(read_pickle(path, SPLIT_EXPECTED), path, SPLIT_EXPECTED)
    require_keys(fields, ("data", "labels"), path, SPLIT_EXPECTED)
    images = _uint8(fields["data"], 4, "data", path, "(N, 32, 32, 3)")
    if images.shape[3] != 3:
        raise UserError(f"'data' of {path} is uint8 {images.shape}; expected uint8 (N, 32, 32, 3)")
    fine = _labels(fields["labels"], len(images), "labels", path)
    allowed = {FINE_NAMES.index(c) for c in dataset.classes[split]}
    foreign = [int(c) for c in np.unique(fine) if c not in allowed]
    if foreign:
        other = next(s for s, cs in dataset.classes.items() if FINE_NAMES[foreign[0]] in cs)
        raise UserError(
            f"{path} holds class '{FINE_NAMES[foreign[0]]}' (label {foreign[0]}), which "
            f"{dataset.name} puts in its {other} split; is it the {split} file of {dataset.name}?"
        )
    return images, fine


def _read_archive(folder: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), CIFAR-100 label per image) of ``classes``, from both files
    of the CIFAR-100 python archive in ``folder``."""
    meta_path = folder / "meta"
    meta = text_keys(read_pickle(meta_path, ARCHIVE_EXPECTED), meta_path, ARCHIVE_EXPECTED)
    require_keys(meta, ("fine_label_names",), meta_path, ARCHIVE_EXPECTED)
    names = (
        [as_text(n) for n in meta["fine_label_names"]]
        if isinstance(meta["fine_label_names"], list)
        else None
    )
    if names != list(FINE_NAMES):
        raise UserError(
            f"'fine_label_names' of {meta_path} are not CIFAR-100's 100 classes; expected "
            "the python version of CIFAR-100 (cifar-100-python.tar.gz, unpacked)"
        )
    wanted = np.array(sorted(FINE_NAMES.index(c) for c in classes))
    parts, labels = [], []
    for name in ("train", "test"):
        path = folder / name
        fields = text_keys(read_pickle(path, ARCHIVE_EXPECTED), path, ARCHIVE_EXPECTED)
        require_keys(fields, ("data", "fine_labels"), path, ARCHIVE_EXPECTED)
        data = _uint8(fields["data"], 2, "data", path, "(N, 3072)")
        if data.shape[1] != 3 * 32 * 32:
            raise UserError(f"'data' of {path} is uint8 {data.shape}; expected uint8 (N, 3072)")
        fine = _labels(fields["fine_labels"], len(data), "fine_labels", path)
        keep = np.isin(fine, wanted)
        # rows are 1024 red, then green, then blue values, each row-major
        parts.append(data[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(fine[keep])
    return np.concatenate(parts), np.concatenate(labels)


def _uint8(values: Any, ndim: int, key: str, path: Path, shape: str) -> np.ndarray:
    """``values`` if it is a non-empty uint8 array of ``ndim`` dimensions; UserError otherwise."""
    if (
        not isinstance(values, np.ndarray)
        or values.dtype != np.uint8
        or values.ndim != ndim
        or values.size == 0
    ):
        got = (
            f"{values.dtype} {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise UserError(f"'{key}' of {path} is {got}; expected uint8 {shape}")
    return values


def _labels(values: Any, count: int, key: str, path: Path) -> np.ndarray:
    """``count`` CIFAR-100 labels (0-99) as int64; UserError naming ``key`` otherwise."""
    labels = np.asarray(values)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"'{key}' of {path} is {labels.dtype} {labels.shape}; expected {count} integer "
            "labels, one per image"
        )
    bad = labels[(labels < 0) | (labels >= len(FINE_NAMES))]
    if bad.size:
        raise UserError(f"'{key}' of {path} holds label {bad[0]}, outside CIFAR-100's 0 to 99")
    return labels.astype(np.int64)
