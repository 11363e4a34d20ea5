"""ResNet-12, wider Conv-4 and partial adaptation: the learner contract for every backbone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.models.build import FewShotModel, build_model
from attnopt.models.resnet12 import ResNet12Learner, resnet12_channels, resnet12_module

# tiny backbones: Conv-4 with 4 filters, ResNet-12 with 2-5-10-20 channels
TINY = {"conv4": 4, "resnet12": 2}
CASES = [(b, a) for b in TINY for a in ("all", "last", "head")]
EPOCHS, BATCH = 2, 5


def make(backbone: str, adapt_mode: str, attention: str = "none", seed: int = 0, **kw):
    torch.manual_seed(seed)
    config = Config(
        backbone=backbone, width=TINY[backbone], adapt=adapt_mode, attention=attention,
        image_size=16, n_class=5, hidden_size=6, attn_chunk=64, **kw,
    )  # fmt: skip
    return build_model(config, in_channels=3)


def episode(seed: int = 1, tasks: int | None = None) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lead = () if tasks is None else (tasks,)
    support_x = torch.randn(*lead, 10, 3, 16, 16, generator=g)
    support_y = torch.arange(5).repeat(2).expand(*lead, 10)
    query_x = torch.randn(*lead, 15, 3, 16, 16, generator=g)
    return support_x, support_y, query_x


class ResNet12Reference(nn.Module):
    """ResNet-12 as it is usually written (MetaOptNet), with train-mode BatchNorm."""

    def __init__(self, channels: tuple[int, ...], n_class: int, eps: float) -> None:
        super().__init__()
        blocks, c_in = [], 3
        for c in channels:
            blocks.append(
                nn.ModuleDict(
                    {
                        "convs": nn.ModuleList(
                            [nn.Conv2d(i, c, 3, padding=1, bias=False) for i in (c_in, c, c)]
                        ),
                        "bns": nn.ModuleList(
                            [nn.BatchNorm2d(c, eps=eps, track_running_stats=False) for _ in "123"]
                        ),
                        "down": nn.Conv2d(c_in, c, 1, bias=False),
                        "down_bn": nn.BatchNorm2d(c, eps=eps, track_running_stats=False),
                    }
                )
            )
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c_in, n_class)

    def ordered_parameters(self) -> list[nn.Parameter]:
        """In attnopt's θ order: per block conv_i, bn_i (i = 1..3), shortcut conv and bn."""
        params = []
        for block in self.blocks:
            for conv, bn in zip(block["convs"], block["bns"], strict=True):
                params += [conv.weight, bn.weight, bn.bias]
            params += [block["down"].weight, block["down_bn"].weight, block["down_bn"].bias]
        return [*params, self.fc.weight, self.fc.bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = x
            for i, (conv, bn) in enumerate(zip(block["convs"], block["bns"], strict=True)):
                out = bn(conv(out))
                if i < 2:
                    out = F.leaky_relu(out, 0.1)
            out = F.leaky_relu(out + block["down_bn"](block["down"](x)), 0.1)
            x = F.max_pool2d(out, 2)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(("channels", "size"), [((4, 6, 8, 10), 16), ((3, 5, 7, 9), 21)])
def test_resnet12_as_a_function_of_theta_equals_the_nn_module(channels, size: int) -> None:
    torch.manual_seed(0)
    learner = ResNet12Learner(3, 5, size, channels=channels, bn_eps=1e-3)
    module = ResNet12Reference(channels, 5, 1e-3)
    params = module.ordered_parameters()
    assert learner.num_params == sum(p.numel() for p in params)
    theta = torch.randn(learner.num_params) * 0.3
    nn.utils.vector_to_parameters(theta, params)
    x = torch.randn(6, 3, size, size)
    torch.testing.assert_close(learner(theta, x), module(x), rtol=1e-4, atol=1e-5)


def test_resnet12_has_the_standard_shape_and_pytorch_default_initialisation() -> None:
    learner = ResNet12Learner(3, 5, 84)
    assert learner.channels == resnet12_channels(64) == (64, 160, 320, 640)
    assert learner.num_params == 12_427_525  # 12.4M, as in the few-shot literature
    small = ResNet12Learner(3, 5, 16, channels=(2, 3, 4, 5))
    torch.manual_seed(1)
    theta = small.init_theta()
    torch.manual_seed(1)
    module = resnet12_module(small)
    torch.testing.assert_close(theta, nn.utils.parameters_to_vector(module.parameters()))


def test_wider_conv4_has_its_filters_everywhere() -> None:
    model = make("conv4", "all")
    assert model.learner.unflatten(model.metalearner.c_init)["block3.conv.weight"].shape == (
        4, 4, 3, 3,
    )  # fmt: skip
    wide = build_model(Config(width=64, attention="none"), 1).learner
    assert wide.num_params == 64 * 9 + 64 + 2 * 64 + 3 * (64 * 64 * 9 + 64 + 2 * 64) + 5 * 64 + 5


@pytest.mark.parametrize(("backbone", "mode"), [c for c in CASES if c[1] != "all"])
@pytest.mark.parametrize("attention", ["none", "both"])
def test_partial_adaptation_holds_the_frozen_coordinates_and_meta_learns_them(
    backbone: str, mode: str, attention: str
) -> None:
    model = make(backbone, mode, attention)
    learner, meta = model.learner, model.metalearner
    support_x, support_y, query_x = episode()
    rows = []
    theta = adapt(
        learner, meta, support_x[None], support_y[None], EPOCHS, BATCH,
        on_step=lambda t, theta, state: rows.append(state.h.shape[-1]),
    )[0]  # fmt: skip
    assert rows == [learner.num_adapted] * EPOCHS * 2  # the LSTM sees the adapted rows only
    assert meta.initial_state().c.shape == (6, learner.num_adapted)  # hidden-major
    adapted, frozen = learner.split(theta)
    c_adapted, c_frozen = learner.split(meta.c_init)
    assert torch.equal(frozen, c_frozen)  # held at θ_0 exactly
    assert not torch.equal(adapted, c_adapted)
    names = {s.name for s in learner.adapted_specs}
    assert {"head.weight", "head.bias"} <= names
    assert all(n.startswith(("head.", "attn.", "block3.")) for n in names)
    assert any(n.startswith("block3.") for n in names) == (mode == "last")
    if attention == "both":
        assert {f"attn.{w}.weight" for w in ("query", "key", "value", "out")} <= names
    loss = F.cross_entropy(
        query_logits(learner, theta[None], support_x[None], query_x[None])[0], torch.arange(15) % 5
    )
    loss.backward()
    grad_adapted, grad_frozen = learner.split(meta.c_init.grad)
    assert grad_frozen.abs().sum() > 0 and grad_adapted.abs().sum() > 0  # both meta-learned


@pytest.mark.parametrize(("backbone", "mode"), [c for c in CASES if c[1] != "all"])
@pytest.mark.parametrize("attn_block", [1, 4])
def test_partial_inner_gradient_is_the_adapted_part_of_the_full_gradient(
    backbone: str, mode: str, attn_block: int
) -> None:
    """Computing the frozen stages once without their gradient changes nothing: the gradient of
    the adapted coordinates equals that slice of the whole gradient."""
    model = make(backbone, mode, "learner", attn_block=attn_block)
    learner = model.learner
    with torch.no_grad():
        learner.attn_scale.normal_()  # the attention is live
    support_x, support_y, _ = episode(tasks=2)
    theta = model.metalearner.c_init.detach().repeat(2, 1) + 0.01 * torch.randn(2, 1)
    adapted, frozen = learner.split(theta)
    features = learner.frozen_features(frozen, support_x)
    assert (features is None) == (learner.frozen_prefix == 0)
    loss, grad = learner.loss_and_grad(adapted, support_x, support_y, frozen, features)
    full = build_model(
        dataclasses.replace(model_config(backbone, mode, attn_block), adapt="all"), 3
    ).learner
    full.attn_scale = learner.attn_scale
    full_loss, full_grad = full.loss_and_grad(theta, support_x, support_y)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, learner.split(full_grad)[0], rtol=1e-4, atol=1e-6)


