"""Shared fixtures: tiny image folders written by the tests, and an isolated cache."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

# Before any test module imports torch, which reads these once. A fixed thread count: a run's
# rounding depends on it, and the bit-for-bit tests must not see attnopt's thread governor
# change it with the machine's load. Sleeping OpenMP threads: spinning ones made every tiny
# parallel kernel wait for a thread to get a core on a loaded machine (a 4x2x16x16 batch norm
# took 37 ms instead of 0.07 ms).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test caches decoded images in its own folder, never in the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ATTNOPT_CACHE", str(cache))
    return cache


@pytest.fixture
def small_glyphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in data set cut down to 6 characters per split, so it builds in a moment."""
    from attnopt.data import glyphs

    catalogue = glyphs._catalogue()
    small = tuple(
        c for split in glyphs.GLYPH_SPLITS for c in [c for c in catalogue if c[1] == split][:6]
    )
    monkeypatch.setattr(glyphs, "_catalogue", lambda: small)


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


# One tiny photo set written in each mini-ImageNet layout: split -> class -> images (H, W, 3).
Photos = dict[str, dict[str, list[np.ndarray]]]


def make_photos(classes: int = 3, per_class: int = 4, size: int = 84, seed: int = 0) -> Photos:
    """Random uint8 RGB images for every split; class names differ between splits."""
    rng = np.random.default_rng(seed)
    return {
        split: {
            f"n{split}{c:03d}": [
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(per_class)
            ]
            for c in range(classes)
        }
        for split in ("train", "val", "test")
    }


def _image_name(name: str, i: int) -> str:
    return f"{name}{i:08d}.png"


def write_folder_layout(root: Path, photos: Photos) -> Path:
    """ROOT/<split>/<class>/<image>.png (lossless, so every layout holds the same pixels)."""
    for split, classes in photos.items():
        for name, images in classes.items():
            for i, pixels in enumerate(images):
                path = root / split / name / _image_name(name, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def write_csv_layout(root: Path, photos: Photos, seed: int = 0) -> Path:
    """ROOT/<split>.csv (filename,label) plus ROOT/images/. Rows of different classes are
    interleaved at random, but each class's rows stay in the order of its images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, classes in photos.items():
        queues = []
        for name, images in classes.items():
            for i, pixels in enumerate(images):
                Image.fromarray(pixels).save(root / "images" / _image_name(name, i))
            queues.append([f"{_image_name(name, i)},{name}" for i in range(len(images))])
        turns = rng.permutation(np.repeat(np.arange(len(queues)), [len(q) for q in queues]))
        lines = ["filename,label", *(queues[t].pop(0) for t in turns)]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def pickle_cache(classes: dict[str, list[np.ndarray]], seed: int = 0) -> dict:
    """``{'image_data': (N, H, W, 3), 'class_dict': {label: [rows]}}`` with rows shuffled
    and classes in reverse order, as a mini-ImageNet pickle cache holds them."""
    rng = np.random.default_rng(seed)
    flat = [(name, i, px) for name, images in classes.items() for i, px in enumerate(images)]
    perm = rng.permutation(len(flat))  # perm[j]: the row where image j is stored
    image_data = np.empty((len(flat), *flat[0][2].shape), dtype=np.uint8)
    class_dict: dict[str, list[int]] = {name: [] for name in reversed(classes.keys())}
    for j, (name, _, pixels) in enumerate(flat):
        image_data[perm[j]] = pixels
        class_dict[name].append(int(perm[j]))
    return {"image_data": image_data, "class_dict": class_dict}


def write_pickle_layout(
    root: Path, photos: Photos, val_name: str = "val", protocol: int = 4, byte_keys: bool = False
) -> Path:
    """ROOT/mini-imagenet-cache-<split>.pkl; ``byte_keys`` writes b'image_data' and byte labels."""
    import pickle

    root.mkdir(parents=True, exist_ok=True)
    for split, classes in photos.items():
        cache = pickle_cache(classes)
        if byte_keys:
            cache = {
                b"image_data": cache["image_data"],
                b"class_dict": {k.encode(): v for k, v in cache["class_dict"].items()},
            }
        name = val_name if split == "val" else split
        with open(root / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
            pickle.dump(cache, f, protocol=protocol)
    return root


def mini_flags(data_root: Path, save: Path, *extra: str) -> list[str]:
    """A tiny ``attnopt train`` run on a mini-ImageNet layout (3-way 1-shot, 16x16 images)."""
    return [
        *("--data", "miniimagenet", "--data-root", str(data_root), "--image-size", "16"),
        *("--n-class", "3", "--n-shot", "1", "--n-eval", "1", "--episode", "2"),
        *("--val-freq", "2", "--episode-val", "2", "--episode-test", "2", "--log-freq", "1"),
        *("--save", str(save), "--cpu", "--n-workers", "2"),
        *extra,
    ]


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one ``error:`` line, last on stderr (progress bars may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and err.rstrip().endswith(lines[0])
    assert "Traceback" not in err
    return lines[0]


def tiny_flags(data_root: Path, save: Path) -> list[str]:
    """A tiny ``attnopt train`` run on a folder data set (3-way 2-shot, 16x16, 6 episodes)."""
    return [
        *("--data", "folder", "--data-root", str(data_root), "--image-size", "16"),
        *("--n-class", "3", "--n-shot", "2", "--n-eval", "2", "--episode", "6"),
        *("--val-freq", "3", "--episode-val", "4", "--episode-test", "5", "--log-freq", "2"),
        *("--save", str(save), "--cpu", "--seed", "1"),
    ]


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny training run per test session (training also draws the figures and the
    report), shared by every test file: (run folder, stdout). Never change it: use
    ``trained_run``."""
    from attnopt.cli.commands import main

    root = tmp_path_factory.mktemp("trained")
    data = make_folder_dataset(root / "mini")
    run = root / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["train", *tiny_flags(data, run), "--cache-dir", str(root / "cache")])
    assert status == 0
    return run, out.getvalue()


@pytest.fixture
def trained_run(trained_template: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the tiny run, free to change."""
    run = tmp_path / "run"
    shutil.copytree(trained_template[0], run)
    return run


def make_checkpoint(
    path: Path,
    channels: int = 3,
    n_class: int = 3,
    image_size: int = 16,
    attention: str = "both",
    seed: int = 0,
) -> Path:
    """An untrained checkpoint whose meta-parameters are perturbed at random, so that every
    path (the cross-attention and the meta-attention included) is active. Two inner steps."""
    import torch

    from attnopt.config import Config
    from attnopt.models.build import build_model
    from attnopt.training.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    config = Config(
        n_class=n_class,
        n_shot=2,
        epoch=2,
        batch_size=2 * n_class,
        image_size=image_size,
        attention=attention,
    )
    model = build_model(config, channels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(
        path,
        config=config,
        in_channels=channels,
        model=model.state_dict(),
        optimizer=None,
        episode=0,
        best_accuracy=0.0,
        best_episode=0,
    )
    return path


def make_support(root: Path, counts: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """ROOT/<class>/<image>.png with ``counts[class]`` random RGB images of ``size`` pixels."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{name}_{i}.png", rng, size=size)
    return root


class RunsCode:
    """Unpickling this calls os.mkdir(marker): what a malicious file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))
