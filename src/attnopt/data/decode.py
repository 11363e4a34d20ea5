"""Decoding image files into fixed-size uint8 arrays, in parallel, with a progress bar.

:func:`cached_decode` turns a list of image files into a cached ImageSet; the folder and
split-CSV layouts only list their files and labels and hand them to it. Images are decoded in
chunks (:func:`decode_chunks`) and written into the cache as they come
(:func:`write_decoded`), so no build holds a whole decoded set in memory.
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from attnopt.data.cache import ImageWriter, cached_stream, key_digest
from attnopt.data.imageset import ImageSet
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
Box = tuple[float, float, float, float]  # left, top, width, height in pixels

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# Integer modes that Pillow's convert() would clip at 255 instead of scaling down.
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_REPORT_FIRST = 5  # skipped files named in the warning line
# Images per task of the thread pool: a million images make a few thousand tasks, and a
# chunk of 84x84x3 images is 1.4 MB.
CHUNK = 64


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


def _check_pixel_count(img: Image.Image, where: object) -> None:
    """UserError for an image that declares more pixels than Pillow's decompression-bomb
    limit (Pillow itself only warns below twice the limit, and then decodes it all)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise UserError(
            f"cannot read image {where}: it declares {img.width}x{img.height} pixels, more "
            f"than {limit} (a decompression bomb?); fix or remove the file"
        )


def _crop(img: Image.Image, box: Box, where: object) -> Image.Image:
    """``img`` cut to ``box`` (left, top, width, height); UserError when it lies outside."""
    left, top, width, height = box
    right, bottom = min(left + width, img.width), min(top + height, img.height)
    left, top = max(left, 0.0), max(top, 0.0)
    if right - left < 1 or bottom - top < 1:
        raise UserError(
            f"bounding box {box} of image {where} lies outside its {img.width}x{img.height} "
            "pixels; fix the box"
        )
    return img.crop((round(left), round(top), round(right), round(bottom)))


def decode_image(
    path: Path, image_size: int, mode: str = "RGB", box: Box | None = None
) -> np.ndarray:
    """One image file as uint8 (image_size, image_size, channels), cut to ``box`` first if
    given; UserError if unreadable."""
    try:
        with Image.open(path) as img:
            _check_pixel_count(img, path)
            return image_to_array(img if box is None else _crop(img, box, path), image_size, mode)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}; fix or remove the file") from None


def decode_bytes(data: bytes, image_size: int, where: str) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) held in memory as uint8 RGB (image_size, image_size, 3);
    UserError naming ``where`` if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixel_count(img, where)
            return image_to_array(img, image_size)
    except UnidentifiedImageError:
        raise UserError(f"cannot decode image {where}: it is not an image file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {where}: {e}") from None


def map_chunks(work: Callable[[int, int], R], count: int, n_workers: int, desc: str) -> Iterator[R]:
    """``work(start, stop)`` for consecutive chunks of ``range(count)``, in order, on
    ``n_workers`` threads, with a progress bar.

    Pillow releases the GIL while decoding and resizing, so threads use every core. At most
    two chunks per thread are in flight, so results never pile up in memory.
    """
    workers = max(1, min(n_workers, os.cpu_count() or 1))
    bounds = iter([(i, min(i + CHUNK, count)) for i in range(0, count, CHUNK)])
    pending: deque[tuple[int, Future[R]]] = deque()
    pool = ThreadPoolExecutor(workers)

    def submit() -> None:
        chunk = next(bounds, None)
        if chunk is not None:
            pending.append((chunk[1] - chunk[0], pool.submit(work, *chunk)))

    bar = tqdm(total=count, desc=desc, unit="img", leave=False, mininterval=0.5, disable=None)
    try:
        for _ in range(2 * workers):
            submit()
        while pending:
            size, future = pending.popleft()
            result = future.result()
            submit()
            bar.update(size)
            yield result
    finally:
        bar.close()
        # On an error, drop the queued chunks instead of finishing all of them first.
        pool.shutdown(wait=True, cancel_futures=True)


