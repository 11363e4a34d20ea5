"""The built-in few-shot data set "glyphs": an Omniglot-like set of characters from many scripts.

Every character is rendered from the fonts that ship with matplotlib (DejaVu Sans, Serif and
Sans Mono, STIX General, four styles each), reading each font's cmap with fontTools so that
only code points a font really has are drawn. One class is one character; it has 20 instances,
each drawn from one of the fonts that cover it (cycling through them in a seeded order) and
then varied by a seeded random affine distortion (rotation, shear, scale, translation), stroke
thickness and light noise. Images are white glyphs on black, uint8, (N, S, S, 1), S =
``image_size``; every instance is rendered on a canvas of 64 (or a multiple of 64) pixels and
resized with PIL, so the set of characters and their distortions do not depend on the size.

A code point is kept when it is a letter, digit or symbol (no marks, punctuation or modifier
letters) without a Unicode decomposition (no precomposed accents, compatibility or presentation
forms), at least two fonts cover it,
its reference rendering is not tiny (punctuation, dots), and it does not look the same as a
character kept before it (homoglyphs such as Latin A / Greek Alpha / Cyrillic A: binarized
reference renderings with IoU >= 0.9). Alphabets are listed in priority order, so the earlier
one keeps a shared shape. Large blocks are cut to their first 128 characters (the core letters).
Class names read like ``"Greek/U+03B1 α"``.

Whole alphabets go to one split, so test alphabets are never seen in training (the Omniglot
protocol). The assignment is the fixed table ``_ALPHABETS``; with matplotlib 3.11's fonts,
Pillow 13 / FreeType 2.14 and Unicode 14 it keeps 2,257 characters (45,140 images):

    train  1,443 characters (63.9%): Latin 75, Greek 70, Cyrillic 128, Latin Extended 128,
           IPA 84, Arabic 109, Canadian Syllabics 128, Ogham 26, Digits and Currency 34,
           Arrows 128, Math Operators 128, Math Misc 118, Geometric Shapes 127,
           Misc Symbols 128, Tai Xuan Jing 32
    val      367 characters (16.3%): Hebrew 28, NKo 38, Lao 45, Technical 128, Braille 128
    test     447 characters (19.8%): Armenian 66, Georgian 119, Tifinagh 43, Old Italic 32,
           Letterlike 17, Box Drawing 42, Dingbats 128

Generating all three splits at 28x28 took 14 s on 2 CPU cores, single-threaded (train 9 s,
val 2 s, test 3 s, including about 1 s to read the fonts and choose the characters); each split
can be generated on its own, is cached by :func:`attnopt.data.cache.cached_imageset` and is
memory-mapped on reuse (a few milliseconds).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from pathlib import Path

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

from attnopt.data.cache import cached_imageset
from attnopt.data.imageset import ImageSet
from attnopt.data.registry import DataOptions, default_cache_dir

GLYPH_SPLITS = ("train", "val", "test")

# Bump whenever the rendered bytes or the character set change: it is part of the cache key.
GENERATOR_VERSION = 1
INSTANCES_PER_CLASS = 20

# Reference rendering geometry, in pixels of a 64-pixel canvas (scaled for larger sizes).
_CANVAS = 64
_FONT_PX = 48
_FIT = 0.72  # the largest side of a glyph is shrunk to at most this fraction of the canvas
_MIN_EXTENT = 16  # glyphs smaller than this on the reference canvas are dots and ticks
_MIN_INK = 0.012  # ... or with less ink than this fraction of the canvas
_DUPLICATE_IOU = 0.9
_MAX_PER_ALPHABET = 128

_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)

# (alphabet, split, code point ranges, inclusive). Order is the priority for homoglyphs.
_ALPHABETS: tuple[tuple[str, str, tuple[tuple[int, int], ...]], ...] = (
    ("Latin", "train", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x17F))),
    ("Greek", "train", ((0x370, 0x3FF),)),
    ("Cyrillic", "train", ((0x400, 0x52F), (0xA640, 0xA69F))),
    ("Latin Extended", "train", ((0x180, 0x24F), (0x2C60, 0x2C7F), (0xA720, 0xA7FF))),
    ("IPA", "train", ((0x250, 0x2AF),)),
    ("Armenian", "test", ((0x530, 0x58F),)),
    ("Hebrew", "val", ((0x5D0, 0x5F2),)),
    ("Arabic", "train", ((0x600, 0x6FF),)),
    ("NKo", "val", ((0x7C0, 0x7FF),)),
    ("Lao", "val", ((0xE80, 0xEFF),)),
    ("Georgian", "test", ((0x10A0, 0x10FF), (0x2D00, 0x2D2F))),
    ("Canadian Syllabics", "train", ((0x1400, 0x167F),)),
    ("Ogham", "train", ((0x1680, 0x169F),)),
    ("Tifinagh", "test", ((0x2D30, 0x2D7F),)),
    ("Old Italic", "test", ((0x10300, 0x1032F),)),
    ("Digits and Currency", "train", ((0x30, 0x39), (0x20A0, 0x20CF))),
    ("Letterlike", "test", ((0x2100, 0x214F),)),
    ("Arrows", "train", ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F))),
    ("Math Operators", "train", ((0x2200, 0x22FF),)),
    ("Math Misc", "train", ((0x27C0, 0x27EF), (0x2980, 0x29FF), (0x2A00, 0x2AFF))),
    ("Technical", "val", ((0x2300, 0x23FF),)),
    ("Box Drawing", "test", ((0x2500, 0x257F),)),
    ("Geometric Shapes", "train", ((0x25A0, 0x25FF), (0x2B00, 0x2BFF))),
    ("Misc Symbols", "train", ((0x2600, 0x26FF),)),
    ("Dingbats", "test", ((0x2700, 0x27BF),)),
    ("Braille", "val", ((0x2800, 0x28FF),)),
    ("Tai Xuan Jing", "train", ((0x1D300, 0x1D35F),)),
)

# Marks, separators, controls and punctuation (by major class), modifier letters and symbols.
_SKIPPED_MAJOR_CATEGORIES = "MZCP"
_SKIPPED_CATEGORIES = ("Lm", "Sk")


def load_glyphs(
    split: str, image_size: int = 28, cache_dir: Path | None = None, seed: int = 0
) -> ImageSet:
    """One split of the glyphs data set, generated on first use and cached.

    ``cache_dir=None`` means :func:`attnopt.data.registry.default_cache_dir`. The same
    (split, image_size, seed) always gives the same bytes.
    """
    if split not in GLYPH_SPLITS:
        raise ValueError(f"unknown glyphs split {split!r}; expected one of {GLYPH_SPLITS}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    key = {
        "dataset": "glyphs",
        "version": GENERATOR_VERSION,
        "split": split,
        "image_size": image_size,
        "seed": seed,
        "fonts": [f"{p.name}:{p.stat().st_size}" for p in _font_paths()],
        "pillow": Image.__version__,
        "freetype": features.version("freetype2"),
        "unicode": unicodedata.unidata_version,
    }
    return cached_imageset(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        f"glyphs-{split}-{image_size}",
        key,
        lambda: _build(split, image_size, seed),
        f"glyphs ({split})",
    )


def load_glyphs_split(options: DataOptions, split: str) -> ImageSet:
    """``--data glyphs``: one split at ``--image-size``, seed 0."""
    return load_glyphs(split, options.image_size, options.cache_dir)


def _font_paths() -> list[Path]:
    import matplotlib  # here, so that `import attnopt` does not load it

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [font_dir / name for name in _FONT_FILES]


@functools.lru_cache(maxsize=1)
def _cmaps() -> tuple[frozenset[int], ...]:
    """The code points each font maps to a glyph."""
    return tuple(frozenset(TTFont(p, lazy=True).getBestCmap()) for p in _font_paths())


@functools.lru_cache(maxsize=64)
def _font(index: int, scale: int) -> ImageFont.FreeTypeFont:
    """Font ``index`` sized so that its letters are as tall as DejaVu Sans' at ``_FONT_PX``."""
    px = round(_FONT_PX * scale * _letter_height(0) / _letter_height(index))
    # BASIC layout: a lone character needs no shaping, and raqm must not change the bytes.
    return ImageFont.truetype(str(_font_paths()[index]), px, layout_engine=ImageFont.Layout.BASIC)


