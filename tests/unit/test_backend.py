"""The fast paths (attnopt.models.backend): chosen once where the model is placed or compiled,
and each computes what the plain path computes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.models.backend import CELL_COLUMNS, PLAIN, Backend, choose_backend
from attnopt.models.base import Learner
from attnopt.models.build import build_model
from attnopt.models.learner import Conv4Learner
from attnopt.models.metalearner import MetaLearner

FAST = Backend(inner_step_by_kernels=True, cell_columns=CELL_COLUMNS)


def test_the_cpu_takes_both_fast_paths_and_other_devices_none() -> None:
    assert choose_backend("cpu") == FAST
    assert choose_backend(torch.device("cuda")) == PLAIN  # a device need not exist to choose
    assert choose_backend("meta") == PLAIN


@pytest.mark.parametrize(
    ("settings", "kernels"),
    [
        ({}, True),
        ({"adapt": "last"}, False),  # partial adaptation: torch.func
        ({"amp": "bf16"}, False),  # autocast: torch.func
        ({"backbone": "resnet12", "adapt": "all", "width": 2}, False),  # Conv-4's step only
    ],
)
def test_build_model_chooses_the_backend_once_for_its_device(settings, kernels) -> None:
    model = build_model(Config(image_size=16, n_class=2, **settings), 1)
    assert model.metalearner.backend == FAST
    assert model.learner.backend.inner_step_by_kernels is (
        kernels and settings.get("backbone", "conv4") == "conv4"
    )
    assert model.learner.backend.cell_columns == CELL_COLUMNS
    moved = model.place("meta")  # placing it again chooses for the new device
    assert (moved.learner.backend, moved.metalearner.backend) == (PLAIN, PLAIN)


def test_compiled_parts_take_the_plain_paths() -> None:
    from attnopt.runtime.compilation import compile_model

    model = build_model(Config(image_size=16, n_class=2), 1)
    compile_model(model, ("step",))
    assert model.metalearner.backend == PLAIN
    assert model.learner.backend.inner_step_by_kernels  # not compiled: still written out
    compile_model(model, ("loss_and_grad",))
    assert model.learner.backend == PLAIN


@pytest.mark.parametrize(
    ("channels", "size", "cross_attention", "tasks", "dtype"),
    [
        (1, 28, False, 1, torch.float32),
        (3, 21, False, 3, torch.float32),  # odd sides: pooling drops the last row and column
        (1, 28, True, 1, torch.float32),
        (3, 32, True, 2, torch.float32),
        (1, 20, True, 2, torch.float64),
    ],
)
def test_written_out_inner_step_equals_torch_func_grad_bit_for_bit(
    channels: int, size: int, cross_attention: bool, tasks: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(channels, 5, size, cross_attention=cross_attention).to(dtype)
    learner.use_backend(FAST)
    with torch.no_grad():
        if cross_attention:
            learner.attn_scale.normal_()  # the attention's own slices of θ get a gradient
    theta = learner.init_theta().to(dtype).repeat(tasks, 1)
    theta += 0.01 * torch.randn_like(theta)  # tasks at different θ
    x = torch.randn(tasks, 10, size, size, channels, dtype=dtype).movedim(-1, 2)  # channels-last
    y = torch.randint(0, 5, (tasks, 10))
    loss, grad = learner.loss_and_grad(theta, x, y)
    ref_loss, ref_grad = Learner.loss_and_grad(learner, theta, x, y)  # torch.func.grad
    assert torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)  # every coordinate written (the buffer starts empty)


@pytest.mark.parametrize("tasks", [(), (2,)])
def test_cell_in_column_blocks_without_a_graph_equals_the_whole_cell(
    tasks: tuple[int, ...],
) -> None:
    """Evaluation's LSTM cell (no graph: column blocks that stay in the cache) computes what
    meta-training's does, also for a last block that is not full. The elementwise part is the
    same bit for bit; the matrix product of a narrow last block may round differently (BLAS
    kernels for a few columns), so the comparison allows float32 rounding."""
    torch.manual_seed(0)
    p, hidden = 50, 6
    metalearner = MetaLearner(torch.zeros(p), hidden_size=hidden)
    metalearner.use_backend(Backend(cell_columns=16))
    with torch.no_grad():
        for w in metalearner.lstm.parameters():
            w.normal_()
    grad = torch.randn(*tasks, p) * 10.0 ** torch.randint(-6, 1, (*tasks, p))
    loss = torch.rand(tasks) + 0.1
    h, c = torch.randn(2, *tasks, hidden, p).unbind(0)
    with torch.no_grad():
        blocks = metalearner._lstm_cell(grad, loss, h, c)
        metalearner.use_backend(PLAIN)
        whole = metalearner._lstm_cell(grad, loss, h, c)
    for a, b in zip(blocks, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attention", ["none", "both"])
def test_the_cpu_backend_adapts_and_meta_learns_as_the_plain_one(attention: str) -> None:
    """A whole episode: θ_T, the query loss and every meta-gradient (meta-training), and the
    query logits without a graph (evaluation), fast against plain."""
    torch.manual_seed(0)
    config = Config(image_size=16, n_class=3, n_shot=2, attention=attention)
    fast = build_model(config, 1)
    plain = copy.deepcopy(fast)
    for part in (plain.learner, plain.metalearner):
        part.use_backend(PLAIN)
    with torch.no_grad():
        for model in (fast, plain):  # the same weights: gates that read h, attention on
            model.metalearner.forget_weight.copy_(torch.linspace(-1, 1, 22))
            model.metalearner.input_weight.copy_(torch.linspace(1, -1, 22))
            if attention == "both":
                model.learner.attn_scale.fill_(0.5)
                model.metalearner.attn_out.weight.fill_(0.1)
    support_x, query_x = torch.randn(2, 6, 1, 16, 16), torch.randn(2, 9, 1, 16, 16)
    support_y, query_y = torch.arange(3).repeat(2).expand(2, -1), torch.arange(3).repeat(3)

    def episode(model, graph: bool):
        with torch.set_grad_enabled(graph):
            theta = adapt(model.learner, model.metalearner, support_x, support_y, 3, 6)
            logits = query_logits(model.learner, theta, support_x, query_x)
        if not graph:
            return theta, logits, {}
        loss = F.cross_entropy(logits.flatten(0, 1), query_y.expand(2, -1).flatten())
        names, params = zip(*model.named_parameters(), strict=True)
        return theta, logits, dict(zip(names, torch.autograd.grad(loss, params), strict=True))

    for graph in (True, False):
        theta, logits, grads = episode(fast, graph)
        ref_theta, ref_logits, ref_grads = episode(plain, graph)
        torch.testing.assert_close(theta, ref_theta, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
