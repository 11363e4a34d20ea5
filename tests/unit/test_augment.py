import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnopt.cli.commands import main
from attnopt.data.augment import GlyphAugment, PhotoAugment, make_augmentation
from attnopt.data.episodes import TRAIN_STREAM, EpisodeSampler
from attnopt.data.imageset import ImageSet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def photo_imageset(n_classes: int = 6, per_class: int = 5, size: int = 16) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_classes * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(n_classes)), "toy photos")


def gradient(n: int, channels: int, size: int) -> torch.Tensor:
    """Gray images that brighten from left (0.1) to right (0.6): a flip makes them darken."""
    ramp = torch.linspace(0.1, 0.6, size)
    return ramp.expand(n, channels, size, size).clone()


def right_minus_left(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x[..., half:].mean((1, 2, 3)) - x[..., :half].mean((1, 2, 3))


class TestMakeAugmentation:
    def test_none_means_no_augmentation(self) -> None:
        assert make_augmentation("none", 3, 84) is None
        assert make_augmentation("none", 1, 28) is None

    def test_auto_picks_photo_or_glyph_augmentation_by_channels(self) -> None:
        assert isinstance(make_augmentation("auto", 3, 84), PhotoAugment)
        assert isinstance(make_augmentation("auto", 1, 28), GlyphAugment)

    @pytest.mark.parametrize(("mode", "channels"), [("sometimes", 3), ("auto", 2)])
    def test_unknown_mode_or_channel_count_is_refused(self, mode: str, channels: int) -> None:
        with pytest.raises(ValueError):
            make_augmentation(mode, channels, 28)


class TestAugmentation:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize(("channels", "size"), [(3, 20), (1, 28)])
    def test_keeps_shape_dtype_device_and_unit_range(
        self, channels: int, size: int, device: str
    ) -> None:
        augment = make_augmentation("auto", channels, size)
        x = torch.rand(12, channels, size, size, device=device)
        x[0], x[1] = 0.0, 1.0
        y = augment(x, 5)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert y.min() >= 0.0 and y.max() <= 1.0
        assert not torch.allclose(y, x)

    def test_photo_augmentation_with_neutral_settings_is_the_identity(self) -> None:
        neutral = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.0, contrast=0.0)
        neutral.update(saturation=0.0, hue=0.0)
        x = torch.rand(4, 3, 20, 20)
        torch.testing.assert_close(PhotoAugment(20, flip_p=0.0, **neutral)(x, 0), x)
        torch.testing.assert_close(PhotoAugment(20, flip_p=1.0, **neutral)(x, 0), x.flip(-1))

    def test_glyph_augmentation_with_neutral_settings_is_the_identity(self) -> None:
        x = torch.rand(4, 1, 28, 28)
        identity = GlyphAugment(28, degrees=0.0, shear=0.0, scale=(1.0, 1.0), translate=0.0)
        torch.testing.assert_close(identity(x, 0), x)

    def test_colour_jitter_keeps_gray_images_gray(self) -> None:
        jitter_only = PhotoAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
        y = jitter_only(gradient(8, 3, 16), 3)
        torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-3, rtol=0)
        torch.testing.assert_close(y[:, 0], y[:, 2], atol=1e-3, rtol=0)

    def test_photos_are_flipped_about_half_of_the_time(self) -> None:
        # Crop and jitter keep a left-to-right brightening gray ramp brightening; only a flip
        # reverses it.
        y = make_augmentation("auto", 3, 16)(gradient(200, 3, 16), 11)
        flipped = (right_minus_left(y) < 0).float().mean().item()
        assert 0.35 < flipped < 0.65

    def test_glyphs_are_never_flipped(self) -> None:
        y = make_augmentation("auto", 1, 28)(gradient(200, 1, 28), 11)
        assert (right_minus_left(y) > 0.1).all()

    @pytest.mark.parametrize(("channels", "size"), [(3, 20), (1, 28)])
    def test_every_image_gets_its_own_transform(self, channels: int, size: int) -> None:
        x = torch.rand(1, channels, size, size).expand(16, -1, -1, -1).contiguous()
        y = make_augmentation("auto", channels, size)(x, 0).flatten(1)
        distances = torch.cdist(y, y)
        assert (distances + torch.eye(16) > 1e-3).all()

    def test_same_seed_same_images_other_seed_other_images(self) -> None:
        augment, x = make_augmentation("auto", 3, 20), torch.rand(8, 3, 20, 20)
        assert torch.equal(augment(x, 7), augment(x, 7))
        assert not torch.allclose(augment(x, 7), augment(x, 8))


