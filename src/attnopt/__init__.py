"""attnopt: few-shot image classification with a learned LSTM optimizer and attention.

The Python API (see the README): :func:`load` a checkpoint, ``.adapt`` it to a support set and
``.predict`` query images; :func:`train` and :func:`evaluate` return their results;
:func:`make_config` builds a :class:`Config` from command-line flags given as keywords;
:func:`register_backbone` puts the learned optimizer on your own feature extractor
(:class:`ModuleLearner` is the learner it makes).

The names are imported on first use, so ``import attnopt`` is quick and pulls in neither
torch nor matplotlib; the submodules have names of their own (``attnopt.training.loop``,
``attnopt.training.evaluation``), so the functions never hide them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptedTask": "attnopt.api",
    "FewShotClassifier": "attnopt.api",
    "evaluate": "attnopt.api",
    "load": "attnopt.api",
    "make_config": "attnopt.api",
    "train": "attnopt.api",
    "Config": "attnopt.config",
    "ModuleLearner": "attnopt.models.wrap",
    "register_backbone": "attnopt.models.backbones",
    "UserError": "attnopt.errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from attnopt.api import (  # noqa: F401
        AdaptedTask,
        FewShotClassifier,
        evaluate,
        load,
        make_config,
        train,
    )
    from attnopt.config import Config  # noqa: F401
    from attnopt.errors import UserError  # noqa: F401
    from attnopt.models.backbones import register_backbone  # noqa: F401
    from attnopt.models.wrap import ModuleLearner  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
