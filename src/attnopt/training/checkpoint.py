"""Checkpoints: save atomically, load safely, refuse incompatible configurations.

A checkpoint is a dict of tensors and plain values, loaded with ``weights_only=True`` so a
file from a stranger cannot run code; the configuration travels as a JSON string. It also
holds every random number generator's state (python, numpy, torch, CUDA), so that a resumed
run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnopt.config import Config, Saved, flag, validate
from attnopt.errors import UserError
from attnopt.models.build import FewShotModel, build_model
from attnopt.runs.fileio import atomic_write
from attnopt.runs.folder import run_dir_of

FORMAT = "attnopt-checkpoint"
VERSION = 1
# What a checkpoint holds: a meta-trained model (attnopt train), or a feature extractor from
# attnopt pretrain, which only starts a new run (train --init).
META_TRAINED, PRETRAINED = "meta-trained", "pretrained"
_REQUIRED = {"config": str, "in_channels": int, "model": dict, "episode": int}


def rng_states() -> dict[str, Any]:
    """Every global RNG's state as tensors and plain values (no pickled objects)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # ('MT19937', keys, pos, has_gauss, cached_gaussian)
    states: dict[str, Any] = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global RNGs to ``states`` (from :func:`rng_states`); missing ones stay as
    they are (checkpoints of older versions hold only the torch state)."""
    if "python" in states:
        version, internal, gauss = json.loads(states["python"])
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        n = states["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


def _non_finite(tree: Any, name: str = "") -> str | None:
    """The name of the first tensor or float in ``tree`` with a NaN or infinity, or None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return name
    elif isinstance(tree, float):
        if not math.isfinite(tree):
            return name
    elif isinstance(tree, dict):
        for key, value in tree.items():
            found = _non_finite(value, f"{name}.{key}" if name else str(key))
            if found is not None:
                return found
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            found = _non_finite(value, f"{name}[{i}]")
            if found is not None:
                return found
    return None


def save_checkpoint(
    path: str | os.PathLike,
    *,
    config: Config,
    in_channels: int,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None,
    episode: int,
    best_accuracy: float,
    best_episode: int,
    train_state: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    kind: str = META_TRAINED,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temp file beside it, fsync, rename).

    ``train_state`` holds whatever else the training loop needs to resume exactly (tensors
    and plain values); ``rng`` the random generators' states (by default: as they are now);
    ``kind`` what the model is (META_TRAINED or PRETRAINED); ``extra`` plain values to keep.
    UserError, and nothing written, when the model or the optimizer holds a NaN or an
    infinity: a checkpoint is always a good one.
    """
    bad = _non_finite(
        {"model": model, "optimizer": optimizer, "train_state": train_state, "best": best_accuracy}
    )
    if bad is not None:
        raise UserError(
            f"not saving {path}: {bad} is not finite at episode {episode} (training "
            f"diverged); {path} is left as it was; lower --lr or --grad-clip"
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict()),
        "in_channels": in_channels,
        "model": model,
        "optimizer": optimizer,
        "episode": episode,
        "best_accuracy": best_accuracy,
        "best_episode": best_episode,
        "rng": rng if rng is not None else rng_states(),
        "train_state": train_state or {},
        "kind": kind,
        **(extra or {}),
    }
    buf = io.BytesIO()  # serialise first: a failing write then is a plain OSError
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), "wb")


_TEXT_BYTES = frozenset(b"\t\n\r\f" + bytes(range(32, 127)) + bytes(range(128, 256)))


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a file written by torch.save (a zip archive, or a pickle in the
    legacy format), or None when it may be one."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "it is empty"
    if all(byte in _TEXT_BYTES for byte in head):
        return "it is a text file"
    return "it is not a file written by torch.save"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; UserError if missing, damaged or not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    not_ours = _not_a_torch_file(path)
    if not_ours:
        raise UserError(
            f"{path} is not an attnopt checkpoint: {not_ours}; checkpoints are the .pt files "
            "that attnopt train writes into RUN/ckpts/"
        )
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol: the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever fails while parsing a file means it is damaged
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {path} cannot be loaded ({first_line}); it is damaged or "
            "not an attnopt checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an attnopt checkpoint")
    if ckpt.get("version") != VERSION:
        raise UserError(
            f"checkpoint {path} has format version {ckpt.get('version')}; this "
            f"attnopt reads version {VERSION}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"checkpoint {path} is damaged: its {key!r} is missing or invalid")
    try:
        config = Config.from_dict(json.loads(ckpt["config"]))
        validate(config)
    except (ValueError, TypeError, AttributeError, UserError) as e:
        raise UserError(
            f"checkpoint {path} is damaged: its configuration is invalid ({e})"
        ) from None
    ckpt["config"] = config
    ckpt.setdefault("kind", META_TRAINED)  # older checkpoints
    if ckpt["kind"] not in (META_TRAINED, PRETRAINED):
        raise UserError(f"checkpoint {path} is damaged: unknown kind {ckpt['kind']!r}")
    return ckpt


def check_compatible(
    ckpt: dict[str, Any], config: Config, in_channels: int, path: str | os.PathLike
) -> None:
    """UserError unless ``config`` and the data build the same parameter shapes as ``ckpt``:
    the architecture settings are compared as a whole, and every difference is named."""
    saved, wanted = ckpt["config"].architecture(), config.architecture()
    differ = [name for name in saved if saved[name] != wanted[name]]
    if differ:

        def flags(values: dict[str, Any]) -> str:
            return " ".join(f"{flag(name)} {values[name]}" for name in differ)

        raise UserError(
            f"checkpoint {path} was trained with {flags(saved)}, this run uses "
            f"{flags(wanted)}; pass {flags(saved)} or train a new model"
        )
    if ckpt["in_channels"] != in_channels:
        raise UserError(
            f"checkpoint {path} expects {ckpt['in_channels']}-channel images, the "
            f"data has {in_channels}; use data like the training data"
        )


def model_from_checkpoint(
    ckpt: dict[str, Any], config: Config, in_channels: int, path: str | os.PathLike
) -> FewShotModel:
    """The model stored in ``ckpt`` (read from ``path``), after checking that ``config`` and
    ``in_channels``-channel data build the same shapes."""
    refuse_pretrained(ckpt, path)
    check_compatible(ckpt, config, in_channels, path)
    model = build_model(config, in_channels)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # a registered backbone whose builder changed since training
        first = str(e).strip().splitlines()
        raise UserError(
            f"checkpoint {path} does not fit backbone {config.backbone!r} as it is built now "
            f"({first[-1].strip() if first else e}); build it as it was when the checkpoint "
            "was trained"
        ) from None
    return model


def refuse_pretrained(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """UserError when ``ckpt`` is a pre-trained feature extractor: it holds no meta-learner,
    so it can only start a new run."""
    if ckpt["kind"] == PRETRAINED:
        raise UserError(
            f"{path} is a feature extractor from attnopt pretrain, not a meta-trained model; "
            f"start a new run from it with attnopt train --init {path}"
        )


def as_saved(ckpt: dict[str, Any], path: str | os.PathLike) -> Saved:
    """What :func:`attnopt.config.resolve` needs of the checkpoint ``ckpt`` loaded from ``path``."""
    return Saved(ckpt["config"], ckpt["kind"] == PRETRAINED, str(path), str(run_dir_of(path)))
