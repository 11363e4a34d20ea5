import numpy as np
import pytest
import torch

from attnopt.data.episodes import EpisodeSampler, normalize
from attnopt.data.imageset import ImageSet
from attnopt.errors import UserError


def toy_imageset(n_classes: int = 8, per_class: int = 12, size: int = 4) -> ImageSet:
    """Every image is filled with its own row number, so pixels reveal which image it is."""
    n = n_classes * per_class
    rows = np.arange(n)
    images = np.broadcast_to((rows % 251).astype(np.uint8)[:, None, None, None], (n, size, size, 1))
    labels = np.repeat(np.arange(n_classes), per_class)
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)  # classes interleaved on disk order
    return ImageSet(
        np.ascontiguousarray(images[perm]),
        labels[perm],
        tuple(f"c{i}" for i in range(n_classes)),
        "toy",
    )


@pytest.mark.parametrize(("n", "k", "q"), [(5, 5, 7), (5, 1, 11), (8, 2, 3)])
def test_episode_has_n_distinct_classes_and_disjoint_support_and_query(n: int, k: int, q: int):
    imageset = toy_imageset()
    sampler = EpisodeSampler(imageset, n, k, q, seed=3)
    for index in range(20):
        idx = sampler.indices(index)
        assert len(set(idx.classes.tolist())) == n
        assert len(idx.support) == n * k and len(idx.query) == n * q
        assert len(set(idx.support.tolist()) | set(idx.query.tolist())) == n * (k + q)
        for rows, labels in ((idx.support, idx.support_labels), (idx.query, idx.query_labels)):
            # label j <-> ImageSet class classes[j], for every image
            assert np.array_equal(imageset.labels[rows], idx.classes[labels])
            assert np.array_equal(np.bincount(labels, minlength=n), np.full(n, len(rows) // n))


def test_labels_are_assigned_to_classes_at_random_per_episode() -> None:
    sampler = EpisodeSampler(toy_imageset(n_classes=5), 5, 1, 1, seed=0)
    assignments = {tuple(sampler.indices(i).classes.tolist()) for i in range(30)}
    assert len(assignments) > 10


def test_support_order_does_not_reveal_labels() -> None:
    sampler = EpisodeSampler(toy_imageset(), 5, 5, 5, seed=0)
    orders = [sampler.indices(i).support_labels for i in range(10)]
    assert not all(np.array_equal(o, np.sort(o)) for o in orders)
    assert len({tuple(o.tolist()) for o in orders}) == 10


def test_same_seed_same_episodes_other_seed_other_episodes() -> None:
    imageset = toy_imageset()
    a, b = EpisodeSampler(imageset, 5, 2, 3, seed=1), EpisodeSampler(imageset, 5, 2, 3, seed=1)
    c = EpisodeSampler(imageset, 5, 2, 3, seed=2)
    for i in (0, 7, 123):
        assert np.array_equal(a.indices(i).support, b.indices(i).support)
        assert np.array_equal(a.indices(i).query, b.indices(i).query)
    assert any(not np.array_equal(a.indices(i).support, c.indices(i).support) for i in range(5))


def test_episode_tensors_hold_the_sampled_images() -> None:
    imageset = toy_imageset()
    sampler = EpisodeSampler(imageset, 5, 2, 3, seed=0)
    ep, idx = sampler.episode(4), sampler.indices(4)
    assert ep.support_x.shape == (10, 1, 4, 4) and ep.query_x.shape == (15, 1, 4, 4)
    assert ep.support_y.dtype == torch.int64
    expected = normalize(torch.from_numpy(imageset.images[idx.query]))
    torch.testing.assert_close(ep.query_x, expected)
    assert torch.equal(ep.support_y, torch.from_numpy(idx.support_labels))


def test_normalize_standardises_photos_with_imagenet_statistics() -> None:
    images = torch.full((2, 3, 3, 3), 255, dtype=torch.uint8)
    x = normalize(images)
    assert x.shape == (2, 3, 3, 3)
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


def test_too_few_classes_is_a_user_error() -> None:
    with pytest.raises(UserError, match="fewer than --n-class 10"):
        EpisodeSampler(toy_imageset(n_classes=8), 10, 1, 1, seed=0)


def test_a_class_with_too_few_images_is_named() -> None:
    imageset = toy_imageset()
    labels = imageset.labels.copy()
    labels[labels == 3] = 2  # class c3 now has no images
    broken = ImageSet(imageset.images, labels, imageset.class_names, "toy")
    with pytest.raises(UserError, match="class 'c3' in toy has 0 images"):
        EpisodeSampler(broken, 5, 1, 1, seed=0)
