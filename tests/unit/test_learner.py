import pytest
import torch
from torch import nn

from attnopt.models.grouped import to_grouped
from attnopt.models.learner import Conv4Learner


def conv4_module(in_channels: int, n_class: int, features: int, eps: float) -> nn.Sequential:
    """An ordinary Conv-4 written with nn layers, as in the paper."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(4):
        layers += [
            nn.Conv2d(c, 32, 3, padding=1),
            nn.BatchNorm2d(32, eps=eps, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, n_class))


@pytest.mark.parametrize(("channels", "size", "n_class"), [(3, 84, 5), (1, 28, 20), (3, 17, 2)])
def test_functional_learner_equals_the_nn_module(channels: int, size: int, n_class: int) -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(channels, n_class, size, bn_eps=1e-3)
    side = size // 16
    module = conv4_module(channels, n_class, 32 * side * side, 1e-3)
    theta = torch.randn(learner.num_params) * 0.1
    assert learner.num_params == sum(p.numel() for p in module.parameters())
    nn.utils.vector_to_parameters(theta, module.parameters())
    x = torch.randn(7, channels, size, size)
    torch.testing.assert_close(learner(theta, x), module(x), rtol=1e-4, atol=1e-5)


def test_init_theta_is_pytorch_default_initialisation() -> None:
    learner = Conv4Learner(3, 5, 84)
    torch.manual_seed(1)
    theta = learner.init_theta()
    torch.manual_seed(1)
    module = conv4_module(3, 5, 800, 1e-3)
    torch.testing.assert_close(theta, nn.utils.parameters_to_vector(module.parameters()))


def test_unflatten_gives_views_not_copies() -> None:
    learner = Conv4Learner(1, 5, 28)
    theta = torch.zeros(learner.num_params)
    learner.unflatten(theta)["head.bias"].fill_(3.0)
    assert theta[-5:].tolist() == [3.0] * 5


def test_support_statistics_make_query_predictions_independent_of_other_queries() -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(3, 5, 32)
    theta = learner.init_theta()
    support, queries = torch.randn(10, 3, 32, 32), torch.randn(6, 3, 32, 32)
    together = learner(theta, torch.cat((support, queries)), n_support=10)[10:]
    alone = learner(theta, torch.cat((support, queries[:1])), n_support=10)[10:]
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)
    # With the batch's own statistics (transductive) the other queries do matter.
    transductive = learner(theta, queries)
    assert not torch.allclose(transductive[:1], learner(theta, queries[:2])[:1], atol=1e-4)


def test_support_statistics_path_equals_batch_norm_on_the_support_alone() -> None:
    torch.manual_seed(0)
    learner = Conv4Learner(3, 5, 32)
    theta = learner.init_theta()
    support = torch.randn(10, 3, 32, 32)
    both = learner(theta, torch.cat((support, torch.randn(4, 3, 32, 32))), n_support=10)
    torch.testing.assert_close(both[:10], learner(theta, support), rtol=1e-4, atol=1e-5)


def test_images_smaller_than_16_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match="16x16"):
        Conv4Learner(3, 5, 15)


@pytest.mark.parametrize(("tasks", "channels"), [(1, 1), (1, 3), (2, 1), (3, 3)])
def test_grouped_activations_are_channels_last_also_for_one_channel(
    tasks: int, channels: int
) -> None:
    """Grayscale images of one task have the same memory in NCHW and channels-last: the strides
    must still say channels-last, or every convolution after them runs (slowly) in NCHW."""
    x = torch.randn(tasks, 6, channels, 16, 16)  # NCHW strides, as a decoded episode may have
    grouped = to_grouped(x)
    width = tasks * channels
    assert grouped.stride() == (16 * 16 * width, 1, 16 * width, width)
    assert torch.equal(grouped[:, :channels], x[0])  # task 0's images: the first channels
    assert torch.equal(grouped[:, -channels:], x[-1])
    learner = Conv4Learner(channels, 5, 16)
    weight = learner.unflatten(learner.init_theta().repeat(tasks, 1))["block0.conv.weight"]
    conv = learner._conv(grouped, weight, None, padding=1)  # laid out by its input's strides
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.stride()[1] == 1
