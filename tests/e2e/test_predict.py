"""``attnopt predict``: adapt to a support folder, classify query files; table, CSV, JSON."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, make_checkpoint, make_support, write_image

import attnopt
from attnopt.cli.commands import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    """A support folder (3 classes, 2 images each) and a query folder with a nested folder."""
    support = make_support(tmp_path / "support", {"cat": 2, "dog": 2, "emu": 2}, size=24)
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        write_image(tmp_path / "query" / name, rng, size=18)
    (tmp_path / "query" / "notes.txt").write_text("not an image")
    return support, tmp_path / "query"


def _predict(ckpt: Path, support: Path, *extra: str) -> list[str]:
    return ["predict", "--resume", str(ckpt), "--support", str(support), "--cpu", *extra]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_on_the_console_names_every_query_and_class(ckpt, images, capsys) -> None:
    support, query = images
    assert main(_predict(ckpt, support, "--query", str(query))) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["path", "predicted", "p_cat", "p_dog", "p_emu"]
    assert [line.split()[0] for line in lines[1:]] == [
        str(query / "a.png"),
        str(query / "b.jpg"),
        str(query / "sub" / "c.png"),
    ]
    for line in lines[1:]:
        cells = line.split()
        probs = [float(p) for p in cells[2:]]
        assert abs(sum(probs) - 1) < 2e-3 and cells[1] == ["cat", "dog", "emu"][np.argmax(probs)]


def test_unwritable_output_is_one_error_line_naming_it(ckpt, images, tmp_path, capsys) -> None:
    support, query = images
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "preds.csv"  # its folder is a file
    assert main(_predict(ckpt, support, "--query", str(query), "--output", str(out))) == 2
    assert f"cannot write {out}" in error_line(capsys)


def test_csv_output_is_written_atomically_and_matches_the_api(
    ckpt, images, tmp_path: Path, capsys
) -> None:
    support, query = images
    out = tmp_path / "out" / "preds.csv"
    out.parent.mkdir()
    files = [str(query / "b.jpg"), str(query / "sub")]
    assert main(_predict(ckpt, support, "--query", *files, "--output", str(out))) == 0
    assert "wrote 2 predictions" in capsys.readouterr().out
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "predicted", "p_cat", "p_dog", "p_emu"]
    assert [r["path"] for r in rows] == [str(query / "b.jpg"), str(query / "sub" / "c.png")]
    probs = np.array([[float(r[f"p_{c}"]) for c in ("cat", "dog", "emu")] for r in rows])
    paths = sorted(support.rglob("*.png"))
    task = attnopt.load(ckpt).adapt(paths, [p.parent.name for p in paths])
    np.testing.assert_allclose(
        probs, task.predict_proba([query / "b.jpg", query / "sub" / "c.png"]), atol=1e-6
    )
    assert [r["predicted"] for r in rows] == task.predict(
        [query / "b.jpg", query / "sub" / "c.png"]
    )
    assert not list(out.parent.glob(".*tmp"))


def test_json_holds_the_same_predictions_as_csv(ckpt, images, tmp_path: Path, capsys) -> None:
    support, query = images
    assert main(_predict(ckpt, support, "--query", str(query), "--format", "json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main(_predict(ckpt, support, "--query", str(query), "--format", "csv")) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["path"] for r in rows] == [r["path"] for r in table]
    for j, c in zip(rows, table, strict=True):
        assert j["predicted"] == c["predicted"]
        assert set(j["probabilities"]) == {"cat", "dog", "emu"}
        for name, p in j["probabilities"].items():
            assert abs(p - float(c[f"p_{name}"])) < 1e-6


def test_a_querys_prediction_does_not_depend_on_the_other_queries(
    ckpt, images, tmp_path: Path
) -> None:
    support, query = images
    rows = {}
    for name, files in (("alone", [query / "a.png"]), ("all", [query])):
        out = tmp_path / f"{name}.csv"
        assert main(_predict(ckpt, support, "--query", *map(str, files), "--output", str(out))) == 0
        rows[name] = {r["path"]: r for r in _read_csv(out)}
    assert rows["alone"][str(query / "a.png")] == rows["all"][str(query / "a.png")]


def test_fewer_classes_and_other_shot_counts_work(ckpt, images, tmp_path: Path, capsys) -> None:
    support, query = images
    small = make_support(tmp_path / "small", {"left": 5, "right": 1}, size=30)
    assert main(_predict(ckpt, small, "--query", str(query), "--format", "csv")) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert list(table[0]) == ["path", "predicted", "p_left", "p_right"] and len(table) == 3


def test_a_trained_checkpoint_classifies_images_of_new_classes(
    trained_template, folder_dataset: Path, tmp_path: Path
) -> None:
    test_split = folder_dataset / "test"
    support, queries = tmp_path / "support", []
    for class_dir in sorted(test_split.iterdir())[:3]:
        files = sorted(class_dir.iterdir())
        (support / class_dir.name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(f, support / class_dir.name / f.name)
        queries += files[2:]
    out = tmp_path / "preds.csv"
    ckpt = trained_template[0] / "ckpts" / "best.pt"
    argv = _predict(ckpt, support, "--query", *map(str, queries), "--output", str(out))
    assert main(argv) == 0
    rows = _read_csv(out)
    assert len(rows) == len(queries) == 12
    assert {r["predicted"] for r in rows} <= {d.name for d in support.iterdir()}


@pytest.mark.parametrize(
    ("case", "culprit"),
    [
        ("missing_support", "nowhere"),
        ("no_class_folders", "no class sub-folders"),
        ("empty_class", "emu"),
        ("too_many_classes", "4 classes"),
        ("unreadable_support", "broken.png"),
        ("unreadable_query", "bad.jpg"),
        ("missing_query", "ghost.png"),
        ("query_folder_without_images", "empty"),
        ("missing_flag", "--query"),
        ("damaged_checkpoint", "junk.pt"),
    ],
)
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(
    ckpt, images, tmp_path: Path, case: str, culprit: str, capsys
) -> None:
    support, query = images
    model = ckpt
    queries = ["--query", str(query)]
    if case == "missing_support":
        support = tmp_path / "nowhere"
    elif case == "no_class_folders":
        support = tmp_path / "flat"
        write_image(support / "x.png", np.random.default_rng(0))
    elif case == "empty_class":
        for f in (support / "emu").iterdir():
            f.unlink()
    elif case == "too_many_classes":
        make_support(support, {"fox": 1})
    elif case == "unreadable_support":
        (support / "dog" / "broken.png").write_bytes(b"not a png")
    elif case == "unreadable_query":
        (query / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    elif case == "missing_query":
        queries = ["--query", str(query / "a.png"), str(tmp_path / "ghost.png")]
    elif case == "query_folder_without_images":
        (tmp_path / "empty").mkdir()
        queries = ["--query", str(tmp_path / "empty")]
    elif case == "missing_flag":
        queries = []
    else:
        model = tmp_path / "junk.pt"
        model.write_bytes(b"junk")
    out = tmp_path / "preds.csv"
    assert main(_predict(model, support, *queries, "--output", str(out))) == 2
    assert culprit in error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".preds.csv*"))


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, Path]:
    """A support folder and a labelled query folder laid out the same way."""
    support = make_support(tmp_path / "support", {"cat": 2, "dog": 2, "emu": 2}, size=24)
    queries = make_support(tmp_path / "labelled", {"cat": 3, "dog": 2, "emu": 2}, seed=4)
    return support, queries


def test_labelled_queries_get_the_accuracy_and_a_confusion_matrix(ckpt, labelled, capsys) -> None:
    support, queries = labelled
    assert main(_predict(ckpt, support, "--query", str(queries), "--format", "json")) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["predictions"]
    assert [Path(r["path"]).parent.name for r in rows] == [r["label"] for r in rows]
    counts = np.zeros((3, 3), dtype=int)
    for r in rows:
        counts[report["classes"].index(r["label"]), report["classes"].index(r["predicted"])] += 1
    assert report["confusion"] == counts.tolist()
    assert report["accuracy"] == pytest.approx(100 * np.trace(counts) / 7)
    assert counts.sum(1).tolist() == [3, 2, 2]  # rows: the true classes

    assert main(_predict(ckpt, support, "--query", str(queries))) == 0
    out = capsys.readouterr().out
    correct = int(np.trace(counts))
    assert f"accuracy {100 * correct / 7:.2f}% ({correct}/7)" in out
    matrix = out.split("confusion matrix:\n")[1].splitlines()
    assert matrix[0].split()[-3:] == ["cat", "dog", "emu"]
    assert [[int(v) for v in line.split()[1:]] for line in matrix[1:]] == counts.tolist()


def test_queries_are_unlabelled_unless_laid_out_like_the_support(ckpt, labelled, capsys) -> None:
    support, queries = labelled
    (queries / "other").mkdir()
    write_image(queries / "other" / "x.png", np.random.default_rng(1))  # not a support class
    assert main(_predict(ckpt, support, "--query", str(queries), "--format", "json")) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)  # plain predictions


def test_output_into_a_missing_folder_creates_nothing(ckpt, images, tmp_path, capsys) -> None:
    support, query = images
    out = tmp_path / "not" / "there" / "preds.csv"
    assert main(_predict(ckpt, support, "--query", str(query), "--output", str(out))) == 2
    assert str(tmp_path / "not" / "there") in error_line(capsys)
    assert not (tmp_path / "not").exists()
