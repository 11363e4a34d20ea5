"""Bad data ends in one ``error:`` line (exit status 2) naming the culprit, and leaves no
half-written cache; ``--skip-bad-images`` leaves unreadable images out instead."""

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    RunsCode,
    error_line,
    make_photos,
    mini_flags,
    write_csv_layout,
    write_folder_layout,
)
from conftest import write_pickle_layout as write_pickles
from PIL import Image

from attnopt.cli.commands import main
from attnopt.config import Config
from attnopt.data import load_split
from attnopt.data.folder import load_folder_split
from attnopt.data.pickle_layout import read_pickle
from attnopt.data.registry import DataOptions
from attnopt.errors import UserError

FIRST_TRAIN_IMAGE = "ntrain00000000000.png"  # first image of class ntrain000


@pytest.fixture(scope="module")
def photos():
    return make_photos(classes=3, per_class=4, size=24)


@pytest.fixture
def csv_root(tmp_path: Path, photos) -> Path:
    return write_csv_layout(tmp_path / "csv", photos)


@pytest.fixture
def pickle_root(tmp_path: Path, photos) -> Path:
    return write_pickles(tmp_path / "pkl", photos)


def run_train(root: Path, tmp_path: Path, *extra: str) -> int:
    return main(["train", *mini_flags(root, tmp_path / "run", *extra)])


def assert_nothing_half_written(cache: Path) -> None:
    """No temporary folders; every entry is complete."""
    for entry in cache.iterdir() if cache.exists() else []:
        assert not entry.name.startswith("."), entry
        assert {p.name for p in entry.iterdir()} == {"images.npy", "labels.npy", "index.json"}


def load(root: Path, split: str = "train", **kw):
    return load_split(Config(data="miniimagenet", data_root=str(root), n_workers=2, **kw), split)


def dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=4))


def rewrite_csv(root: Path, split: str, edit) -> Path:
    path = root / f"{split}.csv"
    path.write_text(edit(path.read_text()))
    return path


class TestCsvThroughTheCommandLine:
    @pytest.mark.parametrize(
        ("mutate", "culprits"),
        [
            ("empty", ["train.csv", "empty"]),
            ("header_only", ["train.csv", "no rows"]),
            ("missing_column", ["train.csv", "label"]),
            ("missing_files", ["train.csv", "images/ghost1.png", "2 image(s)"]),
            ("missing_split", ["val.csv"]),
            ("no_images_folder", ["images"]),
            ("corrupt", [FIRST_TRAIN_IMAGE]),
            ("zero_bytes", [FIRST_TRAIN_IMAGE]),
            ("truncated", [FIRST_TRAIN_IMAGE]),
            ("too_few_classes", ["train.csv", "2 classes", "--n-class 3"]),
            ("too_few_images", ["class 'ntrain001'", "train.csv", "has 1 images"]),
        ],
    )
    def test_exit_2_naming_the_culprit(
        self, csv_root: Path, tmp_path: Path, isolated_cache: Path, mutate, culprits, capsys
    ) -> None:
        image = csv_root / "images" / FIRST_TRAIN_IMAGE
        if mutate == "empty":
            (csv_root / "train.csv").write_text("")
        elif mutate == "header_only":
            (csv_root / "train.csv").write_text("filename,label\n")
        elif mutate == "missing_column":
            rewrite_csv(csv_root, "train", lambda t: t.replace("filename,label", "filename,class"))
        elif mutate == "missing_files":
            rewrite_csv(csv_root, "train", lambda t: t + "ghost1.png,ntrain000\nghost2.png,x\n")
        elif mutate == "missing_split":
            (csv_root / "val.csv").unlink()
        elif mutate == "no_images_folder":
            shutil.rmtree(csv_root / "images")
        elif mutate == "corrupt":
            image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif mutate == "zero_bytes":
            image.write_bytes(b"")
        elif mutate == "truncated":
            image.write_bytes(image.read_bytes()[:300])
        elif mutate == "too_few_classes":
            rewrite_csv(
                csv_root,
                "train",
                lambda t: "".join(line for line in t.splitlines(True) if "ntrain002" not in line),
            )
        elif mutate == "too_few_images":
            keep = {f"ntrain001{i:08d}.png" for i in (1, 2, 3)}
            rewrite_csv(
                csv_root,
                "train",
                lambda t: "".join(
                    line for line in t.splitlines(True) if line.split(",")[0] not in keep
                ),
            )
        assert run_train(csv_root, tmp_path) == 2
        line = error_line(capsys)
        for culprit in culprits:
            assert culprit in line
        assert not (tmp_path / "run" / "ckpts" / "last.pt").exists()
        assert_nothing_half_written(isolated_cache)
        if mutate in ("corrupt", "zero_bytes", "truncated"):
            assert not any(isolated_cache.iterdir())