def model_config(backbone: str, mode: str, attn_block: int) -> Config:
    return Config(
        backbone=backbone, width=TINY[backbone], adapt=mode, attention="learner",
        image_size=16, n_class=5, hidden_size=6, attn_block=attn_block,
    )  # fmt: skip


@pytest.mark.parametrize(("backbone", "mode"), CASES)
@pytest.mark.parametrize("attention", ["meta", "learner", "both"])
def test_untrained_attention_is_exactly_the_plain_model_for_every_backbone(
    backbone: str, mode: str, attention: str
) -> None:
    support_x, support_y, query_x = episode()
    plain, other = make(backbone, mode), make(backbone, mode, attention, seed=5)
    p = plain.metalearner.num_params
    shared = dict(other.named_parameters())
    with torch.no_grad():
        for name, value in plain.named_parameters():
            target = shared[name]
            (target[:p] if name == "metalearner.c_init" else target).copy_(value)

    def trajectory(model: FewShotModel) -> list[torch.Tensor]:
        steps: list[torch.Tensor] = []

        def record(t: int, theta: torch.Tensor, state) -> None:
            steps.append(theta[0, :p].detach().clone())

        adapt(
            model.learner,
            model.metalearner,
            support_x[None],
            support_y[None],
            EPOCHS,
            BATCH,
            record,
        )
        return steps

    for a, b in zip(trajectory(plain), trajectory(other), strict=True):
        if backbone == "conv4":
            assert torch.equal(a, b)
        else:  # ResNet-12 at one thread: its kernels round the same inputs 1 ulp apart
            torch.testing.assert_close(a, b, rtol=3e-7, atol=0)


