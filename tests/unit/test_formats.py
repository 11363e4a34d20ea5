"""The three mini-ImageNet layouts (folders, split CSVs, pickle caches), detection and the cache."""

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    make_photos,
    write_csv_layout,
    write_folder_layout,
    write_pickle_layout,
)
from PIL import Image

from attnopt.config import Config
from attnopt.data import cache, decode, load_split
from attnopt.data.episodes import IMAGENET_MEAN, IMAGENET_STD, normalize
from attnopt.errors import UserError


def load(root: Path, split: str = "train", size: int = 84, data: str = "miniimagenet", **kw):
    config = Config(data=data, data_root=str(root), image_size=size, n_workers=2, **kw)
    return load_split(config, split)


@pytest.fixture(scope="module")
def photos():
    return make_photos(classes=3, per_class=4, size=84)


@pytest.fixture
def layouts(tmp_path: Path, photos) -> dict[str, Path]:
    return {
        "folders": write_folder_layout(tmp_path / "folders", photos),
        "csv": write_csv_layout(tmp_path / "csv", photos),
        "pickle": write_pickle_layout(tmp_path / "pickle", photos),
    }


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir()) if cache_dir.exists() else []


class TestEveryLayoutGivesTheSameArrays:
    @pytest.mark.parametrize("size", [84, 40])
    def test_images_labels_and_class_names_are_equal(self, layouts, photos, size: int) -> None:
        for split in ("train", "val", "test"):
            sets = {name: load(root, split, size) for name, root in layouts.items()}
            ref = sets["folders"]
            assert ref.class_names == tuple(sorted(photos[split]))
            assert ref.images.shape == (12, size, size, 3)
            for name, imageset in sets.items():
                assert imageset.class_names == ref.class_names, name
                assert np.array_equal(imageset.labels, ref.labels), name
                assert np.array_equal(imageset.images, ref.images), name

    def test_at_the_stored_size_the_pixels_are_the_originals(self, layouts, photos) -> None:
        expected = np.stack([px for name in sorted(photos["val"]) for px in photos["val"][name]])
        for root in layouts.values():
            imageset = load(root, "val", 84)
            assert np.array_equal(imageset.images, expected)
            assert imageset.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4

    def test_resized_pickle_matches_pillow_bilinear(self, layouts, photos) -> None:
        first = photos["train"][sorted(photos["train"])[0]][0]
        expected = np.asarray(Image.fromarray(first).resize((40, 40), Image.Resampling.BILINEAR))
        assert np.array_equal(load(layouts["pickle"], size=40).images[0], expected)


class TestPickleVariants:
    def test_byte_string_keys_and_labels_protocol_2(self, tmp_path: Path, photos, layouts) -> None:
        root = write_pickle_layout(tmp_path / "old", photos, protocol=2, byte_keys=True)
        old, new = load(root), load(layouts["pickle"])
        assert old.class_names == new.class_names
        assert np.array_equal(old.images, new.images)

    def test_learn2learn_validation_file_name(self, tmp_path: Path, photos, layouts) -> None:
        root = write_pickle_layout(tmp_path / "l2l", photos, val_name="validation")
        imageset = load(root, "val")
        assert imageset.source.endswith("mini-imagenet-cache-validation.pkl")
        assert np.array_equal(imageset.images, load(layouts["pickle"], "val").images)


