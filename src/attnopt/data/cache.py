"""One-time cache of decoded image sets: ``.npy`` arrays plus a JSON index, memory-mapped on reuse.

An entry lives in its own folder named after a hash of its key (the source's content
signature and the image size). The folder is assembled under a temporary name and renamed
into place (after an fsync of every file), so an interrupted build leaves nothing that a
later run would read; temporary
folders that a killed process left behind are removed by the next build of the same entry.
"""

from __future__ import annotations

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
from attnopt.fileio import apply_umask, fsync_path, os_error_message

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STALE_TEMP_SECONDS = 3600  # a build writes its temporary folder within seconds

# build() returns (images, labels, class_names) and optionally the skipped files' paths.
Built = (
    tuple[np.ndarray, np.ndarray, Sequence[str]]
    | tuple[np.ndarray, np.ndarray, Sequence[str], Sequence[str]]
)


def default_cache_dir() -> Path:
    """``$ATTNOPT_CACHE``, else ``$XDG_CACHE_HOME/attnopt``, else ``~/.cache/attnopt``."""
    if os.environ.get("ATTNOPT_CACHE"):
        return Path(os.environ["ATTNOPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnopt"


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able key."""
    blob = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    index = {
        "format": CACHE_FORMAT,
        "key": key,
        "shape": list(images.shape),
        "class_names": list(class_names),
        "skipped": skipped,
    }
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        apply_umask(tmp, directory=True)
        np.save(tmp / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        (tmp / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        for name in ("images.npy", "labels.npy", "index.json", "."):
            fsync_path(tmp / name)
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
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
