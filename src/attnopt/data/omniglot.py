"""Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through
probabilistic program induction", Science 2015): 1,623 handwritten characters of 50
alphabets, 20 drawings each, as distributed: ``ROOT/images_background/<alphabet>/<character>/
<image>.png`` and ``ROOT/images_evaluation/...`` (the two zip files of the release, unpacked).

The split is Vinyals et al.'s ("Matching Networks for One Shot Learning", NeurIPS 2016):
1,200 characters for meta-training, the other 423 for meta-testing. Validation is carved out
of the 1,200 as Snell, Swersky & Zemel did ("Prototypical Networks", NeurIPS 2017, whose split
files torchmeta and most later work use): five whole alphabets of the background set (172
characters), leaving 1,028 for training. Every character is also rotated by 90, 180 and 270
degrees (counter-clockwise), and each rotation is a class of its own, in every split: 4,112 /
688 / 1,692 classes. Class names read like ``"Greek/character05/rot090"``.

Images are decoded once to 1-channel ``image_size`` squares (28x28 in the papers), and
inverted so that strokes are white on black, as in MAML's and Prototypical Networks' pipelines
and in the built-in glyphs data set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from attnopt.data.cache import cached_imageset, split_key
from attnopt.data.decode import content_signature, decode_images, is_image_file
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import Layout, pick_layout
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

log = logging.getLogger(__name__)

FOLDERS = ("images_background", "images_evaluation")
LAYOUTS = {
    "folders": Layout(
        "ROOT/images_background/<alphabet>/<character>/<image>.png and "
        "ROOT/images_evaluation/... (the release's two zip files, unpacked)",
        lambda r, s: [r / f for f in FOLDERS],
    )
}
ROTATIONS = (0, 90, 180, 270)

# The split of every alphabet (Vinyals et al.'s test set; Snell et al.'s validation set),
# except Gurmukhi, whose characters 1-41 are for training and 42-45 for testing.
_TRAIN = (
    # background set
    "Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Asomtavruli_(Georgian)",
    "Balinese", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Burmese_(Myanmar)",
    "Cyrillic", "Futurama", "Grantha", "Greek", "Gujarati",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Japanese_(hiragana)", "Japanese_(katakana)",
    "Korean", "Latin", "Malay_(Jawi_-_Arabic)", "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Sanskrit", "Syriac_(Estrangelo)", "Tagalog", "Tifinagh",
    # evaluation set
    "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic",
)  # fmt: skip
_VAL = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
_TEST = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)  # fmt: skip
SPLIT_OF_ALPHABET = {
    **{a: "train" for a in _TRAIN},
    **{a: "val" for a in _VAL},
    **{a: "test" for a in _TEST},
}
SPLIT_ALPHABET, SPLIT_AT = "Gurmukhi", 42  # Gurmukhi's character42 onwards are test classes


def character_split(alphabet: str, character: str) -> str | None:
    """The split of one character (folder names), or None for an alphabet Omniglot lacks."""
    if alphabet == SPLIT_ALPHABET:
        number = int("".join(ch for ch in character if ch.isdigit()) or 0)
        return "test" if number >= SPLIT_AT else "train"
    return SPLIT_OF_ALPHABET.get(alphabet)


def list_characters(root: Path, split: str) -> list[tuple[str, list[Path]]]:
    """("alphabet/character", image paths) of every character of ``split``, sorted."""
    characters = []
    for folder in FOLDERS:
        for alphabet in _subfolders(root / folder):
            for character in _subfolders(alphabet):
                where = character_split(alphabet.name, character.name)
                if where is None:
                    raise UserError(
                        f"{alphabet} is not an Omniglot alphabet; expected the 50 alphabets "
                        f"of {root}/{{{','.join(FOLDERS)}}} as released"
                    )
                if where == split:
                    images = sorted(p for p in character.iterdir() if is_image_file(p))
                    characters.append((f"{alphabet.name}/{character.name}", images))
    if not characters:
        raise UserError(
            f"{root}/{{{','.join(FOLDERS)}}} holds no character of the {split} split; "
            f"expected {LAYOUTS['folders'].description.replace('ROOT', str(root))}"
        )
    return sorted(characters)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def load_omniglot_split(options: DataOptions, split: str) -> ImageSet:
    """One split of Omniglot with its rotations, decoded once to white-on-black grayscale and
    cached: uint8 (N, image_size, image_size, 1)."""
    root, image_size = options.data_root().resolve(), options.image_size
    pick_layout(root, LAYOUTS, "Omniglot")
    characters = list_characters(root, split)
    paths = [p for _, images in characters for p in images]
    content = content_signature(paths, root)
    key = split_key("omniglot", root, split, content, image_size=image_size, rotations=ROTATIONS)

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        desc = f"decoding Omniglot {split}"
        drawn, _ = decode_images(paths, image_size, options.n_workers, desc, "L")
        drawn = 255 - drawn  # white strokes on black
        counts = [len(images) for _, images in characters]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        blocks, labels, names = [], [], []
        for (name, _), start, count in zip(characters, starts, counts, strict=True):
            for angle in ROTATIONS:
                blocks.append(np.rot90(drawn[start : start + count], angle // 90, axes=(1, 2)))
                labels += [len(names)] * count
                names.append(f"{name}/rot{angle:03d}")
        log.info("Omniglot %s: %d characters, %d classes", split, len(characters), len(names))
        return np.concatenate(blocks), np.asarray(labels, dtype=np.int64), names

    source = f"{root} (Omniglot {split})"
    return cached_imageset(options.cache_dir, f"omniglot-{split}", key, build, source)
