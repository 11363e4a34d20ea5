"""Decoding image files into fixed-size uint8 arrays, in parallel, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from attnopt.errors import UserError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose name ends in a known image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_image(path: Path, image_size: int, mode: str = "RGB") -> np.ndarray:
    """One image file as uint8 (image_size, image_size, channels); UserError if unreadable."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}; fix or remove the file") from None
    return array.reshape(image_size, image_size, -1)


def decode_images(
    paths: Sequence[Path], image_size: int, n_workers: int, desc: str, mode: str = "RGB"
) -> np.ndarray:
    """Decode and resize ``paths`` into one uint8 array (len(paths), S, S, C).

    Pillow releases the GIL while decoding and resizing, so threads use every core.
    """
    channels = len(mode)
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    workers = max(1, min(n_workers, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: decode_image(p, image_size, mode), paths)
        for i, array in enumerate(
            tqdm(
                results,
                total=len(paths),
                desc=desc,
                unit="img",
                leave=False,
                mininterval=0.5,
                disable=None,
            )
        ):
            out[i] = array
    return out
