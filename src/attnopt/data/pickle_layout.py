"""The pickle-cache layout: ``ROOT/mini-imagenet-cache-<split>.pkl`` (as learn2learn uses).

Each file holds ``{'image_data': uint8 (N, H, W, 3), 'class_dict': {label: [row indices]}}``;
older files were pickled with byte-string keys and labels, which are accepted too. Pickles are
read with an unpickler that only rebuilds numpy arrays, dicts and lists: a data file can never
run code. Classes are sorted by name and the images of a class keep the order of their index
list, so the same images give the same arrays as in the folder and CSV layouts.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.data.cache import cached_imageset, key_digest, split_key
from attnopt.data.decode import resize_images
from attnopt.data.imageset import ImageSet
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# learn2learn calls the validation split "validation".
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
EXPECTED = "{'image_data': uint8 (N, 84, 84, 3), 'class_dict': {label: [row indices]}}"


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``, and nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# Everything a pickled dict of lists and numpy arrays (protocols 2-5, numpy 1 or 2) refers to.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_package}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_package}.numeric", "_frombuffer")] = _numeric._frombuffer


class _Forbidden(pickle.UnpicklingError):
    """The pickle refers to a class or function outside :data:`_ALLOWED`."""


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts and lists, and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Forbidden(f"{module}.{name}") from None


def read_pickle(path: Path, expected: str = EXPECTED) -> Any:
    """The object pickled in ``path``, loaded safely; UserError naming the file otherwise
    (and describing the ``expected`` content)."""
    try:
        with open(path, "rb") as f:
            # latin1 reads arrays and str keys of Python 2 pickles as numpy itself does.
            return _SafeUnpickler(f, encoding="latin1").load()
    except _Forbidden as e:
        raise UserError(
            f"refusing to load {path}: it asks to call {e}, and a data file may only hold "
            f"numpy arrays, dicts and lists; expected {expected}"
        ) from None
    except MemoryError:
        raise UserError(f"{path} is too large to load into memory") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        RecursionError,
    ) as e:
        raise UserError(f"cannot read pickle {path}: {e!r}; expected {expected}") from None


def as_text(key: Any) -> Any:
    """A byte-string key or name (Python 2 pickles, protocol 3 ``bytes``) as text."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def text_keys(obj: Any, path: Path, expected: str) -> dict[Any, Any]:
    """The unpickled dict ``obj`` with byte-string keys decoded; UserError if not a dict."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a dict; expected {expected}")
    return {as_text(k): v for k, v in obj.items()}


def require_keys(fields: dict[Any, Any], keys: tuple[str, ...], path: Path, expected: str) -> None:
    """UserError naming the ``keys`` that ``fields`` (from ``path``) lacks."""
    absent = [k for k in keys if k not in fields]
    if absent:
        raise UserError(f"{path} has no {' or '.join(map(repr, absent))}; expected {expected}")


def parse_cache(obj: Any, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Check the unpickled ``obj`` and return (image_data, {class name: row indices})."""
    fields = text_keys(obj, path, EXPECTED)
    require_keys(fields, ("image_data", "class_dict"), path, EXPECTED)
    images, class_dict = fields["image_data"], fields["class_dict"]
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
        or 0 in images.shape
    ):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images)
        raise UserError(f"'image_data' of {path} is {got}; expected uint8 (N, H, W, 3)")
    if not isinstance(class_dict, dict) or not class_dict:
        raise UserError(f"'class_dict' of {path} is not a non-empty dict; expected {EXPECTED}")
    classes: dict[str, np.ndarray] = {}
    for label, rows in class_dict.items():
        name = str(as_text(label))
        rows = np.asarray(rows)
        if rows.size == 0:
            rows = rows.astype(np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise UserError(f"class '{name}' in {path} does not map to a list of row indices")
        bad = rows[(rows < 0) | (rows >= len(images))]
        if bad.size:
            raise UserError(
                f"class '{name}' in {path} lists row {bad[0]}, outside 'image_data' "
                f"(rows 0 to {len(images) - 1})"
            )
        classes[name] = rows.astype(np.int64)
    every = np.concatenate(list(classes.values()))
    values, counts = np.unique(every, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"row {values[counts > 1][0]} is listed more than once in {path}")
    return images, classes


def pickle_path(root: Path, split: str) -> Path | None:
    """The pickle file of ``split`` in ``root``, or None."""
    for name in SPLIT_NAMES[split]:
        path = root / f"mini-imagenet-cache-{name}.pkl"
        if path.is_file():
            return path
    return None


def load_pickle_split(options: DataOptions, split: str) -> ImageSet:
    """One split of a pickle-cache data set, resized to ``--image-size`` and cached."""
    root, image_size = options.data_root().resolve(), options.image_size
    path = pickle_path(root, split)
    if path is None:
        names = " or ".join(f"mini-imagenet-cache-{n}.pkl" for n in SPLIT_NAMES[split])
        raise UserError(f"missing split file {root}/{names}")
    st = path.stat()
    content = key_digest({"file": path.name, "size": st.st_size, "mtime": st.st_mtime_ns})
    key = split_key("pickle", root, split, content, image_size=image_size)

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        images, classes = parse_cache(read_pickle(path), path)
        names = sorted(classes)
        rows = np.concatenate([classes[n] for n in names])
        labels = np.repeat(np.arange(len(names)), [len(classes[n]) for n in names])
        resized = resize_images(images[rows], image_size, options.n_workers, f"resizing {path}")
        return resized, labels, names

    return cached_imageset(options.cache_dir, f"pickle-{split}", key, build, source=str(path))
