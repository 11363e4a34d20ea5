"""The base learner (a pure function of a flat parameter vector) and the meta-learner."""

from __future__ import annotations

import torch
from torch import nn

from attnopt.config import Config
from attnopt.models import backbones
from attnopt.models.backend import choose_backend
from attnopt.models.base import Learner
from attnopt.models.learner import Conv4Learner
from attnopt.models.metalearner import AttentionMetaLearner, MetaLearner
from attnopt.models.resnet12 import ResNet12Learner, resnet12_channels


class FewShotModel(nn.Module):
    """Everything meta-training learns: the meta-learner (c_I, LSTM, gates, attention) and
    the learner's own meta-parameters (the cross-attention scale). Its ``state_dict`` is what
    a checkpoint stores; θ itself is never a parameter of it.
    """

    def __init__(self, learner: Learner, metalearner: MetaLearner) -> None:
        super().__init__()
        self.learner = learner
        self.metalearner = metalearner

    def place(self, device: torch.device | str) -> FewShotModel:
        """Move the model to ``device`` and take the fast paths chosen for it
        (:func:`attnopt.models.backend.choose_backend`). Returns the model."""
        self.to(device)
        backend = choose_backend(device)
        self.learner.use_backend(backend)
        self.metalearner.use_backend(backend)
        return self

    def param_groups(
        self, lr: float, attn_lr_scale: float, init_lr_scale: float = 1.0
    ) -> list[dict]:
        """Adam parameter groups: the attention meta-parameters (γ, the meta-learner's
        projections and tensor embeddings) take ``attn_lr_scale`` times the learning rate
        (``--attn-lr-scale``; 1 by default, one learning rate for everything as in the paper),
        and c_I ``init_lr_scale`` times it (``--init-lr-scale``; a group of its own only when
        it is not 1, so older checkpoints' optimizer states still fit).
        """
        attention, init, rest = [], [], []
        for name, p in self.named_parameters():
            if ".attn_" in name or "embedding" in name:
                attention.append(p)
            elif name == "metalearner.c_init" and init_lr_scale != 1.0:
                init.append(p)
            else:
                rest.append(p)
        groups = [{"params": rest, "lr": lr}]
        if init:
            groups.append({"params": init, "lr": lr * init_lr_scale})
        if attention:
            groups.append({"params": attention, "lr": lr * attn_lr_scale})
        return groups


def build_learner(config: Config, in_channels: int) -> Learner:
    """The learner that ``config`` describes (``--backbone``, ``--width``, ``--adapt``,
    ``--attention``, ``--attn-block``, ``--amp``)."""
    common = dict(
        cross_attention=config.attention in ("learner", "both"),
        amp_dtype=torch.bfloat16 if config.amp == "bf16" else None,
        attn_block=config.attn_block,
        adapt=config.adapt,
    )
    size = config.image_size
    if config.backbone == "conv4":
        return Conv4Learner(
            in_channels, config.n_class, size, config.width, config.bn_eps, **common
        )
    if config.backbone == "resnet12":
        channels = resnet12_channels(config.width)
        return ResNet12Learner(in_channels, config.n_class, size, channels, config.bn_eps, **common)
    from attnopt.models.wrap import learner_from_build  # user backbones only

    return learner_from_build(
        config.backbone, backbones.builder(config.backbone), in_channels, config.n_class, size,
        **common,
    )  # fmt: skip


def build_model(
    config: Config, in_channels: int, device: torch.device | str = "cpu"
) -> FewShotModel:
    """The model that ``config`` describes, freshly initialised (global torch RNG, on the
    CPU: the same numbers for every device), placed on ``device`` (:meth:`FewShotModel.place`).

    ``--attention``: none = Ravi & Larochelle; meta = attention-LSTM meta-learner;
    learner = cross-attention learner; both = MLAL. The meta-learner's LSTM runs over the
    coordinates that ``--adapt`` adapts.
    """
    learner = build_learner(config, in_channels)
    init_theta = learner.init_theta()
    if config.attention in ("meta", "both"):
        metalearner: MetaLearner = AttentionMetaLearner(
            init_theta,
            [s.numel for s in learner.adapted_specs],
            config.input_size,
            config.hidden_size,
            chunk=config.attn_chunk,
            heads=config.attn_heads,
        )
    else:
        metalearner = MetaLearner(
            init_theta, config.input_size, config.hidden_size, adapted=learner.num_adapted
        )
    metalearner.grad_scale, metalearner.feeds = config.inner_grad_scale, config.attn_feeds
    return FewShotModel(learner, metalearner).place(device)
