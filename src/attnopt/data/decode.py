"""Decoding image files into fixed-size uint8 arrays, in parallel, with a progress bar.

:func:`cached_decode` turns a list of image files into a cached ImageSet; the folder and
split-CSV layouts only list their files and labels and hand them to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from attnopt.data.cache import cached_imageset, key_digest
from attnopt.data.imageset import ImageSet
from attnopt.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# Integer modes that Pillow's convert() would clip at 255 instead of scaling down.
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_REPORT_FIRST = 5  # skipped files named in the warning line


def is_image_file(path: Path) -> bool:
    """True for a visible file whose name ends in a known image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def resize(img: Image.Image, image_size: int) -> np.ndarray:
    """``img`` resized to (image_size, image_size) as a uint8 array (H, W) or (H, W, C).

    Every layout goes through this one resize, so the same image gives the same pixels
    whether it came from a file or from a pickled array.
    """
    return np.asarray(img.resize((image_size, image_size), Image.Resampling.BILINEAR))


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` converted to ``mode``; 16- and 32-bit grayscale are scaled to 8 bits first."""
    if img.mode in _WIDE_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(np.rint(wide / 257.0).astype(np.uint8), "L")
    return img.convert(mode)


def image_to_array(img: Image.Image, image_size: int, mode: str = "RGB") -> np.ndarray:
    """A Pillow image converted to ``mode`` ("RGB" or "L") and resized, as every image file is:
    uint8 (image_size, image_size, channels)."""
    return resize(_to_mode(img, mode), image_size).reshape(image_size, image_size, -1)


def _check_pixel_count(img: Image.Image, path: Path) -> None:
    """UserError for an image that declares more pixels than Pillow's decompression-bomb
    limit (Pillow itself only warns below twice the limit, and then decodes it all)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise UserError(
            f"cannot read image {path}: it declares {img.width}x{img.height} pixels, more "
            f"than {limit} (a decompression bomb?); fix or remove the file"
        )


def decode_image(path: Path, image_size: int, mode: str = "RGB") -> np.ndarray:
    """One image file as uint8 (image_size, image_size, channels); UserError if unreadable."""
    try:
        with Image.open(path) as img:
            _check_pixel_count(img, path)
            return image_to_array(img, image_size, mode)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}; fix or remove the file") from None


def _progress_map(
    work: Callable[[T], R], items: Sequence[T], n_workers: int, desc: str
) -> Iterator[R]:
    """``work(item)`` for every item, in order, on ``n_workers`` threads, with a progress bar.

    Pillow releases the GIL while decoding and resizing, so threads use every core.
    """
    workers = max(1, min(n_workers, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers)
    try:
        results = pool.map(work, items)
        yield from tqdm(
            results,
            total=len(items),
            desc=desc,
            unit="img",
            leave=False,
            mininterval=0.5,
            disable=None,
        )
    finally:
        # On an error, drop the queued items instead of finishing all of them first.
        pool.shutdown(wait=True, cancel_futures=True)


def decode_images(
    paths: Sequence[Path],
    image_size: int,
    n_workers: int,
    desc: str,
    mode: str = "RGB",
    skip_bad: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize ``paths`` into one uint8 array (num_kept, S, S, C).

    Returns the array and the indices into ``paths`` of the images it holds: all of them,
    unless ``skip_bad``, which leaves unreadable files out instead of raising UserError.
    """
    out = np.empty((len(paths), image_size, image_size, len(mode)), dtype=np.uint8)
    kept = np.ones(len(paths), dtype=bool)

    def work(path: Path) -> np.ndarray | None:
        try:
            return decode_image(path, image_size, mode)
        except UserError as e:
            if skip_bad:
                return None
            raise UserError(f"{e}, or pass --skip-bad-images to leave it out") from None

    for i, array in enumerate(_progress_map(work, paths, n_workers, desc)):
        if array is None:
            kept[i] = False
        else:
            out[i] = array
    if kept.all():
        return out, np.arange(len(paths))
    return out[kept], np.flatnonzero(kept)


def resize_images(images: np.ndarray, image_size: int, n_workers: int, desc: str) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> (N, S, S, 3), each image resized as :func:`decode_image` does."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)

    def work(i: int) -> np.ndarray:
        return resize(Image.fromarray(images[i]), image_size)

    for i, array in enumerate(_progress_map(work, range(len(images)), n_workers, desc)):
        out[i] = array
    return out


def report_skipped(skipped: Sequence[str], where: str) -> None:
    """Log one warning line naming the first few skipped files, and the full list at info level."""
    if not skipped:
        return
    more = f" and {len(skipped) - _REPORT_FIRST} more" if len(skipped) > _REPORT_FIRST else ""
    log.warning(
        "skipped %d unreadable image%s in %s (--skip-bad-images): %s%s",
        len(skipped),
        "" if len(skipped) == 1 else "s",
        where,
        ", ".join(skipped[:_REPORT_FIRST]),
        more,
    )
    if len(skipped) > _REPORT_FIRST:
        log.info("all skipped images in %s: %s", where, ", ".join(skipped))


def content_signature(paths: Sequence[Path], root: Path) -> str:
    """A hash of every file's path (relative to ``root`` when below it), size and mtime."""
    entries = []
    for p in paths:
        st = p.stat()
        name = p.relative_to(root) if p.is_relative_to(root) else p
        entries.append([str(name), st.st_size, st.st_mtime_ns])
    return key_digest({"files": entries})


def cached_decode(
    paths: Sequence[Path],
    labels: np.ndarray,
    class_names: Sequence[str],
    key: dict[str, Any],
    cache_dir: Path,
    source: str,
    image_size: int,
    n_workers: int = 4,
    skip_bad: bool = False,
) -> ImageSet:
    """The ImageSet of image files ``paths`` (labels ``labels``), decoded once to RGB and cached.

    ``key`` names the source and its content (see :func:`content_signature`) and holds its
    "layout" and "split", which also name the cache entry; ``source`` is the path named in
    messages. With ``skip_bad`` unreadable files are left out and logged;
    without it they are a UserError, also when an earlier run cached the set without them.
    """

    def build() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        images, kept = decode_images(
            paths, image_size, n_workers, desc=f"decoding {source}", skip_bad=skip_bad
        )
        dropped = np.setdiff1d(np.arange(len(paths)), kept)
        return images, labels[kept], list(class_names), [str(paths[i]) for i in dropped]

    name = f"{key['layout']}-{key['split']}"
    imageset = cached_imageset(cache_dir, name, {**key, "image_size": image_size}, build, source)
    if imageset.skipped and not skip_bad:
        more = len(imageset.skipped) - 1
        raise UserError(
            f"cannot read image {imageset.skipped[0]}"
            + (f" (and {more} more)" if more else "")
            + "; fix or remove the file, or pass --skip-bad-images to leave it out"
        )
    report_skipped(imageset.skipped, source)
    return imageset
