"""Tiny copies of the few-shot benchmarks in the layouts they are released in.

Each writer puts the same images in every layout of its data set, so the loaders must return
identical arrays for them. Pickles come as Python 2 wrote them (protocol 2, byte strings as
``str`` opcodes, numpy under ``numpy.core``) or as Python 3 does.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from attnopt.data.cifar_splits import COARSE_NAMES, FINE_NAMES, SUPERCLASSES


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler lets opcodes be chosen
    """Protocol 2 as Python 2 writes it: bytes and text as 8-bit ``str``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_str
    dispatch[str] = _save_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump(path: Path, obj: Any, style: str = "py2") -> Path:
    """Pickle ``obj`` to ``path``: "py2" (Python 2, protocol 2), "py3" (protocol 3) or
    "py3-bytes" (protocol 3 with every dict key as bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        buffer = io.BytesIO()
        _Python2Pickler(buffer, protocol=2).dump(obj)
        path.write_bytes(buffer.getvalue())
    else:
        if style == "py3-bytes":
            obj = {k.encode(): v for k, v in obj.items()}
        path.write_bytes(pickle.dumps(obj, protocol=3))
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def interleave(counts: list[int], seed: int) -> list[tuple[int, int]]:
    """(class, image index) pairs with classes interleaved at random and each class's images
    in order: how released files mix classes."""
    rng = np.random.default_rng(seed)
    turns = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    seen = [0] * len(counts)
    order = []
    for c in turns:
        order.append((int(c), seen[c]))
        seen[c] += 1
    return order


# --- tieredImageNet -------------------------------------------------------------------------

TIERED_CLASSES = {  # split -> category -> classes (wnid-like names)
    "train": {"n00001": ["n01000001", "n01000002"], "n00002": ["n01000003"]},
    "val": {"n00003": ["n02000001", "n02000002", "n02000003"]},
    "test": {"n00004": ["n03000001", "n03000002"], "n00005": ["n03000003"]},
}


def tiered_photos(per_class: int = 4, size: int = 84, seed: int = 0) -> dict:
    """split -> class -> images (size, size, 3)."""
    rng = np.random.default_rng(seed)
    return {
        split: {
            name: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(per_class)]
            for names in categories.values()
            for name in names
        }
        for split, categories in TIERED_CLASSES.items()
    }


def write_tiered_pickles(root: Path, photos: dict, style: str = "py2", arrays: bool = True) -> Path:
    """ROOT/<split>_images_png.pkl and ROOT/<split>_labels.pkl as in the original release.

    ``arrays``: each PNG a uint8 array (as cv2.imencode returns it) rather than bytes. Class
    names are listed in reverse order, so labels are not in name order.
    """
    for split, classes in photos.items():
        names = list(reversed(classes))
        category_of = {c: cat for cat, cs in TIERED_CLASSES[split].items() for c in cs}
        categories = sorted(set(category_of.values()))
        order = interleave([len(classes[n]) for n in names], seed=len(split))
        pngs = [png_bytes(classes[names[c]][i]) for c, i in order]
        images = [np.frombuffer(p, dtype=np.uint8) for p in pngs] if arrays else pngs
        labels = {
            "label_specific": np.array([c for c, _ in order], dtype=np.int64),
            "label_general": np.array(
                [categories.index(category_of[names[c]]) for c, _ in order], dtype=np.int64
            ),
            "label_specific_str": names,
            "label_general_str": categories,
        }
        dump(root / f"{split}_images_png.pkl", images, "py2" if style == "py2" else "py3")
        dump(root / f"{split}_labels.pkl", labels, style)
    return root


# --- CIFAR-FS and FC100 -----------------------------------------------------------------------

# 12 classes: 4 per CIFAR-FS split and 4 per FC100 split.
CIFAR_CLASSES = (
    "apple", "bear", "bus", "dolphin",  # CIFAR-FS train
    "beaver", "camel", "crab", "lamp",  # CIFAR-FS val
    "baby", "bed", "fox", "leopard",  # CIFAR-FS test
)  # fmt: skip
COARSE_OF = {c: s for s, cs in SUPERCLASSES.items() for c in cs}


def cifar_photos(per_file: int = 3, seed: int = 0) -> dict[str, dict[str, list[np.ndarray]]]:
    """archive file ("train", "test") -> class -> 32x32x3 images."""
    rng = np.random.default_rng(seed)
    return {
        part: {
            c: [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(per_file)]
            for c in CIFAR_CLASSES
        }
        for part in ("train", "test")
    }


def write_cifar_archive(root: Path, photos: dict, style: str = "py2") -> Path:
    """ROOT/cifar-100-python/{train,test,meta} as in CIFAR-100's python version."""
    folder = root / "cifar-100-python"
    for part, classes in photos.items():
        order = interleave([len(classes[c]) for c in CIFAR_CLASSES], seed=len(part))
        rows = [classes[CIFAR_CLASSES[c]][i] for c, i in order]
        fine = [FINE_NAMES.index(CIFAR_CLASSES[c]) for c, _ in order]
        dump(
            folder / part,
            {
                "batch_label": f"{part}ing batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [COARSE_NAMES.index(COARSE_OF[FINE_NAMES[f]]) for f in fine],
                "filenames": [f"img_{j}.png" for j in range(len(rows))],
                "data": np.stack([px.transpose(2, 0, 1).reshape(-1) for px in rows]),
            },
            style,
        )
    meta = {"fine_label_names": list(FINE_NAMES), "coarse_label_names": list(COARSE_NAMES)}
    dump(folder / "meta", meta, style)
    return root


