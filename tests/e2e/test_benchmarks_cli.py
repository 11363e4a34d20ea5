"""The few-shot benchmarks through the command line: a short training run on a tiny copy of
each, and bad data ending in one ``error:`` line that names the file and the problem."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_layouts import (
    cifar_photos,
    tiered_photos,
    write_cifar_archive,
    write_cifar_split_pickles,
    write_cub,
    write_omniglot,
    write_tiered_pickles,
)
from conftest import RunsCode, error_line

import attnopt.training.pipeline
from attnopt.cli.commands import main
from attnopt.data.cifar_splits import CIFAR_FS


def tiny(data: str, root: Path, save: Path, *extra: str) -> list[str]:
    """``attnopt train`` on a tiny data set: 3-way 1-shot, 16x16 images, one episode."""
    return [
        "train",
        *("--data", data, "--data-root", str(root), "--image-size", "16"),
        *("--n-class", "3", "--n-shot", "1", "--n-eval", "1", "--epoch", "1"),
        *("--episode", "1", "--val-freq", "1", "--episode-val", "1", "--episode-test", "1"),
        *("--save", str(save), "--cpu", "--n-workers", "2"),
        *extra,
    ]


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures take longer than these runs; test_cli.py checks them."""
    monkeypatch.setattr(attnopt.training.pipeline, "draw_figures", lambda *a, **k: None)


def assert_nothing_half_written(cache: Path) -> None:
    for entry in cache.iterdir():
        assert not entry.name.startswith("."), entry
        assert {p.name for p in entry.iterdir()} == {"images.npy", "labels.npy", "index.json"}


WRITERS = {
    "tieredimagenet": lambda root: write_tiered_pickles(root, tiered_photos(size=24), "py2"),
    "cifarfs": lambda root: write_cifar_split_pickles(root, cifar_photos(), "CIFAR_FS", CIFAR_FS),
    "fc100": lambda root: write_cifar_archive(root, cifar_photos()),
    "omniglot": lambda root: write_omniglot(root, per_character=3),
    "cub": lambda root: write_cub(root, n_classes=12, per_class=3),
}


@pytest.mark.parametrize(
    ("data", "extra"),
    [
        ("tieredimagenet", ()),
        ("cifarfs", ()),
        ("fc100", ()),
        ("omniglot", ("--n-class", "20")),
        ("cub", ("--crop", "bbox")),
    ],
)
def test_a_short_training_run_end_to_end(
    tmp_path: Path, no_figures, capsys, data: str, extra: tuple[str, ...]
) -> None:
    root = WRITERS[data](tmp_path / "data")
    run = tmp_path / "run"
    assert main(tiny(data, root, run, *extra)) == 0, capsys.readouterr().err
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test accuracy") and "1 episodes" in last
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == data and config["image_size"] == 16
    assert json.loads((run / "test.json").read_text())["episodes"] == 1
    if data == "cub":
        assert config["crop"] == "bbox"


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=3))


def mutate_tiered(root: Path, mutation: str, marker: Path) -> None:
    labels_path, images_path = root / "train_labels.pkl", root / "train_images_png.pkl"
    labels, pngs = _load(labels_path), _load(images_path)
    if mutation == "missing_labels":
        labels_path.unlink()
    elif mutation == "labels_not_a_dict":
        _dump(labels_path, [labels["label_specific"]])
    elif mutation == "missing_key":
        del labels["label_specific"]
        _dump(labels_path, labels)
    elif mutation == "float_labels":
        _dump(labels_path, {**labels, "label_specific": labels["label_specific"] * 1.0})
    elif mutation == "label_out_of_range":
        labels["label_specific"][5] = 7
        _dump(labels_path, labels)
    elif mutation == "fewer_images_than_labels":
        _dump(images_path, pngs[:-1])
    elif mutation == "png_does_not_decode":
        pngs[4] = np.frombuffer(b"\x89PNG\r\n\x1a\n but no image", dtype=np.uint8)
        _dump(images_path, pngs)
    elif mutation == "float_image":
        pngs[0] = np.zeros(3)
        _dump(images_path, pngs)
    elif mutation == "runs_code":
        _dump(labels_path, {**labels, "label_specific_str": RunsCode(marker)})


