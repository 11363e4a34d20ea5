"""Finding which of a data set's on-disk layouts a ``--data-root`` folder holds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attnopt.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """One way a data set is stored.

    description: how it looks, with ``ROOT`` for the data root (shown in error messages).
    needs: the files or folders that one split needs, given (root, split).
    """

    description: str
    needs: Callable[[Path, str], Sequence[Path]]

    def missing(self, root: Path, split: str) -> list[Path]:
        return [path for path in self.needs(root, split) if not path.exists()]


def pick_layout(root: Path, layouts: dict[str, Layout], data_name: str) -> str:
    """The name of the layout of ``root`` among ``layouts`` (most preferred first).

    The first complete layout wins; when none is complete, the first one that is partly there
    is an error naming its first missing file; when none is there at all, the error lists
    every layout.
    """
    present = {
        name: [s for s in SPLITS if len(layout.missing(root, s)) < len(layout.needs(root, s))]
        for name, layout in layouts.items()
    }
    complete = [name for name, layout in layouts.items() if not _missing(layout, root)]
    if complete:
        others = [n for n, splits in present.items() if splits and n != complete[0]]
        if others:
            log.info(
                "%s holds several layouts; reading its %s (not: %s)",
                root,
                complete[0],
                ", ".join(others),
            )
        return complete[0]
    found = [name for name, splits in present.items() if splits]
    if not found:
        expected = "; ".join(expand(layout.description, root) for layout in layouts.values())
        raise UserError(
            f"--data-root {root} holds no {data_name} layout; expected one of: {expected}"
        )
    layout = layouts[found[0]]
    raise UserError(
        f"missing {_missing(layout, root)[0]}; expected {expand(layout.description, root)}"
    )


def _missing(layout: Layout, root: Path) -> list[Path]:
    """Every missing file or folder of ``layout`` in ``root``, split by split, without repeats."""
    missing: list[Path] = []
    for split in SPLITS:
        missing += [p for p in layout.missing(root, split) if p not in missing]
    return missing


def expand(description: str, root: Path) -> str:
    """``description`` with ``ROOT`` replaced by ``root``."""
    return description.replace("ROOT", str(root))