@functools.cache
def _letter_height(index: int) -> int:
    """Cap height plus x-height of font ``index`` at ``_FONT_PX`` (STIX draws smaller letters)."""
    face = ImageFont.truetype(str(_font_paths()[index]), _FONT_PX)
    return sum(face.getbbox(ch)[3] - face.getbbox(ch)[1] for ch in "Hx")


def _master(cp: int, font: int, scale: int) -> np.ndarray | None:
    """The glyph undistorted, centred by its ink on a square canvas; None when it is blank."""
    face, ch, size = _font(font, scale), chr(cp), _CANVAS * scale
    left, top, right, bottom = face.getbbox(ch)
    if right <= left or bottom <= top:
        return None
    pad = 2 * scale
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad))
    ImageDraw.Draw(image).text((pad - left, pad - top), ch, font=face, fill=255)
    box = image.getbbox()
    if box is None:
        return None
    glyph = image.crop(box)
    width, height = glyph.size
    limit = _FIT * size
    if max(width, height) > limit:
        shrink = limit / max(width, height)
        width, height = max(1, round(width * shrink)), max(1, round(height * shrink))
        glyph = glyph.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (size, size))
    canvas.paste(glyph, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas)


def _wanted(cp: int, alphabet: str) -> bool:
    ch = chr(cp)
    category = unicodedata.category(ch)
    if category[0] in _SKIPPED_MAJOR_CATEGORIES or category in _SKIPPED_CATEGORIES:
        return False
    if unicodedata.decomposition(ch):
        return False
    # Heavy and dashed box lines differ from the light ones only by weight or gaps, which the
    # stroke-thickness distortion would blur.
    name = unicodedata.name(ch, "")
    return not (alphabet == "Box Drawing" and ("HEAVY" in name or "DASH" in name))