class TestPickleThroughTheCommandLine:
    @pytest.mark.parametrize(
        ("mutate", "culprits"),
        [
            ("not_a_pickle", ["cannot read pickle"]),
            ("truncated", ["cannot read pickle"]),
            ("not_a_dict", ["holds a list"]),
            ("missing_key", ["'class_dict'"]),
            ("float_images", ["float32", "uint8 (N, H, W, 3)"]),
            ("grayscale_shape", ["(12, 24, 24)"]),
            ("index_out_of_range", ["row 12", "ntrain001"]),
            ("negative_index", ["row -1"]),
            ("duplicate_row", ["row", "more than once"]),
            ("float_indices", ["ntrain001", "row indices"]),
            ("missing_split", ["mini-imagenet-cache-test.pkl"]),
            ("too_few_images", ["class 'ntrain002'", "has 1 images"]),
        ],
    )
    def test_exit_2_naming_the_file(
        self, pickle_root: Path, tmp_path: Path, isolated_cache: Path, mutate, culprits, capsys
    ) -> None:
        path = pickle_root / "mini-imagenet-cache-train.pkl"
        with open(path, "rb") as f:
            cache = pickle.load(f)
        images, classes = cache["image_data"], cache["class_dict"]
        if mutate == "not_a_pickle":
            path.write_bytes(b"this is not a pickle at all")
        elif mutate == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif mutate == "not_a_dict":
            dump(path, [images, classes])
        elif mutate == "missing_key":
            dump(path, {"image_data": images})
        elif mutate == "float_images":
            dump(path, {"image_data": images.astype(np.float32), "class_dict": classes})
        elif mutate == "grayscale_shape":
            dump(path, {"image_data": images[..., 0], "class_dict": classes})
        elif mutate == "index_out_of_range":
            dump(path, {"image_data": images, "class_dict": {**classes, "ntrain001": [0, 12]}})
        elif mutate == "negative_index":
            dump(path, {"image_data": images, "class_dict": {**classes, "ntrain001": [-1]}})
        elif mutate == "duplicate_row":
            rows = classes["ntrain000"]
            dump(path, {"image_data": images, "class_dict": {**classes, "ntrain001": rows}})
        elif mutate == "float_indices":
            dump(path, {"image_data": images, "class_dict": {**classes, "ntrain001": [0.0]}})
        elif mutate == "missing_split":
            (pickle_root / "mini-imagenet-cache-test.pkl").unlink()
        elif mutate == "too_few_images":
            small = {**classes, "ntrain002": classes["ntrain002"][:1]}
            dump(path, {"image_data": images, "class_dict": small})
        assert run_train(pickle_root, tmp_path) == 2
        line = error_line(capsys)
        for culprit in [*culprits, "mini-imagenet-cache-"]:
            assert culprit in line
        assert_nothing_half_written(isolated_cache)


class TestPicklesNeverRunCode:
    def test_a_forbidden_callable_is_refused_through_the_command_line(
        self, pickle_root: Path, tmp_path: Path, isolated_cache: Path, capsys
    ) -> None:
        path = pickle_root / "mini-imagenet-cache-train.pkl"
        marker = tmp_path / "pwned"
        with open(path, "rb") as f:
            cache = pickle.load(f)
        cache["class_dict"]["ntrain000"] = RunsCode(marker)
        dump(path, cache)
        assert run_train(pickle_root, tmp_path) == 2
        line = error_line(capsys)
        assert str(path) in line and "refusing" in line and "mkdir" in line
        assert not marker.exists()
        assert not any(isolated_cache.iterdir())

    @pytest.mark.parametrize(
        "payload",
        [
            pickle.dumps(eval),
            b"cbuiltins\nexec\n(S'import os'\ntR.",  # protocol 0, by hand
            pickle.dumps(io.BytesIO(b"x")),
            pickle.dumps({"a": {1, 2}}, protocol=2),  # sets: not needed, so refused
        ],
    )
    def test_anything_but_arrays_dicts_and_lists_is_refused(self, tmp_path: Path, payload) -> None:
        path = tmp_path / "evil.pkl"
        path.write_bytes(payload)
        with pytest.raises(UserError, match=f"refusing to load {path}"):
            read_pickle(path)

    def test_codecs_encode_is_allowed_only_for_latin1(self, tmp_path: Path) -> None:
        path = tmp_path / "codec.pkl"
        path.write_bytes(b"c_codecs\nencode\n(Vabc\nVzlib\ntR.")
        with pytest.raises(UserError, match="encoding 'zlib'"):
            read_pickle(path)
        path.write_bytes(pickle.dumps(b"abc", protocol=2))  # what protocol 2 stores for bytes
        assert read_pickle(path) == b"abc"