class TestAugmentedEpisodes:
    def sampler(self, seed: int = 0) -> EpisodeSampler:
        return EpisodeSampler(photo_imageset(), 3, 2, 3, seed=seed)

    def test_no_augmentation_gives_the_plain_episode_bit_for_bit(self) -> None:
        sampler, none = self.sampler(), make_augmentation("none", 3, 16)
        for index in (0, 5):
            plain, same = sampler.episode(index), sampler.episode(index, augment=none)
            assert torch.equal(plain.support_x, same.support_x)
            assert torch.equal(plain.query_x, same.query_x)

    def test_augmentation_changes_images_not_labels(self) -> None:
        sampler, augment = self.sampler(), make_augmentation("auto", 3, 16)
        plain, augmented = sampler.episode(2), sampler.episode(2, augment=augment)
        assert torch.equal(plain.support_y, augmented.support_y)
        assert torch.equal(plain.query_y, augmented.query_y)
        assert augmented.support_x.shape == plain.support_x.shape
        assert not torch.allclose(plain.query_x, augmented.query_x)

    def test_augmented_episode_depends_only_on_seed_and_index(self) -> None:
        augment = make_augmentation("auto", 3, 16)
        a, b, other_seed = self.sampler(), self.sampler(), self.sampler(seed=1)
        b.episode(0, augment=augment)  # what came before must not matter (resumed runs)
        first, again = a.episode(3, augment=augment), b.episode(3, augment=augment)
        assert torch.equal(first.support_x, again.support_x)
        assert torch.equal(first.query_x, again.query_x)
        assert not torch.equal(first.query_x, a.episode(4, augment=augment).query_x)
        assert a.augment_seed(3) != other_seed.augment_seed(3)

    def test_global_torch_random_state_is_untouched(self) -> None:
        sampler, augment = self.sampler(), make_augmentation("auto", 3, 16)
        torch.manual_seed(123)
        state = torch.get_rng_state()
        sampler.episode(0, augment=augment)
        assert torch.equal(torch.get_rng_state(), state)


def test_training_augments_training_episodes_only(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    calls: list[tuple[int, bool]] = []
    original = EpisodeSampler.episodes

    def spy(self, indices, device="cpu", augment=None):
        calls.extend((self.stream, augment is not None) for _ in indices)
        return original(self, indices, device, augment)

    monkeypatch.setattr(EpisodeSampler, "episodes", spy)
    run = tmp_path / "run"
    flags = (
        f"--data folder --data-root {folder_dataset} --image-size 16 --n-class 3 --n-shot 2 "
        f"--n-eval 2 --epoch 1 --episode 2 --val-freq 1 --episode-val 1 --episode-test 2 "
        f"--log-freq 1 --save {run} --cpu --seed 1 --augment auto"
    )
    assert main(["train", *flags.split()]) == 0
    assert json.loads((run / "test.json").read_text())["episodes"] == 2
    train_calls = [augmented for stream, augmented in calls if stream == TRAIN_STREAM]
    eval_calls = [augmented for stream, augmented in calls if stream != TRAIN_STREAM]
    assert train_calls == [True, True]
    assert len(eval_calls) >= 2 * 1 + 2  # two validations of one episode, then the test
    assert not any(eval_calls)
