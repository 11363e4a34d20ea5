"""Every setting of a run in one dataclass, with presets per data set.

The command line maps onto :class:`Config`; the resolved config is saved as ``config.json``
in the run folder before training starts and travels inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from attnopt.errors import UserError

DATA_SETS = (
    "glyphs",
    "miniimagenet",
    "folder",
    "tieredimagenet",
    "cifarfs",
    "fc100",
    "omniglot",
    "cub",
)
CROP_MODES = ("none", "bbox")
BN_MODES = ("support", "transductive")
AUGMENT_MODES = ("auto", "none")
ATTENTION_MODES = ("both", "meta", "learner", "none")
AMP_MODES = ("none", "bf16")

# Settings that fix the shapes of the learned parameters: a checkpoint only loads into a
# run that agrees on all of them.
ARCHITECTURE_FIELDS = (
    "n_class",
    "image_size",
    "hidden_size",
    "input_size",
    "attention",
    "attn_chunk",
    "attn_block",
)


@dataclass(frozen=True)
class Config:
    """One run's settings. Field names are the command-line flags with ``_`` for ``-``."""

    # episodes: N-way K-shot with Q queries per class
    n_class: int = 5
    n_shot: int = 5
    n_eval: int = 15
    # inner loop: `epoch` passes over the support set in mini-batches of `batch_size`
    epoch: int = 8
    batch_size: int = 25
    # meta-learner
    input_size: int = 4
    hidden_size: int = 20
    attention: str = "both"
    attn_chunk: int = 64
    attn_block: int = 3  # the cross-attention sits after this conv block (1-4)
    attn_lr_scale: float = 1.0  # learning rate of the attention meta-parameters / lr
    # learner
    image_size: int = 28
    bn: str = "support"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.95  # accepted for the seed's scripts; no running statistics are kept
    # meta-training
    lr: float = 1e-3
    grad_clip: float = 0.25
    meta_batch: int = 1  # tasks per meta-update (the paper: 1); `episode` counts tasks
    # tasks adapted together in validation and test (same results); None: 20 on GPUs, 1 on
    # CPUs, where grouped convolutions over tasks are slower than one task at a time
    eval_batch: int | None = None
    amp: str = "none"  # bf16: the learner's convolutions in bfloat16; θ and the LSTM in fp32
    compile: bool = False  # torch.compile the inner loop's hot paths (attnopt/compilation.py)
    episode: int = 600
    episode_val: int = 100
    episode_test: int = 600
    val_freq: int = 200
    log_freq: int = 50
    max_bad_steps: int = 10  # consecutive non-finite updates before training stops
    # data
    data: str = "glyphs"
    data_root: str | None = None
    cache_dir: str | None = None
    n_workers: int = 4
    skip_bad_images: bool = False
    crop: str = "none"  # bbox: cut CUB photos to the bird's bounding box
    augment: str = "auto"
    pin_mem: bool = False
    # run
    save: str = "logs"
    resume: str | None = None
    cpu: bool = False
    seed: int = 0
    tensorboard: bool = False  # also log scalars to <save>/tensorboard
    deterministic: bool = False  # GPU: deterministic kernels only (the CPU always is)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Config from a saved dict; unknown keys (from a newer version) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# Per data set, on top of the dataclass defaults (which are the built-in data set's quick
# preset: it trains and tests in minutes on a laptop CPU): photo data sets take the seed's
# mini-ImageNet settings.
_PHOTO_PRESET: dict[str, Any] = {"image_size": 84, "episode": 50000, "val_freq": 1000}
PRESETS: dict[str, dict[str, Any]] = {
    "glyphs": {},
    "miniimagenet": _PHOTO_PRESET,
    "folder": _PHOTO_PRESET,
    # The other benchmarks keep the seed's schedule; image sizes are their papers'
    # (tieredImageNet and CUB 84, CIFAR-FS and FC100 32, Omniglot 28). Omniglot papers
    # augment only with the rotations that are classes of their own.
    "tieredimagenet": _PHOTO_PRESET,
    "cub": _PHOTO_PRESET,
    "cifarfs": {**_PHOTO_PRESET, "image_size": 32},
    "fc100": {**_PHOTO_PRESET, "image_size": 32},
    "omniglot": {**_PHOTO_PRESET, "image_size": 28, "augment": "none"},
}


