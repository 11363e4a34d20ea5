"""tieredImageNet cache: build speed and peak memory from the PNG pickles, and the time to the
first episode once the cache exists.

Writes a synthetic split in the layout of the original release (``train_images_png.pkl``: a
list of PNG-encoded 84x84 photos as uint8 arrays, ``train_labels.pkl``: a class per 300
images, at most 351), then builds the cache in a fresh process per run and prints one line
per measurement (medians of --repeats runs). Never run by CI.

    python benchmarks/tiered_cache.py                     # 100,000 images
    python benchmarks/tiered_cache.py --images 20000 --workers 2 4

The photos are ``data_pipeline.synthetic_photo`` (smooth colour fields, shapes, grain)
shrunk to 84x84 with some grain added back (14 KiB per PNG); --distinct of them are generated
and repeated to fill the split, which changes neither the pickle's size nor the decoding work
per image. The val and test pickles, which the layout needs, hold 1,000 images each.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import synthetic_photo  # noqa: E402

N_CLASSES = 351  # tieredImageNet's training classes

# Run in a fresh interpreter, so that its peak resident memory is the build's own.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from attnopt.data.episodes import EpisodeSampler
from attnopt.data.registry import DataOptions
from attnopt.data.tiered import load_tiered_split
import numpy as np
imported = time.perf_counter() - t0


def peak_rss():
    # VmHWM starts afresh at exec; ru_maxrss would count the parent's memory at fork
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


base = peak_rss()
root, cache, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
imageset = load_tiered_split(DataOptions(root, 84, cache, workers), "train")
loaded = time.perf_counter() - start
episode = EpisodeSampler(imageset, 5, 5, 15, seed=0).episode(0)
first = time.perf_counter() - start
print(json.dumps({
    "imported_s": imported, "load_s": loaded, "first_episode_s": first,
    "images": len(imageset.images), "mmap": isinstance(imageset.images, np.memmap),
    "base_rss": base, "peak_rss": peak_rss(),
}))
"""


def tiered_photo(rng: np.random.Generator) -> bytes:
    """A photo-like 84x84 PNG."""
    small = np.asarray(synthetic_photo(rng).resize((84, 84), Image.Resampling.BILINEAR))
    grainy = np.clip(small + rng.normal(0, 6, small.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grainy).save(buffer, format="PNG")
    return buffer.getvalue()


def write_splits(root: Path, n_images: int, distinct: int) -> int:
    """ROOT/<split>_images_png.pkl and ROOT/<split>_labels.pkl, ``n_images`` in train (kept
    from an earlier run with the same settings); the train images pickle's size in bytes."""
    made = root / "made.json"
    wanted = {"images": n_images, "distinct": distinct}
    if not made.exists() or json.loads(made.read_text()) != wanted:
        rng = np.random.default_rng(0)
        pngs = [np.frombuffer(tiered_photo(rng), np.uint8) for _ in range(min(distinct, n_images))]
        root.mkdir(parents=True, exist_ok=True)
        for split, count in (("train", n_images), ("val", 1000), ("test", 1000)):
            # copies: pickle would store repeats of one object once
            write_split(root, split, [pngs[i % len(pngs)].copy() for i in range(count)])
        made.write_text(json.dumps(wanted))
    return (root / "train_images_png.pkl").stat().st_size


def write_split(root: Path, split: str, images: list[np.ndarray]) -> None:
    n_classes = min(N_CLASSES, max(5, len(images) // 300))  # tieredImageNet: 1,281 per class
    labels = np.arange(len(images)) % n_classes
    with open(root / f"{split}_images_png.pkl", "wb") as f:
        pickle.dump(images, f, protocol=3)  # protocol 2 would store bytes as UTF-8 text
    with open(root / f"{split}_labels.pkl", "wb") as f:
        pickle.dump(
            {
                "label_specific": labels,
                "label_specific_str": [f"n{c:08d}" for c in range(n_classes)],
                "label_general": labels % 20,
                "label_general_str": [f"n{c:08d}" for c in range(20)],
            },
            f,
            protocol=2,
        )
    return (root / "train_images_png.pkl").stat().st_size


def run_child(root: Path, cache: Path, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(cache), str(workers)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"the build failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="images in the split")
    parser.add_argument("--distinct", type=int, default=2000, help="distinct photos generated")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="--n-workers")
    parser.add_argument("--repeats", type=int, default=3, help="timed builds (median)")
    parser.add_argument("--workdir", type=Path, help="keep the pickles here (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attnopt-tiered-") as tmp:
        workdir = args.workdir or Path(tmp)
        root = workdir / "tiered"
        start = time.perf_counter()
        size = write_splits(root, args.images, args.distinct)
        print(
            f"# {args.images} PNGs ({size / args.images / 1024:.1f} KiB each, pickle "
            f"{gb(size)}), written in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        decoded = args.images * 84 * 84 * 3
        for workers in args.workers:
            builds = []
            for r in range(args.repeats):
                cache = workdir / f"cache-{workers}-{r}"
                shutil.rmtree(cache, ignore_errors=True)
                builds.append(run_child(root, cache, workers))
            rates = [b["images"] / b["load_s"] for b in builds]
            peak = statistics.median(b["peak_rss"] for b in builds)
            print(
                f"tiered cache build: {args.images} PNGs 84x84 (pickle {gb(size)}, decoded "
                f"{gb(decoded)}), n_workers={workers} images/s={statistics.median(rates):.0f} "
                f"(runs: {', '.join(f'{x:.0f}' for x in rates)}) peak_rss={gb(peak)} "
                f"(after imports {gb(builds[0]['base_rss'])})",
                flush=True,
            )
            reuses = [run_child(root, workdir / f"cache-{workers}-0", workers) for _ in range(3)]
            assert all(x["mmap"] for x in reuses)
            print(
                f"tiered reuse: {args.images} images, time to first episode "
                f"{statistics.median(x['first_episode_s'] for x in reuses) * 1e3:.0f} ms "
                f"(load {statistics.median(x['load_s'] for x in reuses) * 1e3:.0f} ms; "
                f"imports before it {statistics.median(x['imported_s'] for x in reuses):.1f} s) "
                f"peak_rss={gb(statistics.median(x['peak_rss'] for x in reuses))}",
                flush=True,
            )
            for r in range(args.repeats):
                shutil.rmtree(workdir / f"cache-{workers}-{r}", ignore_errors=True)


if __name__ == "__main__":
    main()
