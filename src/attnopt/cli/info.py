"""``attnopt info CKPT``: how a checkpoint was trained, read from the checkpoint (and its run
folder's test.json), without loading any data."""

from __future__ import annotations

import json
import os

from attnopt.config import Config
from attnopt.runs.folder import run_dir_of
from attnopt.training.checkpoint import PRETRAINED, load_checkpoint

MODELS = {
    "none": "Meta-LSTM (Ravi & Larochelle; --attention none)",
    "meta": "attention-LSTM meta-learner (--attention meta)",
    "learner": "cross-attention learner (--attention learner)",
    "both": "MLAL: attention-LSTM meta-learner and cross-attention learner (--attention both)",
}


def learner_name(c: Config) -> str:
    """'Conv-4 (32 filters)', 'ResNet-12 (64-160-320-640)' or a registered backbone's name."""
    if c.backbone == "conv4":
        return f"Conv-4 ({c.width} filters)"
    if c.backbone == "resnet12":
        widths = (c.width, c.width * 5 // 2, c.width * 5, c.width * 10)
        return f"ResNet-12 ({'-'.join(map(str, widths))})"
    return f"backbone {c.backbone!r}"


def describe(path: str | os.PathLike) -> str:
    """A few lines: data, task, model, training, best validation and test result."""
    ckpt = load_checkpoint(path)
    c: Config = ckpt["config"]
    if ckpt["kind"] == PRETRAINED:
        return _describe_pretrained(path, ckpt)
    params = ckpt["model"]["metalearner.c_init"].numel()
    data = c.data + (f" ({c.data_root})" if c.data_root else "")
    lines = [
        f"checkpoint {path}: episode {ckpt['episode']} of {c.episode}",
        f"data: {data}, {c.image_size}x{c.image_size}, {ckpt['in_channels']} channel(s)",
        f"task: {c.n_class}-way {c.n_shot}-shot, {c.n_eval} queries per class; inner loop "
        f"{c.epoch} passes in mini-batches of {c.batch_size}",
        f"model: {MODELS[c.attention]}; {learner_name(c)} learner with {params:,} "
        f"parameters (--adapt {c.adapt}), LSTM hidden size {c.hidden_size}",
        f"training: lr {c.lr:g}, meta-batch {c.meta_batch}, seed {c.seed}, augment "
        f"{c.augment}, BatchNorm {c.bn}" + (f", from the weights of {c.init}" if c.init else ""),
    ]
    if ckpt["best_episode"]:
        lines.append(
            f"best validation: {ckpt['best_accuracy']:.2f}% at episode {ckpt['best_episode']}"
        )
    else:
        lines.append("best validation: none yet")
    test = run_dir_of(path) / "test.json"
    try:
        result = json.loads(test.read_text(encoding="utf-8"))
        lines.append(
            f"test ({test}, {result['checkpoint']}): {result['accuracy']:.2f}% ± "
            f"{result['ci95']:.2f}% ({result['episodes']} episodes, {result['n_class']}-way "
            f"{result['n_shot']}-shot)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        lines.append("test: none recorded beside it")
    return "\n".join(lines)


def _describe_pretrained(path: str | os.PathLike, ckpt: dict) -> str:
    c: Config = ckpt["config"]
    data = c.data + (f" ({c.data_root})" if c.data_root else "")
    return "\n".join(
        [
            f"checkpoint {path}: a feature extractor from attnopt pretrain (start a run from "
            f"it with attnopt train --init {path})",
            f"data: {data}, {c.image_size}x{c.image_size}, {ckpt['in_channels']} channel(s), "
            f"{len(ckpt.get('classes', ()))} training classes",
            f"pre-training: {ckpt['episode']} epochs, SGD lr {c.pretrain_lr:g}, batch "
            f"{c.pretrain_batch}, augment {c.augment}, seed {c.seed}; last epoch's training "
            f"accuracy {ckpt['best_accuracy']:.2f}%",
        ]
    )
