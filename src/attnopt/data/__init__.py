"""Data: image sets on disk -> cached uint8 arrays -> episodes."""

from __future__ import annotations

from pathlib import Path

from attnopt.config import Config
from attnopt.data.cache import default_cache_dir
from attnopt.data.csv_layout import load_csv_split
from attnopt.data.folder import load_folder_split
from attnopt.data.glyphs import load_glyphs
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import SPLITS, Layout, pick_layout
from attnopt.data.pickle_layout import load_pickle_split, pickle_path
from attnopt.data.registry import LOADERS
from attnopt.errors import UserError

# The mini-ImageNet layouts, most preferred first.
LAYOUTS = {
    "folders": Layout("ROOT/{train,val,test}/<class>/<image>", lambda r, s: [r / s]),
    "split CSVs": Layout(
        "ROOT/{train,val,test}.csv (filename,label) with ROOT/images/",
        lambda r, s: [r / f"{s}.csv"],
    ),
    "pickle caches": Layout(
        "ROOT/mini-imagenet-cache-{train,val,test}.pkl (val also as validation)",
        lambda r, s: [pickle_path(r, s) or r / f"mini-imagenet-cache-{s}.pkl"],
    ),
}


def detect_layout(root: Path) -> str:
    """The mini-ImageNet layout of ``root`` (a key of :data:`LAYOUTS`)."""
    return pick_layout(root, LAYOUTS, "mini-ImageNet")


def load_split(config: Config, split: str) -> ImageSet:
    """The ``split`` ("train", "val" or "test") of the data set that ``config`` names."""
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    if config.data == "glyphs":
        return load_glyphs(split, config.image_size, cache_dir)
    root = Path(config.data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    if config.data in LOADERS:
        return LOADERS[config.data](root, split, config, cache_dir)
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