class TestMixedImageModes:
    def test_modes_are_converted_to_rgb_not_rejected(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        folder = tmp_path / "mixed" / "train" / "a"
        folder.mkdir(parents=True)
        base = Image.fromarray(rgb)
        base.convert("L").save(folder / "gray.png")
        base.convert("LA").save(folder / "gray_alpha.png")
        base.convert("RGBA").save(folder / "rgba.png")
        base.convert("P").save(folder / "palette.png")
        base.convert("P").save(folder / "palette_transparent.png", transparency=0)
        base.convert("1").save(folder / "bilevel.png")
        base.convert("CMYK").save(folder / "cmyk.jpg")
        base.convert("CMYK").save(folder / "cmyk.tif")
        Image.fromarray(np.full((20, 20), 0x8000, np.uint16)).save(folder / "gray16.png")
        options = DataOptions(tmp_path / "mixed", 20, tmp_path / "cache")
        imageset = load_folder_split(options, "train")
        assert imageset.images.shape == (9, 20, 20, 3)
        names = sorted(p.name for p in folder.iterdir())
        pixels = dict(zip(names, imageset.images, strict=True))
        # 16-bit grayscale is scaled to 8 bits, not clipped to white.
        assert np.all(pixels["gray16.png"] == 128)
        assert np.array_equal(pixels["rgba.png"], rgb)
        assert np.array_equal(pixels["gray.png"][..., 0], np.asarray(base.convert("L")))
        assert np.abs(pixels["cmyk.tif"].astype(int) - rgb).max() <= 1


class TestSkipBadImages:
    def test_skip_trains_without_the_bad_images_and_logs_them(
        self, csv_root: Path, tmp_path: Path, capsys
    ) -> None:
        bad = [csv_root / "images" / f"ntrain00{c}{i:08d}.png" for c, i in ((0, 0), (2, 3))]
        for path in bad:
            path.write_bytes(b"junk")
        flags = ("--skip-bad-images", "--attention", "none", "--epoch", "1", "--episode", "1")
        quick = ("--val-freq", "1", "--episode-val", "1", "--episode-test", "1")
        assert run_train(csv_root, tmp_path, *flags, *quick) == 0
        out = capsys.readouterr()
        assert "Traceback" not in out.err
        log = (tmp_path / "run" / "train.log").read_text()
        (warning,) = [line for line in log.splitlines() if "skipped" in line]
        assert "skipped 2 unreadable images" in warning and str(csv_root / "train.csv") in warning
        assert all(str(path) in warning for path in bad)

        # The cache holds only the good images; without the flag the bad files are an error.
        assert main(["train", *mini_flags(csv_root, tmp_path / "run2")]) == 2
        line = error_line(capsys)
        assert str(bad[0]) in line and "(and 1 more)" in line and "--skip-bad-images" in line

    def test_without_the_flag_a_cached_skip_is_still_an_error(self, csv_root: Path, capsys) -> None:
        bad = csv_root / "images" / FIRST_TRAIN_IMAGE
        bad.write_bytes(b"junk")
        assert len(load(csv_root, skip_bad_images=True).images) == 11
        with pytest.raises(UserError, match=f"cannot read image {bad}.*--skip-bad-images"):
            load(csv_root)

    @pytest.mark.parametrize("layout", ["folders", "csv"])
    def test_arrays_hold_exactly_the_good_images(self, tmp_path: Path, photos, layout) -> None:
        write = write_folder_layout if layout == "folders" else write_csv_layout
        root = write(tmp_path / layout, photos)
        clean = np.array(load(root, image_size=24).images)
        clean_labels = load(root, image_size=24).labels
        files = (
            sorted((root / "train" / "ntrain001").iterdir())
            if layout == "folders"
            else [root / "images" / f"ntrain001{i:08d}.png" for i in range(4)]
        )
        files[1].write_bytes(b"")  # zero bytes
        imageset = load(root, image_size=24, skip_bad_images=True)
        keep = np.ones(12, bool)
        keep[4 + 1] = False  # class 1, image 1
        assert np.array_equal(imageset.images, clean[keep])  # no zero-filled image left in
        assert np.array_equal(imageset.labels, clean_labels[keep])
        assert imageset.skipped == (str(files[1]),)

    def test_a_class_left_too_small_is_named(self, csv_root: Path, tmp_path: Path, capsys) -> None:
        for i in range(3):
            (csv_root / "images" / f"ntrain002{i:08d}.png").write_bytes(b"junk")
        assert run_train(csv_root, tmp_path, "--skip-bad-images") == 2
        line = error_line(capsys)
        assert "class 'ntrain002'" in line and "has 1 images after skipping 3 unreadable" in line