@pytest.mark.parametrize(("backbone", "mode"), CASES)
def test_queries_are_independent_and_batched_tasks_equal_separate_ones(
    backbone: str, mode: str
) -> None:
    model = make(backbone, mode, "both")
    with torch.no_grad():
        model.learner.attn_scale.normal_(0.0, 0.5)
        model.metalearner.attn_out.weight.normal_(0.0, 0.5)
    support_x, support_y, query_x = episode(tasks=2)
    learner, meta = model.learner, model.metalearner
    with torch.no_grad():
        together = adapt(learner, meta, support_x, support_y, 1, BATCH)
        for b in range(2):
            alone = adapt(learner, meta, support_x[b][None], support_y[b][None], 1, BATCH)[0]
            torch.testing.assert_close(together[b], alone, rtol=1e-5, atol=1e-6)
        theta = together[0]
        all_queries = query_logits(learner, theta[None], support_x[0][None], query_x[0][None])[0]
        one = query_logits(learner, theta[None], support_x[0][None], query_x[0, :1][None])[0]
        replaced = query_logits(
            learner,
            theta[None],
            support_x[0][None],
            torch.cat((query_x[0, :1], query_x[1, 1:]))[None],
        )[0]
    torch.testing.assert_close(all_queries[:1], one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_queries[:1], replaced[:1], rtol=1e-5, atol=1e-5)


def test_adaptation_never_sees_the_query_set_for_resnet12() -> None:
    model = make("resnet12", "last", "both")
    support_x, support_y, query_x = episode()
    thetas = []
    for queries in (query_x, torch.randn_like(query_x)):
        theta = adapt(
            model.learner, model.metalearner, support_x[None], support_y[None], EPOCHS, BATCH
        )[0]
        query_logits(model.learner, theta[None], support_x[None], queries[None])
        thetas.append(theta.detach())
    assert torch.equal(thetas[0], thetas[1])


