"""``attnopt predict``: classify image files after adapting to a support folder.

A thin layer over the Python API (:mod:`attnopt.api`): it lists the files, calls
``load(...).adapt(...).predict_proba(...)`` and formats the result as a table, CSV or JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnopt.api import load
from attnopt.data.decode import is_image_file
from attnopt.errors import UserError
from attnopt.fileio import atomic_write
from attnopt.runtime import select_device

FORMATS = ("table", "csv", "json")


def support_set(root: Path) -> tuple[list[Path], list[str]]:
    """The images of ``root/<class>/<image>`` and their class names (the sub-folder names)."""
    if not root.is_dir():
        raise UserError(f"--support {root} is not a folder; expected {root}/<class>/<image>")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(
            f"--support {root} has no class sub-folders; expected {root}/<class>/<image>"
        )
    paths: list[Path] = []
    labels: list[str] = []
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and is_image_file(f))
        if not files:
            raise UserError(f"support class folder {class_dir} holds no images")
        paths += files
        labels += [class_dir.name] * len(files)
    return paths, labels


def query_files(paths: Sequence[str]) -> list[Path]:
    """Every ``--query`` path: image files as given, folders as their image files (recursively,
    sorted)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise UserError(f"--query folder {path} holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--query {path} does not exist")
    return files


def format_predictions(
    paths: Sequence[Path], classes: Sequence[str], probs: np.ndarray, fmt: str
) -> str:
    """The predictions as a table, CSV (``path,predicted,p_<class>...``) or JSON."""
    predicted = [classes[j] for j in probs.argmax(1)]
    if fmt == "json":
        rows = [
            {
                "path": str(path),
                "predicted": label,
                "probabilities": {c: float(p) for c, p in zip(classes, row, strict=True)},
            }
            for path, label, row in zip(paths, predicted, probs, strict=True)
        ]
        return json.dumps(rows, indent=2) + "\n"
    header = ["path", "predicted", *(f"p_{c}" for c in classes)]
    body = [
        [str(path), label, *(f"{p:.6f}" for p in row)]
        for path, label, row in zip(paths, predicted, probs, strict=True)
    ]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([header, *body])
        return buf.getvalue()
    body = [[*row[:2], *(f"{float(p):.3f}" for p in row[2:])] for row in body]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n"
        for r in (header, *body)
    )


def run_predict(
    checkpoint: str,
    support: str,
    query: Sequence[str],
    output: str | None = None,
    fmt: str | None = None,
    cpu: bool = False,
) -> str:
    """Adapt checkpoint ``checkpoint`` to the ``support`` folder and classify ``query``.

    Returns the formatted predictions; with ``output`` they are written there instead
    (atomically; CSV unless ``fmt`` says otherwise) and a one-line note is returned.
    """
    support_paths, labels = support_set(Path(support))
    query_paths = query_files(query)
    fmt = fmt or ("csv" if output else "table")
    model = load(checkpoint, select_device(cpu))
    task = model.adapt(support_paths, labels)
    text = format_predictions(query_paths, task.classes, task.predict_proba(query_paths), fmt)
    if output is None:
        return text
    atomic_write(output, lambda f: f.write(text))  # an OSError comes back as a UserError
    return f"wrote {len(query_paths)} predictions ({len(task.classes)} classes) to {output}\n"
