import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from attnopt.adapt import adapt, query_logits
from attnopt.models.learner import Conv4Learner, reference_module
from attnopt.models.metalearner import MetaLearner, preprocess


@pytest.fixture
def task() -> tuple[Conv4Learner, MetaLearner, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    learner = Conv4Learner(3, 5, 16)
    metalearner = MetaLearner(learner.init_theta(), hidden_size=6)
    support_x, query_x = torch.randn(10, 3, 16, 16), torch.randn(15, 3, 16, 16)
    support_y = torch.arange(5).repeat(2)
    return learner, metalearner, support_x, support_y, query_x


def pin_gates(metalearner: MetaLearner, lr: float) -> None:
    """f_t = 1 and i_t = lr whatever the inputs."""
    with torch.no_grad():
        metalearner.forget_weight.zero_()
        metalearner.forget_bias.fill_(40.0)  # σ(40) == 1 in float32
        metalearner.input_weight.zero_()
        metalearner.input_bias.fill_(math.log(lr / (1 - lr)))


@pytest.mark.parametrize(("epochs", "batch_size"), [(3, 10), (2, 4)])
def test_pinned_gates_make_the_inner_loop_exactly_sgd(task, epochs: int, batch_size: int) -> None:
    learner, metalearner, support_x, support_y, _ = task
    lr = 0.05
    pin_gates(metalearner, lr)
    theta_t = adapt(learner, metalearner, support_x[None], support_y[None], epochs, batch_size)[0]

    module = reference_module(learner)
    nn.utils.vector_to_parameters(metalearner.c_init.detach().clone(), module.parameters())
    sgd = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(epochs):
        for start in range(0, len(support_x), batch_size):
            sgd.zero_grad()
            x, y = support_x[start : start + batch_size], support_y[start : start + batch_size]
            F.cross_entropy(module(x), y).backward()
            sgd.step()
    expected = nn.utils.parameters_to_vector(module.parameters())
    torch.testing.assert_close(theta_t.detach(), expected, rtol=1e-5, atol=1e-6)


def test_untrained_gates_start_as_gradient_descent_with_a_small_step(task) -> None:
    _, metalearner, *_ = task
    assert 4.0 <= metalearner.forget_bias.item() <= 6.0
    assert -5.0 <= metalearner.input_bias.item() <= -4.0
    theta = metalearner.c_init.detach()
    grad = torch.randn_like(theta)
    new, state = metalearner.step(grad, torch.tensor(1.6), theta, metalearner.initial_state())
    assert state.f.min() > 0.98 and state.i.max() < 0.02
    # θ_1 = f θ_0 - i ∇: a slightly decayed θ_0 moved a small step against the gradient.
    torch.testing.assert_close(new, state.f * theta - state.i * grad)


def test_inner_grad_scale_scales_the_gradient_the_meta_learner_reads_and_applies(task) -> None:
    learner, metalearner, support_x, support_y, _ = task
    pin_gates(metalearner, 0.05)
    metalearner.grad_scale = 1 / 10  # the public port: the mean gradient / the batch size
    theta_t = adapt(learner, metalearner, support_x[None], support_y[None], 1, 10)[0]
    _, grad = learner.loss_and_grad(metalearner.c_init[None], support_x[None], support_y[None])
    torch.testing.assert_close(theta_t.detach(), metalearner.c_init.detach() - 0.005 * grad[0])
    theta, state = metalearner.c_init.detach(), metalearner.initial_state()
    _, scaled = metalearner.step(grad[0], torch.tensor(1.6), theta, state)
    metalearner.grad_scale = 1.0
    _, plain = metalearner.step(grad[0] / 10, torch.tensor(1.6), theta, state)
    torch.testing.assert_close(scaled.h, plain.h)  # the LSTM reads the scaled gradient too


def meta_loss(learner, metalearner, support_x, support_y, query_x) -> torch.Tensor:
    theta = adapt(learner, metalearner, support_x[None], support_y[None], 3, 10)[0]
    logits = query_logits(learner, theta[None], support_x[None], query_x[None])[0]
    return F.cross_entropy(logits, torch.arange(5).repeat(3))


def test_meta_gradient_reaches_every_meta_parameter(task) -> None:
    learner, metalearner, support_x, support_y, query_x = task
    meta_loss(learner, metalearner, support_x, support_y, query_x).backward()
    for name, p in metalearner.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_meta_gradient_is_first_order(task, monkeypatch: pytest.MonkeyPatch) -> None:
    """∇_t and L_t are constants: replaying the steps with the recorded ∇_t, L_t as plain
    tensors gives the same meta-gradient, and no graph runs through the inner gradients."""
    learner, metalearner, support_x, support_y, query_x = task
    recorded = []
    original = learner.loss_and_grad

    def recording(*args):
        loss, grad = original(*args)
        assert not loss.requires_grad and not grad.requires_grad
        recorded.append((loss, grad))
        return loss, grad

    monkeypatch.setattr(learner, "loss_and_grad", recording)
    meta_loss(learner, metalearner, support_x, support_y, query_x).backward()
    actual = {n: p.grad.clone() for n, p in metalearner.named_parameters()}

    metalearner.zero_grad()
    theta, state = metalearner.c_init.repeat(1, 1), metalearner.initial_state((1,))
    for loss, grad in recorded:  # a meta-batch of one task: loss (1,), grad (1, P)
        theta, state = metalearner.step(grad.clone(), loss.clone(), theta, state)
    logits = query_logits(learner, theta, support_x[None], query_x[None])[0]  # theta: (1, P)
    F.cross_entropy(logits, torch.arange(5).repeat(3)).backward()
    for name, p in metalearner.named_parameters():
        torch.testing.assert_close(actual[name], p.grad, msg=name)


def test_evaluation_adapts_without_building_a_meta_graph(task) -> None:
    learner, metalearner, support_x, support_y, _ = task
    with torch.no_grad():
        theta = adapt(learner, metalearner, support_x[None], support_y[None], 2, 10)[0]
    assert not theta.requires_grad
    assert not torch.equal(theta, metalearner.c_init.detach())  # it did learn something


def test_meta_learner_gradcheck_in_float64() -> None:
    """Analytic meta-gradients of every meta-parameter match finite differences."""
    torch.manual_seed(0)
    learner = Conv4Learner(1, 2, 16, width=2)
    metalearner = MetaLearner(learner.init_theta(), hidden_size=3).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    grads = [torch.randn(learner.num_params, dtype=torch.float64) * 0.1 for _ in range(2)]
    losses = [torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)]
    names = [n for n, _ in metalearner.named_parameters()]

    def run(*params: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, params, strict=True))
        theta, state = values["c_init"], metalearner.initial_state()
        for loss, grad in zip(losses, grads, strict=True):
            theta, state = functional_call(metalearner, values, (grad, loss, theta, state))
        return F.cross_entropy(learner(theta, x), y)

    inputs = tuple(p.detach().clone().requires_grad_() for p in metalearner.parameters())
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("tasks", [(), (3,)])
def test_hidden_major_lstm_cell_equals_torch_lstm_cell(tasks: tuple[int, ...]) -> None:
    """The meta-learner's own LSTM cell (one matrix product, gates as contiguous blocks) is
    ``nn.LSTMCell`` on x = [prep(L_t), prep(∇_t)], one row per coordinate."""
    torch.manual_seed(0)
    p, hidden = 50, 6
    metalearner = MetaLearner(torch.zeros(p), hidden_size=hidden).double()
    with torch.no_grad():
        for w in metalearner.lstm.parameters():
            w.normal_()
    grad = torch.randn(*tasks, p, dtype=torch.float64) * 10.0 ** torch.randint(-6, 1, (*tasks, p))
    loss = torch.rand(tasks, dtype=torch.float64) + 0.1
    h, c = torch.randn(2, *tasks, hidden, p, dtype=torch.float64).unbind(0)
    new_h, new_c = metalearner._lstm_cell(grad, loss, h, c)

    x = torch.cat((preprocess(loss).unsqueeze(-2).expand(*tasks, p, 2), preprocess(grad)), -1)
    rows = (-1, hidden)
    ref_h, ref_c = metalearner.lstm(
        x.reshape(-1, 4), (h.transpose(-1, -2).reshape(rows), c.transpose(-1, -2).reshape(rows))
    )
    torch.testing.assert_close(new_h.transpose(-1, -2).reshape(rows), ref_h)
    torch.testing.assert_close(new_c.transpose(-1, -2).reshape(rows), ref_c)


@pytest.mark.parametrize(
    ("bn", "bn_train", "expected"),
    [
        ("support", "same", "support"),
        ("support", "transductive", "transductive"),
        ("transductive", "support", "support"),
    ],
)
def test_meta_training_normalises_the_query_set_as_bn_train_says(bn, bn_train, expected) -> None:
    from attnopt.config import Config
    from attnopt.objective import InnerLoop

    config = Config(bn=bn, bn_train=bn_train)
    assert InnerLoop.of(config, training=True).bn == expected
    assert InnerLoop.of(config).bn == bn  # validation and test: --bn
