"""attnopt: few-shot image classification with a learned LSTM optimizer and attention.

The Python API (see the README): :func:`load` a checkpoint, ``.adapt`` it to a support set and
``.predict`` query images; :func:`train` and :func:`evaluate` return their results;
:func:`make_config` builds a :class:`Config` from command-line flags given as keywords.
"""

__version__ = "0.1.0"

# Importing these functions binds the names `train` and `evaluate` here, over the submodules
# of the same names: `attnopt.train` is the function; `from attnopt.train import ...` still
# reaches the module.
from attnopt.api import (  # noqa: E402
    AdaptedTask,
    FewShotClassifier,
    evaluate,
    load,
    make_config,
    train,
)
from attnopt.config import Config  # noqa: E402
from attnopt.errors import UserError  # noqa: E402

__all__ = [
    "AdaptedTask",
    "Config",
    "FewShotClassifier",
    "UserError",
    "evaluate",
    "load",
    "make_config",
    "train",
]
