"""The few-shot benchmarks read from their released files: tieredImageNet, CIFAR-FS, FC100,
Omniglot and CUB-200-2011, on tiny copies of every layout."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from benchmark_layouts import (
    CIFAR_CLASSES,
    OMNIGLOT_CHARACTERS,
    TIERED_CLASSES,
    cifar_photos,
    tiered_photos,
    write_cifar_archive,
    write_cifar_split_pickles,
    write_cub,
    write_omniglot,
    write_tiered_pickles,
)
from conftest import make_photos, write_folder_layout
from PIL import Image

from attnopt.cli.commands import build_parser
from attnopt.config import DATA_SETS, PRESETS, PRETRAIN_BY_DEFAULT, Config, resolve
from attnopt.data import decode, load_split
from attnopt.data.cache import ImageWriter
from attnopt.data.cifar_splits import CIFAR_FS, FC100, FC100_SUPERCLASSES, FINE_NAMES, SUPERCLASSES
from attnopt.data.cub import class_split
from attnopt.data.omniglot import SPLIT_OF_ALPHABET, character_split
from attnopt.data.registry import REGISTRY
from attnopt.errors import UserError

SPLITS = ("train", "val", "test")


def load(data: str, root: Path, split: str = "train", size: int = 32, **kw):
    return load_split(
        Config(data=data, data_root=str(root), image_size=size, n_workers=2, **kw), split
    )


def assert_same(a, b) -> None:
    assert a.class_names == b.class_names
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.images, b.images)


@pytest.fixture(scope="module")
def tiered_set(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    """The tiny tieredImageNet and the folders of its layouts."""
    photos = tiered_photos(per_class=4, size=84)
    tmp = tmp_path_factory.mktemp("tiered")
    return photos, {
        "python 2 pickles of uint8 arrays": write_tiered_pickles(tmp / "py2", photos, "py2"),
        "protocol 3, bytes": write_tiered_pickles(tmp / "py3", photos, "py3", arrays=False),
        "protocol 3, byte keys": write_tiered_pickles(tmp / "py3b", photos, "py3-bytes"),
        "folders": write_folder_layout(tmp / "folders", photos),
    }


@pytest.fixture(scope="module")
def cifar_set(tmp_path_factory) -> tuple[dict, Path]:
    """The tiny CIFAR-100 photos and their archive."""
    photos = cifar_photos(per_file=3)
    return photos, write_cifar_archive(tmp_path_factory.mktemp("cifar") / "c", photos)


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory) -> Path:
    return write_omniglot(tmp_path_factory.mktemp("omniglot") / "o", per_character=4)


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    return write_cub(tmp_path_factory.mktemp("cub") / "cub", n_classes=12, per_class=4)


def assert_disjoint(sets) -> None:
    names = [set(s.class_names) for s in sets]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


class TestTieredImageNet:
    @pytest.fixture
    def photos(self, tiered_set):
        return tiered_set[0]

    @pytest.fixture
    def roots(self, tiered_set) -> dict[str, Path]:
        return tiered_set[1]

    @pytest.mark.parametrize("size", [84, 40])
    def test_every_layout_gives_the_same_classes_labels_and_pixels(self, roots, photos, size):
        for split in SPLITS:
            sets = {name: load("tieredimagenet", root, split, size) for name, root in roots.items()}
            ref = sets["folders"]
            assert ref.class_names == tuple(sorted(photos[split]))
            assert ref.images.shape == (12, size, size, 3)
            assert ref.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
            for imageset in sets.values():
                assert_same(imageset, ref)

    def test_at_84_pixels_the_arrays_are_the_original_pixels(self, roots, photos) -> None:
        for split in SPLITS:
            expected = np.stack([px for c in sorted(photos[split]) for px in photos[split][c]])
            for root in roots.values():
                assert np.array_equal(load("tieredimagenet", root, split, 84).images, expected)

    def test_splits_hold_their_own_classes(self, roots) -> None:
        sets = [load("tieredimagenet", roots["protocol 3, bytes"], s, 84) for s in SPLITS]
        assert_disjoint(sets)
        for split, imageset in zip(SPLITS, sets, strict=True):
            wanted = {c for cs in TIERED_CLASSES[split].values() for c in cs}
            assert set(imageset.class_names) == wanted

    def test_an_object_array_of_pngs_is_accepted(self, tmp_path, photos, roots) -> None:
        import pickle

        root = write_tiered_pickles(tmp_path / "objects", photos, "py3", arrays=False)
        path = root / "train_images_png.pkl"
        with open(path, "rb") as f:
            pngs = pickle.load(f)
        as_array = np.empty(len(pngs), dtype=object)
        as_array[:] = pngs
        path.write_bytes(pickle.dumps(as_array, protocol=2))
        assert_same(
            load("tieredimagenet", root, size=84), load("tieredimagenet", roots["folders"], size=84)
        )

    def test_the_cache_is_reused_memory_mapped_and_rebuilt_when_a_file_changes(
        self, tmp_path, photos, isolated_cache
    ) -> None:
        root = write_tiered_pickles(tmp_path / "t", photos, "py2")
        first = load("tieredimagenet", root, size=84)
        again = load("tieredimagenet", root, size=84)
        assert isinstance(again.images, np.memmap)
        assert len(list(isolated_cache.iterdir())) == 1
        changed = tiered_photos(per_class=4, size=84, seed=5)
        write_tiered_pickles(root, changed, "py2")
        for name in ("train_images_png.pkl", "train_labels.pkl"):
            st = (root / name).stat()
            os.utime(root / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        rebuilt = load("tieredimagenet", root, size=84)
        assert not np.array_equal(rebuilt.images, first.images)
        assert len(list(isolated_cache.iterdir())) == 2

    def test_an_interrupted_build_leaves_nothing(
        self, tmp_path, photos, isolated_cache, monkeypatch
    ):
        root = write_tiered_pickles(tmp_path / "t", photos, "py3")
        seen = []
        real = decode.decode_bytes

        def interrupt_half_way(data, *args):
            seen.append(1)
            if len(seen) == 6:
                raise KeyboardInterrupt
            return real(data, *args)

        monkeypatch.setattr("attnopt.data.tiered.decode_bytes", interrupt_half_way)
        with pytest.raises(KeyboardInterrupt):
            load("tieredimagenet", root, size=84)
        assert list(isolated_cache.iterdir()) == []
        monkeypatch.undo()
        assert load("tieredimagenet", root, size=84).images.shape == (12, 84, 84, 3)

    def test_skip_bad_images_leaves_out_a_png_that_does_not_decode(self, tmp_path, photos):
        import pickle

        root = write_tiered_pickles(tmp_path / "t", photos, "py3", arrays=False)
        clean = np.array(load("tieredimagenet", root, size=84).images)
        path = root / "train_images_png.pkl"
        with open(path, "rb") as f:
            pngs = pickle.load(f)
        pngs[2] = pngs[2][:40]  # truncated
        path.write_bytes(pickle.dumps(pngs, protocol=3))
        with pytest.raises(UserError, match=r"cannot decode image 2 of .*train_images_png.pkl"):
            load("tieredimagenet", root, size=84)
        imageset = load("tieredimagenet", root, size=84, skip_bad_images=True)
        assert imageset.skipped == (f"{path}[2]",)
        assert len(imageset.images) == 11
        assert {tuple(px.ravel()[:8]) for px in imageset.images} < {
            tuple(px.ravel()[:8]) for px in clean
        }


class TestCifar:
    @pytest.fixture
    def photos(self, cifar_set):
        return cifar_set[0]

    @pytest.fixture
    def archive(self, cifar_set) -> Path:
        return cifar_set[1]

    @pytest.mark.parametrize(
        ("data", "prefix", "splits"), [("cifarfs", "CIFAR_FS", CIFAR_FS), ("fc100", "FC100", FC100)]
    )
    @pytest.mark.parametrize("style", ["py2", "py3", "py3-bytes"])
    def test_split_pickles_and_the_archive_give_the_same_arrays(
        self, tmp_path, photos, archive, data, prefix, splits, style
    ) -> None:
        root = write_cifar_split_pickles(tmp_path / "p", photos, prefix, splits, style)
        sets = []
        for split in SPLITS:
            from_archive, from_pickles = load(data, archive, split), load(data, root, split)
            assert_same(from_archive, from_pickles)
            wanted = [c for c in sorted(CIFAR_CLASSES) if c in splits[split]]
            assert from_archive.class_names == tuple(wanted)
            assert from_archive.images.shape == (6 * len(wanted), 32, 32, 3)
            assert np.bincount(from_archive.labels).tolist() == [6] * len(wanted)
            # a class's images: the archive's train file, then its test file, in file order
            first = wanted[0]
            assert np.array_equal(
                from_archive.images[:6], np.stack(photos["train"][first] + photos["test"][first])
            )
            sets.append(from_archive)
        assert_disjoint(sets)

    def test_resized_to_another_image_size(self, archive, photos) -> None:
        imageset = load("cifarfs", archive, "val", size=20)
        beaver = photos["train"]["beaver"][0]
        expected = np.asarray(Image.fromarray(beaver).resize((20, 20), Image.Resampling.BILINEAR))
        assert imageset.class_names[0] == "beaver"
        assert np.array_equal(imageset.images[0], expected)

    def test_published_splits_cover_cifar100_without_overlap(self) -> None:
        for splits, sizes in ((CIFAR_FS, (64, 16, 20)), (FC100, (60, 20, 20))):
            assert tuple(len(splits[s]) for s in SPLITS) == sizes
            union = set().union(*splits.values())
            assert union == set(FINE_NAMES) and len(FINE_NAMES) == 100
        assert tuple(len(FC100_SUPERCLASSES[s]) for s in SPLITS) == (12, 4, 4)
        assert set().union(*FC100_SUPERCLASSES.values()) == set(SUPERCLASSES)

    def test_a_split_pickle_with_a_class_of_another_split_is_refused(
        self, tmp_path, photos
    ) -> None:
        root = write_cifar_split_pickles(tmp_path / "p", photos, "CIFAR_FS", CIFAR_FS)
        write_cifar_split_pickles(root, photos, "CIFAR_FS", {"train": CIFAR_FS["val"]})
        with pytest.raises(UserError, match=r"CIFAR_FS_train.pickle holds class 'beaver'.* val"):
            load("cifarfs", root, "train")


class TestOmniglot:
    @pytest.fixture
    def root(self, omniglot_root) -> Path:
        return omniglot_root

    def test_characters_and_their_rotations_are_the_classes_of_each_split(self, root) -> None:
        sets = {split: load("omniglot", root, split, 28) for split in SPLITS}
        characters = {
            f"{alphabet}/{c}": character_split(alphabet, c)
            for alphabets in OMNIGLOT_CHARACTERS.values()
            for alphabet, cs in alphabets.items()
            for c in cs
        }
        for split, imageset in sets.items():
            mine = sorted(c for c, s in characters.items() if s == split)
            assert imageset.class_names == tuple(
                f"{c}/rot{a:03d}" for c in mine for a in (0, 90, 180, 270)
            )
            assert imageset.images.shape == (16 * len(mine), 28, 28, 1)
            assert np.bincount(imageset.labels).tolist() == [4] * 4 * len(mine)
        assert [len(s.class_names) for s in sets.values()] == [20] * 3  # 20-way episodes work
        assert "Gurmukhi/character41/rot000" in sets["train"].class_names
        assert "Gurmukhi/character42/rot000" in sets["test"].class_names
        assert_disjoint(list(sets.values()))

    def test_images_are_white_on_black_and_rotations_turn_them(self, root) -> None:
        imageset = load("omniglot", root, "val", 28)
        first = sorted((root / "images_background" / "Hebrew" / "character01").iterdir())[0]
        with Image.open(first) as img:
            drawn = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
        rows = {
            name: imageset.images[imageset.labels == i]
            for i, name in enumerate(imageset.class_names)
        }
        upright = rows["Hebrew/character01/rot000"]
        assert np.array_equal(upright[0, ..., 0], 255 - drawn)
        for k, angle in enumerate((90, 180, 270), 1):
            turned = rows[f"Hebrew/character01/rot{angle:03d}"]
            assert np.array_equal(turned, np.rot90(upright, k, axes=(1, 2)))

    def test_the_split_table_covers_the_50_alphabets(self) -> None:
        assert len(SPLIT_OF_ALPHABET) + 1 == 50  # Gurmukhi is split by character
        assert character_split("Gurmukhi", "character41") == "train"
        assert character_split("Gurmukhi", "character42") == "test"
        assert sum(1 for s in SPLIT_OF_ALPHABET.values() if s == "val") == 5

    def test_an_unknown_alphabet_is_named(self, tmp_path) -> None:
        root = write_omniglot(tmp_path / "o", per_character=2)
        (root / "images_background" / "Klingon" / "character01").mkdir(parents=True)
        with pytest.raises(UserError, match=r"Klingon is not an Omniglot alphabet"):
            load("omniglot", root, "train", 28)


class TestCub:
    @pytest.fixture
    def root(self, cub_root) -> Path:
        return cub_root

    def test_classes_split_by_id_as_chen_et_al(self, root) -> None:
        sets = {split: load("cub", root, split) for split in SPLITS}
        ids = {s: [int(n.split(".")[0]) for n in x.class_names] for s, x in sets.items()}
        assert ids == {"train": [1, 3, 5, 7, 9, 11], "val": [2, 6, 10], "test": [4, 8, 12]}
        for imageset in sets.values():
            assert np.bincount(imageset.labels).tolist() == [4] * len(imageset.class_names)
            assert imageset.images.shape[1:] == (32, 32, 3)
        counts = [sum(class_split(c) == s for c in range(1, 201)) for s in SPLITS]
        assert counts == [100, 50, 50]

    def test_the_release_folder_itself_is_a_data_root_too(self, root) -> None:
        assert_same(load("cub", root / "CUB_200_2011", "val"), load("cub", root, "val"))

    def test_bbox_crops_each_photo_to_its_box_before_resizing(self, root) -> None:
        imageset = load("cub", root, "test", crop="bbox")
        folder = root / "CUB_200_2011"
        first = sorted((folder / "images" / "004.Bird_4").iterdir())[0]
        rel = first.relative_to(folder / "images").as_posix()
        image_id = next(
            line.split()[0] for line in (folder / "images.txt").read_text().splitlines()
            if line.split()[1] == rel
        )  # fmt: skip
        x, y, w, h = next(
            map(float, line.split()[1:])
            for line in (folder / "bounding_boxes.txt").read_text().splitlines()
            if line.split()[0] == image_id
        )  # fmt: skip
        with Image.open(first) as img:
            box = (round(x), round(y), round(x + w), round(y + h))
            cropped = img.convert("RGB").crop(box).resize((32, 32), Image.Resampling.BILINEAR)
        assert np.array_equal(imageset.images[0], np.asarray(cropped))
        assert not np.array_equal(imageset.images, load("cub", root, "test").images)


class TestPresets:
    @pytest.mark.parametrize(
        ("data", "size", "augment"),
        [
            ("tieredimagenet", 84, "auto"),
            ("cifarfs", 32, "auto"),
            ("fc100", 32, "auto"),
            ("omniglot", 28, "none"),
            ("cub", 84, "auto"),
            ("folder", 84, "none"),
        ],
    )
    def test_each_data_set_has_its_papers_image_size(self, data, size, augment) -> None:
        config = resolve({"data": data, "data_root": "x"})
        assert (config.image_size, config.augment) == (size, augment)
        assert (config.episode, config.val_freq) == (50000, 1000)
        assert data in PRESETS

    def test_bbox_crop_is_only_for_cub(self) -> None:
        assert resolve({"data": "cub", "data_root": "x", "crop": "bbox"}).crop == "bbox"
        with pytest.raises(UserError, match=r"--crop bbox needs --data cub"):
            resolve({"data": "cifarfs", "data_root": "x", "crop": "bbox"})
        with pytest.raises(UserError, match=r"--crop 'box'"):
            resolve({"data": "cub", "data_root": "x", "crop": "box"})


def data_choices(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """The choices of every ``--data`` flag of ``parser`` and its commands."""
    found = []
    for action in parser._actions:
        if action.dest == "data":
            found.append(tuple(action.choices))
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += data_choices(command)
    return found


class TestRegistry:
    @pytest.fixture
    def roots(self, tiered_set, cifar_set, omniglot_root, cub_root, tmp_path) -> dict:
        """A tiny copy of every data set in the registry (None: built in)."""
        folders = write_folder_layout(tmp_path / "mini", make_photos(classes=3, per_class=4))
        return {
            "glyphs": None,
            "miniimagenet": folders,
            "folder": folders,
            "tieredimagenet": tiered_set[1]["protocol 3, bytes"],
            "cifarfs": cifar_set[1],
            "fc100": cifar_set[1],
            "omniglot": omniglot_root,
            "cub": cub_root,
        }

    def test_the_config_reads_names_presets_and_pretraining_from_the_registry(self) -> None:
        assert DATA_SETS == tuple(data_set.name for data_set in REGISTRY)
        assert DATA_SETS == (
            "glyphs", "miniimagenet", "folder", "tieredimagenet", "cifarfs", "fc100",
            "omniglot", "cub",
        )  # fmt: skip
        assert PRESETS == {data_set.name: data_set.preset for data_set in REGISTRY}
        assert PRETRAIN_BY_DEFAULT == ("folder",)

    @pytest.mark.parametrize("name", DATA_SETS)
    def test_every_data_set_loads_its_three_splits(self, name, roots, small_glyphs) -> None:
        root = roots[name]  # a data set added to the registry needs a tiny copy here
        for split in SPLITS:
            config = Config(data=name, data_root=root and str(root), image_size=32, n_workers=2)
            imageset = load_split(config, split)
            assert imageset.image_size == 32 and len(imageset.class_names) > 0

    def test_the_command_line_offers_exactly_the_registry(self) -> None:
        parser = build_parser()
        assert set(data_choices(parser)) == {DATA_SETS}
        train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        text = train.choices["train"].format_help()
        assert f"--data {{{','.join(DATA_SETS)}}}" in text


class TestImageWriter:
    @pytest.mark.parametrize("written", [0, 2, 5])
    def test_the_file_holds_exactly_the_images_written(self, tmp_path, written) -> None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (written, 4, 3, 2), dtype=np.uint8)
        path = tmp_path / "images.npy"
        with ImageWriter(path, 5, (4, 3, 2)) as writer:
            for chunk in np.array_split(images, 2):
                writer.append(chunk)
        assert np.array_equal(np.load(path), images)
        assert [p.name for p in tmp_path.iterdir()] == ["images.npy"]

    def test_more_images_than_its_capacity_are_refused(self, tmp_path) -> None:
        with ImageWriter(tmp_path / "images.npy", 2, (1, 1, 1)) as writer:
            with pytest.raises(ValueError):
                writer.append(np.zeros((3, 1, 1, 1), np.uint8))
