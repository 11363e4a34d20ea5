"""The built-in glyphs data set: splits, counts, shapes, determinism and caching."""

from __future__ import annotations

import numpy as np
import pytest

from attnopt.data import glyphs
from attnopt.data.glyphs import GLYPH_SPLITS, INSTANCES_PER_CLASS, load_glyphs


def _by_split() -> dict[str, list[tuple[str, str, int, tuple[int, ...]]]]:
    catalogue = glyphs._catalogue()
    return {split: [c for c in catalogue if c[1] == split] for split in GLYPH_SPLITS}


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="module")
def val28(val_cache):
    """The real validation split at 28x28 (the smallest split, about 2 s to generate)."""
    return load_glyphs("val", 28, val_cache)


@pytest.fixture
def few_chars(monkeypatch: pytest.MonkeyPatch):
    """Shrink the character set to 12 test-split characters so that a build takes a moment."""
    chars = tuple(_by_split()["test"][::37][:12])
    assert len(chars) == 12
    monkeypatch.setattr(glyphs, "_catalogue", lambda: chars)
    return chars


@pytest.fixture
def count_builds(monkeypatch: pytest.MonkeyPatch):
    """Counts calls of the generator behind load_glyphs."""
    calls = []
    real_build = glyphs._build

    def build(*args):
        calls.append(args)
        return real_build(*args)

    monkeypatch.setattr(glyphs, "_build", build)
    return calls


def test_splits_are_disjoint_by_character_and_alphabet():
    by_split = _by_split()
    chars = {s: {c[2] for c in by_split[s]} for s in GLYPH_SPLITS}
    alphabets = {s: {c[0] for c in by_split[s]} for s in GLYPH_SPLITS}
    for i, a in enumerate(GLYPH_SPLITS):
        for b in GLYPH_SPLITS[i + 1 :]:
            assert not chars[a] & chars[b], (a, b)
            assert not alphabets[a] & alphabets[b], (a, b)
    assert {"Latin", "Greek", "Cyrillic"} <= alphabets["train"]
    assert all(len(alphabets[s]) >= 4 for s in GLYPH_SPLITS)
    all_cps = [c[2] for c in glyphs._catalogue()]
    assert len(all_cps) == len(set(all_cps))


def test_character_counts_and_split_ratio():
    counts = {s: len(chars) for s, chars in _by_split().items()}
    total = sum(counts.values())
    assert total >= 1000
    for split, target in zip(GLYPH_SPLITS, (0.64, 0.16, 0.20), strict=True):
        assert abs(counts[split] / total - target) < 0.03, (split, counts)


def test_homoglyphs_and_accents_are_not_classes():
    cps = {c[2] for c in glyphs._catalogue()}
    assert {ord("A"), ord("g"), 0x03B1, 0x05D0, 0x0416} <= cps  # A, g, alpha, alef, zhe
    assert 0x0391 not in cps  # Greek capital Alpha looks like Latin A
    assert 0x0410 not in cps  # Cyrillic capital A
    assert 0x00E9 not in cps  # e acute: a precomposed accent
    assert ord(".") not in cps and 0x0301 not in cps  # punctuation, combining mark


def test_val_split_shape_counts_and_names(val28):
    n_classes = len(_by_split()["val"])
    assert val28.images.shape == (n_classes * INSTANCES_PER_CLASS, 28, 28, 1)
    assert val28.images.dtype == np.uint8
    assert val28.labels.dtype == np.int64
    assert np.array_equal(val28.class_counts(), np.full(n_classes, INSTANCES_PER_CLASS))
    assert val28.source == "glyphs (val)"
    expected = [f"{a}/U+{cp:04X} {chr(cp)}" for a, _, cp, _ in _by_split()["val"]]
    assert list(val28.class_names) == expected
    assert "Hebrew/U+05D0 \u05d0" in val28.class_names


def test_train_class_names_are_readable():
    names = [f"{a}/U+{cp:04X} {chr(cp)}" for a, _, cp, _ in _by_split()["train"]]
    assert "Greek/U+03B1 \u03b1" in names


