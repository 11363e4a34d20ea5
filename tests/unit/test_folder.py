import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from attnopt.data.folder import load_folder_split
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError


def load(root: Path, cache: Path, split: str = "train", size: int = 16):
    return load_folder_split(DataOptions(root, size, cache, n_workers=2), split)


def test_folder_split_has_the_right_classes_counts_and_shapes(
    folder_dataset: Path, tmp_path: Path
) -> None:
    imageset = load(folder_dataset, tmp_path / "c")
    assert imageset.class_names == tuple(f"train_n{c:08d}" for c in range(6))
    assert imageset.images.shape == (36, 16, 16, 3) and imageset.images.dtype == np.uint8
    assert imageset.class_counts().tolist() == [6] * 6
    assert imageset.source == str((folder_dataset / "train").resolve())


def test_decoded_pixels_match_pillow(folder_dataset: Path, tmp_path: Path) -> None:
    imageset = load(folder_dataset, tmp_path / "c")
    first = sorted((folder_dataset / "train" / "train_n00000000").iterdir())[0]
    with Image.open(first) as img:
        expected = np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(imageset.images[0], expected)


def test_cache_is_reused_then_rebuilt_when_a_file_is_added(
    folder_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    first = load(folder_dataset, cache)
    second = load(folder_dataset, cache)
    assert isinstance(second.images, np.memmap)  # served from the cache, not decoded again
    assert np.array_equal(first.images, second.images)
    entries = sorted(cache.iterdir())

    write_image(
        folder_dataset / "train" / "train_n00000000" / "extra.png", np.random.default_rng(5)
    )
    third = load(folder_dataset, cache)
    assert len(third.images) == len(first.images) + 1
    assert len(sorted(cache.iterdir())) == len(entries) + 1


def test_cache_is_rebuilt_when_a_file_changes(folder_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    before = load(folder_dataset, cache).images[0].copy()
    target = sorted((folder_dataset / "train" / "train_n00000000").iterdir())[0]
    Image.new("RGB", (8, 8), (255, 0, 0)).save(target, format="JPEG", quality=100)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load(folder_dataset, cache).images[0]
    assert not np.array_equal(before, after)
    assert abs(int(after[..., 0].mean()) - 254) < 3 and after[..., 2].mean() < 3


def test_damaged_cache_is_rebuilt(folder_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    good = np.array(load(folder_dataset, cache).images)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    (entry / "images.npy").write_bytes(b"garbage")
    assert np.array_equal(load(folder_dataset, cache).images, good)


def test_grayscale_and_palette_images_become_rgb(tmp_path: Path) -> None:
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    write_image(root / "train" / "a" / "gray.png", rng, mode="L")
    write_image(root / "train" / "a" / "palette.png", rng, mode="P")
    write_image(root / "train" / "a" / "rgba.png", rng, mode="RGBA")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    imageset = load(root, tmp_path / "c")
    assert imageset.images.shape == (3, 16, 16, 3)


def test_missing_split_folder_names_it(folder_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing split folder .*mini/nope"):
        load(folder_dataset, tmp_path / "c", split="nope")


def test_unreadable_image_names_the_file_and_leaves_no_cache(
    folder_dataset: Path, tmp_path: Path
) -> None:
    bad = folder_dataset / "train" / "train_n00000002" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    cache = tmp_path / "c"
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        load(folder_dataset, cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_empty_image_file_is_an_error_naming_it(folder_dataset: Path, tmp_path: Path) -> None:
    (folder_dataset / "train" / "train_n00000001" / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty.png"):
        load(folder_dataset, tmp_path / "c")
