"""Your own backbone: wrapped as an attnopt learner, trained end to end, contract enforced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_support
from torch import nn
from torch.func import functional_call

import attnopt
from attnopt.adapt import adapt, query_logits
from attnopt.config import resolve
from attnopt.errors import UserError
from attnopt.models import backbones
from attnopt.models.learner import Conv4Learner, reference_module
from attnopt.models.metalearner import MetaLearner
from attnopt.models.wrap import ModuleLearner


def small_cnn(in_channels: int, image_size: int) -> nn.Sequential:
    """Three blocks; the second ends in a feature map, the last in vectors."""
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1),
            nn.BatchNorm2d(4, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 8), nn.ReLU()),
    )


@pytest.fixture
def registered():
    backbones.register_backbone("small_cnn", small_cnn)
    yield "small_cnn"
    backbones._REGISTERED.pop("small_cnn", None)


def test_a_wrapped_conv4_computes_what_the_built_in_conv4_computes() -> None:
    """nn.BatchNorm2d layers of a wrapped module take the support set's statistics, exactly
    as the built-in learner does: the same θ gives the same logits, queries included."""
    torch.manual_seed(0)
    conv4 = Conv4Learner(3, 5, 16, width=4)
    body = nn.Sequential(*list(reference_module(conv4).children())[:-1])  # without the head
    wrapped = ModuleLearner(body, 3, 5, 16)
    assert [s.shape for s in wrapped.specs] == [s.shape for s in conv4.specs]
    theta = torch.randn(conv4.num_params) * 0.3
    x = torch.randn(2, 9, 3, 16, 16)
    for bn in ("support", "transductive"):
        torch.testing.assert_close(
            wrapped(theta[None].repeat(2, 1), x, 6, bn),
            conv4(theta[None].repeat(2, 1), x, 6, bn),
            rtol=1e-4,
            atol=1e-5,
        )


def test_a_function_of_named_parameters_is_a_backbone_too() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    params = {k: v.detach().clone() for k, v in module.named_parameters()}

    def features(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, p, (x,))

    torch.manual_seed(1)
    from_function = ModuleLearner((features, params), 3, 2, 16)
    theta = from_function.init_theta()
    torch.manual_seed(1)
    from_module = ModuleLearner(nn.Sequential(module), 3, 2, 16)
    assert torch.equal(theta, from_module.init_theta())
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(from_function(theta, x), from_module(theta, x))


@pytest.mark.parametrize("adapt_mode", ["all", "last", "head"])
def test_a_wrapped_backbone_batches_tasks_and_keeps_queries_apart(adapt_mode: str) -> None:
    torch.manual_seed(0)
    learner = ModuleLearner(
        small_cnn(3, 16), 3, 5, 16, cross_attention=True, attn_block=2, adapt=adapt_mode
    )
    assert learner._batched  # vmap carries the tasks
    with torch.no_grad():
        learner.attn_scale.normal_()
    meta = MetaLearner(learner.init_theta(), hidden_size=4, adapted=learner.num_adapted)
    g = torch.Generator().manual_seed(0)
    support_x, query_x = torch.randn(2, 10, 3, 16, 16, generator=g), torch.randn(6, 3, 16, 16)
    support_y = torch.arange(5).repeat(2).expand(2, -1)
    with torch.no_grad():
        together = adapt(learner, meta, support_x, support_y, 2, 5)
        alone = adapt(learner, meta, support_x[1][None], support_y[1][None], 2, 5)[0]
        torch.testing.assert_close(together[1], alone, rtol=1e-5, atol=1e-6)
        logits = query_logits(learner, alone[None], support_x[1][None], query_x[None])[0]
        single = query_logits(learner, alone[None], support_x[1][None], query_x[:1][None])[0]
    torch.testing.assert_close(logits[:1], single, rtol=1e-5, atol=1e-5)
    frozen = learner.split(together)[1]
    if adapt_mode != "all":
        assert torch.equal(frozen[0], learner.split(meta.c_init)[1])


def test_a_registered_backbone_trains_end_to_end_and_predicts(
    registered: str, folder_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    flags = dict(
        data="folder", data_root=str(folder_dataset), image_size=16, n_class=3, n_shot=2,
        n_eval=2, episode=4, val_freq=2, episode_val=2, episode_test=3, log_freq=2, epoch=2,
        save=str(run), cpu=True, seed=1, backbone=registered, adapt="last", attn_block=2,
    )  # fmt: skip
    result = attnopt.train(**flags)
    assert result.test.episodes == 3
    ckpt = torch.load(run / "ckpts" / "last.pt", weights_only=True)
    assert ckpt["episode"] == 4
    first = attnopt.load(run / "ckpts" / "best.pt")
    assert first.config.backbone == registered and first.config.adapt == "last"
    support = make_support(tmp_path / "support", {"cat": 2, "dog": 2})
    paths = sorted(support.rglob("*.png"))
    task = first.adapt(paths, [p.parent.name for p in paths])
    assert set(task.predict(paths)) <= {"cat", "dog"}
    # a checkpoint only fits the backbone it was trained with
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    backbones.register_backbone(registered, lambda channels, size: other)
    with pytest.raises(UserError, match=f"does not fit backbone '{registered}'"):
        attnopt.load(run / "ckpts" / "best.pt")


class CountsCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.linear = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1))


class MixesImages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x - x.mean(0))  # a normalisation over the whole batch


class IntegerParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.steps = nn.Parameter(torch.ones(3, dtype=torch.long), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()),
         "BatchNorm layer '1' of the backbone keeps running statistics"),
        (nn.Sequential(nn.Conv2d(3, 4, 3)), r"to \(6, 4, 14, 14\); it must give one feature"),
        (nn.Sequential(nn.Flatten(), nn.Dropout(0.5)), "different features for the same images"),
        (CountsCalls(), "buffer 'calls' changed during a forward pass"),
        (MixesImages(), "depend on the other query images"),
        (IntegerParameter(), "parameter 'steps' is torch.int64"),
        (Broken(), "the backbone failed on a batch of images of shape"),
    ],
)  # fmt: skip
def test_a_backbone_that_breaks_the_contract_is_refused_with_the_reason(
    module: nn.Module, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        ModuleLearner(module, 3, 5, 16)


def test_the_cross_attention_must_follow_an_existing_block() -> None:
    with pytest.raises(UserError, match="cannot follow block 4: the backbone has 3 blocks"):
        ModuleLearner(small_cnn(3, 16), 3, 5, 16, cross_attention=True, attn_block=4)


def test_an_unknown_backbone_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--backbone 'resnet50' is not one of conv4, resnet12"):
        resolve({"backbone": "resnet50"})
    with pytest.raises(ValueError, match="built-in"):
        backbones.register_backbone("conv4", small_cnn)
