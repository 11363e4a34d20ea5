"""The engine computes the method as written: θ_T, the query loss and the meta-gradient of
every meta-parameter agree with the plain reference (attnopt.models.reference) in float64,
for every --attention variant, both built-in backbones and every --adapt mode.

The engine is driven through its public API only: config.resolve, build_model, score_episodes
with InnerLoop and on_step, Episode.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnopt.config import resolve
from attnopt.data.episodes import Episode
from attnopt.models.build import FewShotModel, build_model
from attnopt.models.reference import reference_episode_loss
from attnopt.objective import InnerLoop, score_episodes

N_CLASS, N_SHOT, N_EVAL, SIZE, TASKS = 3, 2, 2, 16, 2
EPOCHS, BATCH = 2, 4  # 6 support images: 2 mini-batches (4, then 2) per epoch, T = 4
WIDTH = {"conv4": 4, "resnet12": 2}  # Conv-4 with 4 filters, ResNet-12 with 2-5-10-20
RTOL, ATOL = 1e-10, 1e-11
ATTENTION = ("none", "meta", "learner", "both")
ADAPT = ("all", "last", "head")
CASES = [(att, bb, ad) for att in ATTENTION for bb in WIDTH for ad in ADAPT]


def make_model(attention: str, backbone: str, adapt: str, **flags) -> FewShotModel:
    """A float64 model whose attention paths and gates are far from their initial values."""
    config = resolve(
        dict(
            attention=attention, backbone=backbone, width=WIDTH[backbone], adapt=adapt,
            image_size=SIZE, n_class=N_CLASS, n_shot=N_SHOT, n_eval=N_EVAL, hidden_size=6,
            attn_chunk=16, epoch=EPOCHS, batch_size=BATCH, **flags,
        )
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config, in_channels=3).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn_out.weight") or name.endswith("attn_scale"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))  # W_O, γ ≠ 0
            elif name.endswith(("forget_weight", "input_weight")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        # larger steps, so that the meta-learner's choices show in θ_T
        model.metalearner.forget_bias.fill_(3.0)
        model.metalearner.input_bias.fill_(-1.0)
    return model


def make_episodes(seed: int = 1) -> Episode:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(N_CLASS).repeat(N_SHOT).expand(TASKS, -1)
    query_y = torch.arange(N_CLASS).repeat(N_EVAL).expand(TASKS, -1)
    return Episode(
        torch.randn(TASKS, N_CLASS * N_SHOT, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
        support_y.contiguous(),
        torch.randn(TASKS, N_CLASS * N_EVAL, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
        query_y.contiguous(),
    )


def meta_gradient(model: FewShotModel, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g
        for n, p, g in zip(names, params, grads, strict=True)
    }


def engine(model: FewShotModel, episodes: Episode, bn: str) -> tuple:
    thetas: list[torch.Tensor] = []
    score = score_episodes(
        model,
        episodes,
        InnerLoop(EPOCHS, BATCH, bn),
        on_step=lambda t, theta, state: thetas.append(theta.detach().clone()),
    )
    return thetas, score.loss, meta_gradient(model, score.loss)


def check(model: FewShotModel, bn: str = "support") -> None:
    episodes = make_episodes()
    thetas, loss, grads = engine(model, episodes, bn)
    (
        ref_theta,
        ref_loss,
    ) = reference_episode_loss(model, episodes, EPOCHS, BATCH, bn)
    ref_grads = meta_gradient(model, ref_loss)
    assert len(thetas) == EPOCHS * math.ceil(N_CLASS * N_SHOT / BATCH)
    close = dict(rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(thetas[-1], ref_theta.detach(), **close, msg="θ_T")
    assert not torch.equal(thetas[-1], model.metalearner.c_init.detach().expand(TASKS, -1))
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), **close, msg="query loss")
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert ref_grads[name].abs().max() > 0, f"{name}: no meta-gradient (vacuous test)"
        torch.testing.assert_close(g, ref_grads[name], **close, msg=f"meta-gradient of {name}")


@pytest.mark.parametrize(("attention", "backbone", "adapt"), CASES)
def test_engine_agrees_with_the_reference(attention: str, backbone: str, adapt: str) -> None:
    check(make_model(attention, backbone, adapt))


@pytest.mark.parametrize("backbone", WIDTH)
def test_transductive_batch_norm(backbone: str) -> None:
    check(make_model("both", backbone, "all"), bn="transductive")


@pytest.mark.parametrize(
    "flags",
    [
        dict(attn_heads=2),
        dict(attn_feeds="lstm"),
        dict(attn_feeds="both"),
        dict(inner_grad_scale=0.25),
        dict(attn_block=2),
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_options(flags: dict) -> None:
    check(make_model("both", "conv4", "last", **flags))