@functools.lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[str, str, int, tuple[int, ...]], ...]:
    """Every kept character: (alphabet, split, code point, indices of the fonts that cover it)."""
    cmaps = _cmaps()
    candidates: list[tuple[str, str, int, tuple[int, ...]]] = []
    references: list[np.ndarray] = []
    for alphabet, split, ranges in _ALPHABETS:
        for first, last in ranges:
            for cp in range(first, last + 1):
                fonts = tuple(i for i, cmap in enumerate(cmaps) if cp in cmap)
                if len(fonts) < 2 or not _wanted(cp, alphabet):
                    continue
                master = _master(cp, fonts[0], 1)
                if master is None:
                    continue
                rows, cols = np.nonzero(master)
                extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
                if extent < _MIN_EXTENT or master.sum() / 255 < _MIN_INK * master.size:
                    continue
                candidates.append((alphabet, split, cp, fonts))
                small = Image.fromarray(master).resize((32, 32), Image.Resampling.BOX)
                references.append(np.asarray(small).ravel() >= 100)
    shapes = np.stack(references).astype(np.float32)
    overlap = shapes @ shapes.T
    area = shapes.sum(1)
    iou = overlap / np.maximum(area[:, None] + area[None, :] - overlap, 1)
    kept = np.zeros(len(candidates), dtype=bool)
    for i in range(len(candidates)):
        kept[i] = not (iou[i, kept] >= _DUPLICATE_IOU).any()
    result = []
    for alphabet, _, _ in _ALPHABETS:
        # A block's core letters come first: a large block keeps its first characters.
        members = [c for c, k in zip(candidates, kept, strict=True) if k and c[0] == alphabet]
        result.extend(members[:_MAX_PER_ALPHABET])
    return tuple(result)


def _instance(
    master: np.ndarray, bold: bool, rng: np.random.Generator, scale: int, image_size: int
) -> np.ndarray:
    """One distorted rendering of a master glyph, uint8 (image_size, image_size)."""
    size = _CANVAS * scale
    angle = math.radians(rng.uniform(-10.0, 10.0))
    shear = rng.uniform(-0.2, 0.2)
    zoom = rng.uniform(0.85, 1.1)
    sx, sy = zoom * rng.uniform(0.93, 1.07), zoom * rng.uniform(0.93, 1.07)
    tx, ty = rng.uniform(-0.05, 0.05, size=2) * size
    # 0 thinner, 1 as drawn, 2 thicker; a bold face made thicker fills its own counters.
    thickness = int(rng.integers(3))
    if thickness == 2 and bold:
        thickness = 1
    noise = rng.uniform(0.0, 10.0)

    # Forward map about the centre: rotation @ shear @ scale, then translation. PIL wants the
    # inverse (output pixel -> input pixel).
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    forward = forward @ np.diag([sx, sy])
    inverse = np.linalg.inv(forward)
    centre = np.array([size / 2, size / 2])
    offset = centre - inverse @ (centre + np.array([tx, ty]))
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    image = Image.fromarray(master).transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    width = 2 * scale + 1
    if thickness == 2:
        image = image.filter(ImageFilter.MaxFilter(width))
    elif thickness == 0:
        thinner = image.filter(ImageFilter.MinFilter(width))
        # Hairline serifs and thin strokes would vanish: only thin glyphs that keep their shape.
        if np.asarray(thinner, dtype=np.int64).sum() >= 0.6 * np.asarray(image).sum():
            image = thinner
    image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float64)
    # Hairline glyphs (DejaVu's white chess pieces, pointing hands) turn grey when shrunk.
    pixels *= 255.0 / max(pixels.max(), 1.0)
    pixels += rng.normal(0.0, noise, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _build(split: str, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render one split: images (N, S, S, 1) uint8 grouped by class, labels, class names."""
    chars = [c for c in _catalogue() if c[1] == split]
    scale = max(1, math.ceil(image_size / _CANVAS))
    images = np.empty((len(chars) * INSTANCES_PER_CLASS, image_size, image_size, 1), np.uint8)
    names = []
    for label, (alphabet, _, cp, fonts) in enumerate(chars):
        names.append(f"{alphabet}/U+{cp:04X} {chr(cp)}")
        masters = {f: m for f in fonts if (m := _master(cp, f, scale)) is not None}
        usable = sorted(masters)
        order = np.random.default_rng([seed, cp]).permutation(len(usable))
        for i in range(INSTANCES_PER_CLASS):
            font = usable[order[i % len(usable)]]
            rng = np.random.default_rng([seed, cp, i])
            row = label * INSTANCES_PER_CLASS + i
            bold = "Bol" in _FONT_FILES[font]
            images[row, :, :, 0] = _instance(masters[font], bold, rng, scale, image_size)
    labels = np.repeat(np.arange(len(chars), dtype=np.int64), INSTANCES_PER_CLASS)
    return images, labels, names
