"""Fuzzing the command line: random flags on random small, messy folder trees.

Whatever the input, ``attnopt train`` either works or exits with status 2 and exactly one
``error:`` line; never a traceback, never a hang. The trees hold empty files, non-images,
truncated images, nested folders, odd names (spaces, unicode, control characters),
symlinks (good, broken, looping), images that declare huge dimensions (decompression
bombs), 1x1 images, 16-bit PNGs and CMYK JPEGs.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnopt.cli.commands import main

# About 10 s on one core; ATTNOPT_FUZZ_EXAMPLES=500 for a longer hunt.
EXAMPLES = int(os.environ.get("ATTNOPT_FUZZ_EXAMPLES", "40"))
SECONDS_PER_CASE = 30  # far above what a tiny run needs: reaching it means a hang

KINDS = (
    "png", "jpg", "gray16", "cmyk", "rgba", "palette", "tiny",  # images
    "empty", "text", "truncated", "bomb", "noext", "link", "broken_link", "loop_link",
    "nested",
)  # fmt: skip
NAME_CHARS = st.sampled_from(list("abcXYZ019 -_.,'()&%+=~") + ["é", "ß", "字", "😀", "\u202e"])
names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
odd_names = st.one_of(names, names.map(lambda s: s + "\n2"), names.map(lambda s: "\t" + s))

PIPELINE = importlib.import_module("attnopt.training.pipeline")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds (almost) no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def write_entry(folder: Path, index: int, kind: str, size: int) -> None:
    """One entry of a class folder."""
    rng = np.random.default_rng(index)
    rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    base = folder / f"{kind} {index}"
    if kind == "png":
        rgb.save(f"{base}.png")
    elif kind == "jpg":
        rgb.save(f"{base}.JPG", format="JPEG")
    elif kind == "gray16":
        Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16)).save(f"{base}.png")
    elif kind == "cmyk":
        rgb.convert("CMYK").save(f"{base}.jpg")
    elif kind == "rgba":
        rgb.convert("RGBA").save(f"{base}.webp")
    elif kind == "palette":
        rgb.convert("P").save(f"{base}.gif")
    elif kind == "tiny":
        rgb.resize((1, 1)).save(f"{base}.bmp")
    elif kind == "empty":
        Path(f"{base}.png").touch()
    elif kind == "text":
        Path(f"{base}.jpeg").write_text("not an image\n")
    elif kind == "truncated":
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        Path(f"{base}.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "bomb":
        width, height = [(100_000, 100_000), (10_000, 10_000)][size % 2]  # 56x, 1.1x the limit
        Path(f"{base}.png").write_bytes(_png_header(width, height))
    elif kind == "noext":
        Path(base).write_bytes(rng.bytes(32))
    elif kind == "link":
        rgb.save(folder / f".target {index}.png")  # hidden itself: only the link is listed
        os.symlink(f".target {index}.png", f"{base}.png")
    elif kind == "broken_link":
        os.symlink("nowhere.png", f"{base}.png")
    elif kind == "loop_link":
        os.symlink(f"{kind} {index}.png", f"{base}.png")
    elif kind == "nested":
        (folder / f"{base.name}.png").mkdir()
        rgb.save(folder / f"{base.name}.png" / "inner.png")


@st.composite
def trees(draw: st.DrawFn) -> dict:
    """{split: {class name: [(kind, size)]}}: every class has two images and up to two
    entries of any kind, so that many runs get past the data checks (with
    --skip-bad-images); now and then a split is missing."""
    sizes = st.integers(1, 24)
    good = st.tuples(st.sampled_from(KINDS[:7]), sizes)
    anything = st.tuples(st.sampled_from(KINDS), sizes)
    entries = st.tuples(st.lists(good, min_size=2, max_size=2), st.lists(anything, max_size=2))
    splits = ["train", "val", "test"]
    if draw(st.integers(0, 9)) == 0:
        splits.remove(draw(st.sampled_from(splits)))
    classes = st.dictionaries(odd_names, entries.map(lambda e: e[0] + e[1]), min_size=2, max_size=3)
    return {split: draw(classes) for split in splits}


def write_tree(root: Path, tree: dict) -> None:
    for split, classes in tree.items():
        (root / split).mkdir(parents=True)
        for c, (name, entries) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir()
            for i, (kind, size) in enumerate(entries):
                write_entry(folder, 100 * c + i, kind, size)
            os.symlink("..", folder / "up")  # a folder link inside a class: never followed


def pick(*values: str) -> st.SearchStrategy[str]:
    return st.sampled_from(values)


FLAGS = {
    "--n-class": pick("1", "2", "3"),
    "--n-shot": pick("0", "1", "2"),
    "--n-eval": pick("1", "2"),
    "--image-size": pick("8", "16", "17"),
    "--epoch": pick("0", "1"),
    "--batch-size": pick("1", "2", "100"),
    "--hidden-size": pick("0", "1", "3"),
    "--input-size": pick("4", "3"),
    "--attention": pick("both", "meta", "learner", "none", "all"),
    "--attn-chunk": pick("0", "1", "7"),
    "--bn": pick("support", "transductive"),
    "--bn-eps": pick("1e-3", "0", "nan", "inf"),
    "--lr": pick("1e-3", "0", "-1", "nan", "inf", "1e30"),
    "--grad-clip": pick("0.25", "0", "inf", "nan"),
    "--episode": pick("1", "2", "0"),
    "--episode-val": pick("1", "2"),
    "--episode-test": pick("1", "2"),
    "--val-freq": pick("1", "2"),
    "--log-freq": pick("1", "3"),
    "--max-bad-steps": pick("0", "1", "10"),
    "--meta-batch": pick("0", "1", "2", "3"),
    "--eval-batch": pick("0", "1", "3"),
    "--amp": pick("none", "bf16", "fp16"),
    "--seed": pick("0", "7", "-1", str(2**32), str(2**64), "1.5"),
    "--n-workers": pick("0", "1", "2"),
    "--augment": pick("auto", "none"),
    "--pin-mem": pick("True", "maybe"),
}


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """Random values for a random few flags; the rest tiny, so that a run takes a second."""
    chosen = draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=3, unique=True))
    values = {
        "--n-class": "2", "--n-shot": "1", "--n-eval": "1", "--image-size": "16",
        "--epoch": "1", "--episode": "2", "--episode-val": "1", "--episode-test": "1",
        "--val-freq": "2", "--log-freq": "1", "--n-workers": "1", "--attention": "none",
    }  # fmt: skip
    values.update({flag: draw(FLAGS[flag]) for flag in chosen})
    argv = [x for flag, value in values.items() for x in (flag, value)]
    argv += ["--skip-bad-images"] if draw(st.booleans()) else []
    argv += ["--deterministic"] if draw(st.integers(0, 3)) == 0 else []
    return argv


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""

    def hang(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_outcome(status: int, out: str, err: str, run: Path) -> None:
    """Status 0 and a finished run, or status 2 and exactly one error line (the last)."""
    assert "Traceback" not in err, err
    if status == 0:
        assert (run / "test.json").is_file() and out.splitlines()[-1].startswith("test accuracy")
        return
    assert status == 2, err
    lines = err.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # time_limit below bounds each case; runs vary with the machine's load
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: bounded time
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=trees(), argv=argvs())
def test_random_flags_on_random_trees_work_or_exit_2_with_one_error_line(
    tree: dict,
    argv: list[str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(PIPELINE, "draw_figures", lambda *a: None)  # figures: tested elsewhere
    base = tmp_path_factory.mktemp("fuzz")
    root, run = base / "data ünï cödé", base / "run"
    write_tree(root, tree)
    capsys.readouterr()
    flags = ["--data", "folder", "--data-root", str(root), "--save", str(run), "--cpu"]
    with time_limit(SECONDS_PER_CASE):
        status = main(["train", *flags, "--cache-dir", str(base / "cache"), *argv])
    out, err = capsys.readouterr()
    event(f"exit {status}" + (f": {err.splitlines()[-1][7:40]}" if status else ""))
    check_outcome(status, out, err, run)


MESSY = {
    "train": {
        "a\udcff bytes": [("png", 5), ("bomb", 1), ("cmyk", 9), ("gray16", 3)],
        "b\nnew line": [("jpg", 1), ("tiny", 3), ("link", 4), ("broken_link", 2)],
    },
    "val": {"c": [("png", 4), ("empty", 1), ("palette", 5)], "d": [("rgba", 6), ("jpg", 7)]},
    "test": {
        "e": [("png", 4), ("text", 1), ("png", 5)],
        "f": [("loop_link", 1), ("jpg", 7), ("gray16", 8)],
    },
}


def test_a_messy_tree_through_the_real_command(tmp_path: Path) -> None:
    """In a real process: stdout/stderr encodings, names that are not UTF-8, exit codes."""
    root, run = tmp_path / "data", tmp_path / "run"
    write_tree(root, MESSY)
    flags = ["--data", "folder", "--data-root", str(root), "--save", str(run), "--cpu"]
    tiny = ["--n-class", "2", "--n-shot", "1", "--n-eval", "1", "--image-size", "16"]
    tiny += ["--episode", "1", "--episode-val", "1", "--episode-test", "1", "--epoch", "1"]
    tiny += ["--attention", "none", "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(
        [sys.executable, "-m", "attnopt", "train", *flags, *tiny, "--skip-bad-images"],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    check_outcome(proc.returncode, proc.stdout, proc.stderr, run)
    assert proc.returncode == 0, proc.stderr
    assert "a\\udcff bytes" in proc.stdout  # the skipped bomb's folder, escaped in the log


def test_an_error_naming_a_file_that_is_not_utf8_is_one_printable_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    write_tree(root, MESSY)  # without --skip-bad-images the bomb in 'a\udcff bytes' stops it
    flags = ["--data", "folder", "--data-root", str(root), "--save", str(tmp_path / "run")]
    assert main(["train", *flags, "--cpu", "--image-size", "16", "--n-class", "2"]) == 2
    out, err = capsys.readouterr()  # strict UTF-8 streams: a raw surrogate would have raised
    check_outcome(2, out, err, tmp_path / "run")
    assert "a\\udcff bytes" in err and "decompression bomb" in err