def test_no_blank_images_and_instances_vary(val28):
    images = np.asarray(val28.images)
    bright = (images >= 128).sum(axis=(1, 2, 3))
    assert bright.min() >= 4
    dark = (images < 64).sum(axis=(1, 2, 3))
    assert dark.min() >= 0.3 * 28 * 28  # a glyph on a background, not a filled square
    per_class = images.reshape(-1, INSTANCES_PER_CLASS, 28 * 28)
    for label, instances in enumerate(per_class):
        distinct = {row.tobytes() for row in instances}
        assert len(distinct) == INSTANCES_PER_CLASS, val28.class_names[label]
        spread = np.abs(instances.astype(np.int16) - instances[0]).mean()
        assert spread > 5, val28.class_names[label]


def test_instances_are_recognisable(val28):
    # Nearest class mean in raw pixels: prototypes from 10 instances, queries the other 10.
    x = np.asarray(val28.images, dtype=np.float32).reshape(-1, INSTANCES_PER_CLASS, 28 * 28)
    prototypes = x[:, :10].mean(axis=1)
    queries = x[:, 10:].reshape(-1, 28 * 28)
    distances = (
        (queries**2).sum(1)[:, None] - 2 * queries @ prototypes.T + (prototypes**2).sum(1)[None]
    )
    truth = np.repeat(np.arange(len(prototypes)), INSTANCES_PER_CLASS - 10)
    accuracy = (distances.argmin(axis=1) == truth).mean()
    assert accuracy > 0.25  # chance is 1/367


def test_second_load_is_served_from_cache(val28, val_cache, count_builds):
    again = load_glyphs("val", 28, val_cache)
    assert count_builds == []
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, val28.images)
    assert again.class_names == val28.class_names


def test_generation_is_deterministic(val28, tmp_path):
    other = load_glyphs("val", 28, tmp_path)
    assert np.array_equal(np.asarray(other.images), np.asarray(val28.images))
    assert np.array_equal(other.labels, val28.labels)
    assert other.class_names == val28.class_names


def test_seed_changes_the_images_but_not_the_classes(few_chars, tmp_path):
    a = load_glyphs("test", 28, tmp_path, seed=0)
    b = load_glyphs("test", 28, tmp_path, seed=1)
    assert a.class_names == b.class_names
    assert not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("size", [20, 84])
def test_other_image_sizes(few_chars, tmp_path, size):
    imageset = load_glyphs("test", size, tmp_path)
    assert imageset.images.shape == (len(few_chars) * INSTANCES_PER_CLASS, size, size, 1)
    assert imageset.images.dtype == np.uint8
    assert imageset.image_size == size and imageset.channels == 1
    bright = (np.asarray(imageset.images) >= 128).sum(axis=(1, 2, 3))
    assert bright.min() >= 4


def test_corrupt_cache_is_rebuilt(few_chars, tmp_path, count_builds):
    original = np.array(load_glyphs("test", 28, tmp_path).images)
    (entry,) = tmp_path.glob("glyphs-test-28-*")
    (entry / "images.npy").write_bytes(b"not a numpy file")
    rebuilt = load_glyphs("test", 28, tmp_path)
    assert len(count_builds) == 2
    assert np.array_equal(np.asarray(rebuilt.images), original)
    assert isinstance(load_glyphs("test", 28, tmp_path).images, np.memmap)
    assert len(count_builds) == 2


def test_cache_key_has_version_size_and_seed(few_chars, tmp_path, count_builds, monkeypatch):
    load_glyphs("test", 28, tmp_path)
    load_glyphs("test", 20, tmp_path)
    load_glyphs("test", 28, tmp_path, seed=3)
    monkeypatch.setattr(glyphs, "GENERATOR_VERSION", glyphs.GENERATOR_VERSION + 1)
    load_glyphs("test", 28, tmp_path)
    assert len(count_builds) == 4
    assert len(list(tmp_path.glob("glyphs-test-*"))) == 4


def test_default_cache_dir_is_used(few_chars, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNOPT_CACHE", str(tmp_path))
    load_glyphs("test")
    assert len(list(tmp_path.glob("glyphs-test-28-*/images.npy"))) == 1


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_glyphs("training", 28, tmp_path)
    with pytest.raises(ValueError, match="seed"):
        load_glyphs("val", 28, tmp_path, seed=-1)
    with pytest.raises(ValueError, match="image_size"):
        load_glyphs("val", 0, tmp_path)
    assert not list(tmp_path.iterdir())
