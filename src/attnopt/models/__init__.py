"""The base learner (a pure function of a flat parameter vector) and the meta-learner."""

from __future__ import annotations

from attnopt.config import Config
from attnopt.models.learner import Conv4Learner
from attnopt.models.metalearner import MetaLearner


def build_model(config: Config, in_channels: int) -> tuple[Conv4Learner, MetaLearner]:
    """The learner and its meta-learner for ``config``, freshly initialised (global torch RNG)."""
    learner = Conv4Learner(in_channels, config.n_class, config.image_size, bn_eps=config.bn_eps)
    metalearner = MetaLearner(learner.init_theta(), config.input_size, config.hidden_size)
    return learner, metalearner
