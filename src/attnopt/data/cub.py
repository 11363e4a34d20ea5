"""CUB-200-2011 (Wah, Branson, Welinder, Perona & Belongie, Caltech technical report
CNS-TR-2011-001): 11,788 photos of 200 bird species, as released:
``ROOT/CUB_200_2011/images/<id>.<name>/<image>.jpg`` (``ROOT`` may also be the
``CUB_200_2011`` folder itself).

The split is the one of Chen, Liu, Kira, Wang & Huang ("A Closer Look at Few-shot
Classification", ICLR 2019), which most few-shot papers since use: by class id, odd ids
(1, 3, ..., 199) for training (100 classes), ids 2, 6, 10, ... for validation (50) and
4, 8, 12, ... for testing (50).

``crop="bbox"`` cuts every photo to its bird's bounding box (``bounding_boxes.txt``, matched
to the files through ``images.txt``) before resizing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from attnopt.data.cache import split_key
from attnopt.data.decode import Box, cached_decode, content_signature
from attnopt.data.folder import class_images
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import Layout, pick_layout
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

RELEASE = "CUB_200_2011"
LAYOUTS = {
    "release": Layout(
        f"ROOT/{RELEASE}/images/<id>.<name>/<image>.jpg", lambda r, s: [r / RELEASE / "images"]
    ),
    "release folder": Layout("ROOT/images/<id>.<name>/<image>.jpg", lambda r, s: [r / "images"]),
}
CLASS_FOLDER = re.compile(r"(\d+)\.(.+)")


def class_split(class_id: int) -> str:
    """The split of a class id (1-200): Chen et al.'s, from the sorted class index id - 1."""
    index = class_id - 1
    return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def release_folder(root: Path) -> Path:
    """The ``CUB_200_2011`` folder of ``root`` (``root`` itself or its sub-folder)."""
    layout = pick_layout(root, LAYOUTS, "CUB-200-2011")
    return root / RELEASE if layout == "release" else root


def list_cub_split(folder: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, labels and class names (folder names, in id order) of one split."""
    images = folder / "images"
    classes = []
    for class_dir in sorted(d for d in images.iterdir() if d.is_dir()):
        match = CLASS_FOLDER.fullmatch(class_dir.name)
        if match is None:
            raise UserError(
                f"class folder {class_dir} is not named <id>.<name> (like "
                "001.Black_footed_Albatross); expected the folders of CUB-200-2011's images/"
            )
        classes.append((int(match.group(1)), class_dir))
    ids = [c for c, _ in classes]
    if len(set(ids)) != len(ids):
        twice = next(c for c in ids if ids.count(c) > 1)
        raise UserError(f"{images} has two class folders with id {twice}")
    chosen = sorted((c, d) for c, d in classes if class_split(c) == split)
    if not chosen:
        raise UserError(f"{images} holds no class of the {split} split (ids by Chen et al. 2019)")
    paths, labels = class_images([d for _, d in chosen])
    return paths, labels, [d.name for _, d in chosen]


def read_boxes(folder: Path, paths: list[Path]) -> list[Box]:
    """The bounding box of every image in ``paths``, from ``images.txt`` (``<image_id>
    <class folder>/<file>``) and ``bounding_boxes.txt`` (``<image_id> <x> <y> <width>
    <height>``)."""
    names = _table(folder / "images.txt", 1, "<image_id> <class folder>/<file name>")
    boxes = _table(folder / "bounding_boxes.txt", 4, "<image_id> <x> <y> <width> <height>")
    box_of: dict[str, Box] = {}
    for image_id, (name,) in names.items():
        if image_id in boxes:
            try:
                x, y, w, h = (float(v) for v in boxes[image_id])
            except ValueError:
                raise UserError(
                    f"{folder / 'bounding_boxes.txt'} has a box for image {image_id} that is "
                    f"not four numbers: {' '.join(boxes[image_id])}"
                ) from None
            if not (w > 0 and h > 0):
                raise UserError(
                    f"{folder / 'bounding_boxes.txt'} gives image {image_id} an empty box "
                    f"(width {w}, height {h})"
                )
            box_of[name] = (x, y, w, h)
    images = folder / "images"
    out = []
    for path in paths:
        name = path.relative_to(images).as_posix()
        if name not in box_of:
            raise UserError(
                f"no bounding box for {path}: {folder / 'images.txt'} and "
                f"{folder / 'bounding_boxes.txt'} must list it (--crop bbox)"
            )
        out.append(box_of[name])
    return out


def _table(path: Path, width: int, expected: str) -> dict[str, list[str]]:
    """{first field: the other ``width`` fields} of a whitespace-separated text file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"missing {path}, which --crop bbox needs") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    table: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width + 1:
            raise UserError(f"line {number} of {path} is not '{expected}': {line.strip()!r}")
        table[fields[0]] = fields[1:]
    return table


def load_cub_split(options: DataOptions, split: str) -> ImageSet:
    """One split of CUB-200-2011, decoded once to RGB (cropped to the birds with
    ``--crop bbox``) and cached."""
    root, crop = options.data_root().resolve(), options.crop
    folder = release_folder(root)
    paths, labels, class_names = list_cub_split(folder, split)
    files = list(paths)
    boxes = None
    if crop == "bbox":
        boxes = read_boxes(folder, paths)
        files += [folder / "images.txt", folder / "bounding_boxes.txt"]
    key = split_key("cub", root, split, content_signature(files, root), crop=crop)
    source = f"{folder / 'images'} ({split} classes)"
    return cached_decode(paths, labels, class_names, key, options, source, boxes)
