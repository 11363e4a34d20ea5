"""Run folders: one run each, never destroyed by another (test records: runs/records.py).

A run folder (``--save``) holds config.json, metrics.csv, gates.csv, train.log, ckpts/,
test.json with test_episodes.csv, the figures, and pretrain/ with ``--pretrain``. A new run
refuses a folder that holds a run (unless ``--overwrite``); a resumed run continues in its
checkpoint's folder, or starts a copy of it elsewhere. Ad-hoc evaluations (``attnopt test``) go
to ``evals/`` under a name of their own, never over the run's own test.json.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from attnopt.config import Config
from attnopt.errors import UserError
from attnopt.runs.fileio import (
    atomic_path,
    os_error_message,
    remove_stale_temps,
    write_json,
)

# What a run writes into its folder (the only names --overwrite removes).
RUN_FILES = (
    "config.json",
    "metrics.csv",
    "gates.csv",
    "train.log",
    "test.json",
    "test_episodes.csv",
    "report.png",
    "gates.png",
    "meta_attention.png",
    "cross_attention.png",
)
RUN_FOLDERS = ("ckpts", "tensorboard", "evals")
# --pretrain's features (attnopt pretrain's files). Not among what --overwrite removes: the
# run that replaces this one writes it anew before it starts, or starts from it (--init).
PRETRAIN_FOLDER = "pretrain"


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run folder of a checkpoint: RUN for RUN/ckpts/x.pt, else the file's folder."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "ckpts" else path.parent


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    ckpts = folder / "ckpts"
    return (
        (folder / "config.json").exists()
        or (folder / "metrics.csv").exists()
        or (ckpts.is_dir() and any(ckpts.iterdir()))
    )


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_creatable(folder: Path) -> None:
    """UserError unless ``folder`` exists and takes new files, or can be created; creates
    nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to the run folder (--save) {folder}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
        if (folder / "ckpts").is_dir():
            with tempfile.TemporaryFile(dir=folder / "ckpts"):
                pass
    except OSError as e:
        raise UserError(os_error_message("write to the run folder (--save)", folder, e)) from None


def check(config: Config, overwrite: bool) -> None:
    """Before any work: UserError when the run cannot be saved in ``config.save``, or when
    that folder holds another run (a new run there would destroy it)."""
    folder = Path(config.save)
    _check_creatable(folder)
    if overwrite or not holds_run(folder):
        return
    if config.resume and _same_folder(folder, run_dir_of(config.resume)):
        return  # continuing the run in its own folder
    if config.resume:
        raise UserError(
            f"--save {folder} already holds another run; resume into the checkpoint's own "
            f"folder (leave out --save), choose an empty folder, or pass --overwrite to "
            "replace that run"
        )
    last = folder / "ckpts" / "last.pt"
    if not last.is_file():
        raise UserError(
            f"--save {folder} holds a run that stopped before its first checkpoint; start it "
            "again with --overwrite, or choose another --save folder"
        )
    raise UserError(
        f"--save {folder} already holds a run; continue it with --resume {last}, choose "
        "another --save folder, or pass --overwrite to replace it"
    )


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def create(config: Config, overwrite: bool) -> bool:
    """Make the run folder once the run starts: clear what a killed run left, remove the
    old run with ``overwrite``, and when a run is resumed into another folder, copy its
    logs and best checkpoint there so the folder holds the whole run. Writes config.json.
    Returns whether the folder has a ckpts/best.pt to continue from."""
    folder = Path(config.save)
    source = run_dir_of(config.resume) if config.resume else None
    moving = source is not None and not _same_folder(folder, source)
    try:
        if overwrite and (source is None or moving):  # never the run being continued
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                shutil.rmtree(folder / name, ignore_errors=True)
        (folder / "ckpts").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(os_error_message("write to", folder, e)) from None
    remove_stale_temps(folder)
    remove_stale_temps(folder / "ckpts")
    if moving:
        for name in ("metrics.csv", "gates.csv", "train.log", "ckpts/best.pt"):
            if (source / name).is_file():
                _copy(source / name, folder / name)
    write_json(folder / "config.json", config.to_dict())
    return (folder / "ckpts" / "best.pt").is_file()
