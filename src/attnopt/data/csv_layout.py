"""The split-CSV layout of Ravi & Larochelle: ``ROOT/<split>.csv`` plus ``ROOT/images/``.

Each CSV has a header ``filename,label`` and one row per image; ``filename`` is relative to
``ROOT/images``. Classes are the labels sorted by name (as the folder layout sorts its class
folders) and the images of a class keep the order of their rows, so the same images give the
same arrays in every layout.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from attnopt.data.cache import split_key
from attnopt.data.decode import cached_decode, content_signature
from attnopt.data.imageset import ImageSet
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

COLUMNS = ("filename", "label")


def list_csv_split(csv_path: Path, image_dir: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels and the sorted class names of one split CSV."""
    rows = _read_rows(csv_path)
    missing = [(line, image_dir / f) for line, f, _ in rows if not (image_dir / f).is_file()]
    if missing:
        line, path = missing[0]
        raise UserError(
            f"{csv_path} names {len(missing)} image(s) that do not exist, the first {path} "
            f"(line {line}); restore them or remove their rows"
        )
    class_names = sorted({label for _, _, label in rows})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for _, _, label in rows], dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # class by class, rows in CSV order
    paths = [image_dir / rows[i][1] for i in order]
    return paths, labels[order], class_names


def _read_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """The (line number, filename, label) rows of ``csv_path``; UserError when malformed."""
    expected = f"expected a header {','.join(COLUMNS)} and one row per image"
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in reader.fieldnames or ()]
            if not header:
                raise UserError(f"{csv_path} is empty; {expected}")
            absent = [c for c in COLUMNS if c not in header]
            if absent:
                raise UserError(
                    f"{csv_path} has no column {', '.join(absent)} (its header: "
                    f"{','.join(header)}); {expected}"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                filename, label = (str(row.get(c) or "").strip() for c in COLUMNS)
                if not filename or not label:
                    raise UserError(
                        f"{csv_path} line {reader.line_num} lacks a filename or a label"
                    )
                rows.append((reader.line_num, filename, label))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {csv_path}: {e}") from None
    if not rows:
        raise UserError(f"{csv_path} has a header but no rows; {expected}")
    return rows


def load_csv_split(options: DataOptions, split: str) -> ImageSet:
    """One split of a split-CSV data set, decoded once to RGB and cached.

    With ``--skip-bad-images`` unreadable images are left out (and logged) instead of being an
    error.
    """
    root = options.data_root().resolve()
    csv_path, image_dir = root / f"{split}.csv", root / "images"
    if not csv_path.is_file():
        raise UserError(f"missing split file {csv_path}; expected {root}/{{train,val,test}}.csv")
    if not image_dir.is_dir():
        raise UserError(f"missing image folder {image_dir} for the split files in {root}")
    paths, labels, class_names = list_csv_split(csv_path, image_dir)
    key = split_key("csv", root, split, content_signature([csv_path, *paths], root))
    return cached_decode(paths, labels, class_names, key, options, str(csv_path))
