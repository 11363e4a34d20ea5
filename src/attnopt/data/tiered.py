"""tieredImageNet (Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification",
ICLR 2018): 608 ImageNet classes in 34 categories, split by category (20/6/8 categories,
351/97/160 classes, 779,165 images of 84x84).

Two layouts:

- the pickles of the original release, ``ROOT/<split>_images_png.pkl`` (a list or object
  array of PNG-encoded images: ``bytes``, Python 2 byte strings or uint8 arrays) with
  ``ROOT/<split>_labels.pkl`` (``{'label_specific': int (N,), 'label_specific_str': [class
  names], 'label_general': int (N,), 'label_general_str': [category names]}``, keys as text
  or byte strings), pickle protocol 2 (Python 2) or 3;
- class folders ``ROOT/<split>/<class>/<image>`` (the folder layout).

The PNGs are decoded on ``--n-workers`` threads and written into the cache as they are
decoded, so a build holds the compressed pickle in memory but never the decoded set.
Classes are sorted by name and the images of a class keep their order in the pickle, so the
same images give the same arrays in both layouts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.data.cache import cached_stream, split_key
from attnopt.data.decode import check_skipped, content_signature, decode_bytes, write_decoded
from attnopt.data.folder import load_folder_split
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import Layout, pick_layout
from attnopt.data.pickle_layout import as_text, read_pickle, require_keys, text_keys
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

log = logging.getLogger(__name__)

LAYOUTS = {
    "pickles": Layout(
        "ROOT/{train,val,test}_images_png.pkl with ROOT/{train,val,test}_labels.pkl",
        lambda r, s: [r / f"{s}_images_png.pkl", r / f"{s}_labels.pkl"],
    ),
    "folders": Layout("ROOT/{train,val,test}/<class>/<image>", lambda r, s: [r / s]),
}
IMAGES_EXPECTED = "a list of PNG-encoded images (bytes or uint8 arrays)"
LABELS_EXPECTED = (
    "{'label_specific': int (N,), 'label_specific_str': [class names], "
    "'label_general': int (N,), 'label_general_str': [category names]}"
)


def load_tiered_split(options: DataOptions, split: str) -> ImageSet:
    """One split of tieredImageNet in whichever layout ``--data-root`` holds, decoded once and
    cached."""
    root = options.data_root().resolve()
    if pick_layout(root, LAYOUTS, "tieredImageNet") == "folders":
        return load_folder_split(options, split)
    image_size, skip_bad = options.image_size, options.skip_bad_images
    images_path, labels_path = LAYOUTS["pickles"].needs(root, split)
    content = content_signature([images_path, labels_path], root)
    key = split_key("tiered-pickle", root, split, content, image_size=image_size)

    def build_into(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
        labels, names = parse_labels(read_pickle(labels_path, LABELS_EXPECTED), labels_path)
        pngs = parse_pngs(read_pickle(images_path, IMAGES_EXPECTED), images_path)
        if len(pngs) != len(labels):
            raise UserError(
                f"{images_path} holds {len(pngs)} images but {labels_path} has "
                f"{len(labels)} labels; both files must come from the same split"
            )
        order = np.argsort(names)  # classes sorted by name; images keep their order
        rank = np.argsort(order)
        rows = np.argsort(rank[labels], kind="stable")

        def decode_one(row: int) -> np.ndarray:
            where = f"{row} of {images_path} (class '{names[labels[row]]}')"
            return decode_bytes(_as_bytes(pngs[row], where), image_size, where)

        kept = write_decoded(
            path,
            rows,
            decode_one,
            (image_size, image_size, 3),
            options.n_workers,
            f"decoding {images_path}",
            skip_bad,
        )
        dropped = np.setdiff1d(rows, rows[kept])
        return (
            rank[labels[rows[kept]]],
            [names[i] for i in order],
            [f"{images_path}[{row}]" for row in dropped],
        )

    imageset = cached_stream(
        options.cache_dir, f"tiered-{split}", key, build_into, str(images_path)
    )
    return check_skipped(imageset, skip_bad)


def parse_labels(obj: Any, path: Path) -> tuple[np.ndarray, list[str]]:
    """Check an unpickled labels file; (label of every image, class names)."""
    fields = text_keys(obj, path, LABELS_EXPECTED)
    require_keys(fields, ("label_specific", "label_specific_str"), path, LABELS_EXPECTED)
    names = _names(fields["label_specific_str"], "label_specific_str", path)
    labels = _label_array(fields["label_specific"], len(names), "label_specific", path)
    if "label_general" in fields and "label_general_str" in fields:
        categories = _names(fields["label_general_str"], "label_general_str", path)
        general = _label_array(fields["label_general"], len(categories), "label_general", path)
        if len(general) != len(labels):
            raise UserError(
                f"'label_general' of {path} has {len(general)} entries, 'label_specific' "
                f"{len(labels)}; expected one of each per image"
            )
        log.info(
            "%s: %d images of %d classes in %d categories",
            path,
            len(labels),
            len(np.unique(labels)),
            len(np.unique(general)),
        )
    return labels, names


def _names(values: Any, key: str, path: Path) -> list[str]:
    """A list of distinct class or category names (text or byte strings)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"'{key}' of {path} is not a non-empty list of names")
    names = [as_text(v) for v in values]
    if not all(isinstance(n, str) for n in names):
        bad = next(n for n in names if not isinstance(n, str))
        raise UserError(f"'{key}' of {path} holds a {type(bad).__name__}, not a name")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"'{key}' of {path} names '{twice}' more than once")
    return names


def _label_array(values: Any, n_names: int, key: str, path: Path) -> np.ndarray:
    """An int64 (N,) array of labels in [0, n_names)."""
    labels = np.asarray(values)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise UserError(
            f"'{key}' of {path} is {labels.dtype} {labels.shape}; expected int (N,), one "
            "label per image"
        )
    bad = labels[(labels < 0) | (labels >= n_names)]
    if bad.size:
        raise UserError(
            f"'{key}' of {path} holds label {bad[0]}, outside 0 to {n_names - 1} "
            f"(its '{key}_str' names {n_names})"
        )
    return labels.astype(np.int64)


def parse_pngs(obj: Any, path: Path) -> Sequence[Any]:
    """Check an unpickled images file: a list (or 1-D array) of encoded images."""
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 1:
        obj = list(obj)
    if not isinstance(obj, (list, tuple)):
        what = f"{obj.dtype} {obj.shape} array" if isinstance(obj, np.ndarray) else type(obj)
        raise UserError(f"{path} holds a {what}; expected {IMAGES_EXPECTED}")
    for i, item in enumerate(obj):
        if isinstance(item, (bytes, str)):
            continue
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            continue
        what = f"{item.dtype} {item.shape} array" if isinstance(item, np.ndarray) else type(item)
        raise UserError(f"image {i} of {path} is a {what}; expected {IMAGES_EXPECTED}")
    return obj


def _as_bytes(item: bytes | str | np.ndarray, where: str) -> bytes:
    """An encoded image as bytes. Python 2 byte strings arrive as latin-1 text (numpy's way
    of reading Python 2 pickles), which maps back to the same bytes."""
    if isinstance(item, str):
        try:
            return item.encode("latin-1")
        except UnicodeEncodeError:
            raise UserError(f"image {where} is text, not an encoded image") from None
    if isinstance(item, np.ndarray):
        return item.tobytes()
    return item
