"""One-time cache of decoded image sets: ``.npy`` arrays plus a JSON index, memory-mapped on reuse.

An entry lives in its own folder named after a hash of its key (the source's content
signature and the image size). The folder is assembled under a temporary name and renamed
into place (after an fsync of every file), so an interrupted build leaves nothing that a
later run would read; temporary
folders that a killed process left behind are removed by the next build of the same entry.

Large sets are written straight into the entry's ``images.npy`` while they are decoded
(:func:`cached_stream`, :class:`ImageWriter`), so a build never holds the decoded set in memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.data.imageset import ImageSet
from attnopt.errors import UserError
from attnopt.runs.fileio import apply_umask, fsync_path, os_error_message

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STALE_TEMP_SECONDS = 3600  # a build writes its temporary folder within seconds

# build() returns (images, labels, class_names) and optionally the skipped files' paths.
Built = (
    tuple[np.ndarray, np.ndarray, Sequence[str]]
    | tuple[np.ndarray, np.ndarray, Sequence[str], Sequence[str]]
)


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able key."""
    blob = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def split_key(layout: str, root: Path, split: str, content: str, **fields: Any) -> dict[str, Any]:
    """The cache key of one split of the data set in ``root``: its layout, root and split, the
    ``fields`` particular to the loader, and ``content``, a signature of the files it reads."""
    return {"layout": layout, "root": str(root), "split": split, **fields, "content": content}


