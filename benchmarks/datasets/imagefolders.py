"""Shared steps of the make_*.py scripts: installed image files -> OUT/{train,val,test}/<class>/.

Every image is drawn on white, cropped to its drawing, padded to a square and resized, so
that each data set reaches attnopt as plain RGB PNGs of one size. Near-duplicates (the same
drawing twice, at another size or in another folder) are kept once, and classes are split
64/16/20 at random with a fixed seed, so the test classes are never seen in training.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": 0.64, "val": 0.16, "test": 0.20}
SIGNATURE_SIDE = 32
# Largest pixel difference (0-255) of two 32x32 grayscale signatures below which the later
# image counts as a copy of the earlier one. Re-scaled copies and plain recolourings (the same
# drawing in red and in green) stay below it; measured on openclip art, different drawings
# start at about 24 (thin outlines on white), so a mean difference would not do.
DUPLICATE_THRESHOLD = 24.0
# Some clip art is saved at tens of thousands of pixels a side (the largest, 623 million pixels,
# takes 2.5 GB to decode); Pillow warns about or refuses those by default.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


def fail(message: str) -> None:
    """Exit with status 2 and one ``error:`` line, as attnopt does for user errors."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_package(path: Path, install: str, what: str) -> None:
    """Exit with an error naming the install command when ``path`` is missing."""
    if not path.exists():
        fail(f"{path} not found: {what} is not installed; install it with: {install}")


def require_new(out: Path) -> None:
    """Exit with an error when ``out`` exists: a data set is never written over another."""
    if out.exists():
        fail(f"--out {out} already exists; remove it or choose another folder")


def on_white(img: Image.Image) -> Image.Image:
    """``img`` composited onto a white background, as RGB."""
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def square_drawing(img: Image.Image, size: int, margin: float = 0.05) -> Image.Image | None:
    """The drawing in ``img`` cropped to its non-white pixels, centred on a white square with a
    small margin, and resized to ``size`` x ``size`` (Lanczos, so thin lines survive); None
    when the image is blank."""
    rgb = on_white(img)
    box = Image.eval(rgb.convert("L"), lambda v: 255 if v < 250 else 0).getbbox()
    if box is None:
        return None
    rgb = rgb.crop(box)
    side = round(max(rgb.size) * (1 + 2 * margin))
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def signature(img: Image.Image) -> np.ndarray:
    """A 32x32 grayscale thumbnail (float32, 0-255) for finding near-duplicates."""
    small = img.convert("L").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


def first_copies(signatures: np.ndarray) -> np.ndarray:
    """Indices of the rows that are not near-duplicates of an earlier row (order kept)."""
    kept: list[int] = []
    for i, sig in enumerate(signatures):
        if kept and np.abs(signatures[kept] - sig).max(axis=1).min() < DUPLICATE_THRESHOLD:
            continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def split_classes(names: Iterable[str], seed: int) -> dict[str, list[str]]:
    """Class names shuffled with ``seed`` and cut 64/16/20 into train/val/test (each sorted)."""
    ordered = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = round(SPLITS["val"] * len(ordered))
    n_test = round(SPLITS["test"] * len(ordered))
    shuffled = [ordered[i] for i in perm]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def render_all(
    render: Callable[[Path], Image.Image | None], paths: list[Path], workers: int
) -> list[Image.Image | None]:
    """``render(path)`` for every path, in order, on ``workers`` processes."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(render, paths, chunksize=16))


def write_dataset(
    out: Path,
    images: dict[str, list[tuple[str, Image.Image]]],
    splits: dict[str, list[str]],
) -> None:
    """Write ``OUT/<split>/<class>/<name>.png`` into a temporary folder beside ``out`` and
    move it into place, so an interrupted run leaves no half-written data set."""
    require_new(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, classes in splits.items():
            for name in classes:
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for stem, img in images[name]:
                    img.save(folder / f"{stem}.png", optimize=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def describe(out: Path, splits: dict[str, list[str]], images: dict[str, list]) -> str:
    """One line per split: classes, images, and the smallest and largest class."""
    lines = []
    for split, classes in splits.items():
        counts = [len(images[c]) for c in classes]
        lines.append(
            f"{split}: {len(classes)} classes, {sum(counts)} images "
            f"({min(counts)}-{max(counts)} per class)"
        )
    return f"wrote {out}\n" + "\n".join(lines)