@pytest.mark.parametrize(
    ("mutation", "culprits"),
    [
        ("missing_labels", ["missing", "train_labels.pkl"]),
        ("labels_not_a_dict", ["train_labels.pkl", "holds a list, not a dict"]),
        ("missing_key", ["train_labels.pkl", "has no 'label_specific'"]),
        ("float_labels", ["'label_specific' of", "train_labels.pkl", "float64"]),
        ("label_out_of_range", ["train_labels.pkl", "label 7, outside 0 to 2"]),
        ("fewer_images_than_labels", ["train_images_png.pkl", "11 images", "12 labels"]),
        ("png_does_not_decode", ["cannot decode image 4 of", "train_images_png.pkl"]),
        ("float_image", ["image 0 of", "train_images_png.pkl", "float64 (3,) array"]),
        ("runs_code", ["refusing to load", "train_labels.pkl", "mkdir"]),
    ],
)
def test_bad_tiered_imagenet_pickles(
    tmp_path: Path, isolated_cache: Path, capsys, mutation: str, culprits: list[str]
) -> None:
    root = write_tiered_pickles(tmp_path / "t", tiered_photos(size=24), "py3", arrays=False)
    marker = tmp_path / "pwned"
    mutate_tiered(root, mutation, marker)
    assert main(tiny("tieredimagenet", root, tmp_path / "run")) == 2
    line = error_line(capsys)
    for culprit in culprits:
        assert culprit in line, line
    assert not marker.exists()
    assert_nothing_half_written(isolated_cache)
    assert not (tmp_path / "run" / "ckpts" / "last.pt").exists()


@pytest.mark.parametrize(
    ("flags", "culprits"),
    [
        (("--n-class", "4"), ["train_images_png.pkl", "3 classes", "--n-class 4"]),
        (("--n-shot", "3", "--n-eval", "2"), ["class 'n01000001'", "4 images", "= 5"]),
    ],
)
def test_a_split_too_small_for_the_episodes(tmp_path: Path, capsys, flags, culprits) -> None:
    root = write_tiered_pickles(tmp_path / "t", tiered_photos(size=24), "py2")
    assert main([*tiny("tieredimagenet", root, tmp_path / "run"), *flags]) == 2
    line = error_line(capsys)
    for culprit in culprits:
        assert culprit in line, line


def mutate_cifar(root: Path, mutation: str, marker: Path) -> Path:
    """Spoil the CIFAR-FS split pickles or the CIFAR-100 archive; the data root to use."""
    path = root / "CIFAR_FS_train.pickle"
    if mutation.startswith("archive"):
        write_cifar_archive(root, cifar_photos())
        if mutation == "archive_missing_test":
            (root / "cifar-100-python" / "test").unlink()
        else:
            meta = _load(root / "cifar-100-python" / "meta")
            _dump(root / "cifar-100-python" / "meta", {**meta, "fine_label_names": ["a", "b"]})
        return root
    write_cifar_split_pickles(root, cifar_photos(), "CIFAR_FS", CIFAR_FS)
    split = _load(path)
    if mutation == "missing_key":
        _dump(path, {"data": split["data"]})
    elif mutation == "float_data":
        _dump(path, {**split, "data": split["data"].astype(np.float32)})
    elif mutation == "flat_data":
        _dump(path, {**split, "data": split["data"].reshape(len(split["data"]), -1)})
    elif mutation == "label_out_of_range":
        _dump(path, {**split, "labels": [100] + split["labels"][1:]})
    elif mutation == "too_few_labels":
        _dump(path, {**split, "labels": split["labels"][:-2]})
    elif mutation == "runs_code":
        _dump(path, {**split, "labels": RunsCode(marker)})
    return root


