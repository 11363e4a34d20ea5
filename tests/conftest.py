"""Shared fixtures: tiny image folders written by the tests, and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test caches decoded images in its own folder, never in the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ATTNOPT_CACHE", str(cache))
    return cache


def write_image(path: Path, rng: np.random.Generator, size: int = 20, mode: str = "RGB") -> None:
    """A small random image; the suffix of ``path`` picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def make_folder_dataset(
    root: Path,
    classes: dict[str, int] | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    seed: int = 0,
) -> Path:
    """ROOT/<split>/<class>/<image> with JPEGs and PNGs; ``classes`` maps class -> count."""
    rng = np.random.default_rng(seed)
    classes = classes or {f"n{c:08d}": 6 for c in range(6)}
    for split in splits:
        for name, count in classes.items():
            for i in range(count):
                suffix = ".jpg" if i % 2 == 0 else ".png"
                write_image(
                    root / split / f"{split}_{name}" / f"{name}_{i:04d}{suffix}",
                    rng,
                    size=int(rng.integers(12, 30)),
                )
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """A tiny mini-ImageNet-like tree: 3 splits x 6 classes x 6 images of varied sizes."""
    return make_folder_dataset(tmp_path / "mini")