class TestLayoutDetection:
    def test_folders_win_over_csv_and_the_choice_is_logged(
        self, tmp_path: Path, photos, caplog
    ) -> None:
        root = write_csv_layout(write_folder_layout(tmp_path / "both", photos), photos)
        with caplog.at_level(logging.INFO, logger="attnopt"):
            imageset = load(root)
        assert imageset.source == str((root / "train").resolve())
        (line,) = [r.getMessage() for r in caplog.records if "several layouts" in r.getMessage()]
        assert "reading its folders" in line and "split CSVs" in line

    def test_csv_wins_over_pickle(self, tmp_path: Path, photos) -> None:
        root = write_pickle_layout(write_csv_layout(tmp_path / "both", photos), photos)
        assert load(root).source.endswith("train.csv")

    def test_a_complete_layout_wins_over_a_partial_preferred_one(self, layouts) -> None:
        (layouts["pickle"] / "train").mkdir()  # a stray folder, not a folder layout
        assert load(layouts["pickle"]).source.endswith("mini-imagenet-cache-train.pkl")

    def test_no_layout_names_all_three(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(UserError) as e:
            load(tmp_path / "empty")
        message = str(e.value)
        assert "empty/{train,val,test}/<class>/<image>" in message
        assert "empty/{train,val,test}.csv" in message
        assert "empty/mini-imagenet-cache-{train,val,test}.pkl" in message

    def test_data_folder_reads_only_the_folder_layout(self, layouts) -> None:
        with pytest.raises(UserError, match=r"missing split folder .*csv/train"):
            load(layouts["csv"], data="folder")


class TestCache:
    @pytest.mark.parametrize("layout", ["csv", "pickle"])
    def test_reused_memory_mapped_then_rebuilt_when_the_source_changes(
        self, layouts, layout: str, isolated_cache: Path
    ) -> None:
        root = layouts[layout]
        first = load(root)
        again = load(root)
        assert isinstance(again.images, np.memmap)
        assert np.array_equal(first.images, again.images)
        assert len(cache_entries(isolated_cache)) == 1

        if layout == "csv":  # one image of the first class turns black
            changed = root / "images" / "ntrain00000000000.png"
            Image.fromarray(np.zeros((84, 84, 3), np.uint8)).save(changed)
        else:
            changed = root / "mini-imagenet-cache-train.pkl"
            write_pickle_layout(root, make_photos(seed=9))
        st = changed.stat()
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        rebuilt = load(root)
        assert not np.array_equal(rebuilt.images, first.images)
        assert len(cache_entries(isolated_cache)) == 2

    @pytest.mark.parametrize("layout", ["csv", "pickle"])  # images streamed / saved at once
    def test_an_interrupted_build_leaves_nothing_and_the_next_run_rebuilds(
        self, layouts, layout: str, isolated_cache: Path, monkeypatch
    ) -> None:
        real_save = np.save
        calls = []

        def crash_on_the_labels(path, array):
            calls.append(Path(path).name)
            if Path(path).name == "labels.npy":
                # killed half-way through writing the entry, its images already written
                assert any(isolated_cache.glob(".*/images.npy"))
                raise KeyboardInterrupt
            real_save(path, array)

        monkeypatch.setattr(cache.np, "save", crash_on_the_labels)
        with pytest.raises(KeyboardInterrupt):
            load(layouts[layout])
        assert calls[-1] == "labels.npy"
        assert cache_entries(isolated_cache) == []  # no entry, no temporary folder

        monkeypatch.setattr(cache.np, "save", real_save)
        imageset = load(layouts[layout])
        assert np.array_equal(imageset.images, load(layouts["folders"]).images)

    def test_an_interrupted_decode_leaves_nothing(self, layouts, isolated_cache, monkeypatch):
        real = decode.decode_image
        seen = []

        def interrupt_half_way(path, *args):
            seen.append(path)
            if len(seen) == 6:
                raise KeyboardInterrupt
            return real(path, *args)

        monkeypatch.setattr(decode, "decode_image", interrupt_half_way)
        with pytest.raises(KeyboardInterrupt):
            load(layouts["folders"])
        assert cache_entries(isolated_cache) == []

    def test_a_stray_temporary_folder_is_never_read_and_a_stale_one_is_removed(
        self, layouts, isolated_cache: Path
    ) -> None:
        good = np.array(load(layouts["pickle"]).images)
        (entry,) = cache_entries(isolated_cache)
        shutil.rmtree(entry)
        # What a build killed while writing leaves: a hidden folder with plausible files.
        stray = isolated_cache / f".{entry.name}.abc123"
        stray.mkdir()
        np.save(stray / "images.npy", np.zeros((12, 84, 84, 3), np.uint8))
        np.save(stray / "labels.npy", np.zeros(12, np.int64))
        (stray / "index.json").write_text('{"shape": [12, 84, 84, 3], "class_names": ["x"]}')
        fresh = load(layouts["pickle"])
        assert np.array_equal(fresh.images, good)
        assert stray.exists()  # recent: may belong to a build still running elsewhere

        shutil.rmtree(entry)
        old = time.time() - 2 * cache.STALE_TEMP_SECONDS
        os.utime(stray, (old, old))
        assert np.array_equal(load(layouts["pickle"]).images, good)
        assert not stray.exists()
        assert [p.name for p in cache_entries(isolated_cache)] == [entry.name]


def test_fast_normalisation_is_bit_identical_to_broadcasting() -> None:
    """The sampling speed-up (per-row standardisation of channels-last images) changes no bit."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (7, 9, 11, 3), dtype=np.uint8))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = images.permute(0, 3, 1, 2).float().div(255.0).sub(mean).div(std).contiguous()
    x = normalize(images)
    assert torch.equal(x, expected)
    assert x.stride() == (9 * 11 * 3, 1, 11 * 3, 3)  # channels-last, as the learner wants
