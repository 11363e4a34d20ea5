"""One-time cache of decoded image sets: ``.npy`` arrays plus a JSON index, memory-mapped on reuse.

An entry lives in its own folder named after a hash of its key (the source's content
signature and the image size). The folder is assembled under a temporary name and renamed
into place, so an interrupted build leaves nothing that a later run would read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.data.imageset import ImageSet

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


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
        return ImageSet(images, labels.astype(np.int64), tuple(index["class_names"]), source)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("cache entry %s is damaged (%s); rebuilding it", entry, e)
        return None


def cached_imageset(
    cache_dir: Path,
    name: str,
    key: dict[str, Any],
    build: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]],
    source: str,
) -> ImageSet:
    """Return the ImageSet cached under ``key``, building it with ``build()`` when absent.

    build() returns (images uint8 (N, H, W, C), labels int (N,), class_names).
    """
    entry = Path(cache_dir) / f"{name}-{key_digest(key)}"
    cached = _load(entry, source)
    if cached is not None:
        return cached
    images, labels, class_names = build()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        index = {
            "format": CACHE_FORMAT,
            "key": key,
            "shape": list(images.shape),
            "class_names": list(class_names),
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loaded = _load(entry, source)
    assert loaded is not None, f"cache entry {entry} unreadable right after writing it"
    return loaded