def decode_chunks(
    items: Sequence[T],
    decode_one: Callable[[T], np.ndarray],
    image_shape: tuple[int, ...],
    n_workers: int,
    desc: str,
    skip_bad: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``decode_one(item)`` for every item, chunk by chunk in order: (images, their indices).

    ``decode_one`` returns uint8 ``image_shape`` or raises UserError; ``skip_bad`` leaves those
    items out of the chunk instead of raising.
    """

    def work(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((stop - start, *image_shape), dtype=np.uint8)
        kept = np.ones(stop - start, dtype=bool)
        for i in range(start, stop):
            try:
                out[i - start] = decode_one(items[i])
            except UserError as e:
                if not skip_bad:
                    raise UserError(f"{e} (or pass --skip-bad-images to leave it out)") from None
                kept[i - start] = False
        return (
            (out, np.arange(start, stop))
            if kept.all()
            else (out[kept], start + np.flatnonzero(kept))
        )

    yield from map_chunks(work, len(items), n_workers, desc)


def write_decoded(
    path: Path,
    items: Sequence[T],
    decode_one: Callable[[T], np.ndarray],
    image_shape: tuple[int, ...],
    n_workers: int,
    desc: str,
    skip_bad: bool = False,
) -> np.ndarray:
    """Decode ``items`` (see :func:`decode_chunks`) straight into the ``.npy`` file ``path``;
    the indices of the items it holds (all of them unless ``skip_bad``)."""
    kept = []
    with ImageWriter(path, len(items), image_shape) as writer:
        for images, indices in decode_chunks(
            items, decode_one, image_shape, n_workers, desc, skip_bad
        ):
            writer.append(images)
            kept.append(indices)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def decode_images(
    paths: Sequence[Path],
    image_size: int,
    n_workers: int,
    desc: str,
    mode: str = "RGB",
    skip_bad: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize ``paths`` into one uint8 array (num_kept, S, S, C) in memory.

    Returns the array and the indices into ``paths`` of the images it holds: all of them,
    unless ``skip_bad``, which leaves unreadable files out instead of raising UserError.
    """
    shape = (image_size, image_size, len(mode))
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    kept, count = [], 0
    for images, indices in decode_chunks(
        paths, lambda p: decode_image(p, image_size, mode), shape, n_workers, desc, skip_bad
    ):
        out[count : count + len(images)] = images
        count += len(images)
        kept.append(indices)
    return out[:count], np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def resize_images(images: np.ndarray, image_size: int, n_workers: int, desc: str) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> (N, S, S, 3), each image resized as :func:`decode_image` does."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            out[i] = resize(Image.fromarray(images[i]), image_size)

    for _ in map_chunks(work, len(images), n_workers, desc):
        pass
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
    options: DataOptions,
    source: str,
    boxes: Sequence[Box] | None = None,
) -> ImageSet:
    """The ImageSet of image files ``paths`` (labels ``labels``), decoded once to RGB at
    ``options.image_size`` and cached in ``options.cache_dir``.

    ``key`` names the source and its content (see :func:`content_signature`) and holds its
    "layout" and "split", which also name the cache entry; ``source`` is the path named in
    messages. ``boxes`` (one per path) crops each image before it is resized. The images are
    written to the cache as they are decoded, never all held in memory. With
    ``options.skip_bad_images`` unreadable files are left out and logged; without it they are
    a UserError, also when an earlier run cached the set without them.
    """
    image_size, skip_bad = options.image_size, options.skip_bad_images

    def decode_one(i: int) -> np.ndarray:
        return decode_image(paths[i], image_size, "RGB", None if boxes is None else boxes[i])

    def build_into(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
        kept = write_decoded(
            path,
            range(len(paths)),
            decode_one,
            (image_size, image_size, 3),
            options.n_workers,
            f"decoding {source}",
            skip_bad,
        )
        dropped = np.setdiff1d(np.arange(len(paths)), kept)
        return labels[kept], list(class_names), [str(paths[i]) for i in dropped]

    name = f"{key['layout']}-{key['split']}"
    key = {**key, "image_size": image_size}
    imageset = cached_stream(options.cache_dir, name, key, build_into, source)
    return check_skipped(imageset, skip_bad)


def check_skipped(imageset: ImageSet, skip_bad: bool) -> ImageSet:
    """``imageset``, after logging the unreadable images it left out; UserError naming them
    unless ``skip_bad`` (``--skip-bad-images``), also when an earlier run cached it so."""
    if imageset.skipped and not skip_bad:
        more = len(imageset.skipped) - 1
        raise UserError(
            f"cannot read image {imageset.skipped[0]}"
            + (f" (and {more} more)" if more else "")
            + "; fix or remove the file, or pass --skip-bad-images to leave it out"
        )
    report_skipped(imageset.skipped, imageset.source)
    return imageset
