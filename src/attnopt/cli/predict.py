"""``attnopt predict``: classify image files after adapting to a support folder.

A thin layer over the Python API (:mod:`attnopt.api`): it lists the files, calls
``load(...).adapt(...).predict_proba(...)`` and formats the result as a table, CSV or JSON.
Queries given as folders laid out like the support set (``DIR/<class>/<image>``, with the
support's class names) are labelled: the accuracy and a confusion matrix come with them.
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
from attnopt.runs.fileio import atomic_write
from attnopt.runtime.device import select_device


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


def query_labels(
    paths: Sequence[str], files: Sequence[Path], classes: Sequence[str]
) -> list[str] | None:
    """The true class of every query file when every ``--query`` path is a folder whose
    images all sit in sub-folders named like support classes; else None (unlabelled)."""
    roots = [Path(p) for p in paths]
    if not all(root.is_dir() for root in roots):
        return None
    labels = []
    for file in files:
        parent = file.parent
        if parent.name not in classes or not any(parent.parent == root for root in roots):
            return None
        labels.append(parent.name)
    return labels


def confusion(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """counts[i, j]: queries of class ``classes[i]`` predicted as ``classes[j]``."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        counts[index[t], index[p]] += 1
    return counts


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n"
        for r in rows
    )


def accuracy_report(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> str:
    """The accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    counts = confusion(truth, predicted, classes)
    correct = int(np.trace(counts))
    rows = [["true \\ predicted", *classes]]
    rows += [[c, *map(str, counts[i])] for i, c in enumerate(classes)]
    return (
        f"accuracy {100 * correct / len(truth):.2f}% ({correct}/{len(truth)})\n"
        f"confusion matrix:\n{_table(rows)}"
    )


def format_predictions(
    paths: Sequence[Path],
    classes: Sequence[str],
    probs: np.ndarray,
    fmt: str,
    truth: Sequence[str] | None = None,
) -> str:
    """The predictions as a table, CSV (``path,predicted,p_<class>...``; with ``truth``, a
    ``label`` column after the path) or JSON (with ``truth``: the rows, the accuracy and the
    confusion matrix). A table with ``truth`` ends with the accuracy and confusion matrix."""
    predicted = [classes[j] for j in probs.argmax(1)]
    labels = list(truth) if truth is not None else [None] * len(paths)
    if fmt == "json":
        rows = [
            {
                "path": str(path),
                **({"label": label} if label is not None else {}),
                "predicted": guess,
                "probabilities": {c: float(p) for c, p in zip(classes, row, strict=True)},
            }
            for path, label, guess, row in zip(paths, labels, predicted, probs, strict=True)
        ]
        if truth is None:
            return json.dumps(rows, indent=2) + "\n"
        counts = confusion(truth, predicted, classes)
        summary = {
            "accuracy": 100 * float(np.trace(counts)) / len(truth),
            "classes": list(classes),
            "confusion": counts.tolist(),
            "predictions": rows,
        }
        return json.dumps(summary, indent=2) + "\n"
    header = ["path", *(["label"] if truth is not None else []), "predicted"]
    header += [f"p_{c}" for c in classes]
    body = [
        [str(path), *([label] if label is not None else []), guess, *(f"{p:.6f}" for p in row)]
        for path, label, guess, row in zip(paths, labels, predicted, probs, strict=True)
    ]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([header, *body])
        return buf.getvalue()
    named = len(header) - len(classes)
    body = [[*row[:named], *(f"{float(p):.3f}" for p in row[named:])] for row in body]
    text = _table([header, *body])
    return text if truth is None else text + accuracy_report(truth, predicted, classes)


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
    truth = query_labels(query, query_paths, sorted(set(labels)))
    fmt = fmt or ("csv" if output else "table")
    folder = Path(output).parent if output is not None else None
    if folder is not None and not folder.is_dir():  # before the work, and nothing created
        why = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"cannot write {output}: {folder} {why}")
    model = load(checkpoint, select_device(cpu))
    task = model.adapt(support_paths, labels)
    probs = task.predict_proba(query_paths)
    text = format_predictions(query_paths, task.classes, probs, fmt, truth)
    if output is None:
        return text
    atomic_write(output, lambda f: f.write(text))  # an OSError comes back as a UserError
    note = f"wrote {len(query_paths)} predictions ({len(task.classes)} classes) to {output}\n"
    if truth is not None:
        predicted = [task.classes[j] for j in probs.argmax(1)]
        note += accuracy_report(truth, predicted, task.classes)
    return note
