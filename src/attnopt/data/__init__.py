"""Data: image sets on disk -> cached uint8 arrays -> episodes."""

from __future__ import annotations

import logging
from pathlib import Path

from attnopt.config import Config
from attnopt.data.cache import default_cache_dir
from attnopt.data.csv_layout import load_csv_split
from attnopt.data.folder import load_folder_split
from attnopt.data.glyphs import load_glyphs
from attnopt.data.imageset import ImageSet
from attnopt.data.pickle_layout import load_pickle_split, pickle_path
from attnopt.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The mini-ImageNet layouts, most preferred first: name -> how it looks on disk.
LAYOUTS = {
    "folders": "ROOT/{train,val,test}/<class>/<image>",
    "split CSVs": "ROOT/{train,val,test}.csv (filename,label) with ROOT/images/",
    "pickle caches": "ROOT/mini-imagenet-cache-{train,val,test}.pkl (val also as validation)",
}


def _split_entry(root: Path, layout: str, split: str) -> Path:
    """Where ``split`` of ``layout`` lives in ``root`` (the pickle's first accepted name)."""
    if layout == "folders":
        return root / split
    if layout == "split CSVs":
        return root / f"{split}.csv"
    return pickle_path(root, split) or root / f"mini-imagenet-cache-{split}.pkl"


def detect_layout(root: Path) -> str:
    """The mini-ImageNet layout of ``root`` (a key of :data:`LAYOUTS`).

    The first complete layout in :data:`LAYOUTS` wins; when none is complete, the first one
    that is partly there is an error naming its missing split.
    """

    def there(layout: str, split: str) -> bool:
        entry = _split_entry(root, layout, split)
        return entry.is_dir() if layout == "folders" else entry.is_file()

    present = {layout: [s for s in SPLITS if there(layout, s)] for layout in LAYOUTS}
    found = [layout for layout, splits in present.items() if splits]
    if not found:
        expected = "; ".join(v.replace("ROOT", str(root)) for v in LAYOUTS.values())
        raise UserError(
            f"--data-root {root} holds no mini-ImageNet layout; expected one of: {expected}"
        )
    complete = [layout for layout in found if len(present[layout]) == len(SPLITS)]
    if not complete:
        layout = found[0]
        missing = [s for s in SPLITS if s not in present[layout]]
        raise UserError(
            f"missing split {_split_entry(root, layout, missing[0])}; expected "
            + LAYOUTS[layout].replace("ROOT", str(root))
        )
    if len(found) > 1:
        others = ", ".join(layout for layout in found if layout != complete[0])
        log.info("%s holds several layouts; reading its %s (not: %s)", root, complete[0], others)
    return complete[0]


def load_split(config: Config, split: str) -> ImageSet:
    """The ``split`` ("train", "val" or "test") of the data set that ``config`` names."""
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    if config.data == "glyphs":
        return load_glyphs(split, config.image_size, cache_dir)
    root = Path(config.data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    if config.data == "folder":
        layout = "folders"
        for name in SPLITS:  # fail before spending minutes decoding another split
            if not (root / name).is_dir():
                raise UserError(
                    f"missing split folder {root / name}; expected "
                    f"{root}/{{train,val,test}}/<class>/<image>"
                )
    else:
        layout = detect_layout(root)
    args = (root, split, config.image_size, cache_dir, config.n_workers)
    if layout == "folders":
        return load_folder_split(*args, skip_bad=config.skip_bad_images)
    if layout == "split CSVs":
        return load_csv_split(*args, skip_bad=config.skip_bad_images)
    return load_pickle_split(*args)
