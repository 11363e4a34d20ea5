"""Build the "clipart" few-shot data set from Debian's openclipart-png package.

Open Clip Art Library drawings (public domain, by hundreds of artists) sorted by subject into
folders such as animals/birds, food/fruit or transportation/boating. Each subject folder is one
class; the classes are split 64/16/20 (seed 0) into train/val/test:

    apt-get install openclipart-png
    python benchmarks/datasets/make_clipart.py --out /work/data/clipart
    attnopt train --data folder --data-root /work/data/clipart --image-size 32 ...

Classes: a folder with fewer than --min-images drawings is merged into its parent; a folder
with at least that many is a class (named by its path, "/" -> "-"), holding its own drawings
and those merged into it. A folder whose sub-folders became classes keeps no class of its own
(its remaining drawings would be "other animals" beside "animals-mammals": ambiguous labels).
Folders grouped by style or by geography rather than by what they show are left out (see
EXCLUDED). Near-duplicates are kept once (the first in path order).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from imagefolders import (
    describe,
    first_copies,
    render_all,
    require_new,
    require_package,
    signature,
    split_classes,
    square_drawing,
    write_dataset,
)
from PIL import Image

SOURCE = Path("/usr/share/openclipart/png")
INSTALL = "apt-get install openclipart-png"
# Sub-trees whose folders are not subjects: icon themes and card decks (a class would be an
# artist's style), flags (grouped by continent), gradients and patterns (not drawings of
# anything), geometric shapes (arrows, stars, callouts: synthetic), and the unsorted heap.
EXCLUDED = (
    "computer/icons",
    "recreation/games/cards",
    "signs_and_symbols/flags",
    "special",
    "shapes",
    "unsorted",
)


def _render(path: Path, size: int) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            return square_drawing(img, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # a few files in the package are truncated or blank


def _folder(path: Path, source: Path) -> str:
    return path.parent.relative_to(source).as_posix()


def _excluded(folder: str) -> bool:
    return any(folder == e or folder.startswith(f"{e}/") for e in EXCLUDED)


def assign_classes(folders: list[str], min_images: int) -> dict[str, str]:
    """Folder -> the folder of its class, given each image's folder; dropped folders absent.

    Bottom-up: a folder with fewer than ``min_images`` images (its own and those merged into
    it) is merged into its parent; one with at least that many becomes a class, unless a
    sub-folder already did (then its own remaining images are dropped).
    """
    count = defaultdict(int)
    for f in folders:
        count[f] += 1
    owner = {f: f for f in count}  # folder -> the folder its images now belong to
    members = defaultdict(list)
    for f in count:
        members[f].append(f)
    every = set(count)
    for f in list(count):  # make sure every ancestor exists
        while "/" in f:
            f = f.rsplit("/", 1)[0]
            every.add(f)
    has_class_below: set[str] = set()
    classes: set[str] = set()
    for f in sorted(every, key=lambda p: -p.count("/")):  # deepest first
        if f in has_class_below:
            for m in members[f]:
                owner[m] = ""  # ambiguous leftovers
        elif count[f] >= min_images:
            classes.add(f)
        parent = f.rsplit("/", 1)[0] if "/" in f else None
        if parent is None:
            continue
        if f in classes or f in has_class_below:
            has_class_below.add(parent)
        else:
            count[parent] += count[f]
            members[parent] += members[f]
            for m in members[f]:
                owner[m] = parent
    return {f: owner[f] for f in set(folders) if owner[f] in classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--size", type=int, default=84, help="side of the written PNGs")
    parser.add_argument("--min-images", type=int, default=20, help="images a class needs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    require_new(args.out)
    require_package(args.source, INSTALL, "openclipart-png")

    paths = sorted(p for p in args.source.rglob("*.png") if not _excluded(_folder(p, args.source)))
    rendered = render_all(partial(_render, size=args.size), paths, args.workers)
    ok = [i for i, img in enumerate(rendered) if img is not None]
    keep = [ok[i] for i in first_copies(np.stack([signature(rendered[i]) for i in ok]))]
    folders = [_folder(paths[i], args.source) for i in keep]
    owner = assign_classes(folders, args.min_images)
    images: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    for i, folder in zip(keep, folders, strict=True):
        if folder in owner:
            cls = owner[folder].replace("/", "-")
            stem = paths[i].relative_to(args.source / owner[folder]).with_suffix("")
            images[cls].append((stem.as_posix().replace("/", "-"), rendered[i]))
    splits = split_classes(images, args.seed)
    write_dataset(args.out, images, splits)
    print(describe(args.out, splits, images))
    print(
        f"skipped {len(paths) - len(ok)} unreadable or blank, {len(ok) - len(keep)} duplicate files"
    )


if __name__ == "__main__":
    main()
