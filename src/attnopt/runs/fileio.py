"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file a run writes (checkpoints, CSV logs, JSON, figures) goes through
:func:`atomic_path`: a temporary file in the same folder, fsync, rename, fsync of the folder.
A process killed mid-write leaves at most a hidden ``.<name>.*.tmp`` file, which no reader
opens and :func:`remove_stale_temps` clears on the next run.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from attnopt.errors import UserError

TEMP_SUFFIX = ".tmp"


def os_error_message(action: str, path: str | os.PathLike, error: OSError) -> str:
    """``cannot write PATH: No space left on device; free some space ...`` for a UserError."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = {
        errno.ENOSPC: "free some disk space or choose another folder",
        errno.EDQUOT: "free some disk space or choose another folder",
        errno.EACCES: "check the folder's permissions or choose another folder",
        errno.EPERM: "check the folder's permissions or choose another folder",
        errno.EROFS: "choose a folder on a writable disk",
    }.get(error.errno, "")
    return f"cannot {action} {path}: {reason}" + (f"; {hint}" if hint else "")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or on POSIX a folder (its entries: renames), to the disk."""
    if Path(path).is_dir() and os.name != "posix":
        return  # folders cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore it at once
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` the permissions a new file (or folder) gets from the umask: temporary
    files and folders are created private (0600/0700), the renamed result must not be."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    The folder must exist (nothing is created outside what the caller named). The file gets
    the permissions the umask gives any new file. On any exception the temporary file is
    removed and ``path`` is left untouched; an OSError (disk full, read-only folder, missing
    folder, ...) becomes a UserError naming ``path``.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        if not path.parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        apply_umask(tmp_path)
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    except OSError as e:
        raise UserError(os_error_message("write", path, e)) from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "w"
) -> None:
    """Write a file through ``write(file_object)`` atomically (``mode`` is "w" or "wb")."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        write(f)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def rows_until(path: Path, episode: int | None) -> list[dict[str, str]]:
    """The rows of CSV log ``path`` up to ``episode`` (on resume); none when ``episode`` is None
    or the file does not exist."""
    if episode is None or not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if int(r["episode"]) <= episode]


def write_csv(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict]) -> None:
    """Write a CSV file with a header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def is_temp_file(path: Path) -> bool:
    """True for a temporary file of :func:`atomic_path` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temps(folder: Path) -> None:
    """Remove temporary files that a killed writer left in ``folder``.

    Call it only where no other process writes at the same time (a run's own folders).
    """
    for tmp in folder.iterdir():
        if is_temp_file(tmp) and tmp.is_file():
            tmp.unlink(missing_ok=True)
