"""Backbones by name (``--backbone``): the built-in ones and those registered from Python.

Kept free of torch so that the configuration can check a name without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BUILT_IN = ("conv4", "resnet12")
_REGISTERED: dict[str, Callable[[int, int], Any]] = {}


def register_backbone(name: str, build: Callable[[int, int], Any]) -> None:
    """Make ``build`` available as ``backbone=name`` (``attnopt.train(backbone=name)``, and
    every checkpoint trained with it, in this process).

    ``build(in_channels, image_size)`` returns a fresh feature extractor: an ``nn.Module``
    mapping images (n, C, H, W) to features (n, F), or a pair ``(function, params)`` with
    ``function(params, images) -> features`` and ``params`` a dict of named float tensors.
    attnopt adds the linear head and checks the contract (see
    :class:`attnopt.models.wrap.ModuleLearner`). Registering a name again replaces it.
    """
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in backbone; register yours under another name")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"backbone names are letters, digits, '-' and '_', got {name!r}")
    _REGISTERED[name] = build


def names() -> tuple[str, ...]:
    """Every backbone name known in this process: the built-in ones first."""
    return (*BUILT_IN, *sorted(_REGISTERED))


def builder(name: str) -> Callable[[int, int], Any]:
    """The function registered as ``name`` (KeyError when none is)."""
    return _REGISTERED[name]