@pytest.mark.parametrize(
    ("mutation", "culprits"),
    [
        ("missing_key", ["CIFAR_FS_train.pickle", "has no 'labels'"]),
        ("float_data", ["'data' of", "CIFAR_FS_train.pickle", "float32", "uint8"]),
        ("flat_data", ["CIFAR_FS_train.pickle", "(24, 3072)", "(N, 32, 32, 3)"]),
        ("label_out_of_range", ["CIFAR_FS_train.pickle", "label 100", "0 to 99"]),
        ("too_few_labels", ["CIFAR_FS_train.pickle", "expected 24 integer labels"]),
        ("runs_code", ["refusing to load", "CIFAR_FS_train.pickle"]),
        ("archive_missing_test", ["missing", "cifar-100-python/test"]),
        ("archive_bad_meta", ["cifar-100-python/meta", "not CIFAR-100's 100 classes"]),
    ],
)
def test_bad_cifar_files(
    tmp_path: Path, isolated_cache: Path, capsys, mutation: str, culprits: list[str]
) -> None:
    marker = tmp_path / "pwned"
    root = mutate_cifar(tmp_path / "c", mutation, marker)
    assert main(tiny("cifarfs", root, tmp_path / "run")) == 2
    line = error_line(capsys)
    for culprit in culprits:
        assert culprit in line, line
    assert not marker.exists()
    assert_nothing_half_written(isolated_cache)


def test_bad_omniglot_folders(tmp_path: Path, capsys) -> None:
    root = write_omniglot(tmp_path / "o", per_character=3)
    bad = sorted((root / "images_background" / "Greek" / "character01").iterdir())[1]
    bad.write_bytes(b"")
    assert main(tiny("omniglot", root, tmp_path / "run")) == 2
    assert f"cannot read image {bad}" in error_line(capsys)
    shutil.rmtree(root / "images_evaluation")
    assert main(tiny("omniglot", root, tmp_path / "run")) == 2
    assert f"missing {root / 'images_evaluation'}" in error_line(capsys)


@pytest.mark.parametrize(
    ("mutation", "culprits"),
    [
        ("bad_box_line", ["line 3 of", "bounding_boxes.txt", "<image_id> <x> <y>"]),
        ("no_box_file", ["missing", "bounding_boxes.txt", "--crop bbox"]),
        ("box_outside", ["bounding box", "lies outside", "001.Bird_1"]),
        ("unlisted_image", ["no bounding box for", "extra.jpg"]),
        ("bad_class_folder", ["class folder", "birds", "<id>.<name>"]),
        ("no_images", ["holds no CUB-200-2011 layout", "CUB_200_2011/images"]),
    ],
)
def test_bad_cub_files(tmp_path: Path, capsys, mutation: str, culprits: list[str]) -> None:
    root = write_cub(tmp_path / "cub", n_classes=12, per_class=3)
    folder = root / "CUB_200_2011"
    boxes = folder / "bounding_boxes.txt"
    lines = boxes.read_text().splitlines()
    if mutation == "bad_box_line":
        lines[2] = "3 1.0 2.0"
        boxes.write_text("\n".join(lines))
    elif mutation == "no_box_file":
        boxes.unlink()
    elif mutation == "box_outside":
        lines[0] = "1 500.0 500.0 10.0 10.0"
        boxes.write_text("\n".join(lines))
    elif mutation == "unlisted_image":
        shutil.copy(
            next((folder / "images" / "001.Bird_1").iterdir()),
            folder / "images" / "001.Bird_1" / "extra.jpg",
        )
    elif mutation == "bad_class_folder":
        (folder / "images" / "birds").mkdir()
    elif mutation == "no_images":
        shutil.rmtree(folder / "images")
    assert main(tiny("cub", root, tmp_path / "run", "--crop", "bbox")) == 2
    line = error_line(capsys)
    for culprit in culprits:
        assert culprit in line, line


def test_crop_bbox_is_refused_for_other_data_sets(tmp_path: Path, capsys) -> None:
    assert main(tiny("cifarfs", tmp_path, tmp_path / "run", "--crop", "bbox")) == 2
    assert "--crop bbox needs --data cub" in error_line(capsys)
