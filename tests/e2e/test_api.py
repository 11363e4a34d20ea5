"""The Python API: attnopt.load(...).adapt(...).predict(...), train, evaluate, make_config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_support, tiny_flags, write_image
from PIL import Image

import attnopt
from attnopt import api
from attnopt.adapt import adapt, query_logits
from attnopt.config import Config
from attnopt.data.decode import decode_images
from attnopt.data.episodes import normalize
from attnopt.errors import UserError
from attnopt.training.evaluation import load_trained


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "rgb.pt")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str], list[Path]]:
    """Support images of three classes (two per class, of other sizes than 16x16) and six
    query images: (support paths, their labels, query paths)."""
    root = tmp_path_factory.mktemp("images")
    support = make_support(root / "support", {"cat": 2, "dog": 2, "emu": 2}, size=23)
    paths = sorted(support.rglob("*.png"))
    rng = np.random.default_rng(1)
    queries = []
    for i in range(6):
        write_image(root / "query" / f"q{i}.png", rng, size=16 + i)
        queries.append(root / "query" / f"q{i}.png")
    return paths, [p.parent.name for p in paths], queries


def test_predict_returns_the_labels_given_and_proba_rows_are_distributions(
    rgb_ckpt: Path, files
) -> None:
    support, labels, queries = files
    model = attnopt.load(rgb_ckpt)
    for given in (labels, [{"cat": 7, "dog": 3, "emu": 11}[name] for name in labels]):
        task = model.adapt(support, given)
        assert task.classes == tuple(sorted(set(given)))
        probs = task.predict_proba(queries)
        assert probs.shape == (len(queries), 3)
        assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
        predicted = task.predict(queries)
        assert predicted == [task.classes[j] for j in probs.argmax(1)]
        assert all(type(p) is type(given[0]) for p in predicted)


def test_an_images_prediction_does_not_depend_on_the_other_queries(
    rgb_ckpt: Path, files, monkeypatch: pytest.MonkeyPatch
) -> None:
    support, labels, queries = files
    task = attnopt.load(rgb_ckpt).adapt(support, labels)
    together = task.predict_proba(queries)
    alone = np.concatenate([task.predict_proba([q]) for q in queries])
    reversed_ = task.predict_proba(queries[::-1])[::-1]
    monkeypatch.setattr(api, "QUERY_CHUNK", 4)  # several forward passes
    chunked = task.predict_proba(queries)
    for other in (alone, reversed_, chunked):
        np.testing.assert_allclose(other, together, rtol=0, atol=1e-6)
    assert not np.allclose(together[0], together[1])  # the images do get different answers


def test_predictions_are_the_training_pipelines(rgb_ckpt: Path, files) -> None:
    """Decoding, normalisation, adapt and query_logits exactly as evaluation uses them."""
    support, labels, queries = files
    ckpt = torch.load(rgb_ckpt, weights_only=True)
    config = Config.from_dict(__import__("json").loads(ckpt["config"]))
    model = load_trained(str(rgb_ckpt), config, 3, torch.device("cpu"))
    sx = normalize(torch.from_numpy(decode_images(support, 16, 1, "support")[0]))
    qx = normalize(torch.from_numpy(decode_images(queries, 16, 1, "query")[0]))
    sy = torch.tensor([sorted(set(labels)).index(name) for name in labels])
    with torch.no_grad():
        theta = adapt(
            model.learner, model.metalearner, sx[None], sy[None], config.epoch, config.batch_size
        )[0]
        expected = torch.softmax(
            query_logits(model.learner, theta[None], sx[None], qx[None])[0].double(), 1
        )
    got = attnopt.load(rgb_ckpt).adapt(support, labels).predict_proba(queries)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


def test_paths_pil_images_and_tensors_give_the_same_predictions(rgb_ckpt: Path, files) -> None:
    support, labels, _ = files
    queries = [files[2][0]]  # 16x16: the checkpoint's size, so no resize is involved
    task = attnopt.load(rgb_ckpt).adapt(support, labels)
    pixels = np.array(Image.open(queries[0]).convert("RGB"))
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    by_path = task.predict_proba(queries)
    pil = Image.open(queries[0])
    for images in ([pil], pil, tensor, tensor.unsqueeze(0), [tensor], str(queries[0])):
        np.testing.assert_allclose(task.predict_proba(images), by_path, rtol=0, atol=1e-6)
    assert tensor.max() <= 1  # the caller's tensor is not standardised in place


def test_images_are_converted_to_the_checkpoints_channels(tmp_path: Path) -> None:
    gray_ckpt = make_checkpoint(tmp_path / "gray.pt", channels=1)
    rgb = make_support(tmp_path / "rgb", {"a": 2, "b": 2}, size=20)
    gray = tmp_path / "gray"
    for path in rgb.rglob("*.png"):
        (gray / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").save(gray / path.parent.name / path.name)
    model = attnopt.load(gray_ckpt)
    results = []
    for root in (rgb, gray):
        paths = sorted(root.rglob("*.png"))
        task = model.adapt(paths, [p.parent.name for p in paths])
        results.append(task.predict_proba(paths))
    np.testing.assert_array_equal(results[0], results[1])
    # and grayscale files into an RGB model
    paths = sorted(gray.rglob("*.png"))
    rgb_model = attnopt.load(make_checkpoint(tmp_path / "rgb.pt", channels=3))
    task = rgb_model.adapt(paths, [p.parent.name for p in paths])
    assert task.predict_proba(paths).shape == (4, 2)


@pytest.mark.parametrize("attention", ["none", "both"])
def test_fewer_classes_use_the_first_rows_of_the_head(tmp_path: Path, attention: str) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", n_class=4, attention=attention)
    model = attnopt.load(ckpt)
    small = api.narrow(model.model, model.config, 3, 2)
    full_state, small_state = model.model.state_dict(), small.state_dict()
    sliced = api.head_rows(model.model.learner, full_state["metalearner.c_init"], 2)
    assert torch.equal(small_state["metalearner.c_init"], sliced)
    assert all(torch.equal(small_state[k], v) for k, v in full_state.items() if "c_init" not in k)
    # Any θ: the narrowed learner's logits are the first two of the full learner's.
    theta = torch.randn(model.model.learner.num_params)
    x = torch.randn(5, 3, 16, 16)
    full = model.model.learner(theta, x)
    narrowed = small.learner(api.head_rows(model.model.learner, theta, 2), x)
    torch.testing.assert_close(narrowed, full[:, :2], rtol=1e-5, atol=1e-5)
    support = make_support(tmp_path / "s", {"x": 3, "y": 1})
    paths = sorted(support.rglob("*.png"))
    assert model.adapt(paths, ["x", "x", "x", "y"]).predict_proba(paths).shape == (4, 2)


@pytest.mark.parametrize(
    ("n_class", "n_shot", "batch_size", "epoch"),
    [(5, 5, 25, 8), (5, 1, 5, 12), (5, 5, 10, 2), (5, 5, 5, 2), (3, 2, 1, 1), (4, 3, 5, 3)],
)
@pytest.mark.parametrize("n_support", [1, 2, 7, 25, 26, 100])
def test_any_support_set_gets_the_inner_loop_of_training(
    n_class: int, n_shot: int, batch_size: int, epoch: int, n_support: int
) -> None:
    config = Config(n_class=n_class, n_shot=n_shot, batch_size=batch_size, epoch=epoch)
    trained_per_pass = math.ceil(n_class * n_shot / batch_size)
    passes, batch = api.inner_loop_shape(config, n_support)
    assert passes == epoch
    # The smallest mini-batch that needs no more steps per pass than training took.
    assert math.ceil(n_support / batch) <= trained_per_pass
    assert batch == 1 or math.ceil(n_support / (batch - 1)) > trained_per_pass
    if trained_per_pass == 1:  # the default (whole support set): exactly T steps
        assert batch == n_support


def test_any_number_of_shots(rgb_ckpt: Path, tmp_path: Path) -> None:
    model = attnopt.load(rgb_ckpt)
    for counts in ({"a": 1, "b": 1, "c": 1}, {"a": 5, "b": 5, "c": 5}, {"a": 4, "b": 1}):
        root = make_support(tmp_path / "-".join(map(str, counts.values())), counts)
        paths = sorted(root.rglob("*.png"))
        task = model.adapt(paths, [p.parent.name for p in paths])
        assert task.predict_proba(paths).shape == (len(paths), len(counts))


@pytest.mark.parametrize(
    ("images", "culprit"),
    [
        (torch.rand(2, 1, 16, 16), "(2, 1, 16, 16)"),
        (torch.rand(2, 3, 20, 20), "(2, 3, 20, 20)"),
        (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), "uint8"),
        (torch.randn(2, 3, 16, 16) * 3, "[0, 1]"),
        ([42], "int"),
        ([], "no images"),
        (["/no/such/image.png"], "/no/such/image.png"),
    ],
)
def test_unusable_images_are_user_errors(rgb_ckpt: Path, files, images, culprit: str) -> None:
    support, labels, _ = files
    task = attnopt.load(rgb_ckpt).adapt(support, labels)
    with pytest.raises(UserError, match=__import__("re").escape(culprit)):
        task.predict_proba(images)


def test_bad_support_sets_are_user_errors(rgb_ckpt: Path, files, tmp_path: Path) -> None:
    support, labels, _ = files
    model = attnopt.load(rgb_ckpt)
    with pytest.raises(UserError, match="4 classes"):
        model.adapt(support[:4], ["a", "b", "c", "d"])
    with pytest.raises(UserError, match="at least 2 classes"):
        model.adapt(support[:2], ["a", "a"])
    with pytest.raises(UserError, match="6 support images but 5 labels"):
        model.adapt(support, labels[:5])
    with pytest.raises(UserError, match="all class names"):
        model.adapt(support[:2], ["a", 1])


def test_load_of_a_missing_or_damaged_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        attnopt.load(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="bad.pt"):
        attnopt.load(tmp_path / "bad.pt")


def test_make_config_maps_keyword_flags_and_validates() -> None:
    config = attnopt.make_config(n_shot=1, data="folder", data_root="x")
    assert isinstance(config, attnopt.Config)
    assert (config.epoch, config.batch_size, config.image_size) == (12, 5, 84)
    assert attnopt.make_config(config, n_shot=5).batch_size == 25
    with pytest.raises(UserError, match="--n-shot"):
        attnopt.make_config(n_shot=0)


def _as_kwargs(flags: list[str]) -> dict:
    """["--n-shot", "2", "--cpu", ...] -> {"n_shot": 2, "cpu": True, ...} (ints when they are)."""
    out, i = {}, 0
    while i < len(flags):
        key = flags[i][2:].replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            value = flags[i + 1]
            out[key] = int(value) if value.isdigit() else value
            i += 2
        else:
            out[key], i = True, i + 1
    return out


def test_train_and_evaluate_return_results_without_printing(
    folder_dataset: Path, tmp_path: Path, trained_template, capsys: pytest.CaptureFixture
) -> None:
    flags = _as_kwargs(tiny_flags(folder_dataset, tmp_path / "run"))
    result = attnopt.train(
        **{**flags, "episode": 2, "val_freq": 2, "episode_val": 2, "episode_test": 3},
        attention="none",
        epoch=2,
    )
    assert result.run_dir == tmp_path / "run" and (result.run_dir / "ckpts" / "best.pt").is_file()
    assert result.test.episodes == 3 and result.best_episode == 2
    assert "test accuracy" not in capsys.readouterr().out  # progress is logged; no result line
    run = trained_template[0]
    before = sorted(p.name for p in run.rglob("*"))
    evaluated = attnopt.evaluate(run / "ckpts" / "best.pt", episode_test=4, device="cpu")
    assert (evaluated.episodes, evaluated.n_class, evaluated.n_shot) == (4, 3, 2)
    assert 0 <= evaluated.accuracy <= 100
    assert sorted(p.name for p in run.rglob("*")) == before  # writes nothing
    assert capsys.readouterr().out == ""  # evaluate prints nothing at all


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_loading_onto_a_missing_gpu_is_a_user_error(rgb_ckpt: Path) -> None:
    with pytest.raises(UserError, match="device cuda"):
        attnopt.load(rgb_ckpt, device="cuda")
