"""Data pipeline throughput: building the image cache, and sampling episodes from it.

Prints one line per measurement, each the median of --repeats timed runs. Never run by CI.

    python benchmarks/data_pipeline.py                      # both parts
    python benchmarks/data_pipeline.py --part sampling      # episode sampling only

decode: synthetic photos of about 500x375 (the size of mini-ImageNet's ImageNet originals,
smooth colour fields with shapes and grain, JPEG quality 90) in the folder layout, decoded,
resized to 84x84 and written to a fresh cache by ``load_folder_split``, in images/s.
sampling: ``EpisodeSampler.episode(i)`` (indices, gather from a memory-mapped uint8 array,
conversion to normalised float tensors on the CPU) for 5-way 5-shot 15-query episodes from
64 classes x 600 random 84x84x3 images, in episodes/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from attnopt.data.episodes import EpisodeSampler
from attnopt.data.folder import load_folder_split
from attnopt.data.imageset import ImageSet
from attnopt.data.registry import DataOptions


def synthetic_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """A photo-like image: a smooth colour field, a few blurred shapes and sensor grain."""
    field = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(10, 80))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))


def write_photos(root: Path, n_images: int, n_classes: int = 30) -> int:
    """ROOT/train/<class>/<image>.jpg; returns the total size in bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n_images):
        path = root / "train" / f"n{i % n_classes:08d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(rng).save(path, quality=90)
        total += path.stat().st_size
    return total


def measure_decode(workdir: Path, n_images: int, workers: list[int], repeats: int) -> list[str]:
    data = workdir / "photos"
    if sum(1 for _ in data.rglob("*.jpg")) != n_images:
        shutil.rmtree(data, ignore_errors=True)
        start = time.perf_counter()
        size = write_photos(data, n_images)
        print(
            f"# wrote {n_images} JPEGs ({size / n_images / 1024:.0f} KiB each on average) in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    for p in (data / "train").rglob("*.jpg"):  # page cache warm: time decoding, not the disk
        p.read_bytes()
    lines = []
    for n_workers in workers:
        rates = []
        for r in range(repeats):
            cache = workdir / f"cache-{n_workers}-{r}"
            shutil.rmtree(cache, ignore_errors=True)  # fresh: every run builds the entry
            start = time.perf_counter()
            options = DataOptions(data, 84, cache, n_workers=n_workers)
            imageset = load_folder_split(options, "train")
            rates.append(n_images / (time.perf_counter() - start))
            assert imageset.images.shape == (n_images, 84, 84, 3)
        start = time.perf_counter()
        load_folder_split(options, "train")
        reuse_ms = (time.perf_counter() - start) * 1e3
        for r in range(repeats):
            shutil.rmtree(workdir / f"cache-{n_workers}-{r}")
        lines.append(
            f"cache build: {n_images} JPEGs ~500x375 -> 84x84x3, n_workers={n_workers} "
            f"(threads={min(n_workers, os.cpu_count() or 1)}) "
            f"images/s={statistics.median(rates):.0f} "
            f"(runs: {', '.join(f'{x:.0f}' for x in rates)}) reuse_ms={reuse_ms:.0f}"
        )
        print(lines[-1], flush=True)
    return lines


def measure_sampling(workdir: Path, episodes: int, repeats: int) -> str:
    n_classes, per_class, size = 64, 600, 84
    path = workdir / "images.npy"
    if not path.exists():
        array = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(n_classes * per_class, size, size, 3)
        )
        rng = np.random.default_rng(0)
        for start in range(0, len(array), 4096):
            chunk = array[start : start + 4096]
            chunk[:] = rng.integers(0, 256, chunk.shape, dtype=np.uint8)
        array.flush()
        del array
    images = np.load(path, mmap_mode="r")
    labels = np.repeat(np.arange(n_classes), per_class)
    imageset = ImageSet(images, labels, tuple(f"c{i}" for i in range(n_classes)), str(path))
    sampler = EpisodeSampler(imageset, 5, 5, 15, seed=0)
    for i in range(50):  # warm-up: page cache, allocator
        sampler.episode(i)
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(episodes):
            sampler.episode(r * episodes + i)
        rates.append(episodes / (time.perf_counter() - start))
    line = (
        f"episode sampling: 5-way 5-shot 15q from {n_classes}x{per_class} 84x84x3 (mmap), "
        f"cpu threads={torch.get_num_threads()} episodes/s={statistics.median(rates):.0f} "
        f"(runs: {', '.join(f'{x:.0f}' for x in rates)})"
    )
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("decode", "sampling", "all"), default="all")
    parser.add_argument("--images", type=int, default=3000, help="synthetic JPEGs to decode")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4], help="--n-workers")
    parser.add_argument("--episodes", type=int, default=500, help="episodes per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed sampling runs (median)")
    parser.add_argument("--decode-repeats", type=int, default=3, help="timed cache builds")
    parser.add_argument("--workdir", type=Path, help="keep generated data here (default: temp)")
    parser.add_argument("--threads", type=int, help="torch threads for sampling (torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="attnopt-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.part in ("sampling", "all"):
            measure_sampling(workdir, args.episodes, args.repeats)
        if args.part in ("decode", "all"):
            measure_decode(workdir, args.images, args.workers, args.decode_repeats)


if __name__ == "__main__":
    main()
