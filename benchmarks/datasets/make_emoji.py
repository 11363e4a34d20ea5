"""Build the "emoji" few-shot data set from three emoji sets that npm packages ship.

Google's Noto, Twitter's Twemoji (both from the emoji-datasource packages) and OpenMoji draw
every Unicode emoji, each in its own style. One class is one Unicode emoji sub-group, such as
animal-bird, food-fruit, transport-ground or face-concerned: its images are all three sets'
drawings of the sub-group's emoji. Classes are split 64/16/20 (seed 0) into train/val/test:

    npm install --prefix /opt/emoji emoji-datasource-google@16.0.0 \\
        emoji-datasource-twitter@16.0.0 openmoji@17.0.0
    pip install cairosvg                       # to draw OpenMoji's SVG files
    python benchmarks/datasets/make_emoji.py --npm /opt/emoji --out /work/data/emoji

Left out: skin-tone variants (an emoji counts once, in its default colour), the Symbols,
Flags and Component groups (letters, keycaps, geometric shapes and national flags are signs,
not drawings of things) and emoji that a set draws with another set's image. A sub-group
with fewer than --min-images drawings is not a class.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from imagefolders import (
    describe,
    fail,
    first_copies,
    render_all,
    require_new,
    signature,
    split_classes,
    square_drawing,
    write_dataset,
)
from PIL import Image

PACKAGES = "emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 openmoji@17.0.0"
SETS = ("google", "twitter", "openmoji")
EXCLUDED_GROUPS = ("Symbols", "Flags", "Component")


def _hexcodes(entry: dict) -> list[str]:
    """The spellings of an emoji's code points that a set may name its file by."""
    codes = [entry["unified"], entry.get("non_qualified") or ""]
    codes.append(entry["unified"].replace("-FE0F", ""))
    return [c for c in dict.fromkeys(codes) if c]


def list_drawings(modules: Path) -> list[tuple[str, str, str, Path]]:
    """(class, emoji, set, file) for every drawing kept, sorted."""
    datasource = modules / "emoji-datasource-google" / "emoji.json"
    emoji = json.loads(datasource.read_text(encoding="utf-8"))
    openmoji_svg = modules / "openmoji" / "color" / "svg"
    rows = []
    for entry in emoji:
        if entry["category"] in EXCLUDED_GROUPS:
            continue
        cls = entry["subcategory"].replace(" & ", "-and-").replace(" ", "-")
        name = entry["short_name"]
        for vendor in ("google", "twitter"):
            if entry[f"has_img_{vendor}"]:  # otherwise the package falls back to another set
                folder = modules / f"emoji-datasource-{vendor}" / "img" / vendor / "64"
                rows.append((cls, name, vendor, folder / entry["image"]))
        svgs = [openmoji_svg / f"{code}.svg" for code in _hexcodes(entry)]
        found = [p for p in svgs if p.is_file()]
        if found:
            rows.append((cls, name, "openmoji", found[0]))
    return sorted(rows)


def _render(path: Path, size: int) -> Image.Image | None:
    try:
        if path.suffix == ".png":
            with Image.open(path) as img:
                return square_drawing(img, size)
        import cairosvg

        png = cairosvg.svg2png(url=str(path), output_width=2 * size, output_height=2 * size)
        with Image.open(io.BytesIO(png)) as img:
            return square_drawing(img, size)
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument(
        "--npm", type=Path, required=True, help="the --prefix the packages were installed with"
    )
    parser.add_argument("--size", type=int, default=84, help="side of the written PNGs")
    parser.add_argument("--min-images", type=int, default=20, help="images a class needs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    require_new(args.out)
    modules = args.npm / "node_modules"
    needed = ["emoji-datasource-google", "emoji-datasource-twitter", "openmoji"]
    if any(not (modules / pkg / "package.json").is_file() for pkg in needed):
        fail(
            f"{modules} lacks the emoji packages; install them with: "
            f"npm install --prefix {args.npm} {PACKAGES}"
        )
    try:
        import cairosvg  # noqa: F401
    except ImportError:
        fail(
            "cairosvg is not installed (it draws OpenMoji's SVG files); install it with: "
            "pip install cairosvg"
        )

    rows = list_drawings(modules)
    rendered = render_all(partial(_render, size=args.size), [r[3] for r in rows], args.workers)
    ok = [i for i, img in enumerate(rendered) if img is not None]
    keep = [ok[i] for i in first_copies(np.stack([signature(rendered[i]) for i in ok]))]
    images: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    for i in keep:
        cls, name, vendor, _ = rows[i]
        images[cls].append((f"{name}-{vendor}", rendered[i]))
    images = {c: imgs for c, imgs in images.items() if len(imgs) >= args.min_images}
    splits = split_classes(images, args.seed)
    write_dataset(args.out, images, splits)
    print(describe(args.out, splits, images))
    print(f"skipped {len(rows) - len(ok)} unreadable or blank, {len(ok) - len(keep)} duplicates")


if __name__ == "__main__":
    main()
