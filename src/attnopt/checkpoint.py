"""Checkpoints: save atomically, load safely, refuse incompatible configurations.

A checkpoint is a dict of tensors and plain values, loaded with ``weights_only=True`` so a
file from a stranger cannot run code; the configuration travels as a JSON string.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from attnopt.config import ARCHITECTURE_FIELDS, Config
from attnopt.errors import UserError
from attnopt.fileio import atomic_path

FORMAT = "attnopt-checkpoint"
VERSION = 1


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
) -> None:
    """Write a checkpoint atomically (temp file beside it, fsync, rename)."""
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
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; UserError if missing, damaged or not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        struct.error,  # a short file read as a legacy (non-zip) pickle
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
    ) as e:
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
    ckpt["config"] = Config.from_dict(json.loads(ckpt["config"]))
    return ckpt


def check_compatible(
    ckpt: dict[str, Any], config: Config, in_channels: int, path: str | os.PathLike
) -> None:
    """UserError unless ``config`` and the data build the same parameter shapes as ``ckpt``."""
    saved: Config = ckpt["config"]
    for name in ARCHITECTURE_FIELDS:
        if getattr(saved, name) != getattr(config, name):
            raise UserError(
                f"checkpoint {path} was trained with --{name.replace('_', '-')} "
                f"{getattr(saved, name)}, this run uses {getattr(config, name)}; "
                f"pass --{name.replace('_', '-')} {getattr(saved, name)} or train a new model"
            )
    if ckpt["in_channels"] != in_channels:
        raise UserError(
            f"checkpoint {path} expects {ckpt['in_channels']}-channel images, the "
            f"data has {in_channels}; use data like the training data"
        )