@pytest.mark.parametrize("attn_block", [2, 4])
def test_resnet12_cross_attention_gradcheck_in_float64(attn_block: int) -> None:
    torch.manual_seed(0)
    learner = ResNet12Learner(
        1, 2, 16, channels=(2, 2, 3, 3), cross_attention=True, attn_block=attn_block
    ).double()
    assert learner.attn_width == (2, 2, 3, 3)[attn_block - 1]
    theta = learner.init_theta().double().requires_grad_()
    scale = (torch.randn(learner.attn_width, dtype=torch.float64)).requires_grad_()
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)

    def run(theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return functional_call(learner, {"attn_scale": scale}, (theta, x, 3))

    assert torch.autograd.gradcheck(run, (theta, scale), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backbone", list(TINY))
def test_partial_meta_gradient_gradcheck_in_float64(backbone: str) -> None:
    """Finite differences agree with the meta-gradient of c_I, its frozen coordinates
    included, through a head-only inner loop (∇_t and L_t recorded: the first-order
    meta-gradient treats them as constants)."""
    torch.manual_seed(0)
    config = Config(
        backbone=backbone, width=1, adapt="head", attention="none", image_size=16, n_class=2,
        hidden_size=3,
    )  # fmt: skip
    model = build_model(config, in_channels=1).double()
    learner, meta = model.learner, model.metalearner
    images = torch.randn(1, 6, 1, 16, 16, generator=torch.Generator().manual_seed(0)).double()
    support_x, support_y = images[:, :4], torch.tensor([[0, 1, 0, 1]])
    recorded = []
    adapted, frozen = learner.split(meta.c_init.detach())
    theta, state = adapted[None], meta.initial_state((1,))
    for _ in range(2):
        loss, grad = learner.loss_and_grad(theta, support_x, support_y, frozen[None])
        recorded.append((loss, grad))
        theta, state = meta.step(grad, loss, theta, state)

    def run(c_init: torch.Tensor) -> torch.Tensor:
        adapted, frozen = learner.split(c_init)
        theta, state = adapted[None], meta.initial_state((1,))
        for loss, grad in recorded:
            theta, state = meta.step(grad, loss, theta, state)
        logits = learner(learner.merge(theta, frozen[None]), images, n_support=4)[0, 4:]
        return F.cross_entropy(logits, torch.tensor([0, 1]))

    c_init = meta.c_init.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (c_init,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_resnet12_trains_from_the_command_line_and_its_checkpoint_keeps_its_backbone(
    folder_dataset, tmp_path, capsys, monkeypatch
) -> None:
    import csv

    from conftest import error_line, tiny_flags

    import attnopt.training.pipeline
    from attnopt.cli.commands import main

    monkeypatch.setattr(
        attnopt.training.pipeline, "draw_figures", lambda *a, **k: None
    )  # test_plot's
    run = tmp_path / "run"
    flags = [*tiny_flags(folder_dataset, run), "--backbone", "resnet12", "--width", "2"]
    flags += ["--episode", "4", "--val-freq", "4", "--log-freq", "2", "--meta-batch", "2"]
    assert main(["train", *flags]) == 0
    ckpt = torch.load(run / "ckpts" / "best.pt", weights_only=True)
    assert ckpt["episode"] == 4  # two meta-updates of two tasks
    config = ckpt["config"]
    assert '"backbone": "resnet12"' in config and '"adapt": "head"' in config  # its default
    with open(run / "gates.csv", newline="") as f:  # gates of the adapted layers only
        assert {row["layer"] for row in csv.DictReader(f)} == {"head", "attn"}
    capsys.readouterr()
    assert main(["info", str(run / "ckpts" / "best.pt")]) == 0
    assert "ResNet-12 (2-5-10-20) learner" in capsys.readouterr().out
    ckpt = str(run / "ckpts" / "best.pt")
    assert main(["test", "--resume", ckpt, "--backbone", "conv4", "--cpu"]) == 2
    line = error_line(capsys)
    assert "was trained with --backbone resnet12, this run uses --backbone conv4" in line


@pytest.mark.parametrize("backbone", list(TINY))
def test_bf16_autocast_runs_every_backbone_and_changes_the_loss_only_slightly(backbone) -> None:
    support_x, support_y, query_x = episode(tasks=1)
    losses = {}
    for amp in ("none", "bf16"):
        model = make(backbone, "last", "both", amp=amp)
        theta = adapt(model.learner, model.metalearner, support_x, support_y, 1, BATCH)
        logits = model.learner(theta, torch.cat((support_x, query_x), 1), n_support=10)[:, 10:]
        assert logits.dtype == torch.float32
        losses[amp] = F.cross_entropy(logits[0], torch.arange(15) % 5)
        losses[amp].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert abs(losses["bf16"] - losses["none"]) / losses["none"] < 0.05
