"""Data: image sets on disk -> cached uint8 arrays -> episodes."""

from __future__ import annotations

from pathlib import Path

from attnopt.config import Config
from attnopt.data.cache import default_cache_dir
from attnopt.data.folder import load_folder_split
from attnopt.data.glyphs import load_glyphs
from attnopt.data.imageset import ImageSet
from attnopt.errors import UserError

SPLITS = ("train", "val", "test")


def load_split(config: Config, split: str) -> ImageSet:
    """The ``split`` ("train", "val" or "test") of the data set that ``config`` names."""
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    if config.data == "glyphs":
        return load_glyphs(split, config.image_size, cache_dir)
    root = Path(config.data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    if config.data == "miniimagenet" and not (root / "train").is_dir():
        raise UserError(
            f"--data-root {root} holds no mini-ImageNet layout; expected "
            f"{root}/{{train,val,test}}/<class>/<image>"
        )
    for name in SPLITS:  # fail before spending minutes decoding another split
        if not (root / name).is_dir():
            raise UserError(
                f"missing split folder {root / name}; expected "
                f"{root}/{{train,val,test}}/<class>/<image>"
            )
    return load_folder_split(root, split, config.image_size, cache_dir, config.n_workers)
