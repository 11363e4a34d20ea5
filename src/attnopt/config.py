"""Every setting of a run in one dataclass, with presets per data set.

Each field of :class:`Config` carries what the rest of the program needs to know about it
(:func:`setting`): its help text and command-line group, whether it fixes the shapes of the
learned parameters (the *architecture*: a checkpoint only loads into a run that agrees on all
of them) and whether a resumed run may change it (a *continuation* setting such as
``--episode``). The command line is built from these fields; the resolved config is saved as
``config.json`` in the run folder before training starts and travels inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attnopt.data.registry import REGISTRY
from attnopt.errors import UserError
from attnopt.models import backbones

# The --data choices, their presets and which pre-train by default: one record each in the
# data-set registry.
DATA_SETS = tuple(data_set.name for data_set in REGISTRY)
CROP_MODES = ("none", "bbox")
BN_MODES = ("support", "transductive")
BN_TRAIN_MODES = ("same", *BN_MODES)
AUGMENT_MODES = ("auto", "none")
ATTENTION_MODES = ("both", "meta", "learner", "none")
ATTN_FEEDS = ("gates", "lstm", "both")
INIT_HEADS = ("zeros", "random")
AMP_MODES = ("none", "bf16")
ADAPT_MODES = ("all", "last", "head")
# --adapt's default per backbone: the paper's for Conv-4; ResNet-12's by measurement
# (benchmarks/README.md, "Backbones and partial adaptation")
DEFAULT_ADAPT = {"conv4": "all", "resnet12": "head"}
DEFAULT_WIDTH = {"conv4": 32, "resnet12": 64}


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    architecture: bool = False,
    continuation: bool = False,
    choices: tuple[str, ...] | None = None,
    train_only: bool = False,
    kind: str = "value",
    minimum: int | None = None,
    pretrain: bool = False,
) -> Any:
    """A Config field with its metadata.

    ``architecture``: fixes parameter shapes (checkpoints must agree). ``continuation``: may
    differ when a run is resumed. ``train_only``: not a flag of ``attnopt test``. ``kind``:
    how the command line takes it: "value", "switch" (``--cpu``), "toggle" (``--compile`` /
    ``--no-compile``) or "bool" (``--pin-mem True``, the seed's style). ``minimum``: the
    smallest value allowed (None is allowed too when it is the default). ``pretrain``: also a
    flag of ``attnopt pretrain``. A default that follows other settings is in :data:`DERIVED`.
    """
    metadata = {
        "help": help,
        "group": group,
        "architecture": architecture,
        "continuation": continuation,
        "choices": choices,
        "train_only": train_only,
        "kind": kind,
        "minimum": minimum,
        "pretrain": pretrain,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """One run's settings. Field names are the command-line flags with ``_`` for ``-``."""

    # episodes: N-way K-shot with Q queries per class
    n_class: int = setting(
        5, "N, classes per episode", group="episodes", architecture=True, minimum=2
    )
    n_shot: int = setting(5, "K, support images per class", group="episodes", minimum=1)
    n_eval: int = setting(15, "Q, query images per class", group="episodes", minimum=1)
    # inner loop: `epoch` passes over the support set in mini-batches of `batch_size`
    epoch: int = setting(
        8,
        "passes over the support set",
        group="inner loop",
        minimum=1,
    )
    batch_size: int = setting(
        25,
        "inner mini-batch size",
        group="inner loop",
        minimum=1,
    )
    # meta-learner and learner
    backbone: str = setting(
        "conv4",
        "the learner: conv4 (the paper's Conv-4), resnet12 (64-160-320-640), or a name "
        "registered from Python (attnopt.register_backbone)",
        group="model",
        architecture=True,
    )
    width: int = setting(
        32,
        "conv4: filters per layer; resnet12: the first block's channels (the others 2.5x, 5x, 10x)",
        group="model",
        architecture=True,
        minimum=1,
        pretrain=True,
    )
    adapt: str = setting(
        "all",
        "what the inner loop adapts: all of θ (the paper), the last block and the head, or "
        "the head; the rest is learned by the outer loop only (cross-attention: always adapted)",
        group="model",
        architecture=True,
        choices=ADAPT_MODES,
    )
    input_size: int = setting(
        4, "meta-learner LSTM input size (must be 4)", group="model", architecture=True
    )
    hidden_size: int = setting(
        20,
        "meta-learner LSTM hidden size",
        group="model",
        architecture=True,
        minimum=1,
    )
    attention: str = setting(
        "both",
        "both = MLAL; meta = attention-LSTM meta-learner; learner = cross-attention learner; "
        "none = Ravi & Larochelle",
        group="model",
        architecture=True,
        choices=ATTENTION_MODES,
    )
    attn_chunk: int = setting(
        64,
        "coordinates per meta-learner attention token",
        group="model",
        architecture=True,
        minimum=1,
    )
    attn_heads: int = setting(
        1,
        "heads of the meta-learner's attention (each with queries, keys and values of 16)",
        group="model",
        architecture=True,
        minimum=1,
    )
    attn_feeds: str = setting(
        "gates",
        "what the meta-learner's attention context feeds: the gates of the step, the LSTM's "
        "recurrent state (the next steps), or both",
        group="model",
        choices=ATTN_FEEDS,
    )
    attn_block: int = setting(
        3, "conv block (1-4) followed by the cross-attention", group="model", architecture=True
    )
    attn_lr_scale: float = setting(
        1.0, "learning rate of the attention meta-parameters relative to --lr", group="model"
    )
    image_size: int = setting(
        28, "image side in pixels", group="model", architecture=True, pretrain=True
    )
    bn: str = setting(
        "support",
        "query BatchNorm statistics: from the support set, or the query batch itself",
        group="model",
        choices=BN_MODES,
    )
    bn_train: str = setting(
        "same",
        "query BatchNorm statistics while meta-training (same: as --bn; the public port: "
        "transductive, with support statistics at test)",
        group="model",
        choices=BN_TRAIN_MODES,
    )
    inner_grad_scale: float = setting(
        1.0,
        "multiplies the inner gradient ∇_t that the meta-learner reads and applies (1: the "
        "mean cross-entropy's gradient; the public port: 1 / --batch-size)",
        group="model",
    )
    bn_eps: float = setting(1e-3, "BatchNorm epsilon", group="model", pretrain=True)
    bn_momentum: float = setting(
        0.95, "accepted for the seed's scripts; unused: no running statistics", group="model"
    )
    # meta-training
    lr: float = setting(
        1e-3,
        "Adam learning rate (on --resume: applied to the restored optimizer)",
        group="meta-training",
        continuation=True,
    )
    init_lr_scale: float = setting(
        1.0,
        "learning rate of c_I (the learned initialisation θ_0) relative to --lr",
        group="meta-training",
    )
    grad_clip: float = setting(0.25, "meta-gradient norm clip", group="meta-training")
    meta_batch: int = setting(
        1,
        "tasks per meta-update, adapted together (the paper: 1); under torchrun split across "
        "the processes",
        group="meta-training",
        minimum=1,
    )
    amp: str = setting(
        "none",
        "bf16: the learner's convolutions in bfloat16 (θ and the meta-learner stay fp32)",
        group="meta-training",
        choices=AMP_MODES,
    )
    compile: bool = setting(
        False,
        "torch.compile the inner loop: faster after a warm-up of tens of seconds (needs a "
        "C++ compiler on the CPU)",
        group="meta-training",
        continuation=True,
        kind="toggle",
    )
    # glyphs: 400 episodes. The 200 more of the earlier 600 moved test accuracy by +0.03 and
    # +0.04 points (seeds 0, 1, paired on 600 test episodes; benchmarks/README.md, issue 26)
    episode: int = setting(
        400,
        "meta-training episodes (tasks)",
        group="meta-training",
        continuation=True,
        minimum=1,
    )
    # glyphs: one validation, at the end. Between checkpoints 200 episodes apart, 100
    # validation episodes chose by noise, and the final checkpoint tested as well or better
    # (+0.36 and +0.07 points, paired; benchmarks/README.md, issue 17)
    val_freq: int = setting(
        400,
        "validate every this many episodes",
        group="meta-training",
        continuation=True,
        minimum=1,
    )
    log_freq: int = setting(
        50,
        "log every this many episodes",
        group="meta-training",
        continuation=True,
        minimum=1,
    )
    max_bad_steps: int = setting(
        10,
        "stop after this many consecutive non-finite losses or meta-gradients (each one's "
        "update is skipped)",
        group="meta-training",
        continuation=True,
        minimum=1,
    )
    save_every: float = setting(
        10.0,
        "also write ckpts/last.pt every this many minutes of training (0: after every meta-update)",
        group="meta-training",
        continuation=True,
        train_only=True,
    )
    # evaluation
    episode_val: int = setting(
        100, "validation episodes", group="evaluation", continuation=True, minimum=1
    )
    episode_test: int = setting(
        600,
        "test episodes (600 is the protocol; fewer for quick runs)",
        group="evaluation",
        continuation=True,
        minimum=1,
    )
    # tasks adapted together in validation and test (same results up to rounding); None: 20 on
    # GPUs, 4 on CPUs (glyph evaluation 11.0 -> 12.8 episodes/s on 2 cores, mini 1.7 -> 1.9)
    eval_batch: int | None = setting(
        None,
        "tasks adapted together in validation and test (20 on GPUs, 4 on CPUs)",
        group="evaluation",
        continuation=True,
        minimum=1,
    )
    # data
    data: str = setting(
        "glyphs", "data set (glyphs: built in)", group="data", choices=DATA_SETS, pretrain=True
    )
    data_root: str | None = setting(
        None, "the data set's folder (see README)", group="data", continuation=True, pretrain=True
    )
    crop: str = setting(
        "none",
        "bbox: cut CUB photos to the bird's bounding box",
        group="data",
        choices=CROP_MODES,
        pretrain=True,
    )
    cache_dir: str | None = setting(
        None,
        "where decoded images are cached (~/.cache/attnopt)",
        group="data",
        continuation=True,
        pretrain=True,
    )
    n_workers: int = setting(
        4, "threads decoding images", group="data", continuation=True, minimum=1, pretrain=True
    )
    skip_bad_images: bool = setting(
        False,
        "skip unreadable images (and list them) instead of stopping",
        group="data",
        kind="switch",
        pretrain=True,
    )
    augment: str = setting(
        "auto",
        "training-time augmentation: auto (photos: crop/flip/jitter; glyphs: mild affine) or none",
        group="data",
        choices=AUGMENT_MODES,
        pretrain=True,
    )
    pin_mem: bool = setting(
        False, "accepted for the seed; unused", group="data", continuation=True, kind="bool"
    )
    # pre-training (attnopt pretrain, or train's first phase)
    pretrain: bool = setting(
        False,
        "first pre-train the learner's features on the training classes (as attnopt pretrain "
        "does, into RUN_DIR/pretrain), then meta-train from them",
        group="pre-training",
        train_only=True,
        kind="toggle",
    )
    pretrain_epochs: int = setting(
        30,
        "passes over the training images",
        group="pre-training",
        minimum=1,
        train_only=True,
        pretrain=True,
    )
    pretrain_lr: float = setting(
        0.05,
        "SGD learning rate (momentum 0.9, weight decay 5e-4), decayed to 0 on a cosine",
        group="pre-training",
        train_only=True,
        pretrain=True,
    )
    pretrain_batch: int = setting(
        128,
        "images per mini-batch",
        group="pre-training",
        minimum=2,
        train_only=True,
        pretrain=True,
    )
    # run
    save: str = setting(
        "logs",
        "run folder (with --resume: the checkpoint's run folder)",
        group="run",
        continuation=True,
        pretrain=True,
    )
    resume: str | None = setting(
        None,
        "checkpoint to continue from (train) or to evaluate (test)",
        group="run",
        continuation=True,
    )
    init: str | None = setting(
        None,
        "start a new run from this checkpoint's weights (fresh optimizer, episode 0)",
        group="run",
        train_only=True,
    )
    init_head: str = setting(
        "zeros",
        "with --init PRETRAINED (from attnopt pretrain): c_I's N-way classifier head starts "
        "at zeros, or at the default random initialisation",
        group="run",
        train_only=True,
        choices=INIT_HEADS,
    )
    cpu: bool = setting(
        False,
        "use the CPU even with a GPU",
        group="run",
        continuation=True,
        kind="switch",
        pretrain=True,
    )
    seed: int = setting(0, "random seed", group="run", pretrain=True)
    tensorboard: bool = setting(
        False,
        'also log scalars to RUN_DIR/tensorboard (pip install "attnopt[tensorboard]")',
        group="run",
        continuation=True,
        train_only=True,
        kind="switch",
    )
    deterministic: bool = setting(
        False,
        "GPU: deterministic algorithms only (slower); the CPU always is, at a fixed "
        "OMP_NUM_THREADS",
        group="run",
        continuation=True,
        kind="switch",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Config from a saved dict; unknown keys (from a newer version) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def architecture(self) -> dict[str, Any]:
        """The settings that fix the learned parameters' shapes, by name."""
        return {f.name: getattr(self, f.name) for f in fields_where("architecture")}


def fields_where(key: str) -> list[dataclasses.Field]:
    """The fields of :class:`Config` whose metadata ``key`` is true."""
    return [f for f in dataclasses.fields(Config) if f.metadata[key]]


def flag(name: str) -> str:
    """'n_shot' -> '--n-shot'."""
    return "--" + name.replace("_", "-")


# Per data set, on top of the dataclass defaults: the presets of the data-set registry
# (attnopt.data.registry, where the measurements behind them are cited).
PRESETS: dict[str, dict[str, Any]] = {data_set.name: data_set.preset for data_set in REGISTRY}


# Pre-training augments whatever a data set's preset says for meta-training: on emoji 32x32
# features pre-trained without augmentation (100% training accuracy) gave the meta-trained
# model nothing (-0.35 points, paired), with it +4.78 (benchmarks/README.md, issue 14).
PRETRAIN_DEFAULTS: dict[str, Any] = {"augment": "auto"}


# The data sets that `attnopt train` pre-trains on first (--pretrain), as the registry says.
PRETRAIN_BY_DEFAULT = tuple(data_set.name for data_set in REGISTRY if data_set.pretrain)


def preset_default(name: str) -> str | None:
    """'400 (glyphs), 50000 (miniimagenet, folder)' when the data set's preset sets field
    ``name``; None when the default is the same for every data set."""
    if not any(name in preset for preset in PRESETS.values()):
        return None
    by_value: dict[Any, list[str]] = {}
    for data, preset in PRESETS.items():
        value = preset.get(name, getattr(Config, name))
        by_value.setdefault(value, []).append(data)
    return ", ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags that were given (not None), after checking that each names a setting."""
    names = {f.name for f in dataclasses.fields(Config)}
    for key in flags:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown setting {key!r}{hint}")
    return {k: v for k, v in flags.items() if v is not None}


# c_I started from trained features drifts away from them at the full learning rate: at 5-shot
# a tenth of it gained 0.4 to 2.4 points for Meta-LSTM and MLAL on emoji drawings (two seeds)
# and 2.0 for MLAL on clipart; at 1-shot it cost MLAL 0.7 to 0.9, and from random weights
# (c_I has everything to learn) it cost Meta-LSTM 2.6 at 5-shot (benchmarks/README.md).
TRAINED_INIT_LR_SCALE = 0.1


@dataclass(frozen=True)
class Derived:
    """A default that follows other settings: ``text`` for the help, ``rule`` computes it from
    the settings known so far (a dict that may lack any of them)."""

    text: str
    rule: Callable[[dict[str, Any]], Any]


def _value(values: dict[str, Any], name: str) -> Any:
    return values.get(name, getattr(Config, name))


def _pretrain_rule(values: dict[str, Any]) -> bool:
    """See :data:`PRETRAIN_BY_DEFAULT`: only Conv-4 (what ``attnopt pretrain`` trains), and
    never with ``--init``, whose weights already start c_I."""
    backbone = _value(values, "backbone")
    return values["data"] in PRETRAIN_BY_DEFAULT and backbone == "conv4" and not values.get("init")


def _init_lr_scale_rule(values: dict[str, Any]) -> float:
    """See :data:`TRAINED_INIT_LR_SCALE`."""
    trained = bool(values.get("pretrain") or values.get("init"))
    return TRAINED_INIT_LR_SCALE if trained and _value(values, "n_shot") > 1 else 1.0


# The defaults that depend on other settings, in the order they are computed (--init-lr-scale
# reads --pretrain). --epoch and --batch-size are the original authors' configuration.
DERIVED: dict[str, Derived] = {
    "width": Derived(
        "32 for conv4, 64 for resnet12",
        lambda v: DEFAULT_WIDTH.get(_value(v, "backbone"), Config.width),
    ),
    "adapt": Derived(
        "all for conv4, head for resnet12",
        lambda v: DEFAULT_ADAPT.get(_value(v, "backbone"), Config.adapt),
    ),
    "epoch": Derived("8, or 12 for 1-shot", lambda v: 12 if _value(v, "n_shot") == 1 else 8),
    "batch_size": Derived(
        "N*K, the whole support set", lambda v: _value(v, "n_class") * _value(v, "n_shot")
    ),
    "pretrain": Derived(
        f"on for --data {' or '.join(PRETRAIN_BY_DEFAULT)} with --backbone conv4, off with --init",
        _pretrain_rule,
    ),
    "init_lr_scale": Derived(
        f"{TRAINED_INIT_LR_SCALE} when c_I starts from trained weights (--pretrain, --init) and "
        "K > 1, else 1",
        _init_lr_scale_rule,
    ),
}


def _with_derived(values: dict[str, Any]) -> Config:
    """The Config of ``values`` with the :data:`DERIVED` defaults it lacks, validated."""
    for name, derived in DERIVED.items():
        if name not in values:
            values[name] = derived.rule(values)
    try:
        config = Config(**values)
    except TypeError as e:  # a setting of the wrong kind (e.g. from a damaged file)
        raise UserError(f"invalid settings: {e}") from None
    validate(config)
    return config


@dataclass(frozen=True)
class Saved:
    """The checkpoint a run starts from, as :func:`resolve` needs it (the caller loads it).

    ``pretrained``: a feature extractor from ``attnopt pretrain``; ``run_dir``: the run folder
    it belongs to (where a resumed run goes on).
    """

    config: Config
    pretrained: bool = False
    path: str | None = None
    run_dir: str | None = None


COMMANDS = ("train", "pretrain", "test")


def resolve(flags: dict[str, Any], *, command: str = "train", saved: Saved | None = None) -> Config:
    """The Config for the flags a user gave (None = not given), from the command line or the
    API: the layers (data set preset, ``saved``, flags) are chosen here, then the
    :data:`DERIVED` defaults fill what they leave out.

    ``train``: a new run on the data set's preset; with ``--resume`` the run of ``saved``
    continued; with ``--init`` a new run from ``saved``'s weights. ``pretrain``:
    :data:`PRETRAIN_DEFAULTS` before the preset. ``test``: ``saved``'s settings, any of them
    changed by a flag (so also a Config edited from Python), ``--epoch`` and ``--batch-size``
    following a new ``--n-shot`` or ``--n-class`` unless given.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    given = _given(flags)
    if command == "pretrain":
        return _with_derived(_new_run({**PRETRAIN_DEFAULTS, **given}))
    if command == "test":
        if saved is None:
            raise ValueError("resolve needs the checkpoint to test (saved=)")
        return _with_derived(_changed(saved.config, given))
    if saved is None or not (given.get("resume") or given.get("init")):  # a new run
        return _with_derived(_new_run(given))
    if given.get("resume"):
        return _with_derived(_resumed(saved, given))
    if saved.pretrained:  # features only: the pre-training's Conv-4 and images
        start = {"image_size": saved.config.image_size, "width": saved.config.width}
        return _with_derived(_new_run({**start, **given}))
    return _with_derived(_new_run(given, saved.config.architecture()))


def _data(given: dict[str, Any], default: str) -> str:
    data = given.get("data", default)
    if data not in DATA_SETS:
        raise UserError(f"--data {data!r} is not one of {', '.join(DATA_SETS)}")
    return data


def _new_run(given: dict[str, Any], start: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new run's settings: the data set's preset, then ``start`` (the architecture of the
    checkpoint of ``--init``), then the flags. UserError where ``--pretrain`` cannot run."""
    data = _data(given, Config.data)
    values = {**PRESETS[data], **(start or {}), **given, "data": data}
    if given.get("pretrain"):
        backbone = _value(values, "backbone")
        if values.get("init"):
            raise UserError(
                "--pretrain and --init exclude each other: --init already starts c_I from a "
                "checkpoint's weights"
            )
        if backbone != "conv4":
            raise UserError(
                f"--pretrain trains Conv-4 features, not --backbone {backbone}; use "
                "--backbone conv4 or --no-pretrain"
            )
    return values


def _changed(saved: Config, given: dict[str, Any]) -> dict[str, Any]:
    """``saved``'s settings with the flags', its derived ones following the flags."""
    _data(given, saved.data)
    values = {**saved.to_dict(), **given}
    if "n_shot" in given or "n_class" in given:
        for name in ("epoch", "batch_size"):
            if name not in given:
                del values[name]
    return values


def _resumed(saved: Saved, given: dict[str, Any]) -> dict[str, Any]:
    """A resumed run's settings: the checkpoint's, with the continuation flags that were given
    (``--episode``, ``--lr``, ...), saving into its run folder unless ``--save`` says otherwise.

    Any other flag that disagrees with the checkpoint is a UserError: a resumed run is the
    same run; a new run from the checkpoint's weights is ``--init``.
    """
    if given.get("init"):
        raise UserError("--resume and --init exclude each other: continue a run, or start one")
    config, checkpoint = saved.config, saved.path
    continuation = {f.name for f in fields_where("continuation")}
    for name, value in given.items():
        if name not in continuation and value != getattr(config, name):
            allowed = ", ".join(flag(n) for n in sorted(continuation - {"resume", "save"}))
            raise UserError(
                f"{flag(name)} {value} disagrees with checkpoint {checkpoint}, which was "
                f"trained with {flag(name)} {getattr(config, name)}; a resumed run keeps its "
                f"settings (it may change only {allowed}); to start a new run from its "
                f"weights, use --init {checkpoint} --save NEW_FOLDER"
            )
    return {**config.to_dict(), "save": saved.run_dir, **given, "init": config.init}


def validate(config: Config) -> None:
    """Raise UserError naming the first flag with an impossible value."""
    for f in dataclasses.fields(Config):
        value, minimum, choices = (
            getattr(config, f.name),
            f.metadata["minimum"],
            f.metadata["choices"],
        )
        if minimum is not None and value is not None and value < minimum:
            raise UserError(f"{flag(f.name)} must be at least {minimum}, got {value}")
        if choices and value not in choices:
            raise UserError(f"{flag(f.name)} {value!r} is not one of {', '.join(choices)}")
    if config.backbone not in backbones.names():
        raise UserError(
            f"--backbone {config.backbone!r} is not one of {', '.join(backbones.names())}; "
            "register your own with attnopt.register_backbone before using it"
        )
    if config.backbone in backbones.BUILT_IN and not 1 <= config.attn_block <= 4:
        raise UserError(f"--attn-block must be 1, 2, 3 or 4, got {config.attn_block}")
    if config.attn_block < 1:
        raise UserError(f"--attn-block must be at least 1, got {config.attn_block}")
    for name in (
        "lr",
        "grad_clip",
        "bn_eps",
        "attn_lr_scale",
        "init_lr_scale",
        "inner_grad_scale",
    ):  # --grad-clip inf: no clipping
        value = getattr(config, name)
        if not value > 0 or (name != "grad_clip" and math.isinf(value)):
            raise UserError(f"{flag(name)} must be a positive number, got {value}")
    if not (config.save_every >= 0 and math.isfinite(config.save_every)):
        raise UserError(f"--save-every must be 0 or more minutes, got {config.save_every}")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed must be between 0 and {2**32 - 1}, got {config.seed}")
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
    if config.crop == "bbox" and config.data != "cub":
        raise UserError(
            f"--crop bbox needs --data cub (bounding boxes come with CUB-200-2011), not "
            f"--data {config.data}"
        )
    if config.data != "glyphs" and not config.data_root:
        raise UserError(f"--data {config.data} needs --data-root (the folder holding its files)")