def write_cifar_split_pickles(
    root: Path, photos: dict, prefix: str, splits: dict[str, tuple[str, ...]], style: str = "py2"
) -> Path:
    """ROOT/<prefix>_<split>.pickle: {'data': (N, 32, 32, 3), 'labels': [CIFAR-100 label]},
    each class's images in archive order (train file, then test file), classes interleaved."""
    for split, allowed in splits.items():
        names = [c for c in CIFAR_CLASSES if c in allowed]
        images = {c: photos["train"][c] + photos["test"][c] for c in names}
        order = interleave([len(images[c]) for c in names], seed=3)
        data = np.stack([images[names[c]][i] for c, i in order])
        labels = [FINE_NAMES.index(names[c]) for c, _ in order]
        dump(root / f"{prefix}_{split}.pickle", {"data": data, "labels": labels}, style)
    return root


# --- Omniglot ------------------------------------------------------------------------------

# folder -> alphabet -> characters (their splits in the comments): 5 characters, so 20
# classes with the rotations, per split.
OMNIGLOT_CHARACTERS = {
    "images_background": {
        "Greek": ["character01", "character02"],  # train
        "Hebrew": ["character01", "character02"],  # val
        "Armenian": ["character01", "character02", "character03"],  # val
        "Latin": ["character01", "character02"],  # train
    },
    "images_evaluation": {
        "Gurmukhi": ["character41", "character42", "character45"],  # train, test, test
        "Keble": ["character01"],  # test
        "Mongolian": ["character03"],  # test
        "Tengwar": ["character07"],  # test
    },
}


def write_omniglot(root: Path, per_character: int = 4, size: int = 30, seed: int = 0) -> Path:
    """ROOT/images_{background,evaluation}/<alphabet>/<character>/<nnnn_mm>.png: 1-bit
    drawings (black strokes on white), like the release's 105x105 PNGs but smaller."""
    rng = np.random.default_rng(seed)
    number = 0
    for folder, alphabets in OMNIGLOT_CHARACTERS.items():
        for alphabet, characters in alphabets.items():
            for character in characters:
                number += 1
                for drawer in range(1, per_character + 1):
                    path = root / folder / alphabet / character / f"{number:04d}_{drawer:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ink = rng.random((size, size)) < 0.2
                    Image.fromarray(~ink).convert("1").save(path)
    return root


# --- CUB-200-2011 -----------------------------------------------------------------------------


def write_cub(root: Path, n_classes: int = 12, per_class: int = 4, seed: int = 0) -> Path:
    """ROOT/CUB_200_2011/images/<id>.<name>/<name>_<n>.jpg with images.txt and
    bounding_boxes.txt, class ids 1..n_classes. Photos of varied sizes (PNG data in .jpg
    files would do too, but these are real JPEGs)."""
    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011"
    lines, boxes = [], []
    for class_id in range(1, n_classes + 1):
        name = f"{class_id:03d}.Bird_{class_id}"
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(40, 70, 2))
            rel = f"{name}/Bird_{class_id}_{i:04d}_{class_id * 100 + i}.jpg"
            path = folder / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
            image_id = len(lines) + 1
            lines.append(f"{image_id} {rel}")
            x, y = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
            boxes.append(f"{image_id} {x} {y} {float(w // 3)} {float(h // 3)}")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (folder / "classes.txt").write_text(
        "".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, n_classes + 1))
    )
    return root
