"""mini-ImageNet (Vinyals et al. 2016, Ravi & Larochelle's split) in any of its three layouts:
class folders, split CSVs or pickle caches (see :mod:`attnopt.data.folder`,
:mod:`attnopt.data.csv_layout` and :mod:`attnopt.data.pickle_layout`)."""

from __future__ import annotations

from attnopt.data.csv_layout import load_csv_split
from attnopt.data.folder import load_folder_split
from attnopt.data.imageset import ImageSet
from attnopt.data.layouts import Layout, pick_layout
from attnopt.data.pickle_layout import load_pickle_split, pickle_path
from attnopt.data.registry import DataOptions

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
LOADERS = {
    "folders": load_folder_split,
    "split CSVs": load_csv_split,
    "pickle caches": load_pickle_split,
}


def load_miniimagenet_split(options: DataOptions, split: str) -> ImageSet:
    """One split of mini-ImageNet in whichever layout ``--data-root`` holds."""
    return LOADERS[pick_layout(options.data_root(), LAYOUTS, "mini-ImageNet")](options, split)