def resolve(flags: dict[str, Any], base: Config | None = None) -> Config:
    """The Config for the flags a user gave (None = not given) on top of ``base``.

    Without ``base`` the data set's preset supplies what the flags leave out. ``base`` is a
    checkpoint's config when testing it. Defaults that depend on other settings: ``--epoch``
    is 12 for 1-shot and 8 otherwise, and ``--batch-size`` is the whole support set (N*K), as
    in the original authors' configuration; they follow ``--n-shot``/``--n-class``.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    data = given.get("data", base.data if base else Config.data)
    if data not in DATA_SETS:
        raise UserError(f"--data {data!r} is not one of {', '.join(DATA_SETS)}")
    if base is None:
        values = {**PRESETS[data], **given}
    else:
        values = {**base.to_dict(), **given}
        if "n_shot" in given or "n_class" in given:
            for derived in ("epoch", "batch_size"):
                if derived not in given:
                    del values[derived]
    n_shot = values.get("n_shot", Config.n_shot)
    values.setdefault("epoch", 12 if n_shot == 1 else 8)
    values.setdefault("batch_size", values.get("n_class", Config.n_class) * n_shot)
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raise UserError naming the first flag with an impossible value."""
    positive = (
        "n_class",
        "n_shot",
        "n_eval",
        "epoch",
        "batch_size",
        "hidden_size",
        "episode",
        "episode_val",
        "episode_test",
        "val_freq",
        "log_freq",
        "max_bad_steps",
        "n_workers",
        "attn_chunk",
        "meta_batch",
    )
    if config.eval_batch is not None and config.eval_batch < 1:
        raise UserError(f"--eval-batch must be at least 1, got {config.eval_batch}")
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}"
            )
    if not 1 <= config.attn_block <= 4:
        raise UserError(f"--attn-block must be 1, 2, 3 or 4, got {config.attn_block}")
    for name in ("lr", "grad_clip", "bn_eps", "attn_lr_scale"):  # --grad-clip inf: no clipping
        value = getattr(config, name)
        if not value > 0 or (name != "grad_clip" and math.isinf(value)):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed must be between 0 and {2**32 - 1}, got {config.seed}")
    if config.n_class < 2:
        raise UserError(f"--n-class must be at least 2, got {config.n_class}")
    if config.input_size != 4:
        raise UserError(
            f"--input-size must be 4 ([preprocessed loss, preprocessed gradient]), "
            f"got {config.input_size}"
        )
    if config.image_size < 16:
        raise UserError(
            f"--image-size must be at least 16 (four 2x2 max-pools), got {config.image_size}"
        )
    if config.batch_size > config.n_class * config.n_shot:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the support set "
            f"(--n-class x --n-shot = {config.n_class * config.n_shot})"
        )
    if config.bn not in BN_MODES:
        raise UserError(f"--bn {config.bn!r} is not one of {', '.join(BN_MODES)}")
    if config.crop not in CROP_MODES:
        raise UserError(f"--crop {config.crop!r} is not one of {', '.join(CROP_MODES)}")
    if config.crop == "bbox" and config.data != "cub":
        raise UserError(
            f"--crop bbox needs --data cub (bounding boxes come with CUB-200-2011), not "
            f"--data {config.data}"
        )
    if config.augment not in AUGMENT_MODES:
        raise UserError(f"--augment {config.augment!r} is not one of {', '.join(AUGMENT_MODES)}")
    if config.amp not in AMP_MODES:
        raise UserError(f"--amp {config.amp!r} is not one of {', '.join(AMP_MODES)}")
    if config.attention not in ATTENTION_MODES:
        raise UserError(
            f"--attention {config.attention!r} is not one of {', '.join(ATTENTION_MODES)}"
        )
    if config.data != "glyphs" and not config.data_root:
        raise UserError(f"--data {config.data} needs --data-root (the folder holding its files)")