def _load(entry: Path, source: str) -> ImageSet | None:
    """The cached ImageSet in ``entry``, or None when it is missing or damaged."""
    try:
        index = json.loads((entry / "index.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
        if list(images.shape) != index["shape"] or len(labels) != images.shape[0]:
            raise ValueError("shape does not match the index")
        return ImageSet(
            images,
            labels.astype(np.int64),
            tuple(index["class_names"]),
            source,
            tuple(index.get("skipped", ())),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("cache entry %s is damaged (%s); rebuilding it", entry, e)
        return None


def _remove_stale_temps(entry: Path) -> None:
    """Remove temporary folders of ``entry`` that a killed build left behind."""
    now = time.time()
    for tmp in entry.parent.glob(f".{entry.name}.*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            pass


def cached_imageset(
    cache_dir: Path,
    name: str,
    key: dict[str, Any],
    build: Callable[[], Built],
    source: str,
) -> ImageSet:
    """Return the ImageSet cached under ``key``, building it with ``build()`` when absent.

    build() returns (images uint8 (N, H, W, C), labels int (N,), class_names) and, optionally,
    a fourth item: the paths of unreadable files it left out (kept as ``ImageSet.skipped``).
    """
    entry = Path(cache_dir) / f"{name}-{key_digest(key)}"
    cached = _load(entry, source)
    if cached is not None:
        return cached
    built = build()
    images, labels, class_names = built[:3]
    skipped = list(built[3]) if len(built) > 3 else []

    def write(tmp: Path) -> tuple[np.ndarray, Sequence[str], list[str]]:
        np.save(tmp / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        return labels, class_names, skipped

    return _write_entry(entry, key, write, source)


# build_into(path) writes the images to ``path`` (with an :class:`ImageWriter`) and returns
# (labels, class_names, paths of the unreadable files it left out).
BuildInto = Callable[[Path], tuple[np.ndarray, Sequence[str], Sequence[str]]]


def cached_stream(
    cache_dir: Path, name: str, key: dict[str, Any], build_into: BuildInto, source: str
) -> ImageSet:
    """Like :func:`cached_imageset`, for sets too large to hold in memory while building:
    ``build_into(path)`` writes the images straight into the entry's ``images.npy``."""
    entry = Path(cache_dir) / f"{name}-{key_digest(key)}"
    cached = _load(entry, source)
    if cached is not None:
        return cached

    def write(tmp: Path) -> tuple[np.ndarray, Sequence[str], list[str]]:
        labels, class_names, skipped = build_into(tmp / "images.npy")
        return labels, class_names, list(skipped)

    return _write_entry(entry, key, write, source)


def _write_entry(
    entry: Path,
    key: dict[str, Any],
    write: Callable[[Path], tuple[np.ndarray, Sequence[str], list[str]]],
    source: str,
) -> ImageSet:
    """Assemble ``entry`` in a temporary folder (``write(tmp)`` puts ``images.npy`` there and
    returns the labels, class names and skipped files), then rename it into place."""
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        apply_umask(tmp, directory=True)  # mkdtemp makes it private
        labels, class_names, skipped = write(tmp)
        shape = np.load(tmp / "images.npy", mmap_mode="r").shape
        index = {
            "format": CACHE_FORMAT,
            "key": key,
            "shape": list(shape),
            "class_names": list(class_names),
            "skipped": skipped,
        }
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        (tmp / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        for name in ("images.npy", "labels.npy", "index.json", "."):
            fsync_path(tmp / name)
        _publish(tmp, entry, source)
        fsync_path(entry.parent)
    except OSError as e:
        raise UserError(
            os_error_message("write the image cache", entry, e) + " (see --cache-dir)"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = _load(entry, source)
    assert loaded is not None, f"cache entry {entry} unreadable right after writing it"
    return loaded


def _publish(tmp: Path, entry: Path, source: str) -> None:
    """Rename the finished ``tmp`` to ``entry``, replacing a damaged entry. Another process
    (a torchrun rank reading the same data) may have published the same entry meanwhile:
    then that one stays and ``tmp`` is dropped."""
    if entry.exists() and _load(entry, source) is None:
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.replace(tmp, entry)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or _load(entry, source) is None:
            raise


class ImageWriter:
    """Writes uint8 images (N, H, W, C) to a new ``.npy`` file in order, a chunk at a time.

    Nothing is kept in memory, and the file is written with plain writes rather than through
    a memory map, so the pages written count against the page cache, not the process.
    ``capacity`` is the most images the file will hold; :meth:`close` shrinks it to the
    number written (when images were left out).
    """

    def __init__(self, path: Path, capacity: int, image_shape: tuple[int, ...]) -> None:
        self.path, self.capacity, self.image_shape = Path(path), capacity, tuple(image_shape)
        self.count = 0
        self._offset = _create_npy(self.path, capacity, self.image_shape)
        self._file = open(self.path, "r+b")
        self._file.seek(self._offset)

    def append(self, images: np.ndarray) -> None:
        """Write ``images`` (n, *image_shape) after those written before."""
        if images.shape[1:] != self.image_shape or self.count + len(images) > self.capacity:
            raise ValueError(f"cannot append {images.shape} to {self.path}")
        self._file.write(np.ascontiguousarray(images, dtype=np.uint8).data)
        self.count += len(images)

    def close(self) -> None:
        """Finish the file; if fewer than ``capacity`` images were written, shrink it."""
        self._file.close()
        if self.count == self.capacity:
            return
        part = self.path.with_name(f".part-{self.path.name}")  # np.save wants .npy last
        offset = _create_npy(part, self.count, self.image_shape)
        remaining = self.count * int(np.prod(self.image_shape))
        with open(self.path, "rb") as src, open(part, "r+b") as dst:
            src.seek(self._offset)
            dst.seek(offset)
            while remaining:
                block = src.read(min(remaining, 1 << 24))
                dst.write(block)
                remaining -= len(block)
        os.replace(part, self.path)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


def _create_npy(path: Path, count: int, image_shape: tuple[int, ...]) -> int:
    """Create ``path`` as a (sparse) uint8 ``.npy`` of (count, *image_shape); its data offset."""
    if count == 0:
        np.save(path, np.empty((0, *image_shape), dtype=np.uint8))
        return path.stat().st_size
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *image_shape))
    offset = array.offset
    del array
    return offset
